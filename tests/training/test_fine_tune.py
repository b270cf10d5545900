"""fine_tune on a small copy of the real data: streaming, S3 checkpoints, kill -9 and resume.

Real parts: Ultralytics in its child process, a real SeaweedFS bucket, W&B offline runs read
back with `wandb leet inspect`. Faults are real too (SIGKILL of the child, a truncated
last.pt); only the results.csv row of the append-before-save window is written by hand,
because that window is a few milliseconds wide.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from phase2.infra.files import sha256_file
from phase2.infra.processes import record_path
from phase2.infra.tracking import Tracker, offline_history
from phase2.registry.registry import Registry
from phase2.training.fine_tune import (
    CheckpointUploader,
    ResumeError,
    TrainingFailed,
    checkpoint_is_complete,
    checkpoint_state,
    fine_tune,
    read_results,
    start_weights,
)
from phase2.training.identity import RunIdentity, StaleRun
from phase2.training.recipe import Recipe
from tests.training.weights import yolo_checkpoint

EPOCHS = 2
TRAIN_ARGS = {
    "epochs": EPOCHS,
    "imgsz": 64,
    "batch": 4,
    "workers": 0,
    "device": "cpu",
    "plots": False,
    "seed": 0,
    "deterministic": True,
    "patience": 50,
    "save_period": -1,
    "optimizer": "AdamW",
    "lr0": 0.001,
    "warmup_epochs": 0,
}


def run_id() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def child_pid(spec_file: Path, timeout: float = 120) -> int:
    """The pid of `python -m phase2.training.fine_tune SPEC`, found in /proc like an operator would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"phase2.training.fine_tune" in cmdline and str(spec_file).encode() in cmdline:
                return int(proc.name)
        time.sleep(0.05)
    raise AssertionError(f"no training child for {spec_file}")


def kill_during_epoch_2(save_dir: Path, future: Future, store=None, run_prefix: str = "") -> None:
    """SIGKILL the child once epoch 1 is in results.csv and its checkpoints are complete.

    The child is first SIGSTOPped (it is then inside epoch 2) so the kill can wait for the
    background upload of epoch 1's last.pt when a test needs it in S3; then kill -9.
    """
    pid = child_pid(save_dir.parent / f"{save_dir.name}.spec.json")
    weights = save_dir / "weights"
    deadline = time.monotonic() + 300
    while not (
        len(read_results(save_dir / "results.csv")) >= 1
        and all(checkpoint_is_complete(weights / n) for n in ("last.pt", "best.pt"))
    ):
        assert not future.done(), "training ended before epoch 1 was saved"
        assert time.monotonic() < deadline, "epoch 1 never finished"
        time.sleep(0.02)
    os.kill(pid, signal.SIGSTOP)
    assert len(read_results(save_dir / "results.csv")) == 1, "stopped too late: epoch 2 was already written"
    if store is not None:
        key = f"{run_prefix}/weights/last.pt"
        while not store.exists(key):
            assert time.monotonic() < deadline, "last.pt of epoch 1 never reached S3"
            time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(TrainingFailed, match="exited with -9"):
        future.result(timeout=120)
    assert checkpoint_state(weights / "last.pt")["epoch"] == 0  # 0-based: epoch 1 complete


def run_args(data_yaml: Path, save_dir: Path, run_prefix: str, **extra: Any) -> dict[str, Any]:
    """fine_tune's arguments in these tests: yolo11n from scratch under TRAIN_ARGS."""
    return {
        "weights": "yolo11n.yaml",
        "data_yaml": data_yaml,
        "train_args": TRAIN_ARGS,
        "save_dir": save_dir,
        "run_prefix": run_prefix,
        **extra,
    }


def start(pool: ThreadPoolExecutor, **kwargs) -> Future:
    return pool.submit(fine_tune, poll_s=0.2, **kwargs)


