"""What someone with write access to the bucket can plant next to real versions, and that the
registry refuses it: manifests whose file names leave the download folder, and pickles that run
code although their sha256 matches the manifest. Real SeaweedFS, real torch pickles."""

from __future__ import annotations

import json

import pytest

from phase2.infra.files import sha256_bytes
from phase2.registry.registry import IntegrityError, Registry
from phase2.registry.storage import StorageError
from phase2.training.checkpoints import UnsafeCheckpoint
from tests.registry.test_registry import NAME, sample_files, sample_metadata
from tests.training.weights import malicious_checkpoint, yolo_checkpoint

PLANTED = b"planted by a crafted manifest"
# (name in a manifest, whether SeaweedFS stores an object under that key: it refuses keys with
# '.'/'..' segments, AWS S3 does not; the manifest is planted either way)
BAD_NAMES = [
    ("{abs}/escaped.pt", True),
    ("weights//best.pt", True),
    ("../escaped.pt", False),
    ("weights/../../escaped.pt", False),
    ("weights\\..\\escaped.pt", False),
    ("./best.pt", False),
]


@pytest.mark.parametrize(("bad_name", "storable"), BAD_NAMES)
def test_crafted_manifest_with_a_name_outside_the_version_is_refused(object_store, tmp_path, bad_name, storable):
    registry = Registry(object_store)
    real = registry.register(sample_files(tmp_path / "src", "a"), sample_metadata())
    bad_name = bad_name.format(abs=tmp_path / "abs")
    # The attacker plants v2: the file and a manifest whose sha256 and size match it.
    if storable:
        object_store.put_bytes(registry.version_prefix(2) + bad_name, PLANTED)
    else:
        with pytest.raises(StorageError, match="InvalidRequest"):
            object_store.put_bytes(registry.version_prefix(2) + bad_name, PLANTED)
    manifest = real.model_dump(mode="json") | {
        "version": 2,
        "files": {bad_name: {"sha256": sha256_bytes(PLANTED), "size": len(PLANTED)}},
    }
    object_store.put_bytes(registry.manifest_key(2), json.dumps(manifest).encode())

    dest = tmp_path / "work" / "downloads"
    dest.mkdir(parents=True)
    for call in (
        lambda: registry.get("v2"),
        lambda: registry.get(f"{NAME}:latest"),
        registry.list_versions,
        lambda: registry.download("v2", dest),
        lambda: registry.resolve_reference(f"{NAME}:v2", cache_dir=tmp_path / "work" / "cache"),
    ):
        with pytest.raises(IntegrityError) as refused:
            call()
        message = str(refused.value)
        assert f"{NAME}:v2" in message and repr(bad_name) in message and "bad file name" in message, message

    planted = [p for p in tmp_path.rglob("*") if p.is_file() and p.read_bytes() == PLANTED]
    assert planted == [], f"written by a refused download: {planted}"
    assert list(dest.iterdir()) == []
    # The real version next to it is untouched and still usable.
    assert registry.get("v1") == real
    assert (registry.download("v1", dest) / "weights" / "best.pt").is_file()


def test_malicious_pickle_with_a_matching_sha256_is_never_unpickled(object_store, tmp_path):
    registry = Registry(object_store)
    marker = tmp_path / "code-ran"
    evil = malicious_checkpoint(tmp_path / "src" / "best.pt", marker)
    version = registry.register({"weights/best.pt": evil}, sample_metadata())
    object_store.put_file(evil, "baselines/evil.pt")  # with its own (correct) sha256 metadata

    for reference in (f"{NAME}:v{version.version}", object_store.uri("baselines/evil.pt"), str(evil)):
        with pytest.raises(UnsafeCheckpoint, match=r"best\.pt|evil\.pt") as refused:
            registry.resolve_reference(reference, cache_dir=tmp_path / "cache")
        assert "builtins.exec" in str(refused.value) and "refusing to load" in str(refused.value)
        assert not marker.exists(), f"{reference}: the pickle's code ran"

    # A real checkpoint resolves through every kind of reference.
    good = yolo_checkpoint(tmp_path / "src" / "good.pt")
    registry.set_alias("production", registry.register({"weights/best.pt": good}, sample_metadata()).version)
    object_store.put_file(good, "baselines/good.pt")
    for reference in (f"{NAME}:production", object_store.uri("baselines/good.pt"), str(good)):
        resolved = registry.resolve_reference(reference, cache_dir=tmp_path / "cache")
        assert resolved.read_bytes() == good.read_bytes()
