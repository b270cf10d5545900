"""Faults and bad inputs the other suites don't make: bad storage settings through the CLI, data.yaml
paths escaping the root, a full disk, an unwritable W&B directory, a Prefect server restarted
mid-run, SeaweedFS stopped in the middle of a registration. Real services and real filesystems
(tmpfs mounts; skipped where mount is not permitted, failed under CI).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from phase2.dataset.validation import validate_dataset
from phase2.infra.prefect_stack import PrefectServer, free_port
from phase2.infra.processes import read_record, record_path
from phase2.infra.seaweedfs import SeaweedFS, SeaweedPorts
from phase2.infra.settings import PROJECT_ROOT
from phase2.registry.registry import Registry, RegistryError
from phase2.registry.storage import ObjectStore, StorageError
from phase2.training.fine_tune import (
    COMPLETE_MARKER,
    TrainingFailed,
    checkpoint_is_complete,
    checkpoint_state,
    fine_tune,
    read_results,
)
from tests.dataset.builders import edit_yaml, make_dataset, noise_jpeg, yaml_line
from tests.plugins.disks import tmpfs
from tests.plugins.flow_runs import NO_EXPORT_NO_REVIEW, flow_env, start_flow, tiny_recipe_file

PHASE2 = str(Path(sys.executable).with_name("phase2"))
WRONG_SECRET = "wrong-canary-secret-Kd82jsLq0"


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([PHASE2, *args], env=env, capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)


# --- bad storage settings -------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["missing-bucket", "wrong-secret", "wrong-key-id", "endpoint-down"])
def test_bad_storage_settings_give_one_line_cli_error(seaweedfs, setting, reliability_log):
    env = {**os.environ, **seaweedfs.env()}
    if setting == "missing-bucket":
        env["PHASE2_S3_BUCKET"] = f"no-such-{uuid.uuid4().hex[:8]}"
    elif setting == "wrong-secret":
        env["AWS_SECRET_ACCESS_KEY"] = WRONG_SECRET
    elif setting == "wrong-key-id":
        env["AWS_ACCESS_KEY_ID"] = "PHASE2WRONGKEYID"
    else:
        env["PHASE2_S3_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_cli(["models", "list"], env)
    output = result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    for secret in (env["AWS_SECRET_ACCESS_KEY"], seaweedfs.env()["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in output
    expected_words = {
        "missing-bucket": "does not exist",
        "wrong-secret": "access denied",
        "wrong-key-id": "access denied",
        "endpoint-down": "not reachable",
    }[setting]
    assert expected_words in lines[0]
    reliability_log(
        "bad input",
        "storage settings: missing bucket, wrong secret, wrong key id, endpoint down (`phase2 models list`)",
        expected="exit 1, one-line error naming the cause, no traceback, no secret",
        observed=f"{setting}: exit 1 in {time.monotonic() - started:.0f} s: {lines[0][:90]}",
    )


# --- data.yaml paths escaping the dataset root ----------------------------------------------


def _escape_absolute(root: Path) -> str:
    outside = root.parent / "elsewhere" / "images"
    noise_jpeg(outside / "x.jpg", 7)
    edit_yaml(root, val=str(outside))
    return "val"


def _escape_in_list(root: Path) -> str:
    outside = root.parent / "elsewhere2" / "images"
    noise_jpeg(outside / "y.jpg", 8)
    edit_yaml(root, train=["./train/images", f"../{outside.parent.name}/images"])
    return "train"


def _escape_deep_dotdot(root: Path) -> str:
    edit_yaml(root, test="./test/../../../../etc")
    return "test"


@pytest.mark.parametrize(
    "make_escape",
    [_escape_absolute, _escape_in_list, _escape_deep_dotdot],
    ids=["absolute-path", "dotdot-in-list", "deep-dotdot"],
)
def test_data_yaml_paths_escaping_the_root_are_errors(tmp_path, make_escape, reliability_log):
    root = tmp_path / "ds"
    make_dataset(root)
    split = make_escape(root)
    # The escape is an error on a worker that confines reads to its data roots (PHASE2_DATA_ROOTS).
    report = validate_dataset(root / "data.yaml", imgsz=64, minority_val_target=0, data_roots=[root])
    hits = [f for f in report.findings if f.code == "YAML_PATH_ESCAPES_ROOT"]
    assert hits and hits[0].severity == "error"
    assert hits[0].file == str(root / "data.yaml") and hits[0].line == yaml_line(root, split)
    reliability_log(
        "bad input",
        "data.yaml split paths escaping the dataset root (absolute, '..' in a list, deep '..')",
        expected="error YAML_PATH_ESCAPES_ROOT naming data.yaml and the line",
        observed=f"YAML_PATH_ESCAPES_ROOT at data.yaml:{hits[0].line}",
    )


# --- unwritable W&B directory ---------------------------------------------------------------

_TRACKER_SCRIPT = (
    "from phase2.infra.settings import configure_environment; configure_environment()\n"
    "from phase2.infra.tracking import Tracker, offline_history\n"
    "t = Tracker('unwritable-' + __import__('uuid').uuid4().hex[:6])\n"
    "t.log_epoch({'epoch': 1, 'metrics/mAP50(B)': 0.5})\n"
    "t.finish(); print('RUN_PATH', t.run_path); print('HISTORY', len(offline_history(t.run_dir)))\n"
)


def _tracker_env(state: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "PHASE2_STATE_DIR"))}
    return {**env, "PHASE2_STATE_DIR": str(state), **extra}


def test_read_only_wandb_dir_in_state_fails_before_any_work(tmp_path, reliability_log):
    state = tmp_path / "state"
    with tmpfs(state / "wandb", "1m", "ro"):
        result = subprocess.run(
            [sys.executable, "-c", _TRACKER_SCRIPT],
            env=_tracker_env(state),
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and "RUN_PATH" not in result.stdout
    assert "Read-only file system" in last and str(state / "wandb") in last, result.stderr[-2000:]
    reliability_log(
        "fault",
        "W&B directory unwritable (read-only mount at <state>/wandb)",
        expected="fails at environment setup, naming the directory, before any work",
        observed=last.replace(str(state), "<state>")[:120],
    )


def test_wandb_dir_that_is_a_file_degrades_to_a_reported_temp_dir(tmp_path, reliability_log):
    blocker = tmp_path / "wandb-is-a-file"
    blocker.write_text("not a directory")
    result = subprocess.run(
        [sys.executable, "-c", _TRACKER_SCRIPT],
        env=_tracker_env(tmp_path / "state", WANDB_DIR=str(blocker)),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    values = dict(line.split(" ", 1) for line in result.stdout.splitlines() if line.startswith(("RUN_PATH", "HISTORY")))
    run_dir = Path(values["RUN_PATH"].removeprefix("offline:"))
    assert run_dir.is_dir() and not run_dir.is_relative_to(blocker) and values["HISTORY"] == "1"
    assert blocker.read_text() == "not a directory"
    reliability_log(
        "fault",
        "W&B directory is a file (WANDB_DIR unusable)",
        expected="tracking still works offline; the run path reported points at the real location",
        observed=f"W&B fell back to {run_dir.parent}; 1 epoch readable; run_path reports it",
    )
    shutil.rmtree(run_dir, ignore_errors=True)


# --- out of space ---------------------------------------------------------------------------


def test_full_disk_during_validation_outputs_publishes_nothing_torn(tmp_path, reliability_log):
    root = tmp_path / "ds"
    make_dataset(root)
    report = validate_dataset(root / "data.yaml", imgsz=64, minority_val_target=0)
    with tmpfs(tmp_path / "small", "64k") as small:
        (small / "filler").write_bytes(b"\0" * (56 * 1024))
        with pytest.raises(OSError) as err:
            report.write(small / "validation")
        left = sorted(p.name for p in (small / "validation").iterdir()) if (small / "validation").exists() else []
        written = (small / "validation" / "report.json").read_text() if "report.json" in left else None
    assert err.value.errno == errno.ENOSPC and "No space left" in str(err.value)
    final = [name for name in left if name in ("report.json", "files.csv", "summary.md", "class_counts.png")]
    assert final == [] or final == ["report.json"], left  # outputs appear whole, in order, or not at all
    if written is not None:
        assert json.loads(written) == json.loads(report.model_dump_json())
    reliability_log(
        "fault",
        "state dir out of space (tmpfs) while writing validation outputs",
        expected="ENOSPC error; no partial file under a final name (temp files may remain)",
        observed=f"OSError ENOSPC; left: {left or 'nothing'}",
    )


def _enospc_seen(error: BaseException, log_file: Path) -> str:
    """The ENOSPC that made `error`: the parent's own OSError, or the child's, as its log shows.

    Not the "(no space left? ...)" hint, which fine_tune adds to any failure while < 512 MB is free.
    """
    if isinstance(error, OSError):
        assert error.errno == errno.ENOSPC, error
        return f"parent OSError errno {error.errno}"
    assert isinstance(error, TrainingFailed), error
    lines = log_file.read_text(errors="replace").splitlines()
    last = next((line for line in reversed(lines) if line.strip()), "")
    assert last == f"OSError: [Errno {errno.ENOSPC}] No space left on device", (
        f"the child did not end on ENOSPC; last line of {log_file}: {last!r}\n" + "\n".join(lines[-30:])
    )
    assert last in str(error), str(error)[-2000:]  # and the error the user sees quotes it
    return f"child ended on '{last}'"


def _fill_disk_mid_training(
    results_csv: Path, pid_record: Path, store, key: str, disk: Path, log_file: Path, stop: threading.Event
) -> tuple[threading.Thread, dict[str, int]]:
    """A thread that fills `disk` to the last byte while the training child is frozen mid-run.

    When results.csv shows epoch 2 (so epoch 1's last.pt is whole on disk), the child's process
    group (from its pid record) is stopped with SIGSTOP; once `key` (epoch 1's or 2's last.pt) is in
    `store` the disk is filled and the child continued. Training cannot end before the fault lands,
    however fast an epoch is: the child's next checkpoint or results.csv write gets ENOSPC.
    1 MiB is first reserved beyond the end of `log_file` (fallocate --keep-size), so the child's
    last words still reach its log (a torn checkpoint write would otherwise take any free space
    left and cut the log short). Returns the thread and {"paused_after_epoch": N} once it fired.
    """
    fired: dict[str, int] = {}

    def wait_for(condition, what: str, timeout: float = 300) -> bool:
        deadline = time.monotonic() + timeout
        while not stop.is_set() and not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"disk filler: {what} not seen in {timeout:.0f} s")
            time.sleep(0.02)
        return not stop.is_set()

    def fill() -> None:
        if not wait_for(lambda: len(read_results(results_csv)) >= 2, "epoch 2 in results.csv"):
            return
        record = read_record(pid_record)
        assert record is not None, f"no pid record {pid_record}"
        os.killpg(record.pid, signal.SIGSTOP)
        try:
            fired["paused_after_epoch"] = len(read_results(results_csv))
            if not wait_for(lambda: store.exists(key), f"{key} in S3"):
                return
            size = str(log_file.stat().st_size)
            subprocess.run(["fallocate", "--keep-size", "-o", size, "-l", "1MiB", str(log_file)], check=True)
            with open(disk / "filler", "wb") as out:
                os.posix_fallocate(out.fileno(), 0, shutil.disk_usage(disk).free)
            fired["filled"] = 1
        finally:
            os.killpg(record.pid, signal.SIGCONT)

    thread = threading.Thread(target=fill, name="fill-disk", daemon=True)
    thread.start()
    return thread, fired


@pytest.mark.slow
def test_full_disk_during_training_fails_clearly_then_completes_with_space(
    small_real_dataset, tmp_path, object_store, reliability_log
):
    """The state dir fills up mid-training, with epoch 1's last.pt in S3: the child is frozen after
    epoch 2 (SIGSTOP), the disk filled, the child continued, so its next write (epoch 2's or 3's
    checkpoint, or results.csv) hits ENOSPC, which the child's log must show. The re-run, with
    space, restores the published checkpoint (the local last.pt is torn) and trains only the
    epochs after it. The freeze makes the order certain: the fault lands before training ends."""
    from tests.training.test_fine_tune import TRAIN_ARGS as BASE_ARGS

    TRAIN_ARGS = {**BASE_ARGS, "epochs": 3}

    prefix = f"runs/enospc-{uuid.uuid4().hex[:6]}/train"
    with tmpfs(tmp_path / "state-small", "64m") as small:
        save_dir = small / "train"
        train = functools.partial(
            fine_tune,
            weights="yolo11n.yaml",
            data_yaml=small_real_dataset,
            train_args=TRAIN_ARGS,
            save_dir=save_dir,
            store=object_store,
            run_prefix=prefix,
            poll_s=0.2,
        )
        stop = threading.Event()
        log_file = save_dir.parent / f"{save_dir.name}.log"
        filler, fired = _fill_disk_mid_training(
            save_dir / "results.csv",
            record_path(small, save_dir.name),
            object_store,
            f"{prefix}/weights/last.pt",
            small,
            log_file,
            stop,
        )
        try:
            with pytest.raises((TrainingFailed, OSError)) as err:
                train()
        finally:
            stop.set()
            filler.join()
        assert fired.get("filled"), "the disk was never filled: training ended before the fault"
        enospc = _enospc_seen(err.value, log_file)
        assert not (save_dir / COMPLETE_MARKER).exists()
        assert not object_store.exists(f"{prefix}/{COMPLETE_MARKER}")
        published = object_store.list(prefix)
        checkpoints = [key for key in published if key.endswith(".pt")]
        assert f"{prefix}/weights/last.pt" in checkpoints, published
        for key in published:  # every object at a final key matches its sha256; checkpoints load whole
            probe = object_store.get_file(key, tmp_path / "probe" / key)
            assert not key.endswith(".pt") or checkpoint_is_complete(probe), f"torn checkpoint published at {key}"
        published_epoch = checkpoint_state(tmp_path / "probe" / prefix / "weights" / "last.pt")["epoch"] + 1
        assert 1 <= published_epoch < TRAIN_ARGS["epochs"], published_epoch  # the fault stopped training early

        (small / "filler").unlink()
        result = train()
        assert (save_dir / COMPLETE_MARKER).exists() and object_store.exists(f"{prefix}/{COMPLETE_MARKER}")
        assert result.epochs_completed == TRAIN_ARGS["epochs"]
        assert result.epochs_trained_this_attempt == TRAIN_ARGS["epochs"] - published_epoch
        assert len(read_results(result.results_csv)) == TRAIN_ARGS["epochs"]
    reliability_log(
        "fault",
        "state dir out of space (tmpfs filled after epoch 1's checkpoint reached S3) during fine_tune",
        expected="ENOSPC in the child's log, no COMPLETE marker, no torn object in S3; re-run with space "
        "resumes from the S3 checkpoint",
        observed=f"disk filled with the child frozen after epoch {fired['paused_after_epoch']} of "
        f"{TRAIN_ARGS['epochs']}; {type(err.value).__name__}: {enospc}; "
        f"{len(published)} objects in S3 sha256-verified, "
        f"{len(checkpoints)} checkpoint(s) whole; re-run trained {result.epochs_trained_this_attempt} of "
        f"{result.epochs_completed} epochs and completed",
    )


# --- Prefect server restarted during a run --------------------------------------------------


RETRY_LINE = "Encountered retryable exception during request"  # prefect.client, DEBUG


def _retries_logged(output: Path) -> int:
    return output.read_text(errors="replace").count(RETRY_LINE) if output.exists() else 0


def _flow_run_outcome(api_url: str) -> tuple[str, str, dict[str, str]]:
    """(state type, state name, {task name: state type}) of the only flow run on the server."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tests.plugins.flow_runs import prefect_client

    with prefect_client(api_url) as client:
        (run,) = client.read_flow_runs()
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.state is not None
    return run.state.type.value, run.state.name, {t.name: t.state.type.value for t in tasks if t.state}


@pytest.mark.slow
def test_prefect_server_restart_mid_training_then_rerun_skips_finished_training(
    small_real_dataset, tmp_path, seaweedfs, monkeypatch, reliability_log
):
    """The server goes down in the last epoch and stays down until training has finished and the
    flow process has tried (and retried) the API: the fine_tune task's end, its logs and the next
    task's start all fall in the outage. Back up within the client's retry window, the run ends
    Completed with every task run Completed; a re-run does not train again."""
    # Its own database: PrefectServer takes PREFECT_HOME from this process (the session's state dir),
    # whose database holds the flow runs of every other test's server.
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-server" / "prefect"))
    server = PrefectServer(tmp_path / "prefect-server", port=free_port(), ui=False).start()
    state = tmp_path / "flow-state"
    s3_env = {**seaweedfs.env(), "PHASE2_S3_BUCKET": f"t-{uuid.uuid4().hex[:12]}"}
    params = {
        "data": str(small_real_dataset),
        "baseline": "yolo11n.yaml",
        # The outage is the subject: no export or label review in either of the two flows.
        "recipe_name": str(tiny_recipe_file(tmp_path, NO_EXPORT_NO_REVIEW, epochs=4)),
        "run_name": "server-restart",
    }
    # The client logs each failed attempt it will retry; that line is the proof of a call in the outage.
    env = flow_env(state, server.api_url, s3_env, PREFECT_LOGGING_LOGGERS_PREFECT_CLIENT_LEVEL="DEBUG")
    train_dir = state / "pipeline" / "server-restart" / "train"
    try:
        first = start_flow(state, env, **params)
        deadline = time.monotonic() + 400
        while len(read_results(train_dir / "results.csv")) < 3 and first.proc.poll() is None:
            assert time.monotonic() < deadline, "training never reached epoch 3"
            time.sleep(0.2)
        server.stop()
        down_at_epoch = len(read_results(train_dir / "results.csv"))
        retries_before = _retries_logged(first.output)
        down_since = time.monotonic()
        while not (train_dir / COMPLETE_MARKER).exists() or _retries_logged(first.output) == retries_before:
            assert first.proc.poll() is None, "the flow process ended while the server was down"
            assert time.monotonic() - down_since < 45, "training did not finish, or no API call was tried, in 45 s"
            time.sleep(0.2)
        time.sleep(2)  # the task transition after training (fine_tune ends, the next task starts)
        assert first.proc.poll() is None, "the flow process ended while the server was down"
        retried = _retries_logged(first.output) - retries_before
        outage = time.monotonic() - down_since
        server.start()
        code, output = first.wait(timeout=800)
        assert code == 0, output[-4000:]
        state_type, state_name, task_states = _flow_run_outcome(server.api_url)
        assert (state_type, state_name) == ("COMPLETED", "Completed"), (state_type, state_name)
        assert any(name.startswith("fine_tune") for name in task_states), task_states
        assert set(task_states.values()) == {"COMPLETED"}, task_states
        assert json.loads((train_dir / COMPLETE_MARKER).read_text())["epochs_completed"] == 4
        log_before = (train_dir.parent / "train.log").read_bytes()

        second = start_flow(state, env, **params)
        code2, output2 = second.wait(timeout=800)
        assert code2 == 0, output2[-4000:]
        assert (train_dir.parent / "train.log").read_bytes() == log_before  # training was not started again
    finally:
        server.stop()
    reliability_log(
        "fault",
        "Prefect server restarted during training (in-process flow)",
        expected="the flow process retries the API while the server is down; the run completes; "
        "re-run does not redo finished training",
        observed=f"server down after epoch {down_at_epoch} of 4 for {outage:.0f} s, until training had "
        f"finished; {retried} API call(s) retried meanwhile; first run {state_name} with "
        f"{len(task_states)} task runs Completed; re-run exit 0, training not redone",
    )


# --- SeaweedFS stopped in the middle of a registration --------------------------------------


class _StopsServerAfterFirstUpload(ObjectStore):
    """A real ObjectStore whose first file upload, once it has landed, stops the real server:
    the outage starts after the version is claimed and one file is written, before the rest."""

    def __init__(self, server: SeaweedFS) -> None:
        super().__init__(server.settings(), max_attempts=2, connect_timeout=1)
        self.server = server
        self.landed: list[str] = []

    def put_file(self, path: Path, key: str, *, if_none_match: bool = False, sha256: str | None = None) -> str:
        etag = super().put_file(path, key, if_none_match=if_none_match, sha256=sha256)
        self.landed.append(key)
        if len(self.landed) == 1:
            self.server.stop()
        return etag


def test_registration_interrupted_by_storage_outage_leaves_no_half_version(tmp_path, reliability_log):
    from tests.registry.test_registry import sample_files, sample_metadata

    server = SeaweedFS(tmp_path / "s3", ports=SeaweedPorts.free()).start()
    try:
        registry = Registry(ObjectStore(server.settings(), max_attempts=2, connect_timeout=1))
        registry.set_alias("production", registry.register(sample_files(tmp_path, "a"), sample_metadata()).version)
        aliases_before = registry.aliases()

        cut = _StopsServerAfterFirstUpload(server)
        with pytest.raises(StorageError) as info:
            Registry(cut).register(sample_files(tmp_path, "b"), sample_metadata())
        error = str(info.value)
        assert "\n" not in error and "cannot reach" in error and "versions/v2/" in error, error
        assert cut.landed == [registry.version_prefix(2) + "weights/best.pt"] and not server.is_running()

        server.start()  # the same data directory and ports
        half = sorted(key.removeprefix(registry.version_prefix(2)) for key in cut.list(registry.version_prefix(2)))
        assert half == [".claim", "weights/best.pt"], half  # claimed, one file written, no manifest
        assert [v.version for v in registry.list_versions()] == [1]
        with pytest.raises(RegistryError, match="v2 does not exist"):
            registry.get("v2")
        assert registry.get("latest").version == 1 and registry.aliases() == aliases_before

        fresh = registry.register(sample_files(tmp_path, "c"), sample_metadata())
        assert fresh.version == 3  # v2's number stays with its claim; nothing overwrites the half version
        assert [v.version for v in registry.list_versions()] == [1, 3] and registry.aliases() == aliases_before
        for version in registry.list_versions():
            registry.download(f"v{version.version}", tmp_path / "dl")  # complete and sha256-verified
    finally:
        server.stop()
    reliability_log(
        "fault",
        "SeaweedFS stopped during a registry upload, then restarted",
        expected="one-line error; no version without manifest; next registration works",
        observed=f"stopped after v2's first file landed: {error[:60]}...; v2 left as {half}, not listed, "
        "aliases unchanged; after restart next registration is v3, versions [1, 3] verified",
    )
