"""Fine-tuning: Ultralytics in a child process, followed through results.csv, resumable.

Why a child process: a Prefect timeout or cancellation can kill it, a crash in torch can't take
the worker down, its memory is returned to the OS, and Ultralytics' own DDP launcher works
from it unchanged. Why results.csv: it is written by rank 0 on CPU, one GPU and DDP alike,
whereas in-process callbacks are dropped under DDP.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from phase2.infra.files import sha256_file
from phase2.infra.processes import record_path, write_record
from phase2.training.checkpoints import load_checkpoint, verify_checkpoint
from phase2.training.identity import (
    IDENTITY_FILE,
    RunIdentity,
    check_identity,
    parse_identity,
    read_identity,
    write_identity,
)
from phase2.training.uploads import CheckpointUploader, checkpoint_is_complete, file_version

if TYPE_CHECKING:  # annotations only: the training child imports this module and needs neither
    from phase2.infra.tracking import Tracker
    from phase2.registry.registry import Registry
    from phase2.training.recipe import Recipe

log = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE.json"


class TrainingFailed(RuntimeError):
    """The Ultralytics child exited non-zero; the message carries the tail of its log."""


class ResumeError(RuntimeError):
    """A checkpoint can't be resumed as asked (e.g. a different number of epochs)."""


class FineTuneResult(BaseModel):
    save_dir: Path
    run_prefix: str
    run_uri: str | None
    results_csv: Path
    args_yaml: Path
    best: Path
    best_sha256: str
    last: Path
    last_sha256: str
    checkpoints: dict[str, str] = {}
    epochs_planned: int
    epochs_completed: int
    epochs_trained_this_attempt: int
    resumed_from_epoch: int | None
    best_epoch: int | None
    stop_reason: str
    wall_time_s: float
    s_per_epoch: float | None
    peak_rss_mb: float | None
    wandb_run_path: str | None
    identity: RunIdentity | None = None  # None only in markers written before it was recorded

    def to_markdown(self) -> str:
        return (
            f"- epochs: {self.epochs_completed}/{self.epochs_planned} ({self.stop_reason})\n"
            f"- best epoch: {self.best_epoch}\n- resumed after epoch: {self.resumed_from_epoch}\n"
            f"- wall time: {self.wall_time_s} s, {self.s_per_epoch} s/epoch, peak RSS {self.peak_rss_mb} MB\n"
            f"- run: {self.run_uri}\n- W&B: {self.wandb_run_path}\n"
        )


def start_weights(recipe: Recipe, baseline: str, registry: Registry, *, cache_dir: Path) -> str:
    """The weights training starts from: the recipe's ``train.model``, where ``"baseline"`` means
    the flow's ``baseline``. A model yaml (from scratch) is returned as is; a local path, an
    ``s3://`` URI or a registry reference is resolved to sha256-verified local weights."""
    start = recipe.train.model if recipe.train.model != "baseline" else baseline
    if start.endswith((".yaml", ".yml")) and "/" not in start:
        return start
    return str(registry.resolve_reference(start, cache_dir=cache_dir))


def read_results(results_csv: Path) -> list[dict[str, str]]:
    """results.csv rows with stripped column names (older Ultralytics pads them)."""
    if not results_csv.exists():
        return []
    with results_csv.open(newline="") as fh:
        return [{k.strip(): v.strip() for k, v in row.items() if k} for row in csv.DictReader(fh)]


def checkpoint_state(path: Path) -> dict[str, Any]:
    """Epoch (0-based, -1 once Ultralytics stripped the final checkpoint) and train args.

    Loaded weights-only (:func:`phase2.training.checkpoints.load_checkpoint`): a last.pt restored
    from S3 is only as trustworthy as the bucket."""
    ckpt = load_checkpoint(path)
    return {
        "epoch": ckpt.get("epoch", -1),
        "train_args": ckpt.get("train_args") or {},
        "train_results": ckpt.get("train_results") or {},
    }


def _truncate_results(results_csv: Path, keep_epochs: int) -> None:
    """Drop rows after the checkpoint's epoch.

    Ultralytics appends the results.csv row *before* writing last.pt; a kill in between leaves
    a row for an epoch the checkpoint does not have, and resuming would log that epoch twice.
    """
    if not results_csv.exists():
        return
    lines = results_csv.read_text().splitlines(keepends=True)
    if len(lines) - 1 > keep_epochs:
        results_csv.write_text("".join(lines[: keep_epochs + 1]))


