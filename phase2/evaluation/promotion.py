"""The promotion gate: may a registered candidate replace production?

The gate decides on a split that played no part in checkpoint selection (``PromotionRule.split``,
``test`` by default: selection picks the best of several candidates on val, and that maximum
is optimistic there). Candidate and production are measured on the same images under the
same protocol, and every check reads a 95% bootstrap interval
(:mod:`phase2.evaluation.uncertainty`), never a bare point value:

- against production, on the paired difference Δ = candidate − production of ``rule.metric``:
  ``not_worse`` needs the lower bound of Δ ≥ −margin, ``significantly_better`` needs it > 0;
- per-class floors (``per_class_min``) and, for a first model, ``absolute_min`` apply to the
  candidate's lower bound;
- a floor on a class with fewer than ``min_instances`` instances in the gate split can neither
  pass nor fail: the decision says "insufficient evidence" and **refuses** (a floor the recipe
  asked for is never skipped silently); the fix is to rebalance the gate split
  (``rebalance.test_targets``), label more, or remove the floor from the recipe.

:func:`decide_promotion` also accepts bare point metrics (``{"overall": {...}, "per_class":
{...}}``, e.g. registry metadata): it then decides on the values and says that no interval was
given. :func:`promote_with_retry` makes the decision against the registry's current production
and moves the aliases, deciding again when another run promoted in between.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from phase2.registry.registry import ModelVersion, PromotionConflict, Registry

OverallMetric = Literal["precision", "recall", "mAP50", "mAP50-95"]
ClassMetric = Literal["AP50", "AP50-95"]
OVERALL_METRICS: tuple[OverallMetric, ...] = ("precision", "recall", "mAP50", "mAP50-95")
AP_METRICS: tuple[ClassMetric, ...] = ("AP50", "AP50-95")


class PromotionRule(BaseModel):
    """When a candidate may replace production, in terms of 95% intervals on the gate split."""

    model_config = ConfigDict(extra="forbid")

    split: Literal["test", "val"] = Field(
        "test", description="gate split: test (never used by checkpoint selection); val is selection-biased"
    )
    metric: OverallMetric = "mAP50-95"
    require: Literal["not_worse", "significantly_better"] = Field(
        "not_worse",
        description="not_worse: lower bound of Δ metric >= -margin; significantly_better: lower bound > 0",
    )
    margin: float = Field(0.02, ge=0, le=1, description="how far below production Δ's lower bound may go")
    per_class_min: dict[str, dict[ClassMetric, float]] = Field(
        default_factory=dict, description='floors on the lower bound, e.g. {"toe_drain": {"AP50": 0.5}}; always apply'
    )
    absolute_min: dict[OverallMetric, float] = Field(
        default_factory=dict, description="floors on the lower bound a first model (no production yet) must reach"
    )
    min_instances: int = Field(
        10, ge=1, description="a class floor needs this many instances in the gate split, else the gate refuses"
    )

    @model_validator(mode="before")
    @classmethod
    def _max_drop_is_the_margin(cls, data: Any) -> Any:
        # Recipes before the interval gate said `max_drop` (candidate >= production - max_drop on
        # point values); it keeps its number as the margin, now on Δ's lower bound.
        if isinstance(data, dict) and "max_drop" in data:
            data = dict(data)
            if "margin" in data:
                raise ValueError("promotion: give `margin` only (`max_drop` is its old name)")
            data["margin"] = data.pop("max_drop")
        return data

    @field_validator("per_class_min", "absolute_min")
    @classmethod
    def _thresholds_in_range(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, entry in value.items():
            for metric, threshold in entry.items() if isinstance(entry, dict) else [(name, entry)]:
                if not 0 <= threshold <= 1:
                    raise ValueError(f"{name}.{metric} minimum {threshold} is outside [0, 1]")
        return value

    def describe(self) -> str:
        bound = f"lower bound of Δ {self.metric} " + (f">= -{self.margin:g}" if self.require == "not_worse" else "> 0")
        return f"{self.require} on '{self.split}' ({bound}), floors on lower bounds, min_instances {self.min_instances}"


class ComparisonRow(BaseModel):
    metric: str
    candidate: float | None
    production: float | None
    requirement: str = ""
    passed: bool | None = None
    candidate_ci95: list[float] | None = None
    production_ci95: list[float] | None = None
    delta: float | None = None
    delta_ci95: list[float] | None = None
    p_better: float | None = Field(None, description="share of resamples in which the candidate is better")
    n: int | None = Field(None, description="images (overall rows) or instances (class rows) in the gate split")


class PromotionDecision(BaseModel):
    promote: bool
    reasons: list[str]
    rows: list[ComparisonRow]
    production_version: int | None = None
    split: str | None = Field(None, description="the gate split both models were measured on")
    n_images: int | None = None
    bootstrap: dict[str, Any] | None = Field(None, description="resamples, seed, method of the intervals")
    insufficient: dict[str, int] = Field(default_factory=dict, description="floored classes below min_instances")

    def table_rows(self) -> list[dict[str, Any]]:
        """The rows as flat records (Prefect table artifact, W&B table): intervals as low/high columns."""
        records = []
        for r in self.rows:
            record: dict[str, Any] = {"metric": r.metric, "n": r.n}
            for name, value, ci in (
                ("candidate", r.candidate, r.candidate_ci95),
                ("production", r.production, r.production_ci95),
                ("delta", r.delta, r.delta_ci95),
            ):
                low, high = ci or (None, None)
                record |= {name: value, f"{name}_ci95_low": low, f"{name}_ci95_high": high}
            records.append(record | {"p_better": r.p_better, "requirement": r.requirement, "passed": r.passed})
        return records

    def summary(self) -> dict[str, Any]:
        """The decision for the flow's summary: split, n and every checked number with its interval."""
        checked = {}
        for r in self.rows:
            if r.passed is None:
                continue
            entry: dict[str, Any] = {"value": r.candidate, "ci95": r.candidate_ci95, "n": r.n}
            if r.delta is not None:
                entry |= {"delta": r.delta, "delta_ci95": r.delta_ci95, "p_better": r.p_better}
            checked[r.metric] = entry | {"requirement": r.requirement, "passed": r.passed}
        return {
            "split": self.split,
            "n_images": self.n_images,
            "promoted": self.promote,
            "production_version": self.production_version,
            "checks": checked,
            "insufficient_evidence": self.insufficient,
        }

    def to_markdown(self) -> str:
        mark = {True: "pass", False: "FAIL", None: ""}
        boot = self.bootstrap
        where = f"{self.split or '?'}, {self.n_images if self.n_images is not None else '?'} images"
        method = (
            f"95% intervals: {boot['method']} bootstrap over images, {boot['resamples']} resamples, seed {boot['seed']}"
            if boot
            else "point values only (no intervals given)"
        )
        lines = [
            f"**Decision: {'PROMOTE' if self.promote else 'KEEP current production'}** (gate split: {where})",
            "",
            f"_{method}_",
            "",
            *(f"- {reason}" for reason in self.reasons),
            "",
            "| metric | n | candidate [95%] | production [95%] | Δ [95%] | P(better) | requirement | result |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {r.metric} | {'-' if r.n is None else r.n} | {with_interval(r.candidate, r.candidate_ci95)} | "
                f"{with_interval(r.production, r.production_ci95)} | "
                f"{with_interval(r.delta, r.delta_ci95, sign=True)} | "
                f"{'-' if r.p_better is None else f'{r.p_better:.2f}'} | {r.requirement} | {mark[r.passed]} |"
                for r in self.rows
            ),
        ]
        return "\n".join(lines) + "\n"


