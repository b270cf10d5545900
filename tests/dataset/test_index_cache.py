"""The warm validation cache (git-index-like): a file whose stat key changed is re-read and
re-hashed; an unchanged key is trusted; a corrupt cache is a cold run, not a crash."""

from __future__ import annotations

import hashlib
import os
import shutil
import time

import pandas as pd
import pytest

from phase2.dataset.index_cache import INDEX_FILE, FileIndex
from phase2.dataset.validation import validate_dataset

PAST_NS = (time.time_ns() - 3600 * 10**9) // 10**9 * 10**9  # an hour ago: outside the racy window


def _write(path, data: bytes, mtime_ns: int) -> None:
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _indexed(tmp_path):
    """A file written an hour ago, hashed into a saved index."""
    f = tmp_path / "a.bin"
    _write(f, b"first content", PAST_NS)
    index = FileIndex.load(tmp_path / "cache")
    assert index.sha256(f) == _sha(b"first content")
    index.save()
    return f


def test_unchanged_stat_key_is_trusted_without_reading(tmp_path):
    """The control for the tests below: with size, mtime and inode unchanged the index answers
    from its entry (even for content edited behind its back, as git's index would)."""
    f = _indexed(tmp_path)
    with open(f, "r+b") as fh:  # same inode, same size
        fh.write(b"FIRST")
    os.utime(f, ns=(PAST_NS, PAST_NS))
    warm = FileIndex.load(tmp_path / "cache")
    assert warm.sha256(f) == _sha(b"first content") and warm.rehashed == 0


def test_same_size_new_mtime_is_rehashed(tmp_path):
    f = _indexed(tmp_path)
    inode = f.stat().st_ino
    with open(f, "r+b") as fh:
        fh.write(b"FIRST")
    os.utime(f, ns=(PAST_NS + 1, PAST_NS + 1))  # one nanosecond later
    assert f.stat().st_ino == inode and f.stat().st_size == len(b"first content")
    warm = FileIndex.load(tmp_path / "cache")
    assert warm.sha256(f) == _sha(b"FIRST content") and warm.rehashed == 1


def test_same_mtime_different_inode_is_rehashed(tmp_path):
    f = _indexed(tmp_path)
    replacement = tmp_path / "a.tmp"
    _write(replacement, b"other content", PAST_NS)  # same size, same mtime
    old_inode = f.stat().st_ino
    os.replace(replacement, f)  # an atomic save, as editors and tools do
    assert f.stat().st_ino != old_inode and f.stat().st_mtime_ns == PAST_NS
    warm = FileIndex.load(tmp_path / "cache")
    assert warm.sha256(f) == _sha(b"other content") and warm.rehashed == 1


def test_racily_clean_file_is_rehashed(tmp_path):
    """Hashed in the same moment it was written: a later same-size write in that timestamp tick
    would leave the key unchanged, so such an entry is never trusted (git's racy-clean rule)."""
    f = tmp_path / "a.bin"
    f.write_bytes(b"first content")
    index = FileIndex.load(tmp_path / "cache")
    index.sha256(f)
    mtime = f.stat().st_mtime_ns
    with open(f, "r+b") as fh:
        fh.write(b"FIRST")
    os.utime(f, ns=(mtime, mtime))
    assert index.sha256(f) == _sha(b"FIRST content")


@pytest.fixture
def dataset_copy(real_dataset, tmp_path):
    root = tmp_path / "site-inspection"
    shutil.copytree(real_dataset, root)  # copy2: the real files' (old) mtimes
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def test_warm_validation_sees_an_image_replaced_with_same_size_and_mtime(dataset_copy, tmp_path):
    cache = tmp_path / "cache"
    data_yaml = dataset_copy / "data.yaml"
    validate_dataset(data_yaml, cache_dir=cache)
    image = sorted((dataset_copy / "val" / "images").glob("*.jpg"))[0]
    st = image.stat()
    data = bytearray(image.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)  # other scan data, same size
    replacement = image.with_suffix(".tmp")
    _write(replacement, bytes(data), st.st_mtime_ns)
    os.replace(replacement, image)
    assert image.stat().st_size == st.st_size and image.stat().st_mtime_ns == st.st_mtime_ns
    warm = validate_dataset(data_yaml, cache_dir=cache)
    cold = validate_dataset(data_yaml)
    row = warm.files_table().set_index("image").loc[str(image)]
    assert row["sha256"] == _sha(bytes(data))
    assert warm.model_dump() == cold.model_dump()


def test_warm_validation_sees_a_label_edit_with_same_size(dataset_copy, tmp_path):
    cache = tmp_path / "cache"
    data_yaml = dataset_copy / "data.yaml"
    first = validate_dataset(data_yaml, cache_dir=cache)
    label = next(p for p in sorted((dataset_copy / "test" / "labels").glob("*.txt")) if p.read_text().startswith("0 "))
    st = label.stat()
    _write(label, b"1" + label.read_bytes()[1:], st.st_mtime_ns + 10**9)  # class 0 -> 1, same size
    warm = validate_dataset(data_yaml, cache_dir=cache)
    counts = {(c.split, c.class_name): c.instances for c in warm.classes}
    before = {(c.split, c.class_name): c.instances for c in first.classes}
    assert counts[("test", "rock_toe")] == before[("test", "rock_toe")] - 1
    assert counts[("test", "slope_drain")] == before[("test", "slope_drain")] + 1


def test_corrupt_cache_files_are_a_cold_run(dataset_copy, tmp_path):
    cache = tmp_path / "cache"
    data_yaml = dataset_copy / "data.yaml"
    cold = validate_dataset(data_yaml)
    validate_dataset(data_yaml, cache_dir=cache)
    cached = [cache / INDEX_FILE, *cache.glob("image-facts-*.json"), *(cache / "results").glob("*.json")]
    assert len(cached) == 3
    for n, path in enumerate(cached):  # torn JSON, wrong types, wrong shape
        path.write_bytes([b'{"truncated', b'{"/x": [1, 2, "three"]}', b'{"report": {"findings": 7}, "files": 3}'][n])
    again = validate_dataset(data_yaml, cache_dir=cache)
    assert again.model_dump() == cold.model_dump()
    pd.testing.assert_frame_equal(again.files_table(), cold.files_table())
    index = FileIndex.load(cache)
    assert len(index.entries) == len(cold.files_table())  # rewritten whole by the cold run
