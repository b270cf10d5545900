"""The one label parser against Ultralytics' own reader (verify_image_label): the same rows accepted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phase2.dataset.labels import parse_label, read_boxes
from phase2.dataset.layout import label_path_for
from phase2.dataset.rebalance import read_instance_counts
from tests.dataset.builders import CLASS_NAMES, noise_jpeg

NC = len(CLASS_NAMES)


def labelled_image(root: Path, rows: str | bytes) -> tuple[Path, Path]:
    image = noise_jpeg(root / "images" / "a.jpg", 1)
    label = label_path_for(image)
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_bytes(rows.encode() if isinstance(rows, str) else rows)
    return image, label


def ultralytics_boxes(image: Path, label: Path) -> list[tuple[int, float, float, float, float]] | None:
    """The boxes Ultralytics trains on for this image, or None when it drops the image as corrupt."""
    from ultralytics.data.utils import verify_image_label

    _, boxes, *_, corrupt, _message = verify_image_label((str(image), str(label), "", False, NC, 0, 0, False))
    if corrupt:
        return None
    return [(int(c), x, y, w, h) for c, x, y, w, h in boxes.tolist()]


def assert_same_boxes(ours: list, theirs: list) -> None:
    """Equal up to Ultralytics' float32 coordinates, in any order."""
    ours_array, theirs_array = (np.array(sorted(boxes), dtype=float).reshape(-1, 5) for boxes in (ours, theirs))
    np.testing.assert_allclose(ours_array, theirs_array, atol=1e-6)


@pytest.mark.parametrize("cls", ["2", "2.0", "2.", "+2", "2e0", "02", "2.5", "-1", "7", "two", "nan"])
def test_class_id_is_accepted_exactly_when_ultralytics_accepts_it(tmp_path, cls):
    image, label = labelled_image(tmp_path, f"0 0.5 0.5 0.2 0.2\n{cls} 0.25 0.25 0.2 0.2\n")
    expected = ultralytics_boxes(image, label)
    parsed = parse_label(label, nc=NC)
    if expected is None:
        assert parsed.state == "invalid" and [f.line for f in parsed.errors()] == [2]
    else:
        assert parsed.state == "ok" and not parsed.findings
        assert_same_boxes(read_boxes(label), expected)
        assert [box[0] for box in read_boxes(label)] == [0, 2]


@pytest.mark.parametrize(
    "rows",
    [
        "0 0.5 0.5 0.2 0.2\n3 0.1 0.9 0.05 0.1\n",
        "\ufeff1 0.5 0.5 0.2 0.2\r\n\r\n   \r\n2.0 0.3 0.3 0.1 0.1\r\n",  # BOM, CRLF, blank lines
        "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n1 0.4 0.4 0.2 0.2\n",  # a repeated row is kept once
        "",
    ],
)
def test_valid_files_give_the_boxes_ultralytics_trains_on(tmp_path, rows):
    image, label = labelled_image(tmp_path, rows)
    expected = ultralytics_boxes(image, label)
    assert expected is not None
    assert_same_boxes(read_boxes(label), expected)


def test_missing_label_file_has_no_boxes(tmp_path):
    missing = tmp_path / "labels" / "none.txt"
    assert read_boxes(missing) == [] and parse_label(missing).state == "missing"


def test_without_nc_any_integer_class_is_accepted(tmp_path):
    _, label = labelled_image(tmp_path, "11 0.5 0.5 0.2 0.2\n")
    assert read_boxes(label) == [(11, 0.5, 0.5, 0.2, 0.2)]
    assert [f.code for f in parse_label(label, nc=NC).findings] == ["LBL_CLASS_RANGE"]


def test_rebalance_counts_a_class_written_as_a_float(tmp_path):
    image, _ = labelled_image(tmp_path, "2.0 0.5 0.5 0.2 0.2\n2 0.25 0.25 0.1 0.1\n")
    assert read_instance_counts([image], NC) == {image: (0, 0, 2, 0)}