def test_two_epochs_stream_to_wandb_and_checkpoints_to_s3(data_yaml, tmp_path, object_store):
    opened: list[tuple[Tracker, bool]] = []

    def open_tracker() -> Tracker:  # W&B's start-up must run beside the child's, not before it
        child_running = record_path(tmp_path, "train").exists()  # written right after the spawn
        opened.append((Tracker(run_id(), config={"train": TRAIN_ARGS}), child_running))
        return opened[-1][0]

    seen: list[str] = []
    try:
        result = fine_tune(
            **run_args(data_yaml, tmp_path / "train", "runs/r1/train", store=object_store),
            tracker=open_tracker,
            poll_s=0.2,
            on_epoch=lambda row: seen.append(row["epoch"]),
        )
    finally:
        for tracker, _ in opened:
            tracker.finish()
    assert [child_running for _, child_running in opened] == [True], "opened once, after the child started"
    tracker = opened[0][0]

    history = offline_history(tracker.run_dir)
    assert [row["epoch"] for row in history] == [1, 2]
    rows = read_results(result.results_csv)
    for logged, row in zip(history, rows, strict=True):
        assert logged["metrics/mAP50"] == pytest.approx(float(row["metrics/mAP50(B)"]))
        assert "train/box_loss" in logged and "lr/pg0" in logged
    assert seen == ["1", "2"]
    assert (result.epochs_planned, result.epochs_completed, result.epochs_trained_this_attempt) == (2, 2, 2)
    assert result.resumed_from_epoch is None and result.wandb_run_path == tracker.run_path

    for name, local, digest in (
        ("last.pt", result.last, result.last_sha256),
        ("best.pt", result.best, result.best_sha256),
    ):
        key = f"runs/r1/train/weights/{name}"
        assert digest == sha256_file(local)
        assert object_store.head(key)["sha256"] == digest
        assert result.checkpoints[name] == object_store.uri(key)
    assert object_store.head("runs/r1/train/results.csv")["sha256"] == sha256_file(result.results_csv)
    assert result.run_uri == object_store.uri("runs/r1/train")
    assert object_store.exists("runs/r1/train/COMPLETE.json")
    assert {key.rsplit("/", 1)[1] for key in object_store.list("runs/r1/train/weights/")} == {"last.pt", "best.pt"}

    # Ultralytics would train on cpu_count-1 threads; the child sets all cores.
    assert f"torch threads: {os.cpu_count()}" in (tmp_path / "train.log").read_text()

    # A finished run is returned as is, without training again.
    again = fine_tune(**run_args(data_yaml, tmp_path / "train", "runs/r1/train", store=object_store))
    assert again.last_sha256 == result.last_sha256


@pytest.mark.slow
def test_kill_9_in_epoch_2_then_retry_trains_only_the_missing_epoch(data_yaml, tmp_path, object_store, reliability_log):
    save_dir, prefix, wandb_id = tmp_path / "train", "runs/r2/train", run_id()
    common = run_args(data_yaml, save_dir, prefix, store=object_store)
    first = Tracker(wandb_id)
    with ThreadPoolExecutor(1) as pool:
        kill_during_epoch_2(save_dir, start(pool, tracker=first, **common))
    first.finish()
    epoch_1_row = (save_dir / "results.csv").read_text().splitlines()[1]
    killed_at = time.time()

    retry = Tracker(wandb_id)
    try:
        result = fine_tune(tracker=retry, poll_s=0.2, **common)
    finally:
        retry.finish()

    lines = (save_dir / "results.csv").read_text().splitlines()
    assert [int(float(r["epoch"])) for r in read_results(save_dir / "results.csv")] == [1, 2]
    assert lines[1] == epoch_1_row  # epoch 1 was not trained again
    assert (result.epochs_completed, result.epochs_trained_this_attempt, result.resumed_from_epoch) == (2, 1, 1)
    assert (save_dir / "results.csv").stat().st_mtime > killed_at
    log = (tmp_path / "train.log").read_text()
    assert log.count("Resuming training") == 1 and "from epoch 2 to 2 total epochs" in log

    assert retry.run.id == first.run.id == wandb_id
    assert sorted(r["epoch"] for r in offline_history(first.run_dir) + offline_history(retry.run_dir)) == [1, 2]
    for name, digest in (("last.pt", result.last_sha256), ("best.pt", result.best_sha256)):
        assert object_store.head(f"{prefix}/weights/{name}")["sha256"] == digest
    reliability_log(
        "fault",
        "kill -9 of the training child mid-epoch",
        expected="retry resumes from the last complete epoch; finished epochs not redone",
        observed="epoch 1 kept, only epoch 2 trained again; W&B history [1, 2]",
    )


@pytest.mark.slow
def test_fresh_worker_resumes_from_s3(data_yaml, tmp_path, object_store):
    save_dir, prefix = tmp_path / "train", "runs/r3/train"
    common = run_args(data_yaml, save_dir, prefix, store=object_store)
    with ThreadPoolExecutor(1) as pool:
        kill_during_epoch_2(save_dir, start(pool, **common), object_store, prefix)
    epoch_1_row = (save_dir / "results.csv").read_text().splitlines()[1]
    shutil.rmtree(save_dir)

    result = fine_tune(poll_s=0.2, **common)

    rows = read_results(save_dir / "results.csv")
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]
    assert (result.epochs_trained_this_attempt, result.resumed_from_epoch) == (1, 1)
    restored_row = (save_dir / "results.csv").read_text().splitlines()[1].split(",")
    assert [float(v) for v in restored_row] == pytest.approx([float(v) for v in epoch_1_row.split(",")])
    assert object_store.head(f"{prefix}/weights/last.pt")["sha256"] == result.last_sha256


