"""Metrics with 95% intervals from a bootstrap over images, and paired comparisons.

Point values are Ultralytics' own: :func:`ultralytics.utils.metrics.ap_per_class` on the
concatenated per-image arrays of a :class:`~phase2.evaluation.matches.MatchTable`, so they
equal ``model.val()`` at the same protocol. Each bootstrap resample draws the images with
replacement (seeded) and recomputes the same statistic, vectorised over resamples: an image
drawn ``k`` times counts ``k`` times, exactly as if its predictions and labels were repeated
(precision/recall curves, the 101-point interpolated AP, P and R at the confidence of the
largest smoothed mean F1, and the mean over the classes present in the resample). The
interval is the percentile interval of the resampled values.

A paired comparison evaluates both tables on the same image resamples, so Δ = B − A has an
interval of its own and ``p_b_better`` is the share of resamples in which B > A.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from phase2.evaluation.matches import MatchTable

METRICS = ("precision", "recall", "mAP50", "mAP50-95")
CLASS_METRICS = ("AP50", "AP50-95")
METHOD = "percentile"
RESAMPLES = 1000
SEED = 0
_EPS = 1e-16  # as ap_per_class
_X_AP = np.linspace(0, 1, 101)  # COCO 101-point recall grid of compute_ap
_X_CONF = np.linspace(0, 1, 1000)  # confidence grid of the P/R/F1 curves
_CHUNK_ELEMENTS = 4_000_000  # resamples x predictions per chunk (memory bound)


@dataclass(frozen=True)
class Replicates:
    """Metric values: ``overall[name]`` shape (R,), ``per_class[name]`` shape (R, classes); NaN
    where a class has no instance in a resample. Row 0 of a point evaluation is the point."""

    overall: dict[str, np.ndarray]
    per_class: dict[str, np.ndarray]


def point_metrics(table: MatchTable) -> Replicates:
    """Ultralytics' own numbers for the table (``ap_per_class`` on the concatenated arrays)."""
    from ultralytics.utils.metrics import ap_per_class

    nc = len(table.names)
    tp, _, p, r, _, ap, classes, *_ = ap_per_class(
        table.tp, table.conf, table.pred_cls, table.target_cls(), names=dict(enumerate(table.names))
    )
    per_class = {name: np.full((1, nc), np.nan) for name in CLASS_METRICS}
    per_class["AP50"][0, classes] = ap[:, 0]
    per_class["AP50-95"][0, classes] = ap.mean(1)
    present = len(classes) > 0
    overall = {
        "precision": np.array([p.mean() if present else 0.0]),
        "recall": np.array([r.mean() if present else 0.0]),
        "mAP50": np.array([ap[:, 0].mean() if present else 0.0]),
        "mAP50-95": np.array([ap.mean() if present else 0.0]),
    }
    return Replicates(overall, per_class)


def resample_counts(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_images): how often each image is drawn in each resample (seeded)."""
    if n_images < 1:
        raise ValueError("the split has no images to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1 (got {resamples}); use 1000 or more for reported intervals")
    draws = np.random.default_rng(seed).integers(0, n_images, size=(resamples, n_images))
    flat = draws + np.arange(resamples)[:, None] * n_images
    return np.bincount(flat.ravel(), minlength=resamples * n_images).reshape(resamples, n_images).astype(np.int32)


def _row_search(sorted_rows: np.ndarray, *searches: tuple[np.ndarray, str]) -> list[np.ndarray]:
    """``np.searchsorted`` of each row of each ``(queries, side)`` (integers, ascending per row)
    in the same row of ``sorted_rows`` (integers, non-decreasing per row), vectorised with exact
    integer offsets; ascending queries let numpy narrow each search from the previous one."""
    rows, length = sorted_rows.shape
    low = min(int(sorted_rows.min(initial=0)), *(int(q.min(initial=0)) for q, _ in searches))
    span = max(int(sorted_rows.max(initial=0)), *(int(q.max(initial=0)) for q, _ in searches)) - low + 2
    offset = np.arange(rows, dtype=np.int64)[:, None] * span - low
    flat = (sorted_rows + offset).ravel()
    start = np.arange(rows)[:, None] * length
    return [
        np.searchsorted(flat, (queries + offset).ravel(), side=side).reshape(rows, -1) - start  # type: ignore[call-overload]
        for queries, side in searches
    ]


def _interp(x: np.ndarray, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """The value np.interp gives between its points (x0, y0) and (x1, y1), to the bit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        value = (y1 - y0) / (x1 - x0) * (x - x0) + y0
    return np.where(x0 == x, y0, value)


