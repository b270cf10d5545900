"""The single way to reach Weights & Biases.

Offline unless WANDB_API_KEY is set (configure_environment decides), never prompting. One W&B
run per pipeline run, with a deterministic id so a retried task or a re-run flow after a crash
resumes the same run instead of starting another one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from phase2.infra.secrets import without_secret_keys

DEFAULT_PROJECT = "site-inspection-phase2"


def results_row_to_metrics(row: dict[str, Any]) -> dict[str, float]:
    """Map an Ultralytics results.csv row to W&B metric names (train/*, metrics/*, val/*, lr/*)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        key = key.strip()
        if key in ("epoch", "time") or value in (None, ""):
            continue
        try:
            out[key.replace("(B)", "")] = float(value)
        except (TypeError, ValueError):
            continue
    return out


class Tracker:
    """A W&B run that several tasks (and retries) share through its id."""

    def __init__(
        self,
        run_id: str,
        *,
        project: str | None = None,
        name: str | None = None,
        config: dict[str, Any] | None = None,
        group: str | None = None,
    ) -> None:
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
            entity=os.environ.get("WANDB_ENTITY") or None,
            id=run_id,
            name=name or run_id,
            group=group,
            resume="allow",
            config=without_secret_keys(config or {}),
            dir=os.environ.get("WANDB_DIR"),
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
            reinit="create_new",
        )

        # Per-epoch charts use epoch as their x axis; images and tables logged by other stages
        # advance W&B's own step, so epochs can't be logged with step=epoch.
        self.run.define_metric("epoch")
        for prefix in ("train/*", "val/*", "metrics/*", "lr/*"):
            self.run.define_metric(prefix, step_metric="epoch")

    @property
    def offline(self) -> bool:
        return self.run.offline

    @property
    def run_path(self) -> str:
        if self.offline:
            return f"offline:{self.run.dir.rsplit('/files', 1)[0]}"
        return self.run.path

    @property
    def run_dir(self) -> Path:
        """The local run directory (offline-run-…/run-…), holding the .wandb file."""
        return Path(self.run.dir).parent

    def log_epoch(self, row: dict[str, Any]) -> None:
        """One results.csv row as one history row (x axis: epoch)."""
        self.run.log({"epoch": int(float(row["epoch"])), **results_row_to_metrics(row)})

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        columns = list(rows[0])
        data = [[r.get(c) for c in columns] for r in rows]
        table = self._wandb.Table(columns=list[str | int](columns), data=data)
        self.run.log({key: table})

    def log_images(self, images: dict[str, Path]) -> None:
        self.run.log({key: self._wandb.Image(str(path)) for key, path in images.items() if Path(path).exists()})

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def log_model(
        self,
        path: Path,
        name: str,
        *,
        aliases: list[str],
        metadata: dict[str, Any],
        extra_files: dict[str, Path] | None = None,
    ) -> str:
        """Log weights as a model artifact (works offline); returns 'name:version-or-alias'.

        ``extra_files`` ({name in the artifact: local file}): the exports and the model card."""
        artifact = self._wandb.Artifact(name=name, type="model", metadata=without_secret_keys(metadata))
        artifact.add_file(str(path))
        for artifact_name, local in (extra_files or {}).items():
            artifact.add_file(str(local), name=artifact_name)
        self.run.log_artifact(artifact, aliases=aliases)
        return f"{name}:{aliases[0] if aliases else 'latest'}"

    def finish(self) -> None:
        self.run.finish()


def read_offline_run(run_dir: Path) -> list[dict[str, Any]]:
    """Records of an offline run, via `wandb leet inspect --json` (the supported reader)."""
    wandb_bin = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_bin), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip().startswith("{")]


def offline_history(run_dir: Path) -> list[dict[str, Any]]:
    """History rows (one dict per logged step) of an offline run directory."""
    rows = []
    for record in read_offline_run(run_dir):
        history = record.get("history") or (record.get("record") or {}).get("history")
        if history is None and record.get("type") == "history":
            history = record
        if history is None:
            continue
        items = history.get("item") or history.get("items") or []
        if isinstance(items, list):
            row = {}
            for item in items:
                key = item.get("key") or "/".join(item.get("nested_key", []))
                try:
                    row[key] = json.loads(item.get("value_json", "null"))
                except ValueError:
                    row[key] = item.get("value_json")
            rows.append(row)
        elif isinstance(items, dict):
            rows.append(items)
    return rows


class PublishError(RuntimeError):
    """Publishing offline runs needs W&B online (a key and network)."""


def publish_offline_runs(wandb_dir: Path, *, registry_collection: str, project: str | None = None) -> list[str]:
    """Sync every offline run once and link its model artifacts to the W&B Registry.

    Idempotent: a synced run gets a `.phase2-published` marker and is skipped next time.
    Returns the run paths published now.
    """
    if not os.environ.get("WANDB_API_KEY"):
        raise PublishError(f"W&B publish needs WANDB_API_KEY (and network); offline runs stay in {wandb_dir}")
    import wandb

    wandb_bin = Path(sys.executable).with_name("wandb")
    api = wandb.Api()
    project = project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT)
    entity = os.environ.get("WANDB_ENTITY") or api.default_entity
    if not entity:
        raise PublishError("W&B publish needs an entity: set WANDB_ENTITY (the API key has no default entity)")
    published = []
    for run_dir in sorted(Path(wandb_dir).glob("**/offline-run-*")):
        marker = run_dir / ".phase2-published"
        if marker.exists():
            continue
        subprocess.run(
            [str(wandb_bin), "sync", "--project", project, "--entity", entity, str(run_dir)],
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        run_id = run_dir.name.rsplit("-", 1)[-1]
        run = api.run(f"{entity}/{project}/{run_id}")
        for artifact in run.logged_artifacts():
            if artifact.type == "model":
                artifact.link(f"wandb-registry-model/{registry_collection}")
        marker.write_text(run.path if isinstance(run.path, str) else "/".join(run.path))
        published.append(f"{entity}/{project}/{run_id}")
    return published
