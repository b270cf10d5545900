"""Run the installed `phase2` command as a user does: a subprocess, from a given directory, with a
controlled environment (no inherited state dir, S3 or Prefect settings unless the test sets them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PHASE2 = Path(sys.executable).with_name("phase2")
# Settings a developer's shell or the test session may carry; each test sets what its case needs.
_CLEARED = (
    "PHASE2_STATE_DIR",
    "PHASE2_S3_ENDPOINT",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "PREFECT_API_URL",
    "PREFECT_HOME",
    "YOLO_CONFIG_DIR",
    "WANDB_DIR",
)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error_line(self) -> str:
        """The one `error:` line on stderr (asserting there is exactly one line and no traceback)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        assert "Traceback" not in self.stderr, self.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), self.stderr
        return lines[0]


def run_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    program: list[str] | None = None,
) -> Result:
    """``phase2 ARGS`` (or ``program ARGS``) in a subprocess from ``cwd``."""
    environ = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    environ.update(env or {})
    start = time.monotonic()
    command = [*(program or [str(PHASE2)]), *args]
    proc = subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def write_results_csv(path: Path, epochs: int = 21, best: int = 6) -> Path:
    """A results.csv as Ultralytics writes it (padded column names), fitness best at epoch ``best``."""
    columns = [
        "epoch",
        "train/box_loss",
        "metrics/precision(B)",
        "metrics/recall(B)",
        "metrics/mAP50(B)",
        "metrics/mAP50-95(B)",
        "val/box_loss",
    ]
    rows = [", ".join(f"{c:>20}" for c in columns)]
    for epoch in range(1, epochs + 1):
        score = 0.5 - abs(epoch - best) * 0.01
        rows.append(", ".join(f"{v:>20}" for v in (epoch, 1.0 / epoch, score, score, score, score / 2, 1.0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path
