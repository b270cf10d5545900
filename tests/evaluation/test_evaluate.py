"""The evaluation protocol on a real tiny Ultralytics training (see conftest.trained_run)."""

from __future__ import annotations

import stat

import pandas as pd
import pytest

from phase2.evaluation.evaluate import evaluate_checkpoint
from tests.evaluation.conftest import IMGSZ, label_instances, snapshot


def test_evaluation_protocol_outputs_and_readonly_dataset(trained_run, tmp_path):
    run_dir, data_yaml = trained_run
    dataset = data_yaml.parent
    assert not (dataset.stat().st_mode & stat.S_IWUSR)  # read-only source
    before = snapshot(dataset)

    result = evaluate_checkpoint(run_dir / "weights" / "best.pt", data_yaml, imgsz=IMGSZ, out_dir=tmp_path / "eval")

    assert snapshot(dataset) == before, "evaluation wrote into the dataset"
    assert not list(dataset.rglob("*.cache"))
    assert result.save_dir == (tmp_path / "eval").resolve()
    assert not list(result.save_dir.rglob("*.cache")), "the temporary dataset view was not removed"
    assert result.protocol.conf == 0.001 and result.protocol.iou == 0.7 and result.protocol.split == "val"
    for png in (result.pr_curve_png, result.confusion_matrix_png, result.confusion_matrix_normalized_png):
        assert png is not None and png.is_file() and png.read_bytes()[:4] == b"\x89PNG"

    names = ["rock_toe", "slope_drain", "toe_drain", "vegetation"]
    expected = label_instances(dataset / "val", names)
    assert expected["toe_drain"] > 0  # copy_subset puts toe_drain images first
    assert set(result.metrics["overall"]) == {"precision", "recall", "mAP50", "mAP50-95", "fitness"}
    assert list(result.metrics["per_class"]) == names
    assert {n: v["instances"] for n, v in result.metrics["per_class"].items()} == expected
    table = pd.read_csv(result.per_class_csv)
    assert list(table.columns) == ["class", "precision", "recall", "AP50", "AP50-95", "instances"]
    assert dict(zip(table["class"], table["instances"], strict=True)) == expected
    for name, count in expected.items():
        rates = [result.metrics["per_class"][name][k] for k in ("precision", "recall", "AP50", "AP50-95")]
        # A class absent from the split has no rates; a present one has all of them.
        assert all(r is None for r in rates) if count == 0 else all(0.0 <= r <= 1.0 for r in rates)

    test = evaluate_checkpoint(
        run_dir / "weights" / "best.pt", data_yaml, split="test", imgsz=IMGSZ, out_dir=tmp_path / "test"
    )
    assert {n: v["instances"] for n, v in test.metrics["per_class"].items()} == label_instances(dataset / "test", names)

    with pytest.raises(ValueError, match="no 'nope' split"):
        evaluate_checkpoint(
            run_dir / "weights" / "best.pt", data_yaml, split="nope", imgsz=IMGSZ, out_dir=tmp_path / "x"
        )