def with_interval(value: float | None, ci95: list[float] | None, *, sign: bool = False) -> str:
    """``0.6123 [0.5012, 0.7034]``; ``-`` when there is no value."""
    if value is None:
        return "-"
    fmt = "+.4f" if sign else ".4f"
    return f"{value:{fmt}}" + (f" [{ci95[0]:{fmt}}, {ci95[1]:{fmt}}]" if ci95 else "")


def gate_lines(gate: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) per checked number of a decision's :meth:`PromotionDecision.summary`, for
    the end of `phase2 run`: value [95% interval], n, Δ against production, pass/FAIL."""
    lines = [("gate split", f"{gate.get('split')}, {gate.get('n_images')} images")]
    for metric, check in (gate.get("checks") or {}).items():
        text = f"{with_interval(check.get('value'), check.get('ci95'))} n={check.get('n')}"
        if check.get("delta") is not None:
            text += f"; Δ {with_interval(check['delta'], check.get('delta_ci95'), sign=True)}"
        lines.append(
            (f"gate {metric}", f"{text} ({check.get('requirement')}: {'pass' if check['passed'] else 'FAIL'})")
        )
    lines += [
        ("gate", f"insufficient evidence for {c} ({n} instances)")
        for c, n in (gate.get("insufficient_evidence") or {}).items()
    ]
    return lines


@dataclass(frozen=True)
class _Estimate:
    value: float | None
    ci95: list[float] | None = None
    n: int | None = None
    p_better: float | None = None

    @property
    def lower(self) -> float | None:
        return self.ci95[0] if self.ci95 else self.value


def _number(node: Any) -> float | None:
    try:
        value = float(node)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


class _Evidence:
    """One model's numbers on the gate split: an ``evaluate_table`` result (values with intervals)
    or bare point metrics (``{"overall": ..., "per_class": ...}``)."""

    def __init__(self, metrics: dict[str, Any]) -> None:
        self.raw = metrics
        self.with_intervals = "metrics" in metrics
        self.n_images: int | None = metrics.get("n_images")
        self.instances: dict[str, int] = dict(metrics.get("instances") or {})
        if not self.with_intervals:
            for name, values in (metrics.get("per_class") or {}).items():
                if isinstance(values, dict) and values.get("instances") is not None:
                    self.instances[name] = int(values["instances"])

    def classes(self) -> list[str]:
        return list(self.raw.get("per_class") or {})

    def overall(self, metric: str) -> _Estimate:
        if self.with_intervals:
            entry = (self.raw.get("metrics") or {}).get(metric) or {}
            return _Estimate(_number(entry.get("value")), entry.get("ci95"), self.n_images)
        return _Estimate(_number((self.raw.get("overall") or {}).get(metric)), None, self.n_images)

    def per_class(self, name: str, metric: str) -> _Estimate:
        entry = ((self.raw.get("per_class") or {}).get(name) or {}).get(metric)
        n = self.instances.get(name)
        if isinstance(entry, dict):
            return _Estimate(_number(entry.get("value")), entry.get("ci95"), n)
        return _Estimate(_number(entry), None, n)


def _paired_delta(comparison: dict[str, Any] | None, *path: str) -> _Estimate | None:
    node: Any = comparison
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None
    return _Estimate(_number(node.get("value")), node.get("ci95"), None, _number(node.get("p_b_better")))


def decide_promotion(
    candidate_metrics: dict[str, Any],
    production_metrics: dict[str, Any] | None,
    rule: PromotionRule,
    production_version: int | None = None,
) -> PromotionDecision:
    """Apply ``rule`` to the candidate's numbers on the gate split.

    ``candidate_metrics``: the candidate's ``evaluate_table`` result (or bare point metrics).
    ``production_metrics``: None for a first model; else the paired ``compare_tables`` result
    with A = production and B = the candidate (Δ = candidate − production), or production's
    bare point metrics. Missing or NaN values fail their check.
    """
    paired = production_metrics if production_metrics is not None and "delta" in production_metrics else None
    candidate = _Evidence(paired["b"] if paired else candidate_metrics)
    production = None
    if production_metrics is not None:
        production = _Evidence(paired["a"] if paired else production_metrics)
    rows: list[ComparisonRow] = []
    failures: list[str] = []
    passes: list[str] = []

    def row(metric: str, cand: _Estimate, prod: _Estimate | None, delta: _Estimate | None, **extra: Any) -> None:
        rows.append(
            ComparisonRow(
                metric=metric,
                candidate=cand.value,
                candidate_ci95=cand.ci95,
                production=prod.value if prod else None,
                production_ci95=prod.ci95 if prod else None,
                delta=delta.value if delta else None,
                delta_ci95=delta.ci95 if delta else None,
                p_better=delta.p_better if delta else None,
                n=cand.n,
                **extra,
            )
        )

    def record(ok: bool, text: str) -> None:
        (passes if ok else failures).append(text)

    def floor(metric: str, cand: _Estimate, prod: _Estimate | None, delta: _Estimate | None, minimum: float) -> None:
        lower = cand.lower
        ok = lower is not None and lower >= minimum - 1e-12
        bound = "lower bound" if cand.ci95 else "value (no interval)"
        requirement = f"{bound} >= {minimum:g}" + (" (first model)" if production is None else "")
        row(metric, cand, prod, delta, requirement=requirement, passed=ok)
        shown = "missing" if cand.value is None else with_interval(cand.value, cand.ci95)
        record(ok, f"{metric} = {shown}, n={cand.n if cand.n is not None else '?'} (needs {requirement})")

    for metric in OVERALL_METRICS:
        cand = candidate.overall(metric)
        prod = production.overall(metric) if production else None
        delta = _paired_delta(paired, "delta", metric)
        if delta is None and prod is not None and cand.value is not None and prod.value is not None:
            delta = _Estimate(cand.value - prod.value)  # point metrics: no interval for Δ
        if production is not None and metric == rule.metric:
            _gate_on_delta(rule, metric, cand, prod, delta, row, record)
        elif production is None and metric in rule.absolute_min:
            floor(metric, cand, None, None, rule.absolute_min[metric])
        else:
            row(metric, cand, prod, delta)

    insufficient: dict[str, int] = {}
    for name in dict.fromkeys([*candidate.classes(), *rule.per_class_min]):
        floors = rule.per_class_min.get(name, {})
        n = candidate.instances.get(name)
        short = bool(floors) and (n is None or n < rule.min_instances)
        if short:
            insufficient[name] = n or 0
            failures.append(
                f"insufficient evidence for {name} ({n if n is not None else 'unknown'} instances in "
                f"'{rule.split}', fewer than min_instances {rule.min_instances}): its floor "
                f"{', '.join(f'{m} >= {v:g}' for m, v in floors.items())} can neither pass nor fail. "
                f"Rebalance the gate split too (rebalance.test_targets: {{{name}: {rule.min_instances}}}) "
                f"or label more {name} images; the gate refuses until then"
            )
        for ap in AP_METRICS:
            cand = candidate.per_class(name, ap)
            prod = production.per_class(name, ap) if production else None
            delta = _paired_delta(paired, "per_class_delta", name, ap)
            if ap in floors and not short:
                floor(f"{name} {ap}", cand, prod, delta, floors[ap])
            elif ap in floors:
                row(f"{name} {ap}", cand, prod, delta, requirement="insufficient evidence", passed=False)
            else:
                row(f"{name} {ap}", cand, prod, delta)

    promote = not failures
    if production is None:
        headline = "no production model yet: " + (
            "first model meets the absolute floors" if promote else "first model misses its floors"
        )
    else:
        verdict = "passes" if promote else "fails"
        headline = f"candidate {verdict} the rule against production ({rule.describe()})"
    notes = []
    if not candidate.with_intervals and not paired:
        notes.append("no intervals were given: decided on point values")
    return PromotionDecision(
        promote=promote,
        reasons=[headline, *notes, *(f"FAIL {f}" for f in failures), *(f"ok {p}" for p in passes)],
        rows=rows,
        production_version=production_version,
        split=(candidate_metrics.get("split") if not paired else paired["b"].get("split")) or rule.split,
        n_images=candidate.n_images,
        bootstrap=(paired["b"] if paired else candidate_metrics).get("bootstrap"),
        insufficient=insufficient,
    )


def _gate_on_delta(
    rule: PromotionRule,
    metric: str,
    cand: _Estimate,
    prod: _Estimate | None,
    delta: _Estimate | None,
    row: Callable[..., None],
    record: Callable[[bool, str], None],
) -> None:
    """The check against production: Δ's lower bound against -margin (or > 0)."""
    if prod is None or prod.value is None:
        row(metric, cand, prod, delta, passed=False)
        record(False, f"production has no {metric} to compare against")
        return
    lower = delta.lower if delta else None
    bound = "lower bound of Δ" if delta and delta.ci95 else "Δ (no interval)"
    if rule.require == "significantly_better":
        requirement = f"{bound} > 0"
        ok = lower is not None and lower > 0
    else:
        requirement = f"{bound} >= -{rule.margin:g}"
        ok = lower is not None and lower >= -rule.margin - 1e-12
    row(metric, cand, prod, delta, requirement=requirement, passed=ok)
    shown = "missing" if delta is None or delta.value is None else with_interval(delta.value, delta.ci95, sign=True)
    chance = f", P(better) {delta.p_better:.2f}" if delta and delta.p_better is not None else ""
    record(ok, f"Δ {metric} = {shown}{chance}, n={cand.n if cand.n is not None else '?'} images (needs {requirement})")


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

    ``candidate_metrics`` is the candidate's evaluation on the gate split (for a first model);
    ``evaluate_production`` measures the production version against the candidate on the same
    gate split and protocol (the paired ``compare_tables`` result, production as A). Another
    run may promote between our decision and our alias move: the registry's compare-and-swap
    refuses that (:class:`PromotionConflict`), and the new production is evaluated and decided
    against again, up to ``attempts`` times.
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
