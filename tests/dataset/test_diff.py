"""`phase2 diff` on the real dataset against a copy with known edits (3 images added, 1 removed, 1
renamed, one box's class changed), by data.yaml and by registry reference (real SeaweedFS).

Expected values come from the edits the test makes and from counting the label files' first
tokens directly, never from the diff's own output."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from phase2.dataset.diff import REGISTRY_LISTING, dataset_listing
from phase2.registry.registry import Registry
from tests.cli.helpers import run_cli

SPLITS = ("train", "val", "test")


def _count_classes(root: Path, names: list[str]) -> dict[str, Counter[str]]:
    """Instances per split and class, read straight from the label files (first token of each row)."""
    counts: dict[str, Counter[str]] = {}
    for split in SPLITS:
        counts[split] = Counter()
        for label in (root / split / "labels").glob("*.txt"):
            if (root / split / "images" / (label.stem + ".jpg")).exists():
                counts[split].update(names[int(line.split()[0])] for line in label.read_text().splitlines() if line)
    return counts


@pytest.fixture(scope="module")
def edited_copy(real_dataset, tmp_path_factory):
    """A writable copy of the real dataset with the edits; returns (copy root, what was done)."""
    root = tmp_path_factory.mktemp("diff") / "site-inspection"
    shutil.copytree(real_dataset, root)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    names = yaml.safe_load((root / "data.yaml").read_text())["names"]
    images = sorted((root / "train" / "images").glob("*.jpg"))
    labelled = [i for i in images if (root / "train" / "labels" / (i.stem + ".txt")).read_text().strip()]
    removed, renamed, relabelled = labelled[0], labelled[1], labelled[2]
    (root / "train" / "labels" / (removed.stem + ".txt")).unlink()
    removed.unlink()
    new_name = root / "train" / "images" / f"renamed_{renamed.name}"
    renamed.rename(new_name)
    (root / "train" / "labels" / (renamed.stem + ".txt")).rename(
        root / "train" / "labels" / f"renamed_{renamed.stem}.txt"
    )
    label = root / "train" / "labels" / (relabelled.stem + ".txt")
    lines = label.read_text().splitlines()
    old_cls, *box = lines[0].split()
    new_cls = (int(old_cls) + 1) % len(names)
    label.write_text("\n".join([f"{new_cls} {' '.join(box)}", *lines[1:]]) + "\n")
    rng = np.random.default_rng(16)
    added = []
    for k, split in enumerate(("train", "val", "test")):  # random content: no duplicate of anything
        image = root / split / "images" / f"added_{k}.jpg"
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(image)
        (root / split / "labels" / f"added_{k}.txt").write_text(f"{k} 0.5 0.5 0.25 0.25\n")
        added.append(f"{split}/images/{image.name}")
    done = {
        "added": sorted(added),
        "removed": [f"train/images/{removed.name}"],
        "moved": [[f"train/images/{renamed.name}", f"train/images/{new_name.name}"]],
        "relabelled": f"train/images/{relabelled.name}",
        "class_change": {"from": names[int(old_cls)], "to": names[new_cls], "box": [float(v) for v in box]},
    }
    return root, done, names


def _assert_reports_edits(result: dict, real_dataset: Path, edited: tuple) -> None:
    root, done, names = edited
    assert result["images"] == {
        "added": done["added"],
        "removed": done["removed"],
        "modified": [],
        "moved": done["moved"],
    }
    assert result["labels"]["changed"] == [
        {
            "image": done["relabelled"],
            "added": [],
            "removed": [],
            "class_changed": [done["class_change"]],
            "moved": [],
        }
    ]
    before, after = _count_classes(real_dataset, names), _count_classes(root, names)
    assert result["per_class"] == {
        split: {name: {"old": before[split][name], "new": after[split][name]} for name in names} for split in SPLITS
    }
    assert result["new_leaks"] == []


def test_diff_of_real_dataset_and_edited_copy_reports_exactly_the_edits(real_dataset, edited_copy, tmp_path):
    env = {"PHASE2_STATE_DIR": str(tmp_path / "state")}
    out = run_cli(
        "diff", str(real_dataset / "data.yaml"), str(edited_copy[0] / "data.yaml"), "--json", cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr
    result = out.json()
    _assert_reports_edits(result, real_dataset, edited_copy)
    assert result["old"] != result["new"]
    # Both listings are now kept by version id: the ids alone give the same diff.
    by_id = run_cli("diff", result["old"], result["new"], "--json", cwd=tmp_path, env=env)
    assert by_id.returncode == 0, by_id.stderr
    assert by_id.json() == result


def test_diff_against_a_registry_reference_uses_the_registered_listing(
    real_dataset, edited_copy, tmp_path, object_store, seaweedfs
):
    # Production was trained on the real dataset: its listing is registered with the version.
    listing = tmp_path / "listing.json"
    listing.write_text(dataset_listing(real_dataset / "data.yaml").model_dump_json())
    weights = tmp_path / "best.pt"
    weights.write_bytes(b"stand-in weights: never loaded by a diff")
    registry = Registry(object_store, "diff-model")
    version = registry.register({"weights/best.pt": weights, REGISTRY_LISTING: listing}, {})
    registry.set_alias("production", version.version)
    # A fresh state dir: nothing cached locally, the listing must come from the bucket.
    env = {
        **seaweedfs.env(),
        "PHASE2_S3_BUCKET": os.environ["PHASE2_S3_BUCKET"],
        "PHASE2_STATE_DIR": str(tmp_path / "s"),
    }
    out = run_cli("diff", "diff-model:production", str(edited_copy[0]), "--json", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    _assert_reports_edits(out.json(), real_dataset, edited_copy)

    # A listing whose bytes differ from the manifest's sha256 is refused, with the reason.
    object_store.put_bytes(registry.version_prefix(version.version) + REGISTRY_LISTING, b'{"format": 1}')
    tampered = run_cli("diff", "diff-model:v1", str(edited_copy[0]), "--json", cwd=tmp_path, env=env)
    assert tampered.returncode == 1 and "does not match the sha256" in tampered.error_line()


def test_unknown_diff_input_is_one_usage_error(tmp_path):
    out = run_cli(
        "diff", str(tmp_path / "nope.yaml"), "0123456789abcdef", cwd=tmp_path, env={"PHASE2_STATE_DIR": str(tmp_path)}
    )
    assert out.returncode == 2
    assert "nope.yaml: no such data.yaml" in out.error_line()
