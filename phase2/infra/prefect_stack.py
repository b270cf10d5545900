"""The local Prefect stack: a real `prefect server start` (SQLite), a process work pool, the
deployments from prefect.yaml, and a worker; plus `up`/`down` for the whole local stack.

Every process gets PREFECT_HOME under the state dir and its own session/process group, and is
recorded (pid, create time) in <state>/prefect/<name>.pid.json, so `down` stops exactly what `up`
started, and nothing lands in the user's home.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from phase2.infra.files import atomic_write_text
from phase2.infra.processes import ProcessRecord, process_alive, process_created_at, record_path, stop_process_group
from phase2.infra.seaweedfs import SeaweedFS
from phase2.infra.settings import PROJECT_ROOT, configure_environment, state_dir

DEFAULT_PORT = 4200
DEFAULT_POOL = "phase2-process"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _prefect_bin() -> str:
    return str(Path(sys.executable).with_name("prefect"))


class ServiceRecord(ProcessRecord):
    """What <state>/prefect/<name>.pid.json says about a background process we started."""

    port: int | None = None
    pool: str | None = None


class _Managed:
    """A background process recorded in <state>/prefect/<name>.pid.json."""

    name = "process"

    def __init__(self, state: Path | None = None) -> None:
        self.state = (state or state_dir()).resolve()
        self.root = self.state / "prefect"
        self.root.mkdir(parents=True, exist_ok=True)
        self.record_file = record_path(self.root, self.name)
        self.log_file = self.root / f"{self.name}.log"
        # True once start() launched the process (rather than reusing a running one).
        self.launched = False

    def record(self) -> ServiceRecord | None:
        """The record of the running process; None when there is none, it has exited, or its pid
        now belongs to another process (a record without a create time can't tell: not ours)."""
        try:
            rec = ServiceRecord.model_validate_json(self.record_file.read_text())
        except (OSError, ValueError):
            return None
        return rec if rec.created_at is not None and process_alive(rec.pid, rec.created_at) else None

    def is_running(self) -> bool:
        return self.record() is not None

    def _spawn(
        self, command: list[str], env: dict[str, str], *, port: int | None = None, pool: str | None = None
    ) -> int:
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(
                command,
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        record = ServiceRecord(
            pid=proc.pid, created_at=process_created_at(proc.pid), command=command, port=port, pool=pool
        )
        atomic_write_text(self.record_file, record.model_dump_json())
        self.launched = True
        return proc.pid

    def stop(self) -> None:
        rec = self.record()
        if rec:
            stop_process_group(rec.pid, grace=10.0)
        self.record_file.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / f".{self.name}.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield


class PrefectServer(_Managed):
    name = "server"

    def __init__(self, state: Path | None = None, *, port: int | None = None, ui: bool = True) -> None:
        super().__init__(state)
        self.requested_port = port or int(os.environ.get("PHASE2_PREFECT_PORT", DEFAULT_PORT))
        self.ui = ui

    @property
    def port(self) -> int:
        rec = self.record()
        return rec.port if rec and rec.port else self.requested_port

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.api_url}

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def start(self, timeout: float = 90.0) -> PrefectServer:
        with self._lock():
            if not self.is_running():
                env = {**os.environ, **configure_environment(self.state)}
                env.pop("PREFECT_API_URL", None)
                # Its own database under its state dir, whatever PREFECT_HOME the caller has.
                env["PREFECT_HOME"] = str(self.state / "prefect")
                # A queued run re-checks the deployment's concurrency slot every N s (default 30).
                env.setdefault("PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS", "5")
                command = [_prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(self.requested_port)]
                if not self.ui:
                    command.append("--no-ui")
                self._spawn(command, env, port=self.requested_port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return self
            if not self.is_running():
                raise RuntimeError(f"prefect server exited; see {self.log_file}")
            time.sleep(0.5)
        raise TimeoutError(f"prefect server not healthy at {self.api_url} after {timeout:.0f} s; see {self.log_file}")


class PrefectWorker(_Managed):
    name = "worker"

    def __init__(self, state: Path | None = None, *, pool: str = DEFAULT_POOL) -> None:
        super().__init__(state)
        self.pool = pool

    def start(self, env: dict[str, str]) -> PrefectWorker:
        with self._lock():
            if not self.is_running():
                self._spawn(
                    [_prefect_bin(), "worker", "start", "--pool", self.pool, "--install-policy", "never"],
                    env,
                    pool=self.pool,
                )
        return self


class PrefectUnreachable(RuntimeError):
    """No Prefect API to talk to; the message names PREFECT_API_URL and how to start the stack."""


def _unreachable_reason(api_url: str, timeout: float) -> str | None:
    """None when a server answers at ``api_url`` (any HTTP status: Prefect Cloud may want a key
    for /health), else why not."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(exc).__name__


def reachable_prefect_api(state: Path | None = None, *, timeout: float = 2.0) -> str:
    """The Prefect API to use: PREFECT_API_URL when set, else the local stack's running server.

    Raises :class:`PrefectUnreachable` (within about ``timeout`` s) when that server does not
    answer, or when PREFECT_API_URL is unset and the local stack is not running, rather than
    letting Prefect fall back to a temporary in-process server.
    """
    url = os.environ.get("PREFECT_API_URL")
    if url:
        if reason := _unreachable_reason(url, timeout):
            raise PrefectUnreachable(
                f"PREFECT_API_URL={url}: Prefect server not reachable ({reason}) "
                "(start the local stack with `phase2 up`, or fix PREFECT_API_URL)"
            )
        return url
    server = PrefectServer(state)
    if server.is_running() and _unreachable_reason(server.api_url, timeout) is None:
        return server.api_url
    raise PrefectUnreachable(
        f"PREFECT_API_URL is not set and the local stack ({server.state}) is not running "
        "(start it with `phase2 up`, or export PREFECT_API_URL=http://HOST:4200/api for another server)"
    )


def run_prefect(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a `prefect` CLI command; raise with its output on failure."""
    proc = subprocess.run(
        [_prefect_bin(), *args], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return proc


class LocalStack:
    """SeaweedFS + Prefect server + process pool + deployments + worker, under one state dir."""

    def __init__(
        self,
        state: Path | None = None,
        *,
        prefect_port: int | None = None,
        ui: bool = True,
        pool: str = DEFAULT_POOL,
        seaweedfs: SeaweedFS | None = None,
    ) -> None:
        self.state = (state or state_dir()).resolve()
        self.s3 = seaweedfs or SeaweedFS(self.state)
        self.server = PrefectServer(self.state, port=prefect_port, ui=ui)
        self.worker = PrefectWorker(self.state, pool=pool)
        self.pool = pool

    def env(self) -> dict[str, str]:
        """Environment for anything that talks to this stack (CLI, worker, flow runs)."""
        # WANDB_SERVICE points at this process's W&B service: flow runs must start their own, or
        # a run killed mid-flight keeps its W&B id "in use" there and its re-run can't resume it.
        inherited = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
        return {
            **inherited,
            **configure_environment(self.state),
            **self.s3.env(),
            **self.server.env(),
            "PHASE2_WORK_POOL": self.pool,
            "PHASE2_PROJECT_DIR": str(PROJECT_ROOT),
        }

    def up(self, *, deploy: bool = True) -> dict[str, str]:
        self.s3.start()
        self.server.start()
        env = self.env()
        if deploy:
            self.deploy(env)
        self.worker.start(env)
        return env

    def deploy(self, env: dict[str, str] | None = None) -> None:
        """Pool and deployments, idempotently (create --overwrite; deploy updates in place)."""
        env = env or self.env()
        run_prefect(
            [
                "work-pool",
                "create",
                self.pool,
                "--type",
                "process",
                "--overwrite",
                "--base-job-template",
                str(PROJECT_ROOT / "deployments" / "process.json"),
            ],
            env,
        )
        run_prefect(["deploy", "--all"], env, timeout=600)

    def down(self) -> None:
        self.worker.stop()
        self.server.stop()
        self.s3.stop()

    def stop_started(self) -> list[str]:
        """Stop only the services this object's ``up`` launched; ones that were already running
        (someone's `phase2 up`, another run) are left running. Returns the names stopped."""
        stopped = []
        for name, service in (("worker", self.worker), ("prefect server", self.server), ("SeaweedFS", self.s3)):
            if service.launched:
                service.stop()
                service.launched = False
                stopped.append(name)
        return stopped

    def status(self) -> dict[str, object]:
        return {
            "state_dir": str(self.state),
            "s3": {"running": self.s3.is_running(), "endpoint": self.s3.endpoint, "bucket": self.s3.bucket},
            "prefect_server": {
                "running": self.server.is_running(),
                "api": self.server.api_url,
                "ui": self.server.api_url.removesuffix("/api"),
            },
            "worker": {"running": self.worker.is_running(), "pool": self.pool},
        }
