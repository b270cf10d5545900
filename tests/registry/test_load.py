"""Load on one SeaweedFS bucket and one registry.

- 8 concurrent pipeline tails (register → decide promotion → promote) in 8 processes, each with its
  own tiny checkpoint (fast: runs in CI);
- 8 concurrent whole phase2 flows on tiny data (slow: `make reliability`).

Both assert every version distinct and complete, aliases consistent, and every file present with
the sha256 it was registered with.
"""

from __future__ import annotations

import multiprocessing
import random
import time
import uuid
from pathlib import Path

import pytest

from phase2.evaluation.promotion import PromotionRule, promote_with_retry
from phase2.infra.files import sha256_file
from phase2.infra.settings import S3Settings
from phase2.registry.registry import ModelVersion, Registry
from phase2.registry.storage import ObjectStore

WRITERS = 8
RULE = PromotionRule(metric="mAP50-95", max_drop=0.0, absolute_min={"mAP50-95": 0.0})


def _registered_val_metrics(production: ModelVersion) -> dict:
    return production.metrics["val"]


def _register_and_promote(args: tuple[dict, dict[str, str], float, float]) -> tuple[int, int]:
    """One pipeline tail: register, then promote if better than production, by the library's
    promotion loop (re-decided on conflict). Returns (version, promotion attempts)."""
    settings, files, score, start_at = args
    registry = Registry(ObjectStore(S3Settings.model_validate(settings)), "load-model")
    metrics = {"overall": {"mAP50-95": score, "mAP50": score}, "per_class": {}}
    time.sleep(max(0.0, start_at - time.time()))  # all writers hit the bucket together
    version = registry.register(
        {k: Path(v) for k, v in files.items()}, {"metrics": {"val": metrics}, "run_key": f"load-{score}"}
    )
    conflicts: list[str] = []
    promote_with_retry(registry, version.version, metrics, RULE, _registered_val_metrics, log=conflicts.append)
    return version.version, len(conflicts) + 1


