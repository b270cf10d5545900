"""A real SeaweedFS for the test session, and a fresh bucket on it per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

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
def object_store(seaweedfs, monkeypatch) -> ObjectStore:
    """A new, uniquely named bucket; the environment points S3Settings.from_env() at it."""
    env = {**seaweedfs.env(), "PHASE2_S3_BUCKET": f"t-{uuid.uuid4().hex[:12]}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = ObjectStore(S3Settings.from_env())
    store.ensure_bucket()
    return store
