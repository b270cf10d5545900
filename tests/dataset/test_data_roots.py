"""Paths outside the dataset: accepted as Ultralytics accepts them on a user's machine (a warning),
refused unread on a shared worker whose PHASE2_DATA_ROOTS they are outside (an error naming the
path and the setting), whatever `path:` says."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from phase2.dataset.findings import Severity
from phase2.dataset.validation import validate_dataset
from tests.dataset.builders import CLASS_NAMES, edit_yaml, make_dataset, noise_jpeg, phase2, yaml_line

OUTSIDE_CODES = {"YAML_PATH_ESCAPES_ROOT", "IMG_OUTSIDE_ROOT", "IMG_SYMLINK_ESCAPES"}


def check(data_yaml: Path, roots):
    return validate_dataset(data_yaml, imgsz=64, expected_names=CLASS_NAMES, minority_val_target=0, data_roots=roots)


def _other_dataset(tmp_path: Path) -> Path:
    """A second valid dataset beside the first, its label rows broken where reading them would show."""
    other = tmp_path / "other"
    make_dataset(other)
    (other / "test" / "labels" / "test0.txt").write_text("0 nan 0.5 0.2 0.2\n")  # LBL_NOT_FINITE if read
    return other


def _split_dir_dotdot(root: Path, other: Path) -> tuple[str, Path]:
    edit_yaml(root, test="../other/test/images")
    return "YAML_PATH_ESCAPES_ROOT", root / "data.yaml"


def _split_dir_absolute(root: Path, other: Path) -> tuple[str, Path]:
    edit_yaml(root, test=str(other / "test" / "images"))
    return "YAML_PATH_ESCAPES_ROOT", root / "data.yaml"


def _listed_image(root: Path, other: Path) -> tuple[str, Path]:
    (root / "test.txt").write_text(f"./test/images/test0.jpg\n{other / 'test' / 'images' / 'test0.jpg'}\n")
    edit_yaml(root, test="test.txt")
    return "IMG_OUTSIDE_ROOT", other / "test" / "images" / "test0.jpg"


ESCAPES = {"'..' split folder": _split_dir_dotdot, "absolute split": _split_dir_absolute, "listed": _listed_image}


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_outside_paths_warn_without_roots_and_are_refused_unread_under_them(tmp_path, escape):
    root, other = tmp_path / "ds", _other_dataset(tmp_path)
    make_dataset(root)
    code, refused_file = ESCAPES[escape](root, other)
    (other / "test" / "labels" / "test0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    local = check(root / "data.yaml", ())
    hits = [f for f in local.findings if f.code == code]
    assert len(hits) == 1 and hits[0].severity == Severity.warning and "PHASE2_DATA_ROOTS" in hits[0].fix
    assert local.errors() == [], "Ultralytics reads it: not an error on the user's own machine"

    (other / "test" / "labels" / "test0.txt").write_text("0 nan 0.5 0.2 0.2\n")  # would be LBL_NOT_FINITE
    worker = check(root / "data.yaml", [root])
    errors = [f for f in worker.errors() if f.code == code]
    assert errors and all(f.severity == Severity.error for f in errors)
    assert any(f.file == str(refused_file) for f in errors)
    assert all(f"PHASE2_DATA_ROOTS={os.path.realpath(root)}" in f.message for f in errors)
    assert not any(f.file and f.file.startswith(str(other)) and f.code not in OUTSIDE_CODES for f in worker.findings)

    allowed = check(root / "data.yaml", [root, other])
    assert not {f.code for f in allowed.findings} & OUTSIDE_CODES
    assert [f.code for f in allowed.errors()] == ["LBL_NOT_FINITE"]  # inside the roots: read and judged


def test_path_key_does_not_bypass_the_roots(tmp_path):
    root, other = tmp_path / "ds", _other_dataset(tmp_path)
    make_dataset(root)
    edit_yaml(root, path=str(other))
    report = check(root / "data.yaml", [root])
    refused = [f for f in report.errors() if f.code == "YAML_PATH_ESCAPES_ROOT"]
    assert [f.line for f in refused] == [yaml_line(root, s) for s in ("train", "val", "test")]
    assert all(f.file == str(root / "data.yaml") for f in refused)
    assert report.splits == [] or all(s.images == 0 for s in report.splits)
    assert not any(f.code == "LBL_NOT_FINITE" for f in report.findings)  # nothing under `path:` was read


def test_a_list_and_a_label_outside_the_roots_are_not_read(tmp_path):
    root, other = tmp_path / "ds", tmp_path / "other"
    make_dataset(root)
    image = noise_jpeg(other / "images" / "far.jpg", 60)
    (other / "labels").mkdir()
    (other / "labels" / "far.txt").write_text("0 nan 0.5 0.2 0.2\n")
    (root / "test.txt").write_text(f"{image}\n")
    edit_yaml(root, test="test.txt")
    report = check(root / "data.yaml", [root, other / "images"])  # the image is inside, its label is not
    assert [(f.code, f.file) for f in report.errors()] == [("IMG_OUTSIDE_ROOT", str(other / "labels" / "far.txt"))]
    assert "label" in report.errors()[0].message

    (other / "test.txt").write_bytes(b"\xff\xfe\x00 not a list")  # SPLIT_LIST_UNREADABLE if it were read
    edit_yaml(root, test=str(other / "test.txt"))
    report = check(root / "data.yaml", [root])
    assert [f.code for f in report.errors()] == ["YAML_PATH_ESCAPES_ROOT"]


def test_a_data_yaml_outside_the_roots_is_not_read(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    report = check(root / "data.yaml", [tmp_path / "elsewhere"])
    assert [(f.code, f.file) for f in report.findings] == [("YAML_PATH_ESCAPES_ROOT", str(root / "data.yaml"))]


# ------------------------------------------------------------------ the real dataset through the real CLI


def _json_report(result) -> dict:
    assert "Traceback" not in result.stderr + result.stdout
    return json.loads(result.stdout)


def test_rebalanced_version_validates_clean_and_the_worker_setting_guards_it(real_dataset, tmp_path):
    """rebalance writes image lists pointing into the source tree; validate must accept them."""
    out = tmp_path / "version"
    made = phase2(
        "rebalance", str(real_dataset / "data.yaml"), "--target", "toe_drain=18", "--out", "version", cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    assert "Traceback" not in made.stderr

    local = phase2("validate", "version/data.yaml", "--json", cwd=tmp_path)
    report = _json_report(local)
    assert local.returncode == 0 and [f for f in report["findings"] if f["severity"] == "error"] == []
    outside = [f for f in report["findings"] if f["code"] in OUTSIDE_CODES]
    assert len(outside) <= 3 and all(f["severity"] == "warning" for f in outside)  # one per split, not per image

    roots = os.pathsep.join([str(real_dataset), str(out)])
    worker = _json_report(phase2("validate", "version/data.yaml", "--json", cwd=tmp_path, PHASE2_DATA_ROOTS=roots))
    assert not [f for f in worker["findings"] if f["code"] in OUTSIDE_CODES or f["severity"] == "error"]

    refused = phase2("validate", "version/data.yaml", cwd=tmp_path, PHASE2_DATA_ROOTS=str(out))
    said = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "Traceback" not in said
    assert "IMG_OUTSIDE_ROOT" in said and f"PHASE2_DATA_ROOTS={os.path.realpath(out)}" in said
    assert str(real_dataset / "train" / "images") in said  # names a refused image


def test_absolute_split_paths_validate_like_the_relative_original(real_dataset, tmp_path):
    meta = yaml.safe_load((real_dataset / "data.yaml").read_text())
    copy = tmp_path / "elsewhere" / "data.yaml"
    copy.parent.mkdir()
    absolute = {"path": str(real_dataset), "train": str(real_dataset / "train" / "images"), "val": "val/images"}
    copy.write_text(yaml.safe_dump(meta | absolute | {"test": str(real_dataset / "test" / "images")}))
    original = phase2("validate", str(real_dataset / "data.yaml"), "--json", cwd=tmp_path)
    moved = phase2("validate", str(copy), "--json", cwd=tmp_path)
    assert moved.returncode == original.returncode
    found, expected = _json_report(moved)["findings"], _json_report(original)["findings"]

    def errors(findings):
        return sorted((f["code"], f["file"], f["line"]) for f in findings if f["severity"] == "error")

    assert errors(found) == [e for e in errors(expected) if e[1] != str(real_dataset / "data.yaml")]
    assert not [f for f in found if f["code"] in OUTSIDE_CODES and f["severity"] == "error"]

    version = tmp_path / "version"
    assert (
        phase2("rebalance", str(copy), "--target", "toe_drain=18", "--out", str(version), cwd=tmp_path).returncode == 0
    )
    lists = {s: str(version / f"{s}.txt") for s in ("train", "val", "test") if (version / f"{s}.txt").is_file()}
    absolute_lists = tmp_path / "lists" / "data.yaml"
    absolute_lists.parent.mkdir()
    absolute_lists.write_text(yaml.safe_dump(meta | lists))
    clean = phase2("validate", str(absolute_lists), "--json", cwd=tmp_path)
    assert clean.returncode == 0 and not [f for f in _json_report(clean)["findings"] if f["severity"] == "error"]
    shutil.rmtree(version)  # the real dataset itself is never written (lists and yaml copies live in tmp)