def _class_ap(w: np.ndarray, tp: np.ndarray, all_incl: np.ndarray, n_l: np.ndarray) -> np.ndarray:
    """AP (rows, 10) of one class as ``compute_ap`` gives it for the repeated predictions.

    Only the true positives shape the interpolated envelope: a false positive's precision is
    below that of the true positive that opened its recall level. So per IoU threshold the
    curve is rebuilt from the true-positive runs (their counts, the false positives before
    them and the running maximum of precision) and read at the 101 recall points.
    """
    from ultralytics.utils.metrics import _TRAPZ

    rows = w.shape[0]
    denominator = (n_l + _EPS)[:, None]
    # The level t (true positives so far) whose recall t / (n + eps) is the last <= x, as ap_per_class rounds it.
    guess = np.floor(_X_AP[None] * n_l[:, None])
    level = guess - 1
    for candidate in (guess, guess + 1):
        level = np.where(candidate / denominator <= _X_AP[None], candidate, level)
    level = np.maximum(level, 0).astype(np.int64)
    r_t, r_next = level / denominator, (level + 1) / denominator
    ap = np.zeros((rows, tp.shape[1]))
    for j in range(tp.shape[1]):
        hits = np.flatnonzero(tp[:, j])
        if hits.size == 0:
            continue
        w_t = w[:, hits]
        cum_t = w_t.cumsum(1, dtype=np.int32)
        fp_before = all_incl[:, hits] - w_t - (cum_t - w_t)
        present = w_t > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(present, cum_t / (cum_t + fp_before), 0.0)
        envelope = np.flip(np.maximum.accumulate(np.flip(precision, 1), axis=1), 1)
        m = hits.size
        at = np.arange(rows)[:, None]
        # The last point of a run's last level: the next present run's envelope (absent runs have
        # precision 0, so the envelope after a run is the next present one's), or the (recall, 0)
        # sentinel after the last run.
        end_value = np.hstack([envelope[:, 1:], np.zeros((rows, 1))])
        total = cum_t[:, -1:]
        k_t, k_next = (
            np.minimum(k, m - 1) for k in _row_search(cum_t, (np.maximum(level, 1), "left"), (level + 1, "left"))
        )
        inside = np.where(level < cum_t[at, k_t], envelope[at, k_t], end_value[at, k_t])
        left = np.where(level == 0, envelope[:, :1], inside)  # level 0 ends at the best precision (1 if a TP is first)
        curve = _interp(_X_AP[None], r_t, left, r_next, envelope[at, k_next])
        ap[:, j] = _TRAPZ(np.where(level >= total, 0.0, curve), _X_AP, axis=1)
    return ap


