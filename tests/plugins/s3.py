"""A real SeaweedFS for the test session, and a fresh bucket on it per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config

from phase2.infra.seaweedfs import SeaweedFS, SeaweedPorts
from phase2.infra.settings import S3Settings
from phase2.registry.storage import ObjectStore


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory) -> Iterator[SeaweedFS]:
    """One `weed mini` on free ports in a temp dir; stopped (and reaped) at session end."""
    server = SeaweedFS(tmp_path_factory.mktemp("s3-state"), ports=SeaweedPorts.free())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def object_store(seaweedfs, monkeypatch) -> Iterator[ObjectStore]:
    """A new, uniquely named bucket; the environment points S3Settings.from_env() at it."""
    env = {**seaweedfs.env(), "PHASE2_S3_BUCKET": f"t-{uuid.uuid4().hex[:12]}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = S3Settings.from_env()
    store = ObjectStore(settings)
    store.ensure_bucket()
    yield store
    drop_bucket(settings)


def drop_bucket(settings: S3Settings) -> None:
    """Delete a test bucket and its objects. `weed mini` gives every bucket volumes of its own (a
    collection): a session that keeps them all runs out ("No writable volumes") after ~100 buckets."""
    key_id, secret = settings.access_key_id, settings.secret_access_key
    client = boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        aws_access_key_id=key_id.get_secret_value() if key_id else None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=settings.bucket, Key=item["Key"])
        client.delete_bucket(Bucket=settings.bucket)
    except Exception:  # a test that stopped the server or broke the bucket on purpose: nothing to free
        pass
