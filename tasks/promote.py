"""Stage 6: promote the new version only if the recipe's interval rule holds against production
on the gate split (test by default: one that checkpoint selection never saw)."""

from __future__ import annotations

import shutil
from typing import Any

from prefect import task

from phase2.dataset.layout import resolve_split_images
from phase2.evaluation.evaluate import EvalProtocol, evaluate_checkpoint
from phase2.evaluation.matches import MatchTable, collect_matches, load_match_table
from phase2.evaluation.promotion import PromotionDecision, promote_with_retry
from phase2.evaluation.selection import SelectionResult
from phase2.evaluation.uncertainty import compare_tables, evaluate_table
from phase2.infra.publishing import Markdown, Publication, Table, logger, object_store, publish
from phase2.infra.settings import configure_environment
from phase2.registry.registry import ModelVersion, Registry
from phase2.runs import RunContext
from tasks import RETRIES, RETRY_DELAY_S
from tasks.rebalance import DatasetVersion
from tasks.register import Registered


def gate_summary(decision: PromotionDecision) -> dict[str, Any]:
    """W&B summary / flow summary entries: each decision number with its interval and n."""
    summary: dict[str, Any] = {"promotion/promoted": decision.promote, "promotion/split": decision.split}
    for row in decision.rows:
        if row.passed is None:
            continue
        key = f"promotion/{row.metric.replace(' ', '/')}"
        summary |= {f"{key}/candidate": row.candidate, f"{key}/n": row.n, f"{key}/passed": row.passed}
        for name, ci in (("candidate", row.candidate_ci95), ("delta", row.delta_ci95)):
            if ci:
                summary |= {f"{key}/{name}_ci95_low": ci[0], f"{key}/{name}_ci95_high": ci[1]}
        if row.delta is not None:
            summary[f"{key}/delta"] = row.delta
    return summary


@task(name="promote_model", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def promote(
    registered: Registered, selection: SelectionResult, dataset: DatasetVersion, ctx: RunContext
) -> PromotionDecision:
    configure_environment()
    registry = Registry(object_store(), ctx.model_name)
    rule = ctx.recipe.promotion
    protocol = selection.val.protocol.model_copy(update={"split": rule.split})
    if not resolve_split_images(dataset.data_yaml).get(rule.split):
        # No images the selection never saw: refuse rather than decide on selection-biased ones.
        decision = PromotionDecision(
            promote=False,
            reasons=[
                f"the dataset {dataset.data_yaml} has no '{rule.split}' split for the promotion gate; add "
                f"one (or set promotion.split: val knowing the choice was made on val); production unchanged"
            ],
            rows=[],
            production_version=None,
            split=rule.split,
        )
        registry.set_alias("candidate", registered.version)
        _publish(ctx, decision, registered)
        return decision
    candidate, evaluation = _candidate(selection, dataset, protocol)

    def evaluate_production(production: ModelVersion) -> dict:
        # Same images, same protocol as the candidate: the paired difference is only fair that way.
        folder = registry.download(production.ref, ctx.layout.stage_dir("production"))
        weights = folder / registry.weights_file(production)
        # The report's per-class table compares production with the new model on val (same protocol).
        out_dir = ctx.layout.stage_dir("production-eval")
        shutil.rmtree(out_dir, ignore_errors=True)
        evaluate_checkpoint(weights, dataset.data_yaml, split="val", imgsz=protocol.imgsz, out_dir=out_dir)
        return compare_tables(collect_matches(weights, dataset.data_yaml, protocol), candidate)

    decision = promote_with_retry(
        registry, registered.version, evaluation, rule, evaluate_production, log=logger().info
    )
    _publish(ctx, decision, registered)
    return decision


def _publish(ctx: RunContext, decision: PromotionDecision, registered: Registered) -> None:
    publish(
        ctx,
        Publication(
            stage="report",
            markdown=Markdown(key="promotion", text=decision.to_markdown(), description="Promotion gate"),
            tables=[
                Table(
                    key="promotion-comparison",
                    rows=decision.table_rows(),
                    wandb_key="promotion/comparison",
                    description=f"Candidate vs production on {decision.split} (95% intervals, n)",
                )
            ],
            summary={**gate_summary(decision), "registry/ref": registered.ref},
        ),
    )


def _candidate(
    selection: SelectionResult, dataset: DatasetVersion, protocol: EvalProtocol
) -> tuple[MatchTable, dict[str, Any]]:
    """The winner's per-image table on the gate split and its evaluation with intervals:
    selection's own pass when it kept one (the same weights and protocol), else a new pass."""
    if selection.gate_matches is not None and selection.gate is not None and selection.gate_split == protocol.split:
        table = load_match_table(selection.gate_matches)
        if table.protocol == protocol and table.weights_sha256 == selection.winner_sha256:
            return table, selection.gate
    table = collect_matches(selection.winner, dataset.data_yaml, protocol)
    return table, evaluate_table(table)