def _class_curves(w: np.ndarray, tp: np.ndarray, conf: np.ndarray, n_l: np.ndarray):
    """AP (rows, 10) and the P and R confidence curves (rows, 1000) of one class.

    ``w`` (rows, P) is how often each of the class's predictions (sorted by falling
    confidence) is repeated; the results are those of ``ap_per_class`` on the predictions
    repeated that often. Between two predictions np.interp joins the last copy of the one to
    the first copy of the next, so only those two points of each are needed.
    """
    rows, n_pred = w.shape
    all_incl = w.cumsum(1, dtype=np.int32)
    ap = _class_ap(w, tp, all_incl, n_l)

    # Before the query x: the cumulative counts at the last prediction with conf >= x; the
    # previous present prediction is where the count reached that value, the next where it grows.
    # Grid points with the same predictions above them share these: computed once per distinct count.
    above, spread = np.unique(np.searchsorted(-conf, -_X_CONF, side="right"), return_inverse=True)
    a0 = np.where(above > 0, all_incl[:, np.maximum(above - 1, 0)], 0)  # rises with `above`
    hits0 = np.flatnonzero(tp[:, 0])
    tp0_incl = np.hstack([np.zeros((rows, 1), np.int32), w[:, hits0].cumsum(1, dtype=np.int32)])
    t0 = tp0_incl[:, np.searchsorted(hits0, above, side="left")]  # true positives among the first `above`
    prev_i, next_i = _row_search(all_incl, (a0, "left"), (a0, "right"))
    prev_i = np.where(a0 > 0, prev_i, -1)
    t0, a0, prev_i, next_i = t0[:, spread], a0[:, spread], prev_i[:, spread], next_i[:, spread]
    p_i, n_i = np.maximum(prev_i, 0), np.minimum(next_i, n_pred - 1)
    t1, a1 = t0 + tp[n_i, 0], a0 + 1
    denominator = (n_l + _EPS)[:, None]
    curves = []
    with np.errstate(divide="ignore", invalid="ignore"):  # rows without a prediction before x: `left`
        points = ((t0 / a0, t1 / a1, 1.0), (t0 / denominator, t1 / denominator, 0.0))
    for y0, y1, left in points:
        value = _interp(-_X_CONF[None], -conf[p_i], y0, -conf[n_i], y1)
        value = np.where(next_i >= n_pred, y0, value)
        curves.append(np.where(prev_i < 0, left, value))
    p_curve, r_curve = curves
    absent = all_incl[:, -1] == 0  # no prediction of the class in the resample: AP, P and R are 0
    ap[absent], p_curve[absent], r_curve[absent] = 0.0, 0.0, 0.0
    return ap, p_curve, r_curve


def _weighted_metrics(table: MatchTable, counts: np.ndarray) -> Replicates:
    """The metrics of each resample (one row of ``counts`` per resample)."""
    from ultralytics.utils.metrics import smooth

    rows, nc = counts.shape[0], len(table.names)
    n_l = counts @ table.gt  # (rows, classes)
    order = np.argsort(-table.conf.astype(np.float64), kind="stable")
    ap = np.zeros((rows, nc, table.tp.shape[1]))
    p_curve, r_curve = np.zeros((rows, nc, _X_CONF.size)), np.zeros((rows, nc, _X_CONF.size))
    for c in range(nc):
        members = order[table.pred_cls[order] == c]
        if members.size == 0:
            continue  # no prediction of the class at all: AP, P and R stay 0
        w = counts[:, table.pred_image[members]]
        ap[:, c], p_curve[:, c], r_curve[:, c] = _class_curves(
            w, table.tp[members], table.conf[members].astype(np.float64), n_l[:, c]
        )
    present = n_l > 0
    n_present = present.sum(1)
    f1 = 2 * p_curve * r_curve / (p_curve + r_curve + _EPS)
    f1_mean = np.where(present[:, :, None], f1, 0.0).sum(1) / np.maximum(n_present, 1)[:, None]
    best = np.array([smooth(row, 0.1).argmax() for row in f1_mean])
    at_best = np.arange(rows)
    p, r = p_curve[at_best, :, best], r_curve[at_best, :, best]

    def mean(values: np.ndarray) -> np.ndarray:
        return np.where(n_present > 0, np.where(present, values, 0.0).sum(1) / np.maximum(n_present, 1), 0.0)

    overall = {"precision": mean(p), "recall": mean(r), "mAP50": mean(ap[:, :, 0]), "mAP50-95": mean(ap.mean(2))}
    per_class = {"AP50": np.where(present, ap[:, :, 0], np.nan), "AP50-95": np.where(present, ap.mean(2), np.nan)}
    return Replicates(overall, per_class)