def _tiny_checkpoint(path: Path, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    torch.save({"epoch": -1, "model": {"w": torch.randn(64, 64)}, "train_args": {"seed": seed}}, path)
    return path


def test_eight_concurrent_registrations_and_promotions(object_store, tmp_path, reliability_log):
    scores = random.Random(0).sample([round(0.1 + 0.05 * i, 2) for i in range(WRITERS)], WRITERS)
    jobs, local = [], {}
    for i, score in enumerate(scores):
        folder = tmp_path / f"run{i}"
        folder.mkdir()
        files = {"weights/best.pt": _tiny_checkpoint(folder / "best.pt", i), "results.csv": folder / "results.csv"}
        files["results.csv"].write_text(f"epoch,metrics/mAP50-95(B)\n1,{score}\n")
        local[score] = {rel: sha256_file(p) for rel, p in files.items()}
        jobs.append(
            (
                object_store.settings.model_dump(mode="json")
                | {
                    "access_key_id": object_store.settings.access_key_id.get_secret_value(),
                    "secret_access_key": object_store.settings.secret_access_key.get_secret_value(),
                },
                {k: str(v) for k, v in files.items()},
                score,
                time.time() + 6,
            )
        )
    with multiprocessing.get_context("spawn").Pool(WRITERS) as pool:
        outcomes = pool.map(_register_and_promote, jobs, chunksize=1)

    registry = Registry(object_store, "load-model")
    versions = registry.list_versions()
    numbers = [v for v, _ in outcomes]
    assert sorted(numbers) == list(range(1, WRITERS + 1)) == [v.version for v in versions]
    by_score = {v.metrics["val"]["overall"]["mAP50-95"]: v for v in versions}
    assert sorted(by_score) == sorted(scores)
    for score, version in by_score.items():  # each version holds exactly its writer's files
        assert {rel: entry.sha256 for rel, entry in version.files.items()} == local[score]
        folder = registry.download(f"v{version.version}", tmp_path / "downloads")
        assert {rel: sha256_file(folder / rel) for rel in version.files} == local[score]
    aliases = registry.aliases()
    assert aliases["production"] == by_score[max(scores)].version, "production must end on the best candidate"
    assert aliases["candidate"] in numbers and set(aliases) == {"candidate", "production"}
    claims = {k.split("/")[3] for k in object_store.list("models/load-model/versions/")}
    assert claims == {f"v{n}" for n in numbers}, "no orphaned claim without a manifest"
    conflicts = sum(attempts - 1 for _, attempts in outcomes)
    reliability_log(
        "load",
        f"{WRITERS} concurrent register + promote (8 processes, one bucket, one registry)",
        tried=WRITERS,
        expected="8 distinct complete versions, every file's sha256 matches, "
        "production = best candidate, no lost alias update",
        observed=f"versions {sorted(numbers)}; {WRITERS * 2} files verified; production "
        f"v{aliases['production']} (best); {conflicts} promotion conflicts re-decided",
    )


@pytest.mark.slow
def test_eight_concurrent_flows_on_one_registry(seaweedfs, small_real_dataset, tmp_path, reliability_log):
    """8 whole phase2 flows at once (own process and state dir each, tiny data, 1 epoch) against one
    Prefect server, one SeaweedFS bucket and one registry."""
    from phase2.infra.prefect_stack import PrefectServer, free_port
    from tests.plugins.flow_runs import NO_EXPORT_NO_REVIEW, flow_env, start_flow, tiny_recipe_file

    bucket = f"load-{uuid.uuid4().hex[:8]}"
    s3_env = {**seaweedfs.env(), "PHASE2_S3_BUCKET": bucket}
    store = ObjectStore(
        S3Settings(
            endpoint_url=s3_env["PHASE2_S3_ENDPOINT"],
            bucket=bucket,
            access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
            secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        )
    )
    store.ensure_bucket()
    # What is under load is the registry, not the stages around it: no Ultralytics training plots
    # (seaborn label plots, ~10 CPU-s a flow), no export, no label review.
    recipe = tiny_recipe_file(tmp_path, NO_EXPORT_NO_REVIEW, epochs=1, save_period=-1, plots=False)
    server = PrefectServer(tmp_path / "server", port=free_port(), ui=False).start()
    try:
        flows = [
            start_flow(
                tmp_path / f"state{i}",
                flow_env(tmp_path / f"state{i}", server.api_url, s3_env),
                data=str(small_real_dataset),
                baseline="yolo11n.yaml",
                recipe_name=str(recipe),
                model_name="load-flows",
                run_name=f"load-{i}",
            )
            for i in range(WRITERS)
        ]
        results = [flow.wait(timeout=1500) for flow in flows]
    finally:
        server.stop()
    assert all(code == 0 for code, _ in results), [out[-2000:] for code, out in results if code]

    registry = Registry(store, "load-flows")
    versions = registry.list_versions()
    assert sorted(v.version for v in versions) == list(range(1, WRITERS + 1))
    assert sorted(v.run_key for v in versions) == sorted(f"load-{i}" for i in range(WRITERS))
    checked = 0
    for version in versions:  # every registered file present, with the sha256 of its manifest
        folder = registry.download(version.ref, tmp_path / "downloads")
        for relpath, entry in version.files.items():
            assert sha256_file(folder / relpath) == entry.sha256
            checked += 1
    aliases = registry.aliases()
    assert aliases["candidate"] in {v.version for v in versions}
    assert "production" not in aliases or aliases["production"] in {v.version for v in versions}
    reliability_log(
        "load",
        "8 concurrent whole phase2 flows (tiny data, 1 epoch), one SeaweedFS and registry",
        tried=WRITERS,
        expected="8 distinct complete versions, aliases on complete versions, every file's sha256 matches its manifest",
        observed=f"versions {sorted(v.version for v in versions)}; {checked} files verified; aliases {aliases}",
    )
