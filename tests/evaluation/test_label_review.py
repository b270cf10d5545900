"""Label review on real val images with planted label errors, scored with a model trained here.

A tiny YOLO11n learns a copy of real val images with their labels; a second copy gets planted
errors (a box deleted, a class flipped, a box shifted) in some images. cleanlab's label quality,
computed from that model's predictions, must rank the planted images above the untouched ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phase2.evaluation.label_review import (
    QUEUE_CSV,
    SUMMARY_JSON,
    TILES_DIR,
    LabelReviewSettings,
    cleanlab_labels,
    load_split_labels,
    predict_images,
    review_labels,
    score_images,
)
from tests.plugins.learned_model import LEARNED_IMAGES, LEARNED_IMGSZ, val_copy

IMGSZ = LEARNED_IMGSZ
N_IMAGES = LEARNED_IMAGES
CLASSES = 4


@pytest.fixture(scope="module")
def memorized(learned_model) -> tuple[Path, Path]:
    """(weights, data_yaml): yolo11n trained from scratch until it reproduces N real val images'
    labels (tests/plugins/learned_model.py, trained once per session)."""
    return learned_model


def _isolated_box(rows: list[list[str]]) -> int | None:
    """The first box (row index) that touches no other box (cleanlab counts a prediction as a
    missing box only where no label overlaps it), None if every box touches another."""
    boxes = [
        (float(x) - float(w) / 2, float(y) - float(h) / 2, float(x) + float(w) / 2, float(y) + float(h) / 2)
        for _, x, y, w, h in rows
    ]
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if all(x2 <= a1 or a2 <= x1 or y2 <= b1 or b2 <= y1 for j, (a1, b1, a2, b2) in enumerate(boxes) if j != i):
            return i
    return None


def plant_errors(clean_yaml: Path, dst: Path) -> tuple[Path, dict[str, str]]:
    """A copy of the dataset with one error planted in 6 images (raw label rows edited, our parser unused):
    2 with an isolated box deleted, 2 with a class flipped, 2 with a box shifted by half its width.
    Returns (data_yaml, image name -> what was planted)."""
    shutil.copytree(clean_yaml.parent, dst, ignore=shutil.ignore_patterns("*.cache"))
    # Planted in the last images by name: a queue that ties on score (sorted by name) lists them last.
    label_files = sorted((dst / "val" / "labels").glob("*.txt"), reverse=True)
    rows = {f: [line.split() for line in f.read_text().splitlines() if line.strip()] for f in label_files}
    # Deleting leaves a labelled image, and the deleted object is not covered by another label.
    delete = [f for f in label_files if len(rows[f]) >= 2 and _isolated_box(rows[f]) is not None][:2]
    rest = [f for f in label_files if f not in delete and rows[f]]
    flip, shift = rest[0:4:2], rest[1:4:2]
    planted = {}
    for f in delete:
        del rows[f][_isolated_box(rows[f]) or 0]
        planted[f.stem] = "delete"
    for f in flip:
        rows[f][0][0] = str((int(rows[f][0][0]) + 1) % CLASSES)
        planted[f.stem] = "flip"
    for f in shift:
        cls, cx, cy, w, h = rows[f][0]
        step = float(w) / 2  # IoU 1/3 with where it was: still overlapping, badly placed
        new_cx = float(cx) + step if float(cx) + step + float(w) / 2 <= 1 else float(cx) - step
        new_cx = min(max(new_cx, float(w) / 2), 1 - float(w) / 2)  # stays a valid row inside the image
        rows[f][0] = [cls, f"{new_cx:.6f}", cy, w, h]
        planted[f.stem] = "shift"
    for f in label_files:
        f.write_text("".join(" ".join(r) + "\n" for r in rows[f]))
    return dst / "data.yaml", planted


def test_planted_label_errors_rank_above_untouched_images(memorized, tmp_path):
    weights, clean_yaml = memorized
    data_yaml, planted = plant_errors(clean_yaml, tmp_path / "planted")
    settings = LabelReviewSettings(splits=["val"], top_n=4)

    result = review_labels(weights, data_yaml, tmp_path / "review", imgsz=IMGSZ, settings=settings)

    queue = pd.read_csv(result.queue_csv)
    queue["stem"] = [Path(p).stem for p in queue["image"]]
    assert len(queue) == N_IMAGES and queue["score"].between(0, 1 + 1e-9).all()  # exp(log(1 + 1e-100)) rounding
    assert list(queue["rank"]) == list(range(1, N_IMAGES + 1)) and queue["score"].is_monotonic_increasing
    is_planted = queue["stem"].isin(planted)
    assert is_planted.sum() == len(planted) == 6
    print(queue[["rank", "stem", "score", "issue", "suspect"]].assign(planted=queue["stem"].map(planted)))
    mean_rank_planted, mean_rank_untouched = queue["rank"][is_planted].mean(), queue["rank"][~is_planted].mean()
    assert mean_rank_planted < mean_rank_untouched, (mean_rank_planted, mean_rank_untouched)
    assert queue["score"][is_planted].mean() < queue["score"][~is_planted].mean()

    # The same images with their true labels score better than with the planted errors.
    clean = review_labels(weights, clean_yaml, tmp_path / "clean-review", imgsz=IMGSZ, settings=settings)
    clean_scores = pd.read_csv(clean.queue_csv).assign(stem=lambda t: [Path(p).stem for p in t["image"]])
    before = clean_scores.set_index("stem")["score"]
    after = queue.set_index("stem")["score"]
    drop = before[list(planted)] - after[list(planted)]
    assert drop.mean() > 0 and (drop > 0).sum() >= 4, drop

    # What the report reads: the shown rows (minority-class images first) and their tiles.
    summary = json.loads((tmp_path / "review" / SUMMARY_JSON).read_text())
    assert len(summary["shown"]) == 4 and summary["n_images"] == N_IMAGES
    for row in summary["shown"]:
        assert (tmp_path / "review" / TILES_DIR / row["tile"]).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "review" / QUEUE_CSV).is_file()


def test_oracle_predictions_point_at_each_planted_error(real_dataset, tmp_path):
    """Scoring alone, no model: a fake "oracle" predicts exactly the true labels (conf 0.9), so every
    planted image must rank above every untouched one, each with the issue planted."""
    clean_yaml = val_copy(real_dataset, tmp_path / "clean")
    data_yaml, planted = plant_errors(clean_yaml, tmp_path / "planted")
    truth = load_split_labels(clean_yaml, "val")
    oracle = [
        [np.column_stack([im.boxes[im.classes == k], np.full((im.classes == k).sum(), 0.9)]) for k in range(CLASSES)]
        for im in truth
    ]
    images = load_split_labels(data_yaml, "val")
    assert [im.path.name for im in images] == [im.path.name for im in truth]
    settings = LabelReviewSettings()

    scores = score_images(
        cleanlab_labels(images),
        oracle,
        high_probability_threshold=settings.high_probability_threshold,
        low_probability_threshold=settings.low_probability_threshold,
    )

    scores["planted"] = [planted.get(im.path.stem) for im in images]
    assert len(planted) == 6
    ranked = scores.sort_values("score")
    is_planted = scores["planted"].notna()
    assert scores["score"][is_planted].max() < scores["score"][~is_planted].min(), ranked
    expected = {"delete": "missing box", "flip": "wrong class", "shift": "badly placed box"}
    assert all(row.issue == expected[row.planted] for row in ranked.head(len(planted)).itertuples()), ranked


def test_scores_are_cleanlabs_own(memorized):
    """At cleanlab's default thresholds the image score is get_label_quality_scores, exactly, and
    the flag is find_label_issues (both called here independently on the same inputs)."""
    from cleanlab.object_detection.filter import find_label_issues
    from cleanlab.object_detection.rank import get_label_quality_scores

    weights, data_yaml = memorized
    images = load_split_labels(data_yaml, "val")
    predictions = predict_images(weights, [im.path for im in images], imgsz=IMGSZ, conf=0.001, num_classes=CLASSES)
    labels = cleanlab_labels(images)
    assert all(len(p) == CLASSES and all(a.shape[1] == 5 for a in p) for p in predictions)

    scores = score_images(labels, predictions)

    expected = get_label_quality_scores(labels, predictions, verbose=False)
    np.testing.assert_allclose(scores["score"].to_numpy(), expected, rtol=0, atol=1e-12)
    assert scores["flagged"].tolist() == find_label_issues(labels, predictions).tolist()
