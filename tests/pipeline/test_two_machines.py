"""Two machines, not one: a run whose worker dies mid-training continues on another worker that
shares only the Prefect API and the bucket.

Each "machine" is a process worker with its own state dir (its own pipeline folders, W&B dir,
Ultralytics and Prefect homes); the two share one Prefect server (its own, started here) and one
S3 bucket, nothing else (the small dataset copy stands for a shared data mount). Machine A's
worker and flow-run process are killed mid-training and A's state dir is deleted, so nothing can
be read from it. `recover` marks the run Crashed (webhook sent, the deployment's one slot freed);
the same run re-run on machine B resumes from the checkpoint in S3 and completes with the same
W&B run id, a complete registry version and the report.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from phase2.infra import notifications
from phase2.infra.files import sha256_file
from phase2.infra.prefect_stack import PrefectServer, PrefectWorker, free_port, run_prefect
from phase2.infra.processes import process_alive, read_record, record_path
from phase2.infra.recovery import recover_orphaned_runs
from phase2.infra.settings import PROJECT_ROOT
from phase2.infra.tracking import offline_history
from phase2.registry.registry import Registry
from phase2.runs import RunLayout, flow_run_summary_path
from tests.plugins.flow_runs import flow_env, flow_run_id, prefect_client, tiny_recipe_file, trigger, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

EPOCHS = 4


def machine_env(state: Path, api_url: str, s3_env: dict[str, str], pool: str) -> dict[str, str]:
    """What a worker host has: its own state dir and Prefect home; the shared API and bucket."""
    return flow_env(
        state,
        api_url,
        s3_env,
        PREFECT_HOME=str(state / "prefect"),
        PREFECT_CLI_PROMPT="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PHASE2_WORK_POOL=pool,
        PHASE2_PROJECT_DIR=str(PROJECT_ROOT),
    )


def _rows(results_csv: Path) -> int:
    try:
        return len(results_csv.read_text().strip().splitlines()) - 1
    except OSError:
        return 0


def wandb_runs(state: Path) -> list[Path]:
    return sorted((state / "wandb").glob("**/offline-run-*"))


def test_run_killed_on_one_machine_completes_on_another_from_s3(
    seaweedfs, object_store, small_real_dataset, tmp_path, webhook_receiver, monkeypatch, reliability_log
):
    pool, run_name = f"two-machines-{uuid.uuid4().hex[:6]}", f"two-machines-{uuid.uuid4().hex[:6]}"
    store = object_store  # a new bucket, shared by the two machines
    s3_env = {**seaweedfs.env(), "PHASE2_S3_BUCKET": os.environ["PHASE2_S3_BUCKET"]}
    monkeypatch.setenv(notifications.WEBHOOK_ENV, webhook_receiver.url)  # `recover` here notifies it
    # The shared API's own database (PrefectServer takes PREFECT_HOME from this process, where the
    # session's state dir set it): the deployment created here must not replace the session stack's.
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "api" / "prefect"))
    api = PrefectServer(tmp_path / "api", port=free_port(), ui=False).start()
    machine_a, machine_b = tmp_path / "machine-a", tmp_path / "machine-b"
    env_a, env_b = (machine_env(m, api.api_url, s3_env, pool) for m in (machine_a, machine_b))
    params = {
        "data": str(small_real_dataset),
        "baseline": "yolo11n.yaml",
        # Checkpoints to S3 every 5 s instead of the default minute: the kill needs one there.
        "recipe_name": str(
            tiny_recipe_file(tmp_path, {"checkpoints": {"upload_interval_s": 5}}, epochs=EPOCHS, plots=False)
        ),
        "model_name": run_name,
        "run_name": run_name,
    }
    worker_a, worker_b = PrefectWorker(machine_a, pool=pool), PrefectWorker(machine_b, pool=pool)
    try:
        template = str(PROJECT_ROOT / "deployments" / "process.json")
        run_prefect(["work-pool", "create", pool, "--type", "process", "--base-job-template", template], env_a)
        run_prefect(["deploy", "--name", "train"], env_a, timeout=300)

        # Machine A takes the run (the only worker).
        worker_a.start(env_a)
        started = subprocess.run(
            trigger("train", params, watch_timeout=None), env=env_a, capture_output=True, text=True, timeout=120
        )
        first_id = flow_run_id(started.stdout + started.stderr)
        train_a = machine_a / "pipeline" / run_name / "train"
        # Machine A's training child is frozen (SIGSTOP) once epoch 2 is in results.csv (so epoch 1's
        # last.pt is whole on disk) and the host is killed once a checkpoint is in S3: on a quiet
        # machine tiny epochs are faster than the uploader's stable-file poll, so without the freeze
        # the first upload could come only after training ended.
        record_file = record_path(train_a.parent, train_a.name)
        wait_until(lambda: _rows(train_a / "results.csv") >= 2 or None, 600, "epoch 2 on machine A", poll=0.02)
        training = read_record(record_file)
        assert training is not None, f"no pid record of machine A's training at {record_file}"
        os.killpg(training.pid, signal.SIGSTOP)
        wait_until(lambda: store.exists(f"runs/{run_name}/train/weights/last.pt"), 120, "a last.pt in S3")
        with prefect_client(api.api_url) as client:
            flow_pid = int(client.read_flow_run(first_id).infrastructure_pid)
        os.killpg(worker_a.record().pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):  # the whole host goes: flow-run process, training
            os.kill(flow_pid, signal.SIGKILL)
        os.killpg(training.pid, signal.SIGKILL)
        for pid, created in ((flow_pid, None), (training.pid, training.created_at)):
            wait_until(lambda p=pid, c=created: not process_alive(p, c), 30, f"machine A's process {pid} gone")
        epochs_on_a = _rows(train_a / "results.csv")
        assert epochs_on_a < EPOCHS, "training finished on machine A before the kill; make it longer"
        (run_a,) = wandb_runs(machine_a)
        history_a = [r["epoch"] for r in offline_history(run_a) if "metrics/mAP50" in r]
        shutil.rmtree(machine_a)  # machine A is gone: nothing of it can be read from now on

        with prefect_client(api.api_url) as client:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: api.api_url}):
                assert first_id in [str(r.id) for r in recover_orphaned_runs()]
            assert client.read_flow_run(first_id).state.is_crashed()
        crashed = webhook_receiver.wait_for("crashed")
        assert crashed["flow_run_id"] == first_id and f"{flow_pid} is gone" in crashed["message"]

        # Machine B re-runs the same run: only the API and the bucket lead it to A's progress. The
        # deployment runs one at a time: B's run starts only because `recover` freed A's slot.
        worker_b.start(env_b)
        second = subprocess.run(trigger("train", params), env=env_b, capture_output=True, text=True, timeout=800)
        output = second.stdout + second.stderr
        assert second.returncode == 0, output[-4000:]
        second_id = flow_run_id(output)
        with prefect_client(api.api_url) as client:
            assert client.read_flow_run(second_id).state.is_completed()
    finally:
        worker_b.stop()
        with contextlib.suppress(OSError):
            worker_a.stop()
        api.stop()

    assert not machine_a.exists()
    train_b = machine_b / "pipeline" / run_name / "train"
    summary = json.loads(flow_run_summary_path(second_id, machine_b).read_text())
    complete = json.loads((train_b / "COMPLETE.json").read_text())
    # Resumed from the checkpoint machine A published (B never trained those epochs), to the end.
    resumed = complete["resumed_from_epoch"]
    assert resumed is not None and 1 <= resumed <= epochs_on_a, f"machine B did not resume from S3: {complete}"
    assert complete["epochs_completed"] == EPOCHS
    assert complete["epochs_trained_this_attempt"] == EPOCHS - complete["resumed_from_epoch"]
    # The same W&B run id on both hosts; B logs only the epochs it trained. (A's offline W&B files may
    # lack its last epochs: a host killed with -9 loses what its W&B service had not written yet;
    # online, they would have been streamed.)
    (run_b,) = wandb_runs(machine_b)
    assert summary["wandb_run"] == f"offline:{run_b}"
    assert run_a.name.endswith(f"-{run_name}") and run_b.name.endswith(f"-{run_name}")  # offline-run-<time>-<id>
    history_b = [r["epoch"] for r in offline_history(run_b) if "metrics/mAP50" in r]
    assert history_b == list(range(complete["resumed_from_epoch"] + 1, EPOCHS + 1))
    # A complete registry version: every file in its manifest downloads with a matching sha256.
    registry = Registry(store, run_name)
    version = registry.get(summary["model"])
    downloaded = registry.download(version.ref, tmp_path / "download")
    assert {p.relative_to(downloaded).as_posix() for p in downloaded.rglob("*") if p.is_file()} >= set(version.files)
    assert version.files["weights/best.pt"].sha256 == sha256_file(downloaded / "weights" / "best.pt")
    # The report, in the bucket and on machine B.
    report_key = summary["report"].split("/", 3)[3]
    layout_b = RunLayout.for_run(run_name, machine_b)
    assert report_key == layout_b.report_html_key and store.exists(report_key)
    assert layout_b.report_html.stat().st_size > 0
    # Nothing was read from machine A: its state dir was deleted before B started, and B completed.
    # (B's train.log may still name A's paths: Ultralytics prints the train args stored in the
    # checkpoint it resumes, which are A's.)
    reliability_log(
        "fault",
        "worker killed mid-run (flow-run process gone)",
        expected="run marked Crashed, slot freed, webhook sent; re-run resumes training",
        observed=f"Crashed by `recover` (webhook 'crashed' received); the re-run got the deployment's one slot, "
        f"resumed after epoch {complete['resumed_from_epoch']} and completed {EPOCHS} epochs",
    )
    reliability_log(
        "fault",
        "worker host lost mid-training; the run re-run on another host (own state dir; shared API and bucket only)",
        expected="resumes from the S3 checkpoint on the second host; same W&B run id; complete registry version "
        "and report; nothing read from the first host's state dir",
        observed=f"host A killed after {epochs_on_a} of {EPOCHS} epochs and its state dir deleted; host B resumed "
        f"after epoch {complete['resumed_from_epoch']} from S3 and completed; W&B run {run_name} epochs "
        f"{history_a} on A + {history_b} on B; {version.ref} downloaded with {len(version.files)} files "
        "sha256-verified; report in S3",
    )
