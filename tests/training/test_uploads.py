"""Checkpoint uploads during training: low priority, and each version sent once (real SeaweedFS)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from phase2.infra.files import sha256_file
from phase2.training.uploads import CheckpointUploader


class PriorityRecordingStore:
    """The real store, wrapped to record the nice value of the thread each upload runs on."""

    def __init__(self, store):
        self.store, self.nice_values, self.copies = store, [], []

    def put_file(self, path: Path, key: str, **kwargs) -> str:
        self.nice_values.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return self.store.put_file(path, key, **kwargs)

    def copy(self, source_key: str, key: str, **kwargs) -> str:
        self.copies.append((source_key, key))
        return self.store.copy(source_key, key, **kwargs)

    def uri(self, key: str) -> str:
        return self.store.uri(key)


def upload_once(uploader: CheckpointUploader) -> None:
    uploader.poll()
    uploader.poll()  # unchanged for one poll: submitted
    uploader.pool.submit(lambda: None).result()  # the upload before it has finished


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_uploads_run_at_nice_19_and_training_thread_keeps_its_priority(tmp_path, object_store):
    own_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"epoch": 0}, weights / "last.pt")
    store = PriorityRecordingStore(object_store)
    uploader = CheckpointUploader(store, "runs/p/train", weights)
    upload_once(uploader)
    uploader.finish()
    assert store.nice_values == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own_nice  # only the uploader's thread
    assert object_store.list("runs/p/train/") == ["runs/p/train/weights/last.pt"]


def test_already_uploaded_only_for_the_version_in_the_store(tmp_path, object_store):
    """The final upload skips a file whose current version the uploader sent (the 26 MB epoch0.pt
    of a run); a file rewritten since is sent again."""
    weights = tmp_path / "weights"
    weights.mkdir()
    last = weights / "last.pt"
    torch.save({"epoch": 0}, last)
    uploader = CheckpointUploader(object_store, "runs/v/train", weights)
    upload_once(uploader)
    stored = tmp_path / "stored.pt"
    object_store.get_file("runs/v/train/weights/last.pt", stored)
    assert uploader.already_uploaded(last) == sha256_file(last) == sha256_file(stored)

    torch.save({"epoch": 1}, last)  # Ultralytics rewrites last.pt: the store holds the old one
    assert uploader.already_uploaded(last) is None
    assert uploader.already_uploaded(weights / "best.pt") is None  # never uploaded
    uploader.finish()


def test_best_pt_equal_to_last_pt_is_copied_in_the_store_not_sent_again(tmp_path, object_store):
    """An improving epoch writes one checkpoint to last.pt and best.pt: the second is a
    server-side copy (one upload, not two), and the copy holds exactly those bytes."""
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"epoch": 3, "pad": torch.zeros(1000)}, weights / "last.pt")
    (weights / "best.pt").write_bytes((weights / "last.pt").read_bytes())
    store = PriorityRecordingStore(object_store)
    uploader = CheckpointUploader(store, "runs/c/train", weights)
    upload_once(uploader)
    uploader.finish()
    # best.pt is uploaded first (sorted names), last.pt is then its copy
    assert len(store.nice_values) == 1 and store.copies == [
        ("runs/c/train/weights/best.pt", "runs/c/train/weights/last.pt")
    ]
    for name in ("best.pt", "last.pt"):
        got = object_store.get_file(f"runs/c/train/weights/{name}", tmp_path / f"stored-{name}")
        assert sha256_file(got) == sha256_file(weights / name)

    torch.save({"epoch": 4}, weights / "last.pt")  # a later, not improving epoch: different bytes, uploaded
    uploader = CheckpointUploader(store, "runs/c/train", weights)
    upload_once(uploader)
    uploader.finish()
    assert store.copies == [("runs/c/train/weights/best.pt", "runs/c/train/weights/last.pt")]


def test_uploads_wait_out_the_interval_then_send_the_newest_version(tmp_path, object_store):
    """With `min_interval_s`, nothing is sent before the interval has passed since the start; versions
    written within it are not sent; the round after it sends the newest one only; the next waits a
    whole interval again, and flush sends the newest version at once."""

    def save(epoch: int) -> None:
        torch.save({"epoch": epoch}, weights / "last.pt")
        os.utime(weights / "last.pt", ns=(epoch * 10**9, epoch * 10**9))  # a new (size, mtime) each save

    def stored_epoch() -> int | None:
        if not object_store.exists("runs/i/train/weights/last.pt"):
            return None
        got = object_store.get_file("runs/i/train/weights/last.pt", tmp_path / "stored.pt")
        return torch.load(got, weights_only=True)["epoch"]

    weights = tmp_path / "weights"
    weights.mkdir()
    store = PriorityRecordingStore(object_store)
    uploader = CheckpointUploader(store, "runs/i/train", weights, min_interval_s=1.5)
    for epoch in (1, 2):  # within the first interval: nothing sent
        save(epoch)
        upload_once(uploader)
    assert (len(store.nice_values), stored_epoch()) == (0, None)
    time.sleep(1.6)
    upload_once(uploader)
    assert (len(store.nice_values), stored_epoch()) == (1, 2)  # the round after it: the newest version only
    save(3)  # within the next interval: waits
    upload_once(uploader)
    assert (len(store.nice_values), stored_epoch()) == (1, 2)

    save(4)  # then training fails: flush sends the newest version without waiting
    uploader.poll(flush=True)
    uploader.finish()
    assert (len(store.nice_values), stored_epoch()) == (2, 4)
