"""Model registry against a real SeaweedFS."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from phase2.evaluation.promotion import PromotionRule, decide_promotion
from phase2.infra.seaweedfs import SeaweedFS, SeaweedPorts
from phase2.registry.registry import IntegrityError, ModelVersion, PromotionConflict, Registry, RegistryError
from phase2.registry.storage import ObjectStore, StorageError
from tests.training.weights import yolo_checkpoint

NAME = "site-inspection-detector"


def sample_metrics(map5095: float, toe_ap50: float) -> dict:
    per_class = {
        name: {"precision": 0.7, "recall": 0.6, "AP50": 0.8, "AP50-95": 0.5, "instances": 40}
        for name in ("rock_toe", "slope_drain", "vegetation")
    }
    per_class["toe_drain"] = {"precision": 0.5, "recall": 0.4, "AP50": toe_ap50, "AP50-95": 0.3, "instances": 6}
    return {"overall": {"precision": 0.7, "recall": 0.6, "mAP50": 0.75, "mAP50-95": map5095}, "per_class": per_class}


def sample_files(tmp_path: Path, tag: str, size: int = 20_000) -> dict[str, Path]:
    folder = tmp_path / tag
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "best.pt").write_bytes(tag.encode() + os.urandom(size))
    (folder / "results.csv").write_text("epoch,metrics/mAP50-95(B)\n1,0.4\n")
    return {"weights/best.pt": folder / "best.pt", "results.csv": folder / "results.csv"}


def sample_metadata(**extra) -> dict:
    return {
        "metrics": {"val": sample_metrics(0.45, 0.7), "test": sample_metrics(0.42, 0.65)},
        "recipe": {"model": "yolo11n.yaml", "epochs": 1},
        "dataset": {"version_id": "ds-1", "manifest_sha256": "ab" * 32, "uri": "s3://b/datasets/ds-1/"},
        "baseline": {"reference": "yolo11n.yaml", "sha256": None},
        "wandb_run_path": "local/phase2/abc",
        "run_key": "run-1",
        **extra,
    }


def test_register_show_download_round_trip(object_store, tmp_path):
    registry = Registry(object_store)
    files = sample_files(tmp_path, "a")
    version = registry.register(files, sample_metadata())
    assert (version.name, version.version, version.ref) == (NAME, 1, f"{NAME}:v1")
    assert version.files["weights/best.pt"].sha256 == hashlib.sha256(files["weights/best.pt"].read_bytes()).hexdigest()
    assert version.files["weights/best.pt"].size == files["weights/best.pt"].stat().st_size
    assert version.ultralytics_version and version.torch_version and version.code_version
    assert version.metrics["test"]["per_class"]["toe_drain"]["AP50"] == 0.65
    manifest = json.loads(object_store.get_bytes(f"models/{NAME}/versions/v1/manifest.json")[0])
    for field in (
        "name",
        "version",
        "files",
        "metrics",
        "recipe",
        "dataset",
        "baseline",
        "code_version",
        "ultralytics_version",
        "torch_version",
        "wandb_run_path",
        "run_key",
        "created_at",
    ):
        assert field in manifest
    assert registry.register(sample_files(tmp_path, "b"), sample_metadata()).version == 2
    assert [v.version for v in registry.list_versions()] == [1, 2]
    registry.set_alias("production", 1)
    for ref in ("v1", "1", "production", f"{NAME}:production", f"{NAME}:v1"):
        assert registry.get(ref).version == 1
    assert registry.get("latest").version == 2
    folder = registry.download(f"{NAME}:production", tmp_path / "dl")
    assert folder == tmp_path / "dl" / f"{NAME}-v1"
    assert (folder / "weights/best.pt").read_bytes() == files["weights/best.pt"].read_bytes()
    assert json.loads((folder / "manifest.json").read_text())["version"] == 1
    assert registry.download("production", tmp_path / "dl") == folder  # identical: reused
    other = Registry(object_store, "other-model")
    other.register(sample_files(tmp_path, "o"), sample_metadata())
    assert registry.download("other-model:v1", tmp_path / "dl") == tmp_path / "dl" / "other-model-v1"


def test_manifest_location_registration_lookup_and_alias_target(object_store, tmp_path):
    registry = Registry(object_store)
    files = sample_files(tmp_path, "a")
    version = registry.register(files, sample_metadata(run_key="run-7"))
    assert registry.manifest_key(1) == f"models/{NAME}/versions/v1/manifest.json"
    assert registry.manifest_uri(1) == object_store.uri(registry.manifest_key(1))
    assert object_store.exists(registry.manifest_key(1))
    weights_sha256 = version.files["weights/best.pt"].sha256
    assert registry.find_registration("run-7", weights_sha256) == version
    assert registry.find_registration("run-8", weights_sha256) is None
    assert registry.find_registration("run-7", "0" * 64) is None
    assert registry.alias_target("production") is None
    registry.set_alias("production", 1)
    assert registry.alias_target("production") == version


def test_manifests_written_before_the_run_key_rename_still_read(object_store, tmp_path):
    registry = Registry(object_store)
    registry.register(sample_files(tmp_path, "a"), sample_metadata())
    manifest = json.loads(object_store.get_bytes(registry.manifest_key(1))[0])
    manifest["flow_run_id"] = manifest.pop("run_key")
    old = ModelVersion.model_validate_json(json.dumps(manifest))
    assert old.run_key == "run-1" and "flow_run_id" not in old.model_dump()
    legacy_metadata = {**sample_metadata(), "flow_run_id": "run-2"}
    legacy_metadata.pop("run_key")
    assert registry.register(sample_files(tmp_path, "b"), legacy_metadata).run_key == "run-2"


def test_bad_registrations_and_refs_are_refused(object_store, tmp_path):
    registry = Registry(object_store)
    with pytest.raises(ValueError, match="epochz"):
        registry.register(sample_files(tmp_path, "a"), sample_metadata(epochz=3))
    with pytest.raises(RegistryError, match="bad file name"):
        registry.register({"../evil.pt": sample_files(tmp_path, "b")["weights/best.pt"]}, sample_metadata())
    with pytest.raises(RegistryError, match="not a file"):
        registry.register({"best.pt": tmp_path / "missing.pt"}, sample_metadata())
    with pytest.raises(RegistryError, match="does not exist"):
        registry.set_alias("production", 7)
    with pytest.raises(RegistryError, match="no alias 'production'"):
        registry.get("production")
    with pytest.raises(RegistryError, match="bad alias"):
        registry.set_alias("v2", 1)
    assert registry.list_versions() == []


def test_crashed_writer_leaves_no_visible_version(object_store, tmp_path):
    registry = Registry(object_store)
    # A writer claimed v1, uploaded its weights and died before the manifest.
    object_store.put_bytes(f"models/{NAME}/versions/v1/.claim", b"dead writer", if_none_match=True)
    object_store.put_bytes(f"models/{NAME}/versions/v1/weights/best.pt", b"partial")
    assert registry.list_versions() == []
    with pytest.raises(RegistryError, match="v1 does not exist"):
        registry.set_alias("candidate", 1)
    assert registry.register(sample_files(tmp_path, "a"), sample_metadata()).version == 2
    assert [v.version for v in registry.list_versions()] == [2]


def test_eight_parallel_registrations_and_alias_moves(object_store, tmp_path):
    registry = Registry(object_store)
    inputs = [sample_files(tmp_path, f"w{i}") for i in range(8)]

    def register_and_alias(i: int) -> int:
        version = Registry(object_store).register(inputs[i], sample_metadata(run_key=f"run-{i}"))
        registry.set_alias("candidate", version.version)
        registry.set_alias(f"worker{i}", version.version)
        return version.version

    with ThreadPoolExecutor(8) as pool:
        numbers = list(pool.map(register_and_alias, range(8)))
    assert sorted(numbers) == list(range(1, 9))
    versions = registry.list_versions()
    assert [v.version for v in versions] == list(range(1, 9))
    for i, number in enumerate(numbers):  # each version holds exactly its writer's files
        version = registry.get(f"v{number}")
        assert version.run_key == f"run-{i}"
        folder = registry.download(f"v{number}", tmp_path / "dl")
        assert (folder / "weights/best.pt").read_bytes() == inputs[i]["weights/best.pt"].read_bytes()
    aliases = registry.aliases()
    assert {f"worker{i}": numbers[i] for i in range(8)}.items() <= aliases.items()  # no lost update
    assert aliases["candidate"] in numbers


def test_tampered_weights_fail_download_and_leave_nothing(object_store, tmp_path, reliability_log):
    registry = Registry(object_store)
    version = registry.register(sample_files(tmp_path, "a"), sample_metadata())
    key = f"models/{NAME}/versions/v{version.version}/weights/best.pt"
    data = bytearray(object_store.get_bytes(key)[0])
    data[len(data) // 2] ^= 0x01
    object_store.put_bytes(key, bytes(data))  # tamperer even writes matching object metadata
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match=r"file 'weights/best.pt' .* does not match the sha256 in its manifest"):
        registry.download("v1", dest)
    assert list(dest.iterdir()) == []
    with pytest.raises(IntegrityError):
        registry.resolve_reference(f"{NAME}:v1", cache_dir=tmp_path / "cache")
    reliability_log(
        "bad input",
        "tampered registry file (weights bytes changed after registration)",
        expected="IntegrityError against the manifest sha256; nothing left on disk",
        observed="IntegrityError; download dir empty; resolve refused",
    )


def test_resolve_reference_local_s3_and_registry(object_store, tmp_path):
    registry = Registry(object_store)
    files = sample_files(tmp_path, "a")
    yolo_checkpoint(files["weights/best.pt"])  # resolved weights are loaded (weights-only) first
    expected = files["weights/best.pt"].read_bytes()
    registry.set_alias("production", registry.register(files, sample_metadata()).version)
    assert registry.resolve_reference(str(files["weights/best.pt"])) == files["weights/best.pt"].resolve()
    object_store.put_file(files["weights/best.pt"], "baselines/base.pt")
    cache = tmp_path / "cache"
    from_s3 = registry.resolve_reference(object_store.uri("baselines/base.pt"), cache_dir=cache)
    assert from_s3.is_relative_to(cache) and from_s3.read_bytes() == expected
    from_registry = registry.resolve_reference(f"{NAME}:production", cache_dir=cache)
    assert from_registry.name == "best.pt" and from_registry.read_bytes() == expected
    with pytest.raises(RegistryError, match="no such file, and not an s3:// URI"):
        registry.resolve_reference("nothing-here.pt", cache_dir=cache)


RULE = PromotionRule(  # sample_metrics' toe_drain has 6 instances: min_instances 5 lets its floor decide
    metric="mAP50-95",
    margin=0.01,
    per_class_min={"toe_drain": {"AP50": 0.6}},
    absolute_min={"mAP50-95": 0.3},
    min_instances=5,
)


def test_apply_promotion_moves_aliases_and_detects_conflict(object_store, tmp_path):
    registry = Registry(object_store)
    v1 = registry.register(sample_files(tmp_path, "a"), sample_metadata()).version
    v2 = registry.register(sample_files(tmp_path, "b"), sample_metadata()).version
    v3 = registry.register(sample_files(tmp_path, "c"), sample_metadata()).version
    first = decide_promotion(sample_metrics(0.4, 0.7), None, RULE)
    assert registry.apply_promotion(first, v1) == {"candidate": v1, "production": v1}
    refused = decide_promotion(sample_metrics(0.3, 0.7), sample_metrics(0.4, 0.7), RULE, production_version=v1)
    assert registry.apply_promotion(refused, v2) == {"candidate": v2, "production": v1}
    stale = decide_promotion(sample_metrics(0.5, 0.7), sample_metrics(0.4, 0.7), RULE, production_version=v1)
    registry.set_alias("production", v2)  # someone promoted meanwhile
    with pytest.raises(PromotionConflict, match=f"moved to v{v2}"):
        registry.apply_promotion(stale, v3)
    assert registry.aliases()["production"] == v2


def test_registration_while_storage_is_down_then_restarted(tmp_path):
    """Storage down before a registration starts (the outage mid-registration is a reliability row in
    tests/infra/test_reliability.py)."""
    server = SeaweedFS(tmp_path / "state", ports=SeaweedPorts.free()).start()
    try:
        store = ObjectStore(server.settings(), max_attempts=2, connect_timeout=1)
        registry = Registry(store)
        registry.register(sample_files(tmp_path, "a"), sample_metadata())
        server.stop()
        with pytest.raises(StorageError, match="cannot reach") as info:
            registry.register(sample_files(tmp_path, "b"), sample_metadata())
        assert "\n" not in str(info.value)
        server.start()
        assert [v.version for v in registry.list_versions()] == [1]  # nothing torn published
        assert registry.register(sample_files(tmp_path, "c"), sample_metadata()).version == 2
        for version in registry.list_versions():
            registry.download(f"v{version.version}", tmp_path / "dl")  # all complete, sha256 verified
    finally:
        server.stop()


def test_cli_list_show_promote_download(object_store, tmp_path):
    from typer.testing import CliRunner

    from phase2.cli import app

    registry = Registry(object_store)
    for tag in ("a", "b"):
        registry.register(sample_files(tmp_path, tag), sample_metadata())
    runner = CliRunner()
    promoted = runner.invoke(app, ["models", "promote", f"{NAME}:v2", "--alias", "production"])
    assert promoted.exit_code == 0 and "production unset -> v2" in promoted.output
    listed = runner.invoke(app, ["models", "list"])
    assert listed.exit_code == 0 and "2 version(s)" in listed.output and "0.4500" in listed.output
    assert "production" in listed.output.splitlines()[-1]
    shown = runner.invoke(app, ["models", "show", f"{NAME}:production"])
    assert shown.exit_code == 0 and json.loads(shown.output)["version"] == 2
    downloaded = runner.invoke(app, ["models", "download", f"{NAME}:production", "--to", str(tmp_path / "out")])
    assert downloaded.exit_code == 0 and Path(downloaded.output.strip()) == tmp_path / "out" / f"{NAME}-v2"
    key = f"models/{NAME}/versions/v1/weights/best.pt"
    object_store.put_bytes(key, b"tampered")
    refused = runner.invoke(app, ["models", "download", f"{NAME}:v1", "--to", str(tmp_path / "out2")])
    assert refused.exit_code == 1 and "weights/best.pt" in refused.output and "Traceback" not in refused.output
    assert list((tmp_path / "out2").iterdir()) == []
    missing = runner.invoke(app, ["models", "show", f"{NAME}:staging"])
    assert missing.exit_code == 1 and "no alias 'staging'" in missing.output
