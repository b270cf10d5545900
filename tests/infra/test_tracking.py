"""The W&B module: offline by default, secrets kept out of config, history read back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from phase2.infra.tracking import Tracker, offline_history, read_offline_run


def test_offline_run_holds_one_history_row_per_epoch_and_no_secret(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = Tracker("trackingtest1", config={"recipe": {"epochs": 2}, "secret_token": "s3cr3t-value"})
    assert run.offline
    run.log_images({})  # other stages log without an epoch: it must not swallow epoch rows
    run.log_epoch({"epoch": "1", "metrics/mAP50(B)": "0.25", "train/box_loss": "1.5"})
    run.log_epoch({"epoch": "2", "metrics/mAP50(B)": "0.5", "train/box_loss": "1.2"})
    run_dir = run.run_dir
    run.finish()
    rows = [r for r in offline_history(run_dir) if "metrics/mAP50" in r]
    assert [(r["epoch"], r["metrics/mAP50"]) for r in rows] == [(1, 0.25), (2, 0.5)]
    assert "s3cr3t-value" not in str(read_offline_run(run_dir))


def test_publish_refuses_clearly_without_a_key():
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    out = subprocess.run(
        [str(Path(sys.executable).with_name("phase2")), "wandb", "publish"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "needs WANDB_API_KEY" in out.stderr and "Traceback" not in out.stderr
