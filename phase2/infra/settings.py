"""Where the project keeps its state and how every tool is made offline-safe.

Every Ultralytics, Prefect and W&B file lives under one state directory (default
``.phase2/`` in the working directory, or ``$PHASE2_STATE_DIR``), never in the user's home.
Call :func:`configure_environment` before importing ultralytics, prefect or wandb.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from phase2.infra.files import atomic_write_json

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REAL_DATASET = PROJECT_ROOT.parent / "shared" / "datasets" / "site-inspection"
DEFAULT_MODEL_NAME = "site-inspection-detector"


def state_dir() -> Path:
    """The project state directory, absolute."""
    return Path(os.environ.get("PHASE2_STATE_DIR", ".phase2")).resolve()


def real_dataset_dir() -> Path:
    """The real site-inspection dataset used by tests and benchmarks (one setting)."""
    return Path(os.environ.get("PHASE2_REAL_DATASET", DEFAULT_REAL_DATASET)).resolve()


def _find_font() -> Path | None:
    """A local TTF: the system's DejaVu Sans, else the copy matplotlib ships."""
    system = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if system.is_file():
        return system
    import matplotlib  # imported only when needed: it is slow to import

    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return bundled if bundled.is_file() else None


def configure_environment(state: Path | None = None) -> dict[str, str]:
    """Point Ultralytics, Prefect and W&B at the state dir and make them offline-safe.

    Idempotent; values the user already exported win (so a real W&B key or Prefect API URL
    is respected). Returns the variables it set, for child processes.
    """
    state = (state or state_dir()).resolve()
    state.mkdir(parents=True, exist_ok=True)
    yolo_dir = state / "ultralytics"
    font_dir = yolo_dir / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    # Ultralytics downloads Arial.ttf for plots (a 3 s network wait offline); a local TTF
    # under that name satisfies its check and plots still render.
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        target = font_dir / name
        if not target.exists() and (font := _find_font()):
            shutil.copyfile(font, target)
    wandb_dir = state / "wandb"
    for sub in ("", "data", "cache", "config"):
        (wandb_dir / sub).mkdir(parents=True, exist_ok=True)
    defaults = {
        "PHASE2_STATE_DIR": str(state),
        "YOLO_OFFLINE": "1",
        "YOLO_CONFIG_DIR": str(yolo_dir),
        "YOLO_VERBOSE": "True",
        "PREFECT_HOME": str(state / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_CLI_PROMPT": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOCAL_STORAGE_PATH": str(state / "prefect" / "storage"),
        "WANDB_DIR": str(wandb_dir),
        "WANDB_DATA_DIR": str(wandb_dir / "data"),
        "WANDB_CACHE_DIR": str(wandb_dir / "cache"),
        "WANDB_CONFIG_DIR": str(wandb_dir / "config"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_INIT_TIMEOUT": "60",
        "MPLBACKEND": "Agg",
    }
    # Offline unless a key is present: wandb prompts on a TTY without a key.
    if not os.environ.get("WANDB_API_KEY"):
        defaults["WANDB_MODE"] = "offline"
    applied: dict[str, str] = {}
    for key, value in defaults.items():
        applied[key] = os.environ.setdefault(key, value)
    _write_ultralytics_settings(font_dir, state)
    return applied


def _write_ultralytics_settings(config_dir: Path, state: Path) -> None:
    """Ultralytics settings: no sync/telemetry, runs and datasets inside the state dir."""
    settings_file = config_dir / "settings.json"
    wanted = {
        "sync": False,
        "hub": False,
        "clearml": False,
        "comet": False,
        "dvc": False,
        "mlflow": False,
        "raytune": False,
        "tensorboard": False,
        "wandb": False,  # we stream to W&B ourselves; its callback would finish our run
        "runs_dir": str(state / "runs"),
        "datasets_dir": str(state / "datasets"),
        "weights_dir": str(state / "weights"),
    }
    current: dict[str, object] = {}
    if settings_file.exists():
        try:
            current = json.loads(settings_file.read_text())
        except ValueError:
            current = {}
    if any(current.get(k) != v for k, v in wanted.items()):
        current.update(wanted)
        atomic_write_json(settings_file, current)


class S3Settings(BaseModel):
    """S3-compatible storage; credentials only from the environment, never parameters."""

    endpoint_url: str | None = Field(None, description="None means AWS itself")
    bucket: str = "phase2"
    region: str = "us-east-1"
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None

    @classmethod
    def from_env(cls) -> S3Settings:
        env = os.environ
        return cls(
            endpoint_url=env.get("PHASE2_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL") or None,
            bucket=env.get("PHASE2_S3_BUCKET", "phase2"),
            region=env.get("AWS_DEFAULT_REGION", "us-east-1"),
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        )


@lru_cache(maxsize=1)
def git_sha() -> str:
    """Code version for lineage; 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
