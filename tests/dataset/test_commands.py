"""The validate report a person reads (grouped, nothing hidden) and the fixes it names, run for real."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from phase2.dataset.validation import validate_dataset
from tests.dataset.builders import CLASS_NAMES, make_dataset, noise_jpeg, phase2

POLYGON = "1 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4\n"


def polygons_and_leaks(root: Path, polygons: int = 24, leaks: int = 4) -> Path:
    """A dataset with many polygon label files (one systematic problem) and a few train/val leaks."""
    make_dataset(root)
    for i in range(polygons):
        noise_jpeg(root / "train" / "images" / f"poly{i}.jpg", 100 + i)
        (root / "train" / "labels" / f"poly{i}.txt").write_text(POLYGON + POLYGON.replace("1 ", "0 ", 1))
    for i in range(leaks):
        shutil.copy(root / "train" / "images" / f"poly{i}.jpg", root / "val" / "images" / f"leak{i}.jpg")
        (root / "val" / "labels" / f"leak{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return root / "data.yaml"


def checksums(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_summary_groups_findings_so_a_flood_hides_nothing(tmp_path):
    report = validate_dataset(polygons_and_leaks(tmp_path / "ds"), imgsz=64, expected_names=CLASS_NAMES, data_roots=())
    assert [f.code for f in report.errors()].count("LBL_SEGMENT") == 24
    summary = report.summary_markdown()
    rows = {line.split(" | ")[1]: line for line in summary.splitlines() if line.startswith("| error |")}
    assert set(rows) == {"LBL_SEGMENT", "DUP_CROSS_SPLIT"}, summary  # one row per problem, leaks included
    assert "| 24 |" in rows["LBL_SEGMENT"] and "(23 more — see --json for all)" in rows["LBL_SEGMENT"]
    assert "| 4 |" in rows["DUP_CROSS_SPLIT"] and "(3 more — see --json for all)" in rows["DUP_CROSS_SPLIT"]
    assert "phase2 convert-segments" in rows["LBL_SEGMENT"] and "phase2 rebalance" in rows["DUP_CROSS_SPLIT"]


def test_convert_segments_writes_a_box_copy_that_validates(tmp_path):
    data_yaml = polygons_and_leaks(tmp_path / "ds", leaks=0)
    before = checksums(data_yaml.parent)
    done = phase2("convert-segments", str(data_yaml), "--out", "boxes", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "48 polygon rows converted" in done.stdout and str(tmp_path / "boxes" / "data.yaml") in done.stdout
    assert checksums(data_yaml.parent) == before, "the source dataset must not change"

    checked = phase2("validate", "boxes/data.yaml", "--json", "--imgsz", "64", cwd=tmp_path)
    report = json.loads(checked.stdout)
    assert checked.returncode == 0 and not [f for f in report["findings"] if f["severity"] == "error"]
    assert [s["images"] for s in report["splits"]] == [27, 2, 1]
    converted = (tmp_path / "boxes" / "train" / "labels" / "poly0.txt").read_text().splitlines()
    assert converted == ["1 0.250000 0.250000 0.300000 0.300000", "0 0.250000 0.250000 0.300000 0.300000"]


def test_convert_segments_refuses_a_non_empty_out_and_names_the_input(tmp_path):
    data_yaml = polygons_and_leaks(tmp_path / "ds", polygons=1, leaks=0)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    refused = phase2("convert-segments", str(data_yaml), "--out", "taken", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"--out {tmp_path / 'taken'} is not empty" in refused.stderr
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine" and len(list((tmp_path / "taken").iterdir())) == 1

    inside = phase2("convert-segments", str(data_yaml), "--out", str(data_yaml.parent / "boxes"), cwd=tmp_path)
    assert inside.returncode == 2 and "inside the source dataset" in inside.stderr

    missing = phase2("convert-segments", "nowhere/data.yaml", "--out", "new", cwd=tmp_path)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "nowhere/data.yaml" in missing.stderr and "Fix:" in missing.stderr
    assert not (tmp_path / "new").exists()
