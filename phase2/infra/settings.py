"""Where the project keeps its state and how every tool is made offline-safe.

Every Ultralytics, Prefect and W&B file lives under one state directory, never in the user's
home: ``$PHASE2_STATE_DIR`` when set, else the nearest ``.phase2/`` upward from the working
directory (found the way git finds ``.git``), else ``./.phase2`` for commands that create state.
Call :func:`configure_environment` before importing ultralytics, prefect or wandb.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from phase2.infra.files import atomic_write_json

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REAL_DATASET = PROJECT_ROOT.parent / "shared" / "datasets" / "site-inspection"
DEFAULT_MODEL_NAME = "site-inspection-detector"


STATE_DIR_NAME = ".phase2"


def find_state_dir(start: Path | None = None) -> Path | None:
    """The nearest existing ``.phase2`` directory in ``start`` (default: the cwd) or above it."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / STATE_DIR_NAME).is_dir():
            return folder / STATE_DIR_NAME
    return None


def state_dir() -> Path:
    """The project state directory, absolute (it may not exist yet).

    ``$PHASE2_STATE_DIR`` when set (it is what child processes inherit), else the nearest
    ``.phase2`` upward from the working directory, so commands work from any subdirectory of a
    project, else ``./.phase2``.
    """
    if setting := os.environ.get("PHASE2_STATE_DIR"):
        return Path(setting).resolve()
    return find_state_dir() or (Path.cwd() / STATE_DIR_NAME).resolve()


def scratch_state_dir() -> Path:
    """Where a read-only command keeps tool settings when the project has no state dir yet
    (outside the working directory, so reading creates nothing there)."""
    return Path(tempfile.gettempdir()) / f"phase2-scratch-{os.getuid()}"


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


def configure_environment(state: Path | None = None, *, create_state: bool = True) -> dict[str, str]:
    """Point Ultralytics, Prefect and W&B at the state dir and make them offline-safe.

    Idempotent; values the user already exported win (so a real W&B key or Prefect API URL
    is respected). Returns the variables it set, for child processes. With ``create_state=False``
    (read-only commands) a project without a state dir gets :func:`scratch_state_dir` instead of
    a new ``./.phase2``.
    """
    if state is None and not create_state and not os.environ.get("PHASE2_STATE_DIR") and find_state_dir() is None:
        state = scratch_state_dir()
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
        "YOLO_AUTOINSTALL": "False",  # never pip-install a missing export package at run time
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


# What we want of Ultralytics: no sync/telemetry/integrations, runs and datasets in the state dir.
# Only keys the installed version knows are written: an unknown key (e.g. `hub`, gone in 8.4)
# makes Ultralytics reset the file and print "settings updated" on every run.
_ULTRALYTICS_WANTED: dict[str, object] = {
    "sync": False,
    "hub": False,
    "clearml": False,
    "comet": False,
    "dvc": False,
    "mlflow": False,
    "raytune": False,
    "tensorboard": False,
    "wandb": False,  # we stream to W&B ourselves; its callback would finish our run
    "vscode_msg": False,
    "openvino_msg": False,
}


@lru_cache(maxsize=1)
def ultralytics_settings_schema() -> tuple[str, dict[str, object]] | None:
    """(settings version, default settings) of the installed Ultralytics, read from its source
    (``SettingsManager.__init__``) so the CLI does not import torch to learn them. Defaults that
    are not literals (paths, uuid) are ``None``. None when Ultralytics or the class is not found."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        return None
    try:
        tree = ast.parse((Path(spec.origin).parent / "utils" / "__init__.py").read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "SettingsManager":
            init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
            if init is not None:
                return _schema_from_init(init)
    return None


def _schema_from_init(init: ast.FunctionDef) -> tuple[str, dict[str, object]] | None:
    names = [a.arg for a in init.args.args]
    defaults = dict(zip(names[len(names) - len(init.args.defaults) :], init.args.defaults, strict=True))
    version = defaults.get("version")
    if not isinstance(version, ast.Constant) or not isinstance(version.value, str):
        return None
    for stmt in ast.walk(init):
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Dict):
            target = stmt.targets[0]
            if isinstance(target, ast.Attribute) and target.attr == "defaults":
                schema: dict[str, object] = {}
                for key, value in zip(stmt.value.keys, stmt.value.values, strict=True):
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        try:
                            schema[key.value] = ast.literal_eval(value)
                        except ValueError:
                            schema[key.value] = None
                return version.value, schema
    return None


def _write_ultralytics_settings(config_dir: Path, state: Path) -> None:
    """Ultralytics settings as the installed version validates them (its keys, types and schema
    version), with our values; written only when they differ from the file."""
    settings_file = config_dir / "settings.json"
    current: dict[str, object] = {}
    if settings_file.exists():
        try:
            loaded = json.loads(settings_file.read_text())
            current = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            current = {}
    ours: dict[str, object] = {
        **_ULTRALYTICS_WANTED,
        "runs_dir": str(state / "runs"),
        "datasets_dir": str(state / "datasets"),
        "weights_dir": str(state / "weights"),
    }
    schema = ultralytics_settings_schema()
    if schema is None:  # unknown layout: change only keys the file already has
        wanted = {**current, **{k: v for k, v in ours.items() if k in current or not current}}
    else:
        version, defaults = schema
        fallback = {"uuid": hashlib.sha256(str(uuid.getnode()).encode()).hexdigest(), "settings_version": version}
        wanted = {}
        for key, default in defaults.items():
            value = ours.get(key, current.get(key, default if default is not None else fallback.get(key, "")))
            kind = type(default) if default is not None else str
            wanted[key] = value if isinstance(value, kind) else (default if default is not None else "")
        wanted["settings_version"] = version
        if "uuid" in defaults:
            wanted["uuid"] = wanted.get("uuid") or fallback["uuid"]
    if wanted != current:
        atomic_write_json(settings_file, wanted)


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
