"""Starting and watching real phase2 flow runs from tests: through a deployment (`prefect
deployment run`), or in-process in a child Python with its own state dir."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from phase2.infra.processes import record_path, write_record
from phase2.infra.settings import PROJECT_ROOT
from tests.plugins.data import TINY_RECIPE

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient

PREFECT = str(Path(sys.executable).with_name("prefect"))
# Variables a flow process must not inherit from the test session (it gets its own state dir).
_SESSION_PREFIXES = ("WANDB_", "YOLO_", "PREFECT_", "PHASE2_", "AWS_")
T = TypeVar("T")


# --- through a deployment ---------------------------------------------------------------------


def trigger(deployment: str, params: dict[str, str], watch_timeout: int | None = 600) -> list[str]:
    """`prefect deployment run` command; it waits for the end unless watch_timeout is None."""
    command = [PREFECT, "deployment", "run", f"phase2/{deployment}"]
    for key, value in params.items():
        command += ["--param", f"{key}={value}"]
    if watch_timeout is None:
        return command
    return command + ["--watch", "--watch-interval", "1", "--watch-timeout", str(watch_timeout)]


def flow_run_id(output: str) -> str:
    """The flow run id `prefect deployment run` printed."""
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, output[-3000:]
    return match.group(1)


def wait_until(predicate: Callable[[], T], timeout: float, what: str, poll: float = 0.5) -> T:
    """Poll ``predicate`` every ``poll`` s until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- in a child process -----------------------------------------------------------------------


@dataclass
class FlowProcess:
    """A phase2 flow run in its own process (own state dir) against one Prefect server."""

    proc: subprocess.Popen[bytes]
    state: Path
    output: Path

    def wait(self, timeout: float) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        return code, self.output.read_text(errors="replace")


def flow_env(state: Path, api_url: str, s3_env: dict[str, str], **extra: str) -> dict[str, str]:
    """The environment of a flow process: this one's, less the session's tool settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SESSION_PREFIXES)}
    return {**env, "PHASE2_STATE_DIR": str(state), "PREFECT_API_URL": api_url, **s3_env, **extra}


def start_flow(state: Path, env: dict[str, str], **parameters: Any) -> FlowProcess:
    """`phase2(**parameters)` in a child process; stdout+stderr go to <state>/../flow-<n>.out."""
    state.mkdir(parents=True, exist_ok=True)
    output = state.parent / f"flow-{uuid.uuid4().hex[:6]}.out"
    script = (
        "from phase2.infra.settings import configure_environment; configure_environment()\n"
        "import json, sys\nfrom flows.train import phase2\n"
        f"result = phase2(**json.loads({json.dumps(json.dumps(parameters))}))\n"
        "print('FLOW RESULT', json.dumps(result, default=str))\n"
    )
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    # Recorded like every process we start, so a CI clean-up finds it if a test leaves it behind.
    write_record(record_path(state.parent, output.stem), proc.pid, [sys.executable, "-c", "<phase2 flow: start_flow>"])
    return FlowProcess(proc, state, output)


# Recipe sections for tests whose subject is not the stages after registration's copy: no ONNX
# export + parity pass, no label review (each a few CPU-s a flow, multiplied by concurrent flows).
NO_EXPORT_NO_REVIEW: dict[str, Any] = {"export": {"formats": []}, "label_review": {"enabled": False}}


def tiny_recipe_file(folder: Path, sections: dict[str, Any] | None = None, **train: Any) -> Path:
    """TINY_RECIPE (with ``train`` overrides and whole recipe ``sections``) as a recipe file in ``folder``."""
    recipe = {**TINY_RECIPE, **(sections or {}), "train": {**TINY_RECIPE["train"], **train}}
    path = folder / "tiny-recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@contextmanager
def prefect_client(api_url: str) -> Iterator[SyncPrefectClient]:
    """A sync Prefect client for the server at ``api_url`` (not the session's)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        yield client
