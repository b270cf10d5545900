"""The promotion gate: may a registered candidate replace production?

:func:`decide_promotion` applies a recipe's :class:`PromotionRule` to the candidate's and
production's metrics (both from the same evaluation protocol and split);
:func:`promote_with_retry` makes the decision against the registry's current production and
moves the aliases, deciding again when another run promoted in between.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from phase2.registry.registry import ModelVersion, PromotionConflict, Registry

OverallMetric = Literal["precision", "recall", "mAP50", "mAP50-95"]
ClassMetric = Literal["precision", "recall", "AP50", "AP50-95"]
AP_METRICS: tuple[ClassMetric, ...] = ("AP50", "AP50-95")


class PromotionRule(BaseModel):
    """When a candidate may replace production (same evaluation split for both)."""

    model_config = ConfigDict(extra="forbid")

    metric: OverallMetric = "mAP50-95"
    max_drop: float = Field(0.0, ge=0, description="candidate may be at most this much below production")
    per_class_min: dict[str, dict[ClassMetric, float]] = Field(
        default_factory=dict, description='e.g. {"toe_drain": {"AP50": 0.6}}; always applies'
    )
    absolute_min: dict[OverallMetric, float] = Field(
        default_factory=dict, description="overall minimums a first model (no production yet) must reach"
    )

    @field_validator("per_class_min")
    @classmethod
    def _thresholds_in_range(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for name, mins in value.items():
            for metric, threshold in mins.items():
                if not 0 <= threshold <= 1:
                    raise ValueError(f"{name}.{metric} minimum {threshold} is outside [0, 1]")
        return value


class ComparisonRow(BaseModel):
    metric: str
    candidate: float | None
    production: float | None
    requirement: str = ""
    passed: bool | None = None


class PromotionDecision(BaseModel):
    promote: bool
    reasons: list[str]
    rows: list[ComparisonRow]
    production_version: int | None = None

    def to_markdown(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        mark = {True: "pass", False: "FAIL", None: ""}
        lines = [
            f"**Decision: {'PROMOTE' if self.promote else 'KEEP current production'}**",
            "",
            *(f"- {reason}" for reason in self.reasons),
            "",
            "| metric | candidate | production | requirement | result |",
            "|---|---|---|---|---|",
            *(
                f"| {r.metric} | {fmt(r.candidate)} | {fmt(r.production)} | {r.requirement} | {mark[r.passed]} |"
                for r in self.rows
            ),
        ]
        return "\n".join(lines) + "\n"


def _value(metrics: dict[str, Any] | None, *path: str) -> float | None:
    node: Any = metrics
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    try:
        value = float(node)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def decide_promotion(
    candidate_metrics: dict[str, Any],
    production_metrics: dict[str, Any] | None,
    rule: PromotionRule,
    production_version: int | None = None,
) -> PromotionDecision:
    """Apply ``rule``. Metrics: ``{"overall": {...}, "per_class": {class: {...}}}`` as produced by
    the evaluation; missing or NaN values fail their check."""
    rows: list[ComparisonRow] = []
    failures: list[str] = []
    passes: list[str] = []

    def check(metric: str, candidate: float | None, production: float | None, minimum: float, text: str) -> None:
        ok = candidate is not None and candidate >= minimum - 1e-12
        rows.append(
            ComparisonRow(metric=metric, candidate=candidate, production=production, requirement=text, passed=ok)
        )
        shown = "missing" if candidate is None else f"{candidate:.4f}"
        (passes if ok else failures).append(f"{metric} = {shown} (needs {text})")

    for metric in ("precision", "recall", "mAP50", "mAP50-95"):
        cand, prod = _value(candidate_metrics, "overall", metric), _value(production_metrics, "overall", metric)
        if production_metrics is not None and metric == rule.metric:
            if prod is None:
                failures.append(f"production has no {metric} to compare against")
                rows.append(ComparisonRow(metric=metric, candidate=cand, production=None, passed=False))
            else:
                check(
                    metric,
                    cand,
                    prod,
                    prod - rule.max_drop,
                    f">= {prod - rule.max_drop:.4f} (production - {rule.max_drop})",
                )
        elif production_metrics is None and metric in rule.absolute_min:
            check(metric, cand, None, rule.absolute_min[metric], f">= {rule.absolute_min[metric]} (first model)")
        else:
            rows.append(ComparisonRow(metric=metric, candidate=cand, production=prod))
    classes = list(dict.fromkeys([*(candidate_metrics.get("per_class") or {}), *rule.per_class_min]))
    for name in classes:
        for metric in AP_METRICS:
            cand = _value(candidate_metrics, "per_class", name, metric)
            prod = _value(production_metrics, "per_class", name, metric)
            minimum = rule.per_class_min.get(name, {}).get(metric)
            if minimum is None:
                rows.append(ComparisonRow(metric=f"{name} {metric}", candidate=cand, production=prod))
            else:
                check(f"{name} {metric}", cand, prod, minimum, f">= {minimum}")
        for metric, minimum in rule.per_class_min.get(name, {}).items():
            if metric not in AP_METRICS:
                check(
                    f"{name} {metric}",
                    _value(candidate_metrics, "per_class", name, metric),
                    _value(production_metrics, "per_class", name, metric),
                    minimum,
                    f">= {minimum}",
                )
    promote = not failures
    if production_metrics is None:
        headline = "no production model yet: " + (
            "first model meets the absolute targets" if promote else "first model misses its targets"
        )
    else:
        headline = "candidate " + ("passes" if promote else "fails") + " the rule against production"
    return PromotionDecision(
        promote=promote,
        reasons=[headline, *(f"FAIL {f}" for f in failures), *(f"ok {p}" for p in passes)],
        rows=rows,
        production_version=production_version,
    )


def promote_with_retry(
    registry: Registry,
    version: int,
    candidate_metrics: dict[str, Any],
    rule: PromotionRule,
    evaluate_production: Callable[[ModelVersion], dict[str, Any]],
    *,
    attempts: int = 10,
    log: Callable[[str], None] | None = None,
) -> PromotionDecision:
    """Decide on ``version`` against the current production and apply the decision.

    ``evaluate_production`` measures the production version under the candidate's protocol
    (same split). Another run may promote between our decision and our alias move: the
    registry's compare-and-swap refuses that (:class:`PromotionConflict`), and the new
    production is evaluated and decided against again, up to ``attempts`` times.
    """
    for attempt in range(1, attempts + 1):
        production = registry.alias_target("production")
        decision = decide_promotion(
            candidate_metrics,
            evaluate_production(production) if production is not None else None,
            rule,
            production_version=production.version if production is not None else None,
        )
        try:
            registry.apply_promotion(decision, version)
            return decision
        except PromotionConflict as conflict:
            if attempt == attempts:
                raise
            if log is not None:
                log(f"{conflict}; deciding again (attempt {attempt + 1})")
    raise ValueError(f"attempts must be at least 1, not {attempts}")
