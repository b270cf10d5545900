"""The exports and the model card are files of the W&B model artifact (offline run)."""

from __future__ import annotations

import json

from phase2.infra.tracking import Tracker, read_offline_run


def test_model_artifact_holds_exports_and_card(deployables, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    deploy = deployables["deploy"]
    run = Tracker("deploytest1")
    assert run.offline
    run.log_model(
        deployables["weights"], "deploy-test-detector", aliases=["candidate"], metadata={}, extra_files=deploy.files
    )
    run_dir = run.run_dir
    run.finish()
    records = json.dumps(read_offline_run(run_dir))
    for name in ("best.pt", "exports/best.onnx", "MODEL_CARD.md", "model_card.json"):
        assert f'"{name}"' in records or f'\\"{name}\\"' in records, name
