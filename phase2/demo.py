"""`phase2 run`: the embedded default demo and the trigger of a deployment run.

The demo generates the synthetic scenes (deterministic), trains the from-scratch "phase 1"
baseline the Phase 2 recipe starts from (pretrained weights can't be downloaded offline), and
then drives the real deployment with `prefect deployment run phase2/train --watch`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from phase2.infra.files import atomic_write_bytes
from phase2.infra.settings import configure_environment, state_dir
from phase2.runs import RunLayout, flow_run_summary_path


def prepare_demo(root: Path | None = None) -> tuple[Path, Path]:
    """(data.yaml, baseline best.pt) of the demo; both cached in the state dir once made."""
    configure_environment()
    from phase2.dataset.synthetic import generate_demo_dataset, train_baseline

    root = root or state_dir() / "demo"
    data_yaml = root / "data" / "data.yaml"
    if not data_yaml.is_file():
        print(f"generating synthetic demo data in {data_yaml.parent}", flush=True)
        generate_demo_dataset(data_yaml.parent)
    baseline = root / "baseline" / "baseline.pt"
    if not baseline.is_file():
        print("training the from-scratch phase-1 baseline (yolo11n) on it", flush=True)
        started = time.monotonic()
        best = train_baseline(data_yaml, root / "runs")
        atomic_write_bytes(baseline, best.read_bytes())
        print(f"baseline ready in {time.monotonic() - started:.0f} s: {baseline}", flush=True)
    return data_yaml, baseline


def trigger_training(
    env: dict[str, str], *, data: Path, baseline: str, recipe: str, timeout: int, deployment: str = "phase2/train"
) -> dict[str, object]:
    """`prefect deployment run … --watch`, streamed; returns the run's summary."""
    prefect = str(Path(sys.executable).with_name("prefect"))
    command = [
        prefect,
        "deployment",
        "run",
        deployment,
        "--param",
        f"data={data}",
        "--param",
        f"baseline={baseline}",
        "--param",
        f"recipe_name={recipe}",
        "--watch",
        "--watch-interval",
        "2",
        "--watch-timeout",
        str(timeout),
    ]
    print("$ " + " ".join(command[1:]), flush=True)
    flow_run_id = None
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        if flow_run_id is None and (m := re.search(r"UUID:\s*([0-9a-f-]{36})", line)):
            flow_run_id = m.group(1)
    proc.wait()
    summary: dict[str, object] = {
        "state": "COMPLETED" if proc.returncode == 0 else "FAILED",
        "flow_run_id": flow_run_id,
    }
    result_file = flow_run_summary_path(str(flow_run_id), Path(env["PHASE2_STATE_DIR"]))
    if result_file.is_file():
        summary.update(json.loads(result_file.read_text()))
    summary["prefect_ui"] = env.get("PREFECT_API_URL", "").removesuffix("/api") + f"/runs/flow-run/{flow_run_id}"
    summary["state_dir"] = env["PHASE2_STATE_DIR"]
    return summary


# What a person needs after a run, in order; links into the stack only while it is still up.
_OUTCOME_KEYS = ("state", "status", "reason", "model", "promoted", "selected", "val_mAP50", "dataset_version")
_STACK_KEYS = ("prefect_ui", "report", "manifest", "run_uri", "s3_prefix")


def run_summary(summary: dict[str, object], *, stack_up: bool) -> str:
    """The end of `phase2 run` / `make run`: the outcome, the local report and run folder, and how
    to browse the run. S3 objects and the Prefect UI are listed only when the stack is still up
    (`stack_up`); otherwise it says how to bring it back (`make up`)."""
    rows: list[tuple[str, object]] = [(k, summary[k]) for k in _OUTCOME_KEYS if summary.get(k) is not None]
    if isinstance(summary.get("gate"), dict):  # the promotion gate's numbers, each with its interval and n
        from phase2.evaluation.promotion import gate_lines

        rows += gate_lines(summary["gate"])  # type: ignore[arg-type]
    run_key = summary.get("run_key")
    if run_key:
        layout = RunLayout.for_run(str(run_key), Path(str(summary.get("state_dir") or state_dir())))
        report = layout.report_html
        rows.append(
            ("report (local)", report if report.is_file() else f"{report} (not written: the run stopped early)")
        )
        rows.append(("run folder", layout.root))
    if summary.get("wandb_run"):
        rows.append(("wandb run", summary["wandb_run"]))
    if stack_up:
        rows += [(k, summary[k]) for k in _STACK_KEYS if summary.get(k)]
    lines = [f"{k:>16}: {v}" for k, v in rows]
    if stack_up:
        lines.append("The stack is still up: browse the run in the Prefect UI above; `make down` stops it.")
    else:
        lines.append(
            "The stack this command started is stopped. To browse the run (Prefect UI, models, S3 objects): "
            "`make up` (or `phase2 up`), then `phase2 status` for the UI address and `phase2 models list`."
        )
    return "\n".join(lines)
