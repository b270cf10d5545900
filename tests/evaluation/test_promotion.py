"""The promotion gate: the decision rule, and deciding + applying it against a real registry."""

from __future__ import annotations

import pytest

from phase2.evaluation.promotion import PromotionRule, decide_promotion, promote_with_retry
from phase2.registry.registry import ModelVersion, PromotionConflict, Registry
from tests.registry.test_registry import RULE, sample_files, sample_metadata, sample_metrics


def test_promotion_promotes_within_epsilon_and_meeting_class_target():
    decision = decide_promotion(sample_metrics(0.445, 0.65), sample_metrics(0.45, 0.7), RULE, production_version=1)
    assert decision.promote, decision.reasons
    rows = {r.metric: r for r in decision.rows}
    assert rows["mAP50-95"].candidate == 0.445 and rows["mAP50-95"].production == 0.45 and rows["mAP50-95"].passed
    assert rows["toe_drain AP50"].passed and rows["rock_toe AP50"].passed is None
    assert "| mAP50-95 | 0.4450 | 0.4500 |" in decision.to_markdown()


@pytest.mark.parametrize(
    ("candidate", "production", "failing"),
    [
        (sample_metrics(0.43, 0.7), sample_metrics(0.45, 0.7), "mAP50-95 = 0.4300 (needs >= 0.4400"),
        (sample_metrics(0.50, 0.55), sample_metrics(0.45, 0.7), "toe_drain AP50 = 0.5500 (needs >= 0.6)"),
        (sample_metrics(0.25, 0.7), None, "mAP50-95 = 0.2500 (needs >= 0.3 (first model))"),
        (sample_metrics(float("nan"), 0.7), sample_metrics(0.45, 0.7), "mAP50-95 = missing"),
        ({"overall": {"mAP50-95": 0.5}}, sample_metrics(0.45, 0.7), "toe_drain AP50 = missing"),
    ],
)
def test_promotion_refuses(candidate, production, failing):
    decision = decide_promotion(candidate, production, RULE)
    assert not decision.promote
    assert any(failing in reason for reason in decision.reasons), decision.reasons


def test_first_model_meeting_targets_is_promoted():
    decision = decide_promotion(sample_metrics(0.35, 0.62), None, RULE)
    assert decision.promote and "first model meets" in decision.reasons[0]


def test_rule_rejects_bad_fields():
    with pytest.raises(ValueError):
        PromotionRule(metric="accuracy")
    with pytest.raises(ValueError):
        PromotionRule(max_drop=-0.1)
    with pytest.raises(ValueError):
        PromotionRule(per_class_min={"toe_drain": {"AP50": 60}})
    with pytest.raises(ValueError):
        PromotionRule(per_class_min={"toe_drain": {"mAP": 0.6}})


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
