"""A real Prefect server + process worker + deployments, sharing the session's SeaweedFS."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from phase2.infra.prefect_stack import LocalStack, free_port


@pytest.fixture(scope="session")
def local_stack(seaweedfs, phase2_state) -> Iterator[LocalStack]:
    """Server (no UI, free port), pool, deployments from prefect.yaml, worker; all stopped after."""
    stack = LocalStack(phase2_state, prefect_port=free_port(), ui=False, pool="phase2-test", seaweedfs=seaweedfs)
    try:
        env = stack.up()
        os.environ.update(
            {
                k: env[k]
                for k in (
                    "PREFECT_API_URL",
                    "PHASE2_S3_ENDPOINT",
                    "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY",
                    "PHASE2_S3_BUCKET",
                )
            }
        )
        yield stack
    finally:
        stack.worker.stop()
        stack.server.stop()
