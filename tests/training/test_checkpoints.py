"""The weights-only loader: its allow-list is exactly what a real Ultralytics training writes, and
a malicious pickle is refused everywhere weights are loaded, also when it comes from the bucket
with a matching sha256. Real training, real SeaweedFS, real torch pickles."""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

import pytest

from phase2.training.checkpoints import YOLO_CHECKPOINT_GLOBALS, UnsafeCheckpoint, load_checkpoint
from phase2.training.fine_tune import checkpoint_state, fine_tune
from phase2.training.identity import RunIdentity
from tests.training.test_fine_tune import TRAIN_ARGS, run_args
from tests.training.weights import malicious_checkpoint, yolo_checkpoint


def pickle_globals(checkpoint: Path) -> set[str]:
    """Every class or function the checkpoint's pickle names (GLOBAL opcodes), torch's own included."""
    with zipfile.ZipFile(checkpoint) as archive:
        data = archive.read(next(name for name in archive.namelist() if name.endswith("/data.pkl")))
    return {str(arg).replace(" ", ".") for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_allow_list_is_exactly_what_a_real_training_writes(data_yaml, tmp_path):
    args = {**TRAIN_ARGS, "epochs": 1, "imgsz": 32, "save_period": 1}
    result = fine_tune(**{**run_args(data_yaml, tmp_path / "train", "runs/a/train"), "train_args": args})
    checkpoints = sorted((tmp_path / "train" / "weights").glob("*.pt"))
    assert {p.name for p in checkpoints} == {"best.pt", "last.pt", "epoch0.pt"}  # stripped and mid-training
    referenced = set().union(*(pickle_globals(p) for p in checkpoints))
    assert set(YOLO_CHECKPOINT_GLOBALS) <= referenced, set(YOLO_CHECKPOINT_GLOBALS) - referenced  # none extra
    for path in checkpoints:  # and none missing: each loads, with its model
        checkpoint = load_checkpoint(path)
        model = checkpoint["ema"] or checkpoint["model"]  # final checkpoints keep the EMA as "model"
        assert type(model).__name__ == "DetectionModel" and next(model.parameters()).numel() > 0
    assert checkpoint_state(result.last)["epoch"] == -1
    assert checkpoint_state(tmp_path / "train" / "weights" / "epoch0.pt")["epoch"] == 0


def test_malicious_pickle_is_refused_by_every_loader(tmp_path):
    marker = tmp_path / "code-ran"
    evil = malicious_checkpoint(tmp_path / "evil.pt", marker)
    for load in (load_checkpoint, checkpoint_state):
        with pytest.raises(UnsafeCheckpoint, match=r"evil\.pt: refusing to load it: it references builtins\.exec"):
            load(evil)
    # As fine_tune's start weights: refused before a child (Ultralytics: weights_only=False) starts.
    with pytest.raises(UnsafeCheckpoint, match=r"evil\.pt"):
        fine_tune(
            weights=evil,
            data_yaml=tmp_path / "data.yaml",
            train_args={"epochs": 1},
            save_dir=tmp_path / "train",
            run_prefix="runs/e/train",
        )
    assert not (tmp_path / "train.log").exists(), "no training child was started"
    assert not marker.exists(), "the pickle's code ran"


@pytest.mark.parametrize("planted", ["last.pt", "best.pt"])
def test_malicious_checkpoint_in_the_run_prefix_is_refused_on_restore(object_store, tmp_path, planted):
    """Someone with bucket write access plants a checkpoint (and the identity it must match) under
    a run's prefix; a fresh worker resuming that run restores it and must not unpickle it."""
    marker, prefix, save_dir = tmp_path / "code-ran", "runs/p/train", tmp_path / "train"
    train_args = {"epochs": 1}
    identity = RunIdentity.of(dataset_version="ds-1", weights="yolo11n.yaml", train_args=train_args)
    object_store.put_bytes(f"{prefix}/identity.json", identity.model_dump_json().encode())
    files = {"last.pt": yolo_checkpoint(tmp_path / "src" / "last.pt"), "best.pt": None}
    files[planted] = malicious_checkpoint(tmp_path / "src" / f"evil-{planted}", marker)
    for name, path in files.items():
        if path is not None:
            object_store.put_file(path, f"{prefix}/weights/{name}")  # with its correct sha256

    with pytest.raises(UnsafeCheckpoint, match=rf"{planted}: refusing to load it: it references builtins\.exec"):
        fine_tune(
            weights="yolo11n.yaml",
            data_yaml=tmp_path / "data.yaml",
            train_args=train_args,
            save_dir=save_dir,
            store=object_store,
            run_prefix=prefix,
            identity=identity,
        )
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "train.log").exists(), "no training child was started"
    if planted == "best.pt":
        assert not [p for p in save_dir.rglob("*best.pt")], "the refused best.pt stays out of the run folder"
