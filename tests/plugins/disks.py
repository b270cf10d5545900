"""Small real disks for fault tests: a tmpfs of a given size (we run as root in CI)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    """A small tmpfs at `path`; skips the test where mount is refused, fails under CI (root there:
    a fault test that cannot make its fault must not pass silently)."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        reason = f"cannot mount a tmpfs here ({mount.stderr.strip() or 'not permitted'})"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_to_percent_free(disk: Path, percent_free: float, filler: str = "filler") -> Path:
    """Allocate a file so that `percent_free` % of `disk` stays free (replacing an earlier filler)."""
    path = disk / filler
    path.unlink(missing_ok=True)
    usage = shutil.disk_usage(disk)
    keep = int(usage.total * percent_free / 100)
    with open(path, "wb") as out:
        os.posix_fallocate(out.fileno(), 0, max(usage.free - keep, 1))
    return path
