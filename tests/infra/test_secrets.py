"""The one secret pattern: what is masked in text (logs, webhooks) and kept out of W&B config."""

from __future__ import annotations

import logging

from phase2.infra.secrets import MASK, RedactingFilter, redact, secret_values, without_secret_keys


def test_env_values_named_like_credentials_are_masked(monkeypatch):
    for name, value in {
        "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
        "PHASE2_DB_CREDENTIAL": "credential-value",
        "SOME_PASSWD": "passwd-value",
        "PHASE2_NOTIFY_WEBHOOK": "https://hooks.example/T0/B1",
        "PHASE2_RUN_NAME": "not-a-secret",
    }.items():
        monkeypatch.setenv(name, value)
    text = redact("aws-secret-value credential-value passwd-value https://hooks.example/T0/B1 not-a-secret")
    assert text == f"{MASK} {MASK} {MASK} {MASK} not-a-secret"
    assert redact("s3 at http://user:pa55word@s3.example/bucket") == f"s3 at http://{MASK}@s3.example/bucket"


def test_secret_values_longest_first_and_short_values_ignored():
    env = {"A_TOKEN": "abcd", "B_TOKEN": "abcdefgh", "C_KEY": "abc", "PATH": "/usr/bin"}
    assert secret_values(env) == ["abcdefgh", "abcd"]


def test_without_secret_keys_drops_secret_like_keys_at_any_depth(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-abcdef")
    config = {
        "lr0": 0.1,
        "aws_secret_access_key": "x",
        "db_credential": "y",
        "nested": {"api_key": "y", "imgsz": 64, "note": "key wandb-key-abcdef"},
    }
    assert without_secret_keys(config) == {"lr0": 0.1, "nested": {"imgsz": 64, "note": f"key {MASK}"}}


def test_redacting_filter_masks_formatted_records(monkeypatch, caplog):
    monkeypatch.setenv("PHASE2_API_TOKEN", "tok-0123456789")
    logger = logging.getLogger("phase2.test-secrets")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("calling with %s", "tok-0123456789")
    assert caplog.records[-1].getMessage() == f"calling with {MASK}"
