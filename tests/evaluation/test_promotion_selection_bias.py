"""Selection bias: the gate refuses a candidate that is better on val only because it was chosen
there, and the old gate (val, point values) would have promoted it.

Predictions come from perturbing the real ground truth of the real val and test splits (every
real box, real image, real class): each simulated model detects a box when the box's difficulty
(shared by all models: some boxes are hard for every model) plus the model's own noise is low
enough, and localises it with a jitter of its own; false positives are added per image. Every
model has the same true skill by construction, so any gain one shows is noise. That is the
point: with trained models the truth is unknown and the test could not say which gain is real.
True positives at the 10 IoU thresholds come from Ultralytics' own ``match_predictions``.

The models are seeds 1100 (production) and 1101-1108 (candidates): one draw of the case, one in
which the val winner also looks better on test by its point value, so that only the interval
stops it. Over 12 such draws (production seeds 0, 100, ..., 1100) the old gate promoted the val
winner 11 times and the new one refused it 10 times (measured once, 2026-11-29).
"""

from __future__ import annotations

import numpy as np
import pytest

from phase2.dataset.labels import parse_label
from phase2.dataset.layout import label_path_for, load_class_names, resolve_split_images
from phase2.evaluation.evaluate import EvalProtocol
from phase2.evaluation.matches import N_IOU, MatchTable
from phase2.evaluation.promotion import PromotionRule, decide_promotion
from phase2.evaluation.uncertainty import compare_tables, evaluate_table

CANDIDATES = 8  # checkpoints selection chooses among
PRODUCTION_SEED = 1100
RESAMPLES = 1000


def real_boxes(data_yaml, split: str) -> tuple[list[str], list[np.ndarray]]:
    """(image names, per image an array of rows cls, cx, cy, w, h) of a real split."""
    images = sorted(resolve_split_images(data_yaml)[split], key=lambda p: p.name)
    boxes = [
        np.array([box[1:] for box in parse_label(label_path_for(image)).boxes], dtype=float).reshape(-1, 5)
        for image in images
    ]
    return [image.name for image in images], boxes


def xyxy(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)


def simulated_model(split: str, names: list[str], images, boxes, model_seed: int) -> MatchTable:
    """One model's match table: same skill as every other, its own noise (``model_seed``)."""
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import box_iou

    validator = DetectionValidator()
    shared = np.random.default_rng([1234, len(split)])  # box difficulty: the same for every model
    own = np.random.default_rng([model_seed, len(split)])
    pred_image, pred_cls, conf, tp = [], [], [], []
    for i, gt in enumerate(boxes):
        difficulty = shared.normal(0.0, 1.0, len(gt))
        found = difficulty + own.normal(0.0, 0.6, len(gt)) < 0.8
        pred = gt[found].copy()
        scale = pred[:, 3:5]
        pred[:, 1:3] += own.normal(0.0, 0.08, (len(pred), 2)) * scale  # localisation jitter
        pred[:, 3:5] *= np.exp(own.normal(0.0, 0.12, (len(pred), 2)))
        score = 1.5 - difficulty[found] + own.normal(0.0, 0.8, len(pred))
        n_false = own.poisson(1.5)
        false = np.column_stack(
            [
                own.integers(0, len(names), n_false),
                own.uniform(0.1, 0.9, (n_false, 2)),
                own.uniform(0.05, 0.3, (n_false, 2)),
            ]
        )
        pred = np.vstack([pred, false])
        score = np.concatenate([score, own.normal(-0.5, 1.0, n_false)])
        iou = box_iou(torch.tensor(xyxy(gt[:, 1:])), torch.tensor(xyxy(pred[:, 1:])))
        hits = validator.match_predictions(torch.tensor(pred[:, 0]), torch.tensor(gt[:, 0]), iou)
        pred_image.append(np.full(len(pred), i))
        pred_cls.append(pred[:, 0].astype(int))
        conf.append(1 / (1 + np.exp(-score)))
        tp.append(np.asarray(hits, dtype=bool).reshape(-1, N_IOU))
    gt_counts = np.array([np.bincount(b[:, 0].astype(int), minlength=len(names)) for b in boxes])
    return MatchTable(
        names=names,
        images=images,
        gt=gt_counts,
        pred_image=np.concatenate(pred_image),
        pred_cls=np.concatenate(pred_cls),
        conf=np.concatenate(conf),
        tp=np.concatenate(tp),
        protocol=EvalProtocol(split=split, imgsz=640),
        weights=f"simulated-{model_seed}",
    )


