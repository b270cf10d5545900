"""The promotion gate: interval rules (Δ lower bound, floors on lower bounds, min_instances), and
deciding + applying it against a real registry (SeaweedFS)."""

from __future__ import annotations

import pytest

from phase2.evaluation.promotion import PromotionRule, decide_promotion, promote_with_retry
from phase2.registry.registry import ModelVersion, PromotionConflict, Registry
from phase2.training.recipe import load_recipe
from tests.registry.test_registry import RULE, sample_files, sample_metadata, sample_metrics

NAMES = ["rock_toe", "slope_drain", "toe_drain", "vegetation"]
BOOT = {"resamples": 1000, "seed": 0, "method": "percentile", "unit": "image", "level": 0.95}


def estimate(value: float, low: float, high: float) -> dict:
    return {"value": value, "ci95": [low, high]}


def evaluation(map5095=(0.45, 0.40, 0.50), toe_ap50=(0.70, 0.62, 0.78), toe_n=19, n_images=25) -> dict:
    """An ``evaluate_table``-shaped result (only the numbers the gate reads)."""
    per_class = {name: {"AP50": estimate(0.8, 0.7, 0.9), "AP50-95": estimate(0.5, 0.4, 0.6)} for name in NAMES}
    per_class["toe_drain"]["AP50"] = estimate(*toe_ap50)
    return {
        "split": "test",
        "n_images": n_images,
        "instances": {"rock_toe": 46, "slope_drain": 39, "toe_drain": toe_n, "vegetation": 24},
        "bootstrap": BOOT,
        "metrics": {
            "precision": estimate(0.7, 0.6, 0.8),
            "recall": estimate(0.6, 0.5, 0.7),
            "mAP50": estimate(0.75, 0.65, 0.85),
            "mAP50-95": estimate(*map5095),
        },
        "per_class": per_class,
    }


def comparison(candidate: dict, delta=(0.01, -0.015, 0.03), p_better=0.8) -> dict:
    """A ``compare_tables``-shaped result: A = production, B = candidate."""
    entry = {"value": delta[0], "ci95": list(delta[1:]), "p_b_better": p_better}
    zero = {"value": 0.0, "ci95": [-0.05, 0.05], "p_b_better": 0.5}
    return {
        "a": evaluation(),
        "b": candidate,
        "delta": {m: (entry if m == "mAP50-95" else zero) for m in ("precision", "recall", "mAP50", "mAP50-95")},
        "per_class_delta": {name: {"AP50": zero, "AP50-95": zero} for name in NAMES},
    }


FLOOR = {"toe_drain": {"AP50": 0.6}}


def test_not_worse_reads_the_lower_bound_of_the_paired_delta():
    rule = PromotionRule(require="not_worse", margin=0.02, per_class_min=FLOOR)
    candidate = evaluation()
    within = decide_promotion(candidate, comparison(candidate, delta=(-0.005, -0.019, 0.01)), rule, 1)
    assert within.promote, within.reasons
    beyond = decide_promotion(candidate, comparison(candidate, delta=(0.004, -0.021, 0.03)), rule, 1)
    assert not beyond.promote  # the point Δ is positive; the lower bound is beyond the margin
    assert "FAIL Δ mAP50-95 = +0.0040 [-0.0210, +0.0300], P(better) 0.80, n=25 images" in beyond.reasons[1]
    assert "needs lower bound of Δ >= -0.02" in beyond.reasons[1]
    row = next(r for r in beyond.rows if r.metric == "mAP50-95")
    assert (row.delta, row.delta_ci95, row.p_better, row.n) == (0.004, [-0.021, 0.03], 0.8, 25)
    assert row.production == 0.45 and row.production_ci95 == [0.40, 0.50] and row.passed is False


def test_significantly_better_needs_a_positive_lower_bound():
    rule = PromotionRule(require="significantly_better", per_class_min=FLOOR)
    candidate = evaluation()
    assert decide_promotion(candidate, comparison(candidate, delta=(0.03, 0.001, 0.06)), rule, 1).promote
    refused = decide_promotion(candidate, comparison(candidate, delta=(0.03, -0.001, 0.06)), rule, 1)
    assert not refused.promote and any("needs lower bound of Δ > 0" in r for r in refused.reasons)


def test_class_floor_applies_to_the_lower_bound():
    rule = PromotionRule(per_class_min=FLOOR)
    above = evaluation(toe_ap50=(0.70, 0.61, 0.80))
    assert decide_promotion(above, comparison(above), rule, 1).promote
    point_above = evaluation(toe_ap50=(0.70, 0.55, 0.80))  # the old gate's point check would pass
    refused = decide_promotion(point_above, comparison(point_above), rule, 1)
    assert not refused.promote
    assert "FAIL toe_drain AP50 = 0.7000 [0.5500, 0.8000], n=19 (needs lower bound >= 0.6)" in refused.reasons