def test_a_run_of_other_inputs_is_refused_locally_and_from_the_bucket(data_yaml, tmp_path, object_store):
    """A fixed run_name keeps save_dir and run_prefix: new data must not get the old run's weights."""
    save_dir, prefix = tmp_path / "train", "runs/stale/train"
    args = {**TRAIN_ARGS, "epochs": 1, "imgsz": 32}

    def identity(dataset_version: str = "ds-1", weights: Path | str = "yolo11n.yaml", **changed) -> RunIdentity:
        return RunIdentity.of(dataset_version=dataset_version, weights=weights, train_args={**args, **changed})

    def call(ident: RunIdentity, weights: Path | str = "yolo11n.yaml", **changed):
        kwargs = run_args(data_yaml, save_dir, prefix, store=object_store, identity=ident, poll_s=0.2)
        return fine_tune(**{**kwargs, "weights": weights, "train_args": {**args, **changed}})

    done = call(identity())
    assert done.identity == identity() and done.epochs_completed == 1
    assert RunIdentity.model_validate_json(object_store.get_bytes(f"{prefix}/identity.json")[0]) == identity()

    assert call(identity()) == done  # same inputs: the finished run, as before
    baseline = yolo_checkpoint(tmp_path / "baseline.pt")
    for ident, weights, changed, differs in (
        (identity("ds-2"), "yolo11n.yaml", {}, "dataset version 'ds-1' -> 'ds-2'"),
        (identity(lr0=0.01), "yolo11n.yaml", {"lr0": 0.01}, "train args (lr0 0.001 -> 0.01)"),
        (identity(weights=baseline), baseline, {}, "start weights 'yolo11n.yaml' -> sha256 "),
    ):
        with pytest.raises(StaleRun) as refused:
            call(ident, weights, **changed)
        message = str(refused.value)
        assert f"finished run {save_dir / 'COMPLETE.json'} was trained from other inputs: {differs}" in message
        assert "use a new run_name" in message and f"delete {save_dir} and {object_store.uri(prefix)}/" in message

    # A fresh worker (no local folder) finds the run in the bucket: refused for other inputs,
    # nothing restored; the same inputs get the finished run back.
    shutil.rmtree(save_dir)
    with pytest.raises(StaleRun, match=r"s3://.*/weights/last\.pt was trained from other inputs: dataset version"):
        call(identity("ds-2"))
    assert not (save_dir / "weights" / "last.pt").exists()
    restored = call(identity())
    assert (restored.last_sha256, restored.identity, restored.epochs_trained_this_attempt) == (
        done.last_sha256,
        identity(),
        0,
    )


def test_resume_cannot_extend_epochs(data_yaml, tmp_path):
    save_dir = tmp_path / "train"
    common = run_args(data_yaml, save_dir, "runs/r4/train")
    with ThreadPoolExecutor(1) as pool:
        kill_during_epoch_2(save_dir, start(pool, **common))
    with pytest.raises(ResumeError, match=r"trained towards 2 epochs.*cannot resume to 3.*Keep epochs=2"):
        fine_tune(**{**common, "train_args": {**TRAIN_ARGS, "epochs": 3}})
    assert checkpoint_state(save_dir / "weights" / "last.pt")["epoch"] == 0  # left untouched


def test_row_appended_before_last_pt_is_not_duplicated(data_yaml, tmp_path):
    """Ultralytics appends results.csv, then writes last.pt: a kill between leaves epoch k+1's
    row next to epoch k's checkpoint. The resumed run must contain each epoch exactly once."""
    save_dir = tmp_path / "train"
    common = run_args(data_yaml, save_dir, "runs/r5/train")
    with ThreadPoolExecutor(1) as pool:
        kill_during_epoch_2(save_dir, start(pool, **common))
    results_csv = save_dir / "results.csv"
    fields = results_csv.read_text().splitlines()[1].split(",")
    with results_csv.open("a") as fh:
        fh.write(",".join(["2", *fields[1:]]) + "\n")

    result = fine_tune(poll_s=0.2, **common)

    assert [int(float(r["epoch"])) for r in read_results(results_csv)] == [1, 2]
    assert result.epochs_trained_this_attempt == 1