def bootstrap_replicates(table: MatchTable, counts: np.ndarray) -> Replicates:
    """The metrics of ``table`` in every resample of ``counts`` (resamples, images), in chunks."""
    if counts.shape[1] != table.n_images:
        raise ValueError(f"resample counts are for {counts.shape[1]} images, the table has {table.n_images}")
    per_row = max(1, len(table.conf), _X_CONF.size * len(table.names))
    step = max(1, _CHUNK_ELEMENTS // per_row)
    parts = [_weighted_metrics(table, counts[i : i + step]) for i in range(0, counts.shape[0], step)]
    return Replicates(
        {k: np.concatenate([p.overall[k] for p in parts]) for k in METRICS},
        {k: np.concatenate([p.per_class[k] for p in parts]) for k in CLASS_METRICS},
    )


def _interval(values: np.ndarray) -> list[float] | None:
    finite = values[~np.isnan(values)]
    if finite.size == 0:
        return None
    low, high = np.percentile(finite, [2.5, 97.5])
    return [float(low), float(high)]


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _summary(table: MatchTable, point: Replicates, reps: Replicates, resamples: int, seed: int) -> dict[str, Any]:
    return {
        "split": table.protocol.split,
        "n_images": table.n_images,
        "instances": table.instances(),
        "protocol": table.protocol.model_dump(),
        "bootstrap": {"resamples": resamples, "seed": seed, "method": METHOD, "unit": "image", "level": 0.95},
        "weights": {"path": table.weights, "sha256": table.weights_sha256},
        "metrics": {k: {"value": float(point.overall[k][0]), "ci95": _interval(reps.overall[k])} for k in METRICS},
        "per_class": {
            name: {
                k: {"value": _number(point.per_class[k][0, c]), "ci95": _interval(reps.per_class[k][:, c])}
                for k in CLASS_METRICS
            }
            for c, name in enumerate(table.names)
        },
    }


def evaluate_table(table: MatchTable, *, resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """The ``phase2 evaluate`` JSON of one table: point values with 95% bootstrap intervals."""
    counts = resample_counts(table.n_images, resamples, seed)
    return _summary(table, point_metrics(table), bootstrap_replicates(table, counts), resamples, seed)


def _delta(a: np.ndarray, b: np.ndarray, point_a: float, point_b: float) -> dict[str, Any]:
    diff = b - a
    valid = ~np.isnan(diff)
    value = point_b - point_a
    return {
        "value": _number(value),
        "ci95": None if np.isnan(value) else _interval(diff),
        "p_b_better": float(np.mean(diff[valid] > 0)) if valid.any() and not np.isnan(value) else None,
    }


def compare_tables(a: MatchTable, b: MatchTable, *, resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, Any]:
    """The ``phase2 compare`` JSON: both evaluations and Δ = B − A on the same image resamples."""
    if a.names != b.names:
        raise ValueError(f"the models' classes differ: {a.names} vs {b.names}")
    if a.protocol != b.protocol:
        raise ValueError(f"the two evaluations used different protocols: {a.protocol} vs {b.protocol}")
    b = b.reordered(a.images)
    if not np.array_equal(a.gt, b.gt):
        raise ValueError("the two evaluations saw different labels for the same images")
    counts = resample_counts(a.n_images, resamples, seed)
    point_a, point_b = point_metrics(a), point_metrics(b)
    reps_a, reps_b = bootstrap_replicates(a, counts), bootstrap_replicates(b, counts)
    return {
        "a": _summary(a, point_a, reps_a, resamples, seed),
        "b": _summary(b, point_b, reps_b, resamples, seed),
        "delta": {
            k: _delta(reps_a.overall[k], reps_b.overall[k], point_a.overall[k][0], point_b.overall[k][0])
            for k in METRICS
        },
        "per_class_delta": {
            name: {
                k: _delta(
                    reps_a.per_class[k][:, c],
                    reps_b.per_class[k][:, c],
                    point_a.per_class[k][0, c],
                    point_b.per_class[k][0, c],
                )
                for k in CLASS_METRICS
            }
            for c, name in enumerate(a.names)
        },
    }