def test_a_floored_class_below_min_instances_is_insufficient_evidence_and_refuses():
    rule = PromotionRule(per_class_min=FLOOR, min_instances=10)
    few = evaluation(toe_ap50=(1.0, 1.0, 1.0), toe_n=4)  # perfect on 4 instances: still no evidence
    for production in (comparison(few), None):
        decision = decide_promotion(few, production, rule, 1 if production else None)
        assert not decision.promote and decision.insufficient == {"toe_drain": 4}
        message = next(r for r in decision.reasons if "insufficient evidence" in r)
        assert message.startswith("FAIL insufficient evidence for toe_drain (4 instances in 'test'")
        assert "rebalance.test_targets: {toe_drain: 10}" in message and "label more toe_drain" in message
        row = next(r for r in decision.rows if r.metric == "toe_drain AP50")
        assert row.requirement == "insufficient evidence" and row.passed is False and row.n == 4
    enough = PromotionRule(per_class_min=FLOOR, min_instances=4)
    assert decide_promotion(few, comparison(few), enough, 1).promote
    unfloored = decide_promotion(few, comparison(few), PromotionRule(), 1)  # no floor: n does not matter
    assert unfloored.promote and unfloored.insufficient == {}


def test_first_model_is_promoted_on_absolute_floors_on_lower_bounds():
    rule = PromotionRule(absolute_min={"mAP50": 0.6}, per_class_min=FLOOR)
    meets = evaluation()  # mAP50 0.75 [0.65, 0.85]
    decision = decide_promotion(meets, None, rule)
    assert decision.promote and "first model meets" in decision.reasons[0]
    assert "ok mAP50 = 0.7500 [0.6500, 0.8500], n=25 (needs lower bound >= 0.6 (first model))" in decision.reasons
    strict = PromotionRule(absolute_min={"mAP50": 0.7})  # point 0.75 >= 0.7, lower bound 0.65 is not
    refused = decide_promotion(meets, None, strict)
    assert not refused.promote and "first model misses" in refused.reasons[0]


def test_every_decision_number_carries_interval_and_n_in_markdown():
    candidate = evaluation()
    decision = decide_promotion(candidate, comparison(candidate), PromotionRule(per_class_min=FLOOR), 1)
    text = decision.to_markdown()
    assert "(gate split: test, 25 images)" in text and "percentile bootstrap over images, 1000 resamples" in text
    assert "| mAP50-95 | 25 | 0.4500 [0.4000, 0.5000] | 0.4500 [0.4000, 0.5000] | +0.0100 [-0.0150, +0.0300] |" in text
    assert "| toe_drain AP50 | 19 | 0.7000 [0.6200, 0.7800] |" in text
    for row in decision.rows:
        if row.passed is not None:
            assert row.candidate_ci95 and row.n, row


def test_wandb_and_flow_summaries_carry_intervals_and_n():
    from tasks.promote import gate_summary

    candidate = evaluation()
    decision = decide_promotion(candidate, comparison(candidate), PromotionRule(per_class_min=FLOOR), 1)
    wandb = gate_summary(decision)
    assert wandb["promotion/split"] == "test" and wandb["promotion/promoted"] is True
    assert (wandb["promotion/mAP50-95/delta_ci95_low"], wandb["promotion/mAP50-95/delta_ci95_high"]) == (-0.015, 0.03)
    assert wandb["promotion/mAP50-95/n"] == 25 and wandb["promotion/toe_drain/AP50/n"] == 19
    assert wandb["promotion/toe_drain/AP50/candidate_ci95_low"] == 0.62
    flow = decision.summary()
    assert (flow["split"], flow["n_images"], flow["promoted"], flow["insufficient_evidence"]) == ("test", 25, True, {})
    assert flow["checks"]["mAP50-95"] == {
        "value": 0.45,
        "ci95": [0.40, 0.50],
        "n": 25,
        "delta": 0.01,
        "delta_ci95": [-0.015, 0.03],
        "p_better": 0.8,
        "requirement": "lower bound of Δ >= -0.02",
        "passed": True,
    }
    assert set(flow["checks"]) == {"mAP50-95", "toe_drain AP50"}
    from phase2.demo import run_summary

    printed = run_summary({"status": "completed", "promoted": True, "gate": flow}, stack_up=True)
    assert "gate split: test, 25 images" in printed
    assert (
        "gate mAP50-95: 0.4500 [0.4000, 0.5000] n=25; Δ +0.0100 [-0.0150, +0.0300] (lower bound of Δ >= -0.02: pass)"
        in printed
    )
    table = {row["metric"]: row for row in decision.table_rows()}  # the Prefect / W&B table: flat cells
    assert table["mAP50-95"] == {
        "metric": "mAP50-95",
        "n": 25,
        "candidate": 0.45,
        "candidate_ci95_low": 0.40,
        "candidate_ci95_high": 0.50,
        "production": 0.45,
        "production_ci95_low": 0.40,
        "production_ci95_high": 0.50,
        "delta": 0.01,
        "delta_ci95_low": -0.015,
        "delta_ci95_high": 0.03,
        "p_better": 0.8,
        "requirement": "lower bound of Δ >= -0.02",
        "passed": True,
    }