def test_torn_last_pt_is_recovered_from_s3_else_refused(data_yaml, tmp_path, object_store):
    save_dir, prefix = tmp_path / "train", "runs/r6/train"
    common = run_args(data_yaml, save_dir, prefix)
    with ThreadPoolExecutor(1) as pool:
        kill_during_epoch_2(save_dir, start(pool, store=object_store, **common), object_store, prefix)
    last = save_dir / "weights" / "last.pt"
    torn = last.read_bytes()[: last.stat().st_size // 2]
    last.write_bytes(torn)

    with pytest.raises(ResumeError, match=r"last\.pt is torn.*no intact copy.*delete .* to start over"):
        fine_tune(store=None, **common)
    assert last.read_bytes() == torn  # nothing deleted: the operator decides

    result = fine_tune(store=object_store, poll_s=0.2, **common)
    assert [int(float(r["epoch"])) for r in read_results(save_dir / "results.csv")] == [1, 2]
    assert (result.epochs_trained_this_attempt, result.resumed_from_epoch) == (1, 1)


def test_uploader_skips_its_own_snapshots(tmp_path, object_store):
    """The upload snapshot `.upload-last.pt` sits next to last.pt while it uploads; a poll in that
    time must not treat it as a checkpoint (pathlib's `*.pt` matches dotfiles)."""
    import torch

    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"epoch": 0}, weights / "last.pt")
    shutil.copy(weights / "last.pt", weights / ".upload-last.pt")
    uploader = CheckpointUploader(object_store, "runs/u/train", weights)
    uploader.poll()
    uploader.poll()  # unchanged for one poll: uploaded
    uploader.finish()
    assert object_store.list("runs/u/train/") == ["runs/u/train/weights/last.pt"]
    assert uploader.errors == []


def test_start_weights_from_scratch_baseline_or_recipe_model(object_store, tmp_path):
    registry, cache = Registry(object_store), tmp_path / "cache"
    local = yolo_checkpoint(tmp_path / "base.pt")
    baseline_recipe = Recipe(name="r")
    assert start_weights(baseline_recipe, "yolo11n.yaml", registry, cache_dir=cache) == "yolo11n.yaml"
    assert start_weights(baseline_recipe, str(local), registry, cache_dir=cache) == str(local.resolve())
    own_model = Recipe(name="r", train={"model": "yolo11s.yaml"})
    assert start_weights(own_model, str(local), registry, cache_dir=cache) == "yolo11s.yaml"


def test_a_failed_training_sends_its_newest_checkpoint_despite_the_interval(data_yaml, tmp_path, object_store):
    """With a long upload interval no checkpoint goes to S3 while training; when the child dies
    (kill -9 once epoch 2 or later is saved), the parent sends that newest checkpoint before
    raising, so a retry on another machine resumes from it instead of starting over."""
    save_dir, prefix = tmp_path / "train", "runs/flush/train"
    key = f"{prefix}/weights/last.pt"
    args = run_args(data_yaml, save_dir, prefix, store=object_store, checkpoint_interval_s=3600)
    args["train_args"] = {**TRAIN_ARGS, "epochs": 8}  # tiny epochs: room to stop it before the end
    last = save_dir / "weights" / "last.pt"

    def saved_epoch() -> int:
        """0-based epoch of last.pt on disk; -2 while Ultralytics rewrites it (in place, not atomic)."""
        try:
            return checkpoint_state(last)["epoch"] if checkpoint_is_complete(last) else -2
        except Exception:  # torn mid-write: read again later
            return -2

    with ThreadPoolExecutor(1) as pool:
        future = start(pool, **args)
        pid = child_pid(save_dir.parent / f"{save_dir.name}.spec.json")
        deadline = time.monotonic() + 300
        while True:  # stop the child with epoch 2 or later whole on disk
            while saved_epoch() < 1:
                assert not future.done() and time.monotonic() < deadline, "epoch 2 was never saved"
                time.sleep(0.02)
            os.kill(pid, signal.SIGSTOP)
            if (newest := saved_epoch()) != -2:
                break
            os.kill(pid, signal.SIGCONT)  # stopped while rewriting last.pt: let it finish
        assert 1 <= newest < 7, f"stopped too late: last.pt is epoch {newest}"  # -1: training had finished
        time.sleep(1.0)  # five polls: within the interval nothing is sent
        assert not object_store.exists(key)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(TrainingFailed, match="exited with -9"):
            future.result(timeout=120)
    stored = object_store.get_file(key, tmp_path / "stored.pt")
    assert checkpoint_state(stored)["epoch"] == newest == checkpoint_state(last)["epoch"]


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="pidfd_open is Linux's")
def test_waiting_on_the_child_does_not_wake_the_parent_every_50_ms():
    """The parent waits on the training child once a second; it must sleep in between (Popen.wait's
    timeout polls every 50 ms: ~25 wakeups/s on a core training needs)."""
    import subprocess
    import threading

    from phase2.training.fine_tune import _wait_for_exit

    def wakeups() -> int:
        status = Path(f"/proc/self/task/{threading.get_native_id()}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("voluntary_ctxt")).split()[1])

    child = subprocess.Popen(["sleep", "2"])
    before = wakeups()
    assert _wait_for_exit(child, 1.0) is None  # still running after 1 s
    assert wakeups() - before <= 3
    assert _wait_for_exit(child, 5.0) == 0
    assert _wait_for_exit(child, 5.0) == 0  # reaped: answered from returncode
