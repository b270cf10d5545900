"""Checkpoint uploads during training: background, low priority, each version once."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from phase2.infra.files import sha256_file


def checkpoint_is_complete(path: Path) -> bool:
    """torch.save writes a zip; a torn write (kill -9 mid-write) lacks the central directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            return bool(zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _upload_at_low_priority() -> None:
    """Runs first in the uploader thread: on Linux a thread has its own nice value, and the
    threads boto3 starts for a multipart upload inherit it. Training keeps the cores; copying,
    hashing and sending a checkpoint take what training leaves idle (the next poll's upload
    still lands within an epoch on a busy machine: nice 19 still gets a share)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def file_version(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns): changes whenever Ultralytics rewrites the file; None if it is absent."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


class CheckpointUploader:
    """Uploads checkpoints as they appear, in a low-priority background thread, without blocking
    training.

    A file is uploaded once its size and mtime are unchanged for one poll and it is a complete
    zip; it is first copied aside so training can overwrite it during the upload. What was
    uploaded is remembered by (size, mtime) and sha256, so the final upload skips unchanged files.
    Uploads go in rounds at least `min_interval_s` apart, counted from the uploader's start (the
    child's spawn); a file written meanwhile waits for the next round, which sends its newest version
    (`flush` sends it now).
    """

    def __init__(self, store, prefix: str, weights_dir: Path, *, min_interval_s: float = 0.0):
        self.store, self.prefix, self.weights_dir = store, prefix, weights_dir
        self.min_interval_s = min_interval_s
        self._last_round = time.monotonic()
        self.pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ckpt-upload", initializer=_upload_at_low_priority
        )
        self.seen: dict[str, tuple[int, int]] = {}
        self.pending: dict[str, tuple[int, int]] = {}
        self.uploaded: dict[str, str] = {}
        # file name -> ((size, mtime_ns), sha256) of the bytes now in the store
        self.uploaded_versions: dict[str, tuple[tuple[int, int], str]] = {}
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def poll(self, *, flush: bool = False) -> None:
        """Submit the files that changed and then stayed unchanged for one poll, if a round is due;
        `flush`: submit every changed file now (training failed: send its newest checkpoint)."""
        if not self.store or not self.weights_dir.exists():
            return
        now = time.monotonic()
        due = flush or now - self._last_round >= self.min_interval_s
        submitted = False
        for path in sorted(self.weights_dir.glob("*.pt")):
            if path.name.startswith(".upload-"):
                continue  # our own snapshot of a file being uploaded (pathlib's * matches dotfiles)
            sig = file_version(path)
            if sig is None or self.seen.get(path.name) == sig:
                continue
            if (self.pending.get(path.name) == sig or flush) and due:
                self.seen[path.name] = sig
                self.pending.pop(path.name, None)
                self.pool.submit(self._upload, path)
                submitted = True
            elif self.pending.get(path.name) != sig:
                self.pending[path.name] = sig
        if submitted:
            self._last_round = now

    def _upload(self, path: Path) -> None:
        snapshot = path.with_name(f".upload-{path.name}")
        try:
            before = file_version(path)
            snapshot.write_bytes(path.read_bytes())
            if not checkpoint_is_complete(snapshot):
                return  # being written; the next poll sees a new mtime
            key = f"{self.prefix}/weights/{path.name}"
            digest = sha256_file(snapshot)
            twin = self._stored_twin(path.name, digest)
            if twin is not None:  # best.pt of an improving epoch is last.pt's very bytes: copy in S3
                self.store.copy(f"{self.prefix}/weights/{twin}", key, sha256=digest)
            else:
                self.store.put_file(snapshot, key, sha256=digest)
            with self._lock:
                self.uploaded[path.name] = self.store.uri(key)
                if before is not None and file_version(path) == before:  # the snapshot is that version
                    self.uploaded_versions[path.name] = (before, digest)
                else:
                    self.uploaded_versions.pop(path.name, None)
        except Exception as exc:  # an upload failure must not stop training; retried at the end
            self.errors.append(f"{path.name}: {exc}")
            self.seen.pop(path.name, None)
        finally:
            snapshot.unlink(missing_ok=True)

    def _stored_twin(self, name: str, digest: str) -> str | None:
        """Another file whose bytes in the store are ``digest`` (Ultralytics writes one serialized
        checkpoint to both last.pt and best.pt when an epoch improves)."""
        with self._lock:
            return next((n for n, (_, d) in self.uploaded_versions.items() if n != name and d == digest), None)

    def already_uploaded(self, path: Path) -> str | None:
        """sha256 of `path` if the store holds exactly its current version (after finish())."""
        version = self.uploaded_versions.get(path.name)
        return version[1] if version and version[0] == file_version(path) else None

    def finish(self, *, cancel_pending: bool = False) -> None:
        """Wait for the uploads; `cancel_pending` drops those not started yet (training ended
        well: the final upload sends the files' last versions anyway)."""
        self.pool.shutdown(wait=True, cancel_futures=cancel_pending)