def _rebuild_results(results_csv: Path, train_results: dict[str, list]) -> None:
    """Write results.csv from the copy of it inside every checkpoint.

    A fresh worker restores last.pt from S3, but results.csv reaches S3 only at the end;
    without this the resumed run's results.csv would start at the resumed epoch.
    """
    columns = list(train_results)
    with results_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows([f"{value:.6g}" for value in row] for row in zip(*train_results.values(), strict=False))


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# The training child's parent, so the child can tell it has already lost it.
PARENT_PID_ENV = "PHASE2_TRAINING_PARENT_PID"


def _die_with_parent() -> None:  # pragma: no cover - runs first thing in the training child
    """Linux: SIGTERM this training child when the process that started it dies (worker killed).
    Set here, in the child: a preexec_fn loading libc after fork in a threaded parent can deadlock.
    A parent that died before the prctl is caught by the parent-pid check."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    parent = int(os.environ.get(PARENT_PID_ENV) or 0)
    if parent and os.getppid() != parent:
        sys.exit(f"the process that started this training (pid {parent}) is gone; not training")


def _opened(tracker: Tracker | Callable[[], Tracker] | None) -> Tracker | None:
    """The tracker, opening it if given as the function that opens it."""
    return tracker() if callable(tracker) else tracker


def _wait_for_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    """The child's exit code, or None if it still runs after `timeout` seconds.

    On Linux it sleeps on a pidfd: one wakeup per call. Popen.wait(timeout) polls every 50 ms, waking
    a core training needs 25 times a second (measured: 25 vs 1 voluntary context switches/s)."""
    if proc.returncode is not None:
        return proc.returncode
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)  # not reaped yet (returncode is None): still our child
        except OSError:  # a kernel without pidfd_open: poll below
            pidfd = None
        if pidfd is not None:
            try:
                ready, _, _ = select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)
            return proc.wait() if ready else None
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _kill_child(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def fine_tune(
    *,
    weights: Path | str,
    data_yaml: Path,
    train_args: dict[str, Any],
    save_dir: Path,
    store=None,
    run_prefix: str,
    tracker: Tracker | Callable[[], Tracker] | None = None,
    poll_s: float = 1.0,
    on_epoch: Callable[[dict[str, str]], None] | None = None,
    logger: logging.Logger | logging.LoggerAdapter = log,
    identity: RunIdentity | None = None,
    checkpoint_interval_s: float = 0.0,
) -> FineTuneResult:
    """Train (or resume) into `save_dir`; stream epochs; upload checkpoints (at least
    `checkpoint_interval_s` apart; the recipe's `checkpoints.upload_interval_s`); return the summary.

    `train_args` are Ultralytics train kwargs (epochs, imgsz, ...). Re-calling with the same
    `save_dir` after a crash continues from the newest complete last.pt (local, else S3) to the
    same final epoch; a finished run is returned as is. Both only for the same inputs: `identity`
    (``RunIdentity.of(dataset_version=..., weights=weights, train_args=train_args)``; without it
    the dataset version is the content hash of `data_yaml`'s images and labels) is recorded with
    the run, and a run recorded with another identity raises
    :class:`phase2.training.identity.StaleRun` saying what differs.

    `tracker` may be a function that opens it: it is then called once the child is started, so W&B's
    start-up runs beside the child's (single-threaded imports: the second core is idle then).
    """
    save_dir = Path(save_dir)
    weights_dir = save_dir / "weights"
    results_csv = save_dir / "results.csv"
    epochs = int(train_args["epochs"])
    if str(weights).endswith(".pt") and not checkpoint_is_complete(Path(weights)):
        # Refused before anything unpickles it: a clear message instead of the child's traceback.
        raise TrainingFailed(
            f"{weights}: not a PyTorch checkpoint (missing, or not the zip torch.save writes); "
            "pass an Ultralytics .pt such as the baseline's best.pt"
        )
    if str(weights).endswith(".pt"):
        verify_checkpoint(weights)  # the child's Ultralytics unpickles it with weights_only=False
    identity = _identity_of_inputs(identity, weights, data_yaml, train_args)
    where = f"{save_dir}" + (f" and {store.uri(run_prefix)}/" if store is not None else "")
    fix = f"use a new run_name to train on these inputs, or delete {where} to retrain under this name"
    if (marker := save_dir / COMPLETE_MARKER).exists():
        finished_run = FineTuneResult.model_validate_json(marker.read_text())
        check_identity(identity, finished_run.identity, f"finished run {marker}", fix)
        return finished_run

    started = time.monotonic()
    last = weights_dir / "last.pt"
    _restore_from_store(store, run_prefix, save_dir, identity, fix)
    resume_epoch: int | None = None
    finished = False
    if last.exists():
        if not checkpoint_is_complete(last):
            raise ResumeError(
                f"{last} is torn (killed mid-write) and no intact copy is in S3; delete {save_dir} to start over"
            )
        state = checkpoint_state(last)
        planned = int(state["train_args"].get("epochs", epochs))
        if state["epoch"] >= 0 and planned != epochs:
            raise ResumeError(
                f"{last} was trained towards {planned} epochs; Ultralytics cannot resume to "
                f"{epochs}. Keep epochs={planned}, or start a new run to train longer."
            )
        check_identity(identity, read_identity(save_dir / IDENTITY_FILE), f"checkpoint {last}", fix)
        if state["epoch"] >= 0:
            resume_epoch = state["epoch"] + 1  # epochs completed
            _truncate_results(results_csv, resume_epoch)
            if len(read_results(results_csv)) < resume_epoch and state["train_results"]:
                _rebuild_results(results_csv, state["train_results"])
        else:
            finished = True  # Ultralytics strips last.pt (epoch -1) only after the final epoch
    elif save_dir.exists():
        shutil.rmtree(save_dir)  # leftovers of an attempt that never saved an epoch
    if finished:
        tracker = _opened(tracker)
        logger.info("%s already finished training; summarizing it", save_dir)
        finished_rows = len(read_results(results_csv))
        return _summarize(
            save_dir, store, run_prefix, train_args, tracker, started, finished_rows, None, None, None, identity
        )
    rows_before = len(read_results(results_csv)) if resume_epoch else 0

    spec = {
        "model": str(last if resume_epoch else weights),
        "resume": bool(resume_epoch),
        "data": str(data_yaml),
        "train_args": {**train_args, "project": str(save_dir.parent), "name": save_dir.name, "exist_ok": True},
    }
    save_dir.mkdir(parents=True, exist_ok=True)
    write_identity(save_dir / IDENTITY_FILE, identity)
    if store is not None:  # before any checkpoint: a fresh worker must find it next to them
        store.put_file(save_dir / IDENTITY_FILE, f"{run_prefix}/{IDENTITY_FILE}")
    spec_file = save_dir.parent / f"{save_dir.name}.spec.json"
    spec_file.write_text(json.dumps(spec, indent=2, default=str))
    log_file = save_dir.parent / f"{save_dir.name}.log"
    if resume_epoch:
        logger.info("Resuming %s after epoch %d of %d", save_dir, resume_epoch, epochs)

    uploader = CheckpointUploader(store, run_prefix, weights_dir, min_interval_s=checkpoint_interval_s)
    # Rows of earlier attempts were streamed by them (the parent streams every row present when
    # the child exits); sending them again would duplicate those epochs in the resumed W&B run.
    streamed = rows_before
    peak = None
    command = [sys.executable, "-m", "phase2.training.fine_tune", str(spec_file)]
    with log_file.open("ab") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,  # its own group: _kill_child signals it and any DDP ranks it starts
            env={**os.environ, "PYTHONUNBUFFERED": "1", PARENT_PID_ENV: str(os.getpid())},
        )
        # <save_dir>.pid.json: found by `python -m phase2.infra.processes --stop-recorded` (.ci/run).
        write_record(record_path(save_dir.parent, save_dir.name), proc.pid, command)
        results_version = None
        try:
            tracker = _opened(tracker)
            while True:
                # Blocks until the child exits or poll_s passes: no polling latency at the end.
                code = _wait_for_exit(proc, poll_s)
                if (version := file_version(results_csv)) == results_version:
                    rows = []  # unchanged since the last read: nothing new to stream
                else:
                    results_version, rows = version, read_results(results_csv)
                for row in rows[streamed:]:
                    epoch = int(float(row["epoch"]))
                    if tracker is not None:
                        tracker.log_epoch(row)
                    if epoch > rows_before:
                        now = time.monotonic()
                        done = epoch - rows_before
                        s_epoch = (now - started) / done
                        logger.info(
                            "epoch %d/%d  mAP50 %s  %.1f s/epoch  ETA %.0f s",
                            epoch,
                            epochs,
                            row.get("metrics/mAP50(B)", "?"),
                            s_epoch,
                            s_epoch * (epochs - epoch),
                        )
                    if on_epoch:
                        on_epoch(row)
                streamed = max(streamed, len(rows))
                uploader.poll()
                peak = _peak_rss_mb(proc.pid) or peak
                if code is not None:
                    break
        finally:
            _kill_child(proc)
            record_path(save_dir.parent, save_dir.name).unlink(missing_ok=True)
            if proc.returncode != 0:  # a retry on another machine resumes from the newest one
                uploader.poll(flush=True)
            uploader.finish(cancel_pending=proc.returncode == 0)
    if proc.returncode != 0:
        tail = log_file.read_text(errors="replace").splitlines()[-25:]
        # A full disk also cuts the log short (its last line, the OSError, can't be written).
        free_mb = shutil.disk_usage(save_dir).free / 2**20
        disk = f" (no space left? only {free_mb:.0f} MB free on the disk holding {save_dir})" if free_mb < 512 else ""
        raise TrainingFailed(f"Ultralytics exited with {proc.returncode}{disk}; log {log_file}:\n" + "\n".join(tail))
    return _summarize(
        save_dir,
        store,
        run_prefix,
        train_args,
        tracker,
        started,
        rows_before,
        resume_epoch,
        peak,
        uploader,
        identity,
    )


def _identity_of_inputs(
    identity: RunIdentity | None, weights: Path | str, data_yaml: Path, train_args: dict[str, Any]
) -> RunIdentity:
    """The caller's identity, checked against the inputs it must describe (else one from them)."""
    if identity is None:
        from phase2.dataset.rebalance import dataset_version_id

        version = dataset_version_id(Path(data_yaml))
        return RunIdentity.of(dataset_version=version, weights=weights, train_args=train_args)
    actual = RunIdentity.of(dataset_version=identity.dataset_version, weights=weights, train_args=train_args)
    if diffs := actual.differences(identity):
        raise ValueError(
            f"the identity passed to fine_tune does not describe its inputs ({'; '.join(diffs)}); "
            "build it with RunIdentity.of(dataset_version=..., weights=weights, train_args=train_args)"
        )
    return identity


def _summarize(
    save_dir: Path,
    store,
    run_prefix: str,
    train_args: dict[str, Any],
    tracker,
    started: float,
    rows_before: int,
    resume_epoch: int | None,
    peak: float | None,
    uploader: CheckpointUploader | None,
    identity: RunIdentity,
) -> FineTuneResult:
    """Final uploads, checksums and the run summary; writes the COMPLETE marker last. A file the
    uploader already put in the store in its current version is not sent again."""
    from phase2.training.history import summarize_history  # pandas: not imported by the training child

    weights_dir, results_csv = save_dir / "weights", save_dir / "results.csv"
    epochs = int(train_args["epochs"])
    rows = read_results(results_csv)
    best, last = weights_dir / "best.pt", weights_dir / "last.pt"
    checkpoints = dict(uploader.uploaded) if uploader is not None else {}
    digests: dict[Path, str] = {}
    if store is not None:
        files = [best, last, *sorted(weights_dir.glob("epoch*.pt")), results_csv, save_dir / "args.yaml"]
        upload = partial(_upload_final, store, run_prefix, save_dir, uploader)
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="final-upload") as pool:  # training is over
            for path, digest in zip(files, pool.map(upload, files), strict=True):
                if digest is not None:
                    digests[path] = digest
                    checkpoints[path.name] = store.uri(f"{run_prefix}/{path.relative_to(save_dir)}")
    trained_now = len(rows) - rows_before
    wall = time.monotonic() - started
    history = summarize_history(results_csv, patience=train_args.get("patience"), epochs=epochs)
    result = FineTuneResult(
        save_dir=save_dir,
        run_prefix=run_prefix,
        run_uri=store.uri(run_prefix) if store is not None else None,
        results_csv=results_csv,
        args_yaml=save_dir / "args.yaml",
        best=best,
        best_sha256=digests.get(best) or sha256_file(best),
        last=last,
        last_sha256=digests.get(last) or sha256_file(last),
        checkpoints=checkpoints,
        epochs_planned=epochs,
        epochs_completed=len(rows),
        epochs_trained_this_attempt=trained_now,
        resumed_from_epoch=resume_epoch,
        best_epoch=history.best_epoch,
        stop_reason=history.stop_reason,
        wall_time_s=round(wall, 1),
        s_per_epoch=round(wall / trained_now, 2) if trained_now else None,
        peak_rss_mb=round(peak, 1) if peak else None,
        wandb_run_path=tracker.run_path if tracker is not None else None,
        identity=identity,
    )
    marker = save_dir / COMPLETE_MARKER
    marker.write_text(result.model_dump_json(indent=2))
    if store is not None:
        store.put_file(marker, f"{run_prefix}/{COMPLETE_MARKER}")
    return result


def _upload_final(
    store, run_prefix: str, save_dir: Path, uploader: CheckpointUploader | None, path: Path
) -> str | None:
    """Upload one of the run's files unless the uploader already sent this version; its sha256
    (None if the file doesn't exist)."""
    if not path.exists():
        return None
    if uploader is not None and (digest := uploader.already_uploaded(path)):
        return digest
    digest = sha256_file(path)
    store.put_file(path, f"{run_prefix}/{path.relative_to(save_dir)}", sha256=digest)
    return digest


def _restore_from_store(store, run_prefix: str, save_dir: Path, identity: RunIdentity, fix: str) -> None:
    """No usable local last.pt (e.g. a fresh worker): fetch last.pt, best.pt and results.csv from
    S3, if the identity recorded next to them there is ``identity``. best.pt (Ultralytics loads it
    unsafely at the end) is verified here; last.pt by :func:`checkpoint_state`."""
    last = save_dir / "weights" / "last.pt"
    if store is None or (last.exists() and checkpoint_is_complete(last)):
        return
    key = f"{run_prefix}/weights/last.pt"
    if not store.exists(key):
        return
    identity_key = f"{run_prefix}/{IDENTITY_FILE}"
    recorded = parse_identity(store.get_bytes(identity_key)[0]) if store.exists(identity_key) else None
    check_identity(identity, recorded, f"checkpoint {store.uri(key)}", fix)
    write_identity(save_dir / IDENTITY_FILE, identity)
    log.info("Restoring %s from %s", last, store.uri(key))
    store.get_file(key, last)
    best_key, best = f"{run_prefix}/weights/best.pt", save_dir / "weights" / "best.pt"
    if store.exists(best_key) and not best.exists():
        staged = store.get_file(best_key, best.with_name(".restore-best.pt"))
        try:
            verify_checkpoint(staged)
            staged.replace(best)
        finally:
            staged.unlink(missing_ok=True)
    csv_key = f"{run_prefix}/results.csv"
    if store.exists(csv_key) and not (save_dir / "results.csv").exists():
        store.get_file(csv_key, save_dir / "results.csv")


def resolve_device(device: str) -> str:
    """'auto' → cuda (all visible GPUs stay Ultralytics' choice: '0') > mps > cpu."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "0"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _child_main(spec_file: str) -> int:  # pragma: no cover - exercised through subprocess
    _die_with_parent()
    from phase2.infra.settings import configure_environment

    configure_environment()
    spec = json.loads(Path(spec_file).read_text())
    import torch  # after ultralytics: it sets OMP_NUM_THREADS before torch starts OpenMP
    import ultralytics.data.dataset as ultralytics_dataset
    import ultralytics.utils.torch_utils as torch_utils
    from ultralytics import YOLO

    # Image lists point into the user's dataset: its labels.cache must not be written there.
    def _cache_in_memory_only(prefix: str, path: Path, x: dict, version: str) -> None:
        x["version"] = version  # what the real function adds in place, minus the file write

    ultralytics_dataset.save_dataset_cache_file = _cache_in_memory_only
    # Ultralytics trains on cpu_count-1 threads (1 on a 2-core box); all cores are ~1.75x faster.
    # PHASE2_TORCH_THREADS lowers it on a CPU shared with other jobs, where threads wait on each other.
    torch_utils.NUM_THREADS = int(os.environ.get("PHASE2_TORCH_THREADS") or os.cpu_count() or 1)
    args = dict(spec["train_args"])
    args["device"] = resolve_device(str(args.get("device", "auto")))
    model = YOLO(spec["model"])
    model.add_callback("on_train_start", lambda trainer: print(f"torch threads: {torch.get_num_threads()}"))
    if spec["resume"]:
        # save_dir is one of the few arguments Ultralytics lets a resume change: the checkpoint
        # may come from S3, written on another machine with another path.
        model.train(
            resume=True,
            data=spec["data"],
            device=args["device"],
            workers=args.get("workers", 0),
            save_dir=str(Path(args["project"]) / args["name"]),
        )
    else:
        model.train(data=spec["data"], **args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_child_main(sys.argv[1]))