def point(table: MatchTable) -> dict:
    """The old gate's input: bare point values (as ``evaluate_checkpoint`` reported them)."""
    result = evaluate_table(table, resamples=1)
    return {
        "overall": {k: v["value"] for k, v in result["metrics"].items()},
        "per_class": {c: {k: v["value"] for k, v in e.items()} for c, e in result["per_class"].items()},
    }


@pytest.fixture(scope="module")
def tables(real_dataset):
    data_yaml = real_dataset / "data.yaml"
    names = load_class_names(data_yaml)
    splits = {split: real_boxes(data_yaml, split) for split in ("val", "test")}
    return {
        split: [simulated_model(split, names, *splits[split], PRODUCTION_SEED + i) for i in range(CANDIDATES + 1)]
        for split in ("val", "test")
    }


def test_gate_refuses_a_candidate_that_is_better_on_val_only_because_it_was_selected_there(tables):
    production_val, *candidates_val = tables["val"]
    production_test, *candidates_test = tables["test"]
    assert production_val.n_images == 45 and production_test.n_images == 25  # the real splits
    val_scores = [point(t)["overall"]["mAP50-95"] for t in candidates_val]
    chosen = int(np.argmax(val_scores))  # checkpoint selection: the best on val
    production_on_val = point(production_val)["overall"]["mAP50-95"]
    gain_on_val = val_scores[chosen] - production_on_val
    assert gain_on_val > 0.01, f"the selected candidate does not look better on val ({gain_on_val:+.4f})"

    # The old gate: production and candidate on val, point values, max_drop 0 -> promoted.
    old_rule = PromotionRule(split="val", max_drop=0.0)
    old = decide_promotion(point(candidates_val[chosen]), point(production_val), old_rule, production_version=1)
    assert old.promote, old.reasons

    # The gate now: test (never used to choose), paired, "significantly better" on the interval.
    rule = PromotionRule(split="test", require="significantly_better")
    paired = compare_tables(production_test, candidates_test[chosen], resamples=RESAMPLES, seed=0)
    new = decide_promotion(paired["b"], paired, rule, production_version=1)
    low, high = paired["delta"]["mAP50-95"]["ci95"]
    assert low <= 0 < high, (low, high)  # no real gain: the interval holds 0
    assert not new.promote
    refusal = next(r for r in new.reasons if r.startswith("FAIL Δ mAP50-95"))
    assert (
        f"[{low:+.4f}, {high:+.4f}]" in refusal and "n=25 images" in refusal and "needs lower bound of Δ > 0" in refusal
    )
    # On test the point value still says "better" (a point-value gate on test would promote);
    # the gain is smaller than on val, where the candidate was chosen as the maximum.
    gain_on_test = paired["delta"]["mAP50-95"]["value"]
    assert 0 < gain_on_test < gain_on_val, (gain_on_test, gain_on_val)
    points_on_test = decide_promotion(point(candidates_test[chosen]), point(production_test), rule, 1)
    assert points_on_test.promote, points_on_test.reasons


def test_a_truly_better_candidate_still_passes_the_new_gate(tables, real_dataset):
    """The gate is not a wall: a model that is really better passes on test."""
    data_yaml = real_dataset / "data.yaml"
    names = load_class_names(data_yaml)
    images, boxes = real_boxes(data_yaml, "test")
    production = tables["test"][0]
    # Every box found, perfectly localised, confident: clearly better than production.
    better = MatchTable(
        names=names,
        images=images,
        gt=production.gt,
        pred_image=np.repeat(np.arange(len(boxes)), [len(b) for b in boxes]),
        pred_cls=np.concatenate([b[:, 0].astype(int) for b in boxes]),
        conf=np.full(int(production.gt.sum()), 0.9),
        tp=np.ones((int(production.gt.sum()), N_IOU), dtype=bool),
        protocol=production.protocol,
    )
    paired = compare_tables(production, better, resamples=RESAMPLES, seed=0)
    decision = decide_promotion(paired["b"], paired, PromotionRule(require="significantly_better"), 1)
    assert paired["delta"]["mAP50-95"]["ci95"][0] > 0 and decision.promote, decision.reasons
