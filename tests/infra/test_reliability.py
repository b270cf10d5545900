"""Faults and bad inputs the other suites don't make: bad storage settings through the CLI, data.yaml
paths escaping the root, a full disk, an unwritable W&B directory, a Prefect server restarted
mid-run. Real services and real filesystems (tmpfs mounts; skipped where mount is not permitted).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from phase2.dataset.validation import validate_dataset
from phase2.infra.prefect_stack import PrefectServer, free_port
from phase2.infra.settings import PROJECT_ROOT
from phase2.training.fine_tune import COMPLETE_MARKER, TrainingFailed, checkpoint_is_complete, fine_tune, read_results
from tests.dataset.builders import edit_yaml, make_dataset, noise_jpeg, yaml_line
from tests.plugins.flow_runs import flow_env, start_flow, tiny_recipe_file

PHASE2 = str(Path(sys.executable).with_name("phase2"))
WRONG_SECRET = "wrong-canary-secret-Kd82jsLq0"


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *options: str) -> Iterator[Path]:
    """A small tmpfs at `path` (we run as root in CI); skips the test where mount is refused."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        reason = f"cannot mount a tmpfs here ({mount.stderr.strip() or 'not permitted'})"
        if os.environ.get("CI"):  # CI runs as root: a fault test that cannot make its fault fails there
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


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
        "endpoint-down": "cannot reach",
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
    report = validate_dataset(root / "data.yaml", imgsz=64, minority_val_target=0)
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
    import shutil

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


@pytest.mark.slow
def test_full_disk_during_training_fails_clearly_then_completes_with_space(
    small_real_dataset, tmp_path, object_store, reliability_log
):
    from tests.training.test_fine_tune import TRAIN_ARGS

    prefix = f"runs/enospc-{uuid.uuid4().hex[:6]}/train"
    with tmpfs(tmp_path / "state-small", "8m") as small:
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
        with pytest.raises((TrainingFailed, OSError)) as err:
            train()
        message = str(err.value)
        assert "no space left" in message.lower().split("\n")[0], message[-3000:]
        assert not (save_dir / COMPLETE_MARKER).exists()
        assert not object_store.exists(f"{prefix}/{COMPLETE_MARKER}")
        published = object_store.list(prefix)
        for key in published:  # every object at a final key is whole and verified
            data, _ = object_store.get_bytes(key)
            if key.endswith(".pt"):
                probe = tmp_path / "probe.pt"
                probe.write_bytes(data)
                assert checkpoint_is_complete(probe), f"torn checkpoint published at {key}"

        subprocess.run(["mount", "-o", "remount,size=512m", str(small)], check=True)
        result = train()
        assert (save_dir / COMPLETE_MARKER).exists() and object_store.exists(f"{prefix}/{COMPLETE_MARKER}")
        assert (
            result.epochs_completed == TRAIN_ARGS["epochs"]
            and len(read_results(result.results_csv)) == TRAIN_ARGS["epochs"]
        )
    reliability_log(
        "fault",
        "state dir out of space (8 MB tmpfs) during fine_tune",
        expected="clear failure (ENOSPC), no COMPLETE marker, no torn object in S3; re-run with space completes",
        observed=f"{type(err.value).__name__} with ENOSPC; {len(published)} whole objects in S3; "
        f"re-run trained {result.epochs_trained_this_attempt} epoch(s) and completed",
    )


# --- Prefect server restarted during a run --------------------------------------------------


@pytest.mark.slow
def test_prefect_server_restart_mid_training_then_rerun_skips_finished_training(
    small_real_dataset, tmp_path, seaweedfs, reliability_log
):
    server = PrefectServer(tmp_path / "prefect-server", port=free_port(), ui=False).start()
    state = tmp_path / "flow-state"
    s3_env = {**seaweedfs.env(), "PHASE2_S3_BUCKET": f"t-{uuid.uuid4().hex[:12]}"}
    params = {
        "data": str(small_real_dataset),
        "baseline": "yolo11n.yaml",
        "recipe_name": str(tiny_recipe_file(tmp_path, epochs=4)),
        "run_name": "server-restart",
    }
    env = flow_env(state, server.api_url, s3_env)
    train_dir = state / "pipeline" / "server-restart" / "train"
    try:
        first = start_flow(state, env, **params)
        deadline = time.monotonic() + 400
        while len(read_results(train_dir / "results.csv")) < 1 and first.proc.poll() is None:
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.5)
        server.stop()
        down_at_epoch = len(read_results(train_dir / "results.csv"))
        time.sleep(5)
        server.start()
        code, output = first.wait(timeout=800)
        completed_first = (train_dir / COMPLETE_MARKER).exists()
        if code != 0:  # failing is allowed, but clearly: the last lines say what went wrong
            assert any(w in output for w in ("ConnectError", "Connection refused", "httpx", "Crashed", "Failed")), (
                output[-3000:]
            )
        log_before = (train_dir.parent / "train.log").read_bytes()

        second = start_flow(state, env, **params)
        code2, output2 = second.wait(timeout=800)
        assert code2 == 0, output2[-4000:]
        assert (train_dir / COMPLETE_MARKER).exists()
        result = json.loads((train_dir / COMPLETE_MARKER).read_text())
        assert result["epochs_completed"] == 4
        if completed_first:  # finished training is not redone: the child was not started again
            assert (train_dir.parent / "train.log").read_bytes() == log_before
    finally:
        server.stop()
    reliability_log(
        "fault",
        "Prefect server restarted during training (in-process flow)",
        expected="run finishes or fails clearly; re-run completes without redoing finished training",
        observed=f"server down after epoch {down_at_epoch}; first run exit {code} "
        f"({'training complete' if completed_first else 'training incomplete'}); "
        f"re-run exit 0, training {'not redone' if completed_first else 'resumed'}",
    )
