"""The bootstrap on synthetic per-image match tables (no model): exactness and calibration."""

from __future__ import annotations

import numpy as np
import pytest

from phase2.evaluation.evaluate import EvalProtocol
from phase2.evaluation.matches import MatchTable
from phase2.evaluation.uncertainty import METRICS, bootstrap_replicates, compare_tables, resample_counts


def synthetic_table(rng, gt: np.ndarray, detect: float, fp_rate: float = 2.0) -> MatchTable:
    """Predictions for the ground truth ``gt`` (images x classes): each box found with
    probability ``detect`` (a higher confidence, matched up to a random IoU threshold), plus
    Poisson(``fp_rate``) false positives per image and class at lower confidences."""
    n_images, nc = gt.shape
    rows = []
    for i in range(n_images):
        for c in range(nc):
            for _ in range(gt[i, c]):
                if rng.random() < detect:
                    rows.append((i, c, rng.beta(4, 2), np.arange(10) < rng.integers(1, 11)))
            for _ in range(rng.poisson(fp_rate)):
                rows.append((i, c, rng.beta(2, 4), np.zeros(10, bool)))
    return MatchTable(
        names=[f"class{c}" for c in range(nc)],
        images=[f"{i:03d}.jpg" for i in range(n_images)],
        gt=gt,
        pred_image=np.array([r[0] for r in rows], np.int64),
        pred_cls=np.array([r[1] for r in rows], np.int64),
        conf=np.array([r[2] for r in rows], np.float32),
        tp=np.array([r[3] for r in rows], bool).reshape(-1, 10),
        protocol=EvalProtocol(imgsz=64),
    )


def test_each_resample_equals_ultralytics_on_the_repeated_images():
    """A resample's numbers are ap_per_class's on the drawn images, each repeated as often as drawn."""
    from ultralytics.utils.metrics import ap_per_class

    rng = np.random.default_rng(7)
    table = synthetic_table(rng, rng.poisson(1.5, size=(30, 3)), detect=0.6, fp_rate=3.0)
    counts = np.vstack([np.ones((1, table.n_images), np.int64), resample_counts(table.n_images, 25, seed=1)])
    reps = bootstrap_replicates(table, counts)
    for b, w in enumerate(counts):
        keep = np.repeat(np.arange(len(table.conf)), w[table.pred_image])
        targets = np.repeat(np.arange(3), (table.gt * w[:, None]).sum(0))
        _, _, p, r, _, ap, classes, *_ = ap_per_class(table.tp[keep], table.conf[keep], table.pred_cls[keep], targets)
        expected = {"precision": p.mean(), "recall": r.mean(), "mAP50": ap[:, 0].mean(), "mAP50-95": ap.mean()}
        for name in METRICS:
            assert reps.overall[name][b] == pytest.approx(expected[name], abs=1e-12), (b, name)
        assert np.allclose(reps.per_class["AP50"][b, classes], ap[:, 0], atol=1e-12, rtol=0)
        assert np.isnan(np.delete(reps.per_class["AP50"][b], classes)).all()  # absent class: no value


def significant_share(detect_a: float, detect_b: float, repetitions: int, resamples: int) -> float:
    rng = np.random.default_rng(2024)
    fired = 0
    for k in range(repetitions):
        gt = rng.poisson(1.2, size=(40, 1))
        a, b = synthetic_table(rng, gt, detect_a), synthetic_table(rng, gt, detect_b)
        delta = compare_tables(a, b, resamples=resamples, seed=k)["delta"]["mAP50"]
        fired += delta["ci95"][0] > 0
    return fired / repetitions


def test_calibration_same_distribution_rarely_significant():
    """A and B drawn from one distribution: "B significantly better" (lower bound > 0) fires in
    <= 7% of 200 repetitions (200 resamples each here, 1000 in the product)."""
    share = significant_share(0.6, 0.6, repetitions=200, resamples=200)
    assert share <= 0.07, share


def test_calibration_clearly_better_model_is_detected():
    share = significant_share(0.45, 0.8, repetitions=200, resamples=200)
    assert share >= 0.8, share
