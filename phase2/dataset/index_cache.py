"""A warm cache for dataset reads, keyed like git's index.

Two layers, both in the state dir (never in the dataset), both untrusted when read (a corrupt or
foreign file means a cold run, never a crash):

- :class:`FileIndex`: (path, size, mtime_ns, inode, device) -> sha256 of the content. A file whose
  stat key changed in any of those is re-read and re-hashed. Like git's "racily clean" rule, an
  entry whose mtime is within :data:`RACY_WINDOW_NS` of when it was hashed is not trusted: a
  write in the same timestamp tick as our read would leave the key unchanged.
- :class:`ResultMemo`: a whole result (e.g. a validation report) under a fingerprint of every
  input's stat key, the parameters and the code that computed it (:func:`stat_fingerprint`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from phase2.infra.files import atomic_write_text, sha256_bytes, sha256_file

INDEX_FILE = "file-index-v1.json"
RACY_WINDOW_NS = 2_000_000_000  # coarser than any filesystem's mtime tick we expect (FAT: 2 s)
MEMO_KEEP = 16  # newest memoised results kept per cache dir
EMPTY_SHA256 = sha256_bytes(b"")
# path -> (size, mtime_ns, inode, device, hashed_at_ns, sha256)
_Entry = tuple[int, int, int, int, int, str]
_ENTRIES = TypeAdapter(dict[str, _Entry])


def default_cache_dir() -> Path:
    """The warm validation cache of this state dir (validation, dataset versions, listings)."""
    from phase2.infra.settings import state_dir

    return state_dir() / "validation-cache"


def _key(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


class FileIndex:
    """Content hashes of files by stat key; :meth:`save` writes it back atomically when it changed."""

    def __init__(self, path: Path | None = None, entries: dict[str, _Entry] | None = None) -> None:
        self.path = path
        self.entries: dict[str, _Entry] = entries or {}
        self.rehashed = 0  # files read and hashed through this index (a test and benchmark read it)
        self._changed = False

    @classmethod
    def load(cls, cache_dir: Path | None) -> FileIndex:
        """The index in `cache_dir` (None: an in-memory one); unreadable or malformed: empty."""
        if cache_dir is None:
            return cls()
        path = Path(cache_dir) / INDEX_FILE
        try:
            entries = _ENTRIES.validate_json(path.read_bytes())
        except (OSError, ValidationError):
            entries = {}
        return cls(path, entries)

    def lookup(self, path: str) -> tuple[str | None, os.stat_result | None]:
        """(sha256 if the file's stat key is unchanged and not racy, else None; its stat, None if unstat-able)."""
        try:
            st = os.stat(path)
        except OSError:
            return None, None
        entry = self.entries.get(os.path.abspath(path))
        if entry is None or entry[:4] != _key(st) or st.st_mtime_ns >= entry[4] - RACY_WINDOW_NS:
            return None, st
        return entry[5], st

    def remember(self, path: str, st: os.stat_result, sha256: str) -> None:
        """`st` must be taken before the content was read: a later change then shows as a new key."""
        self.entries[os.path.abspath(path)] = (*_key(st), time.time_ns(), sha256)
        self.rehashed += 1
        self._changed = True

    def sha256(self, path: str | os.PathLike[str]) -> str:
        """The content hash of `path` (a missing file hashes as empty content, as dataset versions do)."""
        path = os.fspath(path)
        sha, st = self.lookup(path)
        if sha is not None:
            return sha
        if st is None or not os.path.isfile(path):
            return EMPTY_SHA256
        sha = sha256_file(path)
        self.remember(path, st, sha)
        return sha

    def save(self) -> None:
        if self.path is not None and self._changed:
            atomic_write_text(self.path, json.dumps(self.entries, separators=(",", ":")))
            self._changed = False


@functools.cache
def code_version(package_dir: str) -> str:
    """Hash of a package's sources and the decoders' versions: a memo computed by other code is stale."""
    digest = hashlib.sha256()
    for source in sorted(Path(package_dir).glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    for dist in ("pillow", "simplejpeg", "ultralytics", "numpy"):
        try:
            digest.update(f"{dist}={importlib.metadata.version(dist)}".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{dist}=none".encode())
    return digest.hexdigest()


def stat_fingerprint(files: Iterable[str], extra: Any) -> str | None:
    """sha256 over every file's (path, stat key) and `extra` (JSON-able: parameters, code version).
    None when a file changed within the racy window: its content may still change unseen."""
    racy_after = time.time_ns() - RACY_WINDOW_NS
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
            continue
        if st.st_mtime_ns >= racy_after:
            return None
        digest.update(f"{path}\0{st.st_size} {st.st_mtime_ns} {st.st_ino} {st.st_dev}\n".encode())
    return digest.hexdigest()


class ResultMemo:
    """JSON results by fingerprint in `cache_dir/results/`; the newest :data:`MEMO_KEEP` are kept."""

    def __init__(self, cache_dir: Path) -> None:
        self.dir = Path(cache_dir) / "results"

    def get(self, fingerprint: str) -> Any | None:
        try:
            return json.loads((self.dir / f"{fingerprint}.json").read_bytes())
        except (OSError, ValueError):
            return None

    def put(self, fingerprint: str, result: Any) -> None:
        atomic_write_text(self.dir / f"{fingerprint}.json", json.dumps(result, separators=(",", ":"), default=str))
        try:  # another process may be pruning too
            kept = sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        except FileNotFoundError:
            return
        for old in kept[MEMO_KEEP:]:
            old.unlink(missing_ok=True)
