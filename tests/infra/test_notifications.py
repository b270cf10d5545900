"""Webhook notifications against a real local HTTP receiver. The end-to-end failure and
promotion messages through the real deployment are in tests/pipeline/test_scheduling.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from uuid import uuid4

from phase2.infra import notifications
from phase2.infra.notifications import Notification, flow_run_hook, send, webhook_url


def _state(kind: str, message: str = "", result=None):
    return SimpleNamespace(
        type=SimpleNamespace(value=kind.upper()),
        message=message,
        is_completed=lambda: kind == "completed",
        is_crashed=lambda: kind == "crashed",
        result=lambda raise_on_failure=False: result,
    )


def _flow_run(**parameters):
    return SimpleNamespace(id=uuid4(), name="brave-otter", deployment_id=uuid4(), parameters=parameters)


def test_messages_are_json_and_never_carry_secrets(webhook_receiver, monkeypatch):
    secret = "s3cr3t-AWS-value-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-abcdef")
    monkeypatch.setenv(notifications.WEBHOOK_ENV, webhook_receiver.url)
    state = _state(
        "failed", f"S3 refused key {secret} at http://user:pa55word@s3.example/bucket; W&B key wandb-key-abcdef"
    )
    flow_run_hook(None, _flow_run(data="/d/data.yaml", model_name="m", recipe={"x": 1}), state)
    message = webhook_receiver.wait_for("failed")
    raw = webhook_receiver.raw[-1].decode()
    for leaked in (secret, "wandb-key-abcdef", "pa55word", webhook_receiver.url):
        assert leaked not in raw
    assert "S3 refused key *** at http://***@s3.example/bucket" in message["message"]
    assert message["parameters"] == {"data": "/d/data.yaml", "model_name": "m"}  # shown subset only
    assert message["state"] == "FAILED" and message["text"] == "phase2 run brave-otter failed"


def test_credential_variables_are_masked_like_in_wandb(webhook_receiver, monkeypatch):
    """One secret pattern: a *_CREDENTIAL variable (kept out of W&B) is masked in webhooks too."""
    monkeypatch.setenv("PHASE2_REGISTRY_CREDENTIAL", "registry-credential-0123")
    monkeypatch.setenv(notifications.WEBHOOK_ENV, webhook_receiver.url)
    flow_run_hook(None, _flow_run(), _state("failed", "login with registry-credential-0123 refused"))
    webhook_receiver.wait_for("failed")
    raw = webhook_receiver.raw[-1].decode()
    assert "registry-credential-0123" not in raw and "login with *** refused" in raw


def test_completion_notifies_only_a_promotion(webhook_receiver, monkeypatch):
    monkeypatch.setenv(notifications.WEBHOOK_ENV, webhook_receiver.url)
    flow_run_hook(None, _flow_run(), _state("completed", result={"promoted": False, "model": "m:v2"}))
    flow_run_hook(None, _flow_run(), _state("completed", result={"status": "skipped"}))
    flow_run_hook(None, _flow_run(), _state("completed", result={"promoted": True, "model": "m:v3"}))
    flow_run_hook(None, _flow_run(), _state("crashed", "process exited -9"))
    assert [(m["event"], m["model"]) for m in webhook_receiver.messages] == [("promoted", "m:v3"), ("crashed", None)]


def test_unreachable_webhook_is_logged_not_raised(monkeypatch, caplog):
    from phase2.infra.prefect_stack import free_port

    url = f"http://127.0.0.1:{free_port()}/hook?token=tok-123456"
    with caplog.at_level(logging.WARNING, logger="phase2.notifications"):
        assert send(Notification(event="failed", text="x"), url=url) is False
    assert "not delivered" in caplog.text and "tok-123456" not in caplog.text


def test_webhook_url_from_env_else_secret_block(webhook_secret_block, monkeypatch):
    assert webhook_url() == webhook_secret_block.url
    monkeypatch.setenv(notifications.WEBHOOK_ENV, "http://127.0.0.1:9/env-wins")
    assert webhook_url() == "http://127.0.0.1:9/env-wins"