def test_the_report_chart_draws_per_class_error_bars():
    import io

    from PIL import Image

    from phase2.report.charts import gate_per_class_png

    candidate = evaluation()
    decision = decide_promotion(candidate, comparison(candidate), PromotionRule(), 1)
    png = gate_per_class_png(decision.model_dump(mode="json")["rows"])
    assert png is not None and png.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (1200, 400)
    assert gate_per_class_png([]) is None


def test_point_metrics_still_decide_and_say_so():
    decision = decide_promotion(sample_metrics(0.445, 0.65), sample_metrics(0.45, 0.7), RULE, production_version=1)
    assert decision.promote and "no intervals were given: decided on point values" in decision.reasons
    assert "needs Δ (no interval) >= -0.01" in " ".join(decision.reasons)
    refused = decide_promotion(sample_metrics(0.43, 0.7), sample_metrics(0.45, 0.7), RULE, production_version=1)
    assert not refused.promote


def test_rule_fields_and_the_old_max_drop():
    assert PromotionRule().split == "test" and PromotionRule().min_instances == 10
    assert PromotionRule(max_drop=0.03).margin == 0.03  # old recipes: max_drop is read as the margin
    for bad in (
        {"metric": "accuracy"},
        {"margin": -0.1},
        {"max_drop": 0.01, "margin": 0.02},
        {"per_class_min": {"toe_drain": {"AP50": 60}}},
        {"per_class_min": {"toe_drain": {"precision": 0.6}}},  # no per-class interval for it
        {"absolute_min": {"mAP50": 2}},
        {"split": "train"},
        {"require": "better"},
        {"min_instances": 0},
    ):
        with pytest.raises(ValueError):
            PromotionRule(**bad)
    for name in ("phase2-seed", "phase2-native", "phase2-demo"):
        assert load_recipe(name).promotion.split == "test", name


def _registered(registry: Registry, tmp_path, tag: str, map5095: float) -> int:
    metadata = sample_metadata(metrics={"val": sample_metrics(map5095, 0.7)})
    return registry.register(sample_files(tmp_path, tag), metadata).version


def _val_metrics(version: ModelVersion) -> dict:
    return version.metrics["val"]


def test_promote_with_retry_first_model_then_better_then_worse(object_store, tmp_path):
    registry = Registry(object_store)
    evaluated: list[str] = []

    def evaluate_production(production: ModelVersion) -> dict:
        evaluated.append(production.ref)
        return _val_metrics(production)

    v1 = _registered(registry, tmp_path, "a", 0.40)
    first = promote_with_retry(registry, v1, sample_metrics(0.40, 0.7), RULE, evaluate_production)
    assert first.promote and first.production_version is None and evaluated == []
    v2 = _registered(registry, tmp_path, "b", 0.30)
    worse = promote_with_retry(registry, v2, sample_metrics(0.30, 0.7), RULE, evaluate_production)
    assert not worse.promote and worse.production_version == v1 and evaluated == [registry.get("v1").ref]
    assert registry.aliases() == {"candidate": v2, "production": v1}


def test_promote_with_retry_decides_again_when_production_moved(object_store, tmp_path):
    """Another run promotes between our decision and our alias move: the new production is
    evaluated and decided against; the conflict is logged."""
    registry = Registry(object_store)
    v1 = _registered(registry, tmp_path, "a", 0.40)
    v2 = _registered(registry, tmp_path, "b", 0.60)
    v3 = _registered(registry, tmp_path, "c", 0.50)
    registry.set_alias("production", v1)
    logged: list[str] = []

    def evaluate_production(production: ModelVersion) -> dict:
        if production.version == v1:
            registry.set_alias("production", v2)  # the other run wins the race
        return _val_metrics(production)

    decision = promote_with_retry(registry, v3, sample_metrics(0.50, 0.7), RULE, evaluate_production, log=logged.append)
    assert not decision.promote and decision.production_version == v2  # 0.50 < v2's 0.60
    assert registry.aliases() == {"candidate": v3, "production": v2}
    assert len(logged) == 1 and f"moved to v{v2}" in logged[0] and "attempt 2" in logged[0]


def test_promote_with_retry_gives_up_after_its_attempts(object_store, tmp_path):
    registry = Registry(object_store)
    versions = [_registered(registry, tmp_path, tag, 0.40) for tag in ("a", "b", "c")]
    candidate = _registered(registry, tmp_path, "d", 0.50)
    registry.set_alias("production", versions[0])
    moves = iter(versions[1:])

    def evaluate_production(production: ModelVersion) -> dict:
        registry.set_alias("production", next(moves))  # production moves under every decision
        return sample_metrics(0.10, 0.7)

    with pytest.raises(PromotionConflict):
        promote_with_retry(registry, candidate, sample_metrics(0.50, 0.7), RULE, evaluate_production, attempts=2)
    assert registry.aliases() == {"candidate": candidate, "production": versions[2]}
