"""The recipe study: which recipe, and is the difference real?

K recipes x S seeds, each fine-tuned as its own run of the train flow's fine-tune task (own run
key and RunLayout, W&B runs grouped by the study) from the same start weights on one dataset
version (validated and rebalanced once), submitted together so they run in parallel up to the
task runner's workers (and a `phase2-study-train` tag concurrency limit, if the server has one).
Every result is then evaluated once on the same split under the fixed protocol and summarized
per recipe (phase2/study/summary.py). Nothing is registered or promoted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from prefect import flow, runtime, task
from pydantic import Field

from phase2.evaluation.evaluate import EvalProtocol
from phase2.evaluation.matches import collect_matches, load_match_table, save_match_table
from phase2.infra.files import atomic_write_json
from phase2.infra.publishing import Markdown, Publication, Table, finish_tracker, publish, tracker
from phase2.infra.settings import DEFAULT_MODEL_NAME
from phase2.runs import RunContext
from phase2.study.page import build_study_html
from phase2.study.plan import run_contexts, study_key, study_recipes
from phase2.study.summary import StudyRun, recipe_table_rows, summarize_study
from phase2.training.fine_tune import FineTuneResult
from phase2.training.recipe import resolve_imgsz
from tasks.fine_tune import train
from tasks.plan import plan_run
from tasks.rebalance import DatasetVersion, rebalance
from tasks.validate import ValidationOutput, validate

DEFAULT_RECIPES = ("phase2-seed", "phase2-native")
DEFAULT_SEEDS = (0, 1, 2)
STUDY_TRAIN_TAG = "phase2-study-train"  # `prefect concurrency-limit create phase2-study-train N` caps parallel runs


@task(name="plan_study_runs")
def plan_study_runs(
    study: RunContext, recipe_names: list[str], seeds: list[int], epochs: int | None, train_overrides: dict[str, Any]
) -> list[RunContext]:
    contexts = run_contexts(study, study_recipes(recipe_names, seeds, epochs=epochs, train_overrides=train_overrides))
    for ctx in contexts:
        tracker(ctx)  # opened here, one after another: the parallel fine-tunes then only log to them
    return contexts


@task(name="evaluate_study_run")
def evaluate_run(
    trained: FineTuneResult, dataset: DatasetVersion, imgsz: int, protocol: EvalProtocol, ctx: RunContext
) -> StudyRun:
    table = collect_matches(trained.best, dataset.data_yaml, protocol)
    matches = save_match_table(table, ctx.layout.stage_dir("selection") / f"matches-{protocol.split}.npz")
    run = {"recipe": ctx.recipe.name, "seed": ctx.recipe.train.seed, "run_key": ctx.run_key, "matches": matches}
    cost = {"epochs": trained.epochs_completed, "s_per_epoch": trained.s_per_epoch, "wall_time_s": trained.wall_time_s}
    weights = {"weights": trained.best, "weights_sha256": trained.best_sha256, "wandb_run": tracker(ctx).run_path}
    return StudyRun(**run, **cost, **weights, imgsz=imgsz, eval_imgsz=protocol.imgsz)


@task(name="publish_study")
def publish_study(
    study: RunContext, runs: list[StudyRun], dataset: DatasetVersion, contexts: list[RunContext], resamples: int
) -> dict[str, Any]:
    minority = study.recipe.minority_class
    tables = [load_match_table(run.matches) for run in runs]
    summary = {
        "study": study.run_key,
        "baseline": study.baseline,
        "dataset_version": dataset.version_id,
        "dataset": str(dataset.data_yaml),
        **summarize_study(runs, tables, minority=minority, resamples=resamples),
    }
    out = study.layout.stage_dir("report")
    paths = {"study.json": atomic_write_json(out / "study.json", summary), "study.html": out / "study.html"}
    build_study_html(summary, paths["study.html"])
    rows = recipe_table_rows(summary)
    uris = publish(
        study,
        Publication(
            stage="report",
            files=paths,
            markdown=Markdown(
                key="study",
                description="Recipe study: per recipe mean and sd across seeds, paired Δ",
                text=f"Study `{study.run_key}`: {len(runs)} runs, nothing registered. Method: "
                + summary["bootstrap"]["method"],
            ),
            tables=[Table(key="study-recipes", rows=rows, wandb_key="study/recipes", description="Recipe study")],
            summary={"study/runs": len(runs), "study/dataset_version": dataset.version_id},
        ),
    )
    for ctx in [*contexts, study]:
        finish_tracker(ctx)
    return {**summary, "files": {name: str(path) for name, path in paths.items()}, "uris": uris, "table": rows}


@flow(name="phase2-study", log_prints=True, persist_result=False)
def phase2_study(
    data: Annotated[str, Field(description="Path to the dataset's data.yaml (never modified).")],
    baseline: Annotated[
        str, Field(description="The start weights of every run: local .pt, s3:// URI or registry reference.")
    ],
    recipes: Annotated[
        list[str] | None,
        Field(
            description="Recipes (names or paths); the first is the reference A. Default: phase2-seed, phase2-native."
        ),
    ] = None,
    seeds: Annotated[
        list[int] | None, Field(description="Training seeds; every recipe runs each (default: 0, 1, 2).")
    ] = None,
    epochs: Annotated[int | None, Field(description="Epochs for every run (default: each recipe's).")] = None,
    train_overrides: Annotated[
        dict[str, Any] | None, Field(description="Training arguments set for every run, e.g. {device: cpu}.")
    ] = None,
    split: Annotated[str, Field(description="The split every model is evaluated on.")] = "val",
    eval_imgsz: Annotated[
        int | None, Field(description="Evaluate every model at this size (default: each at its training size).")
    ] = None,
    resamples: int = 1000,
    model_name: str = DEFAULT_MODEL_NAME,
    study_name: Annotated[
        str | None, Field(description="Fixes the study key (default: derived from the inputs).")
    ] = None,
) -> dict[str, Any]:
    recipes, seeds = recipes or list(DEFAULT_RECIPES), seeds or list(DEFAULT_SEEDS)
    train_overrides = train_overrides or {}
    flow_run_id = str(runtime.flow_run.id) if runtime.flow_run.id else None
    all_recipes = study_recipes(recipes, seeds, epochs=epochs, train_overrides=train_overrides)
    key = study_name or study_key(data=data, baseline=baseline, recipes=all_recipes)
    planned = plan_run(data, baseline, recipes[0], all_recipes[0], model_name, key, False, flow_run_id)
    study = planned.model_copy(update={"wandb_group": key})
    validation = validate(data, study)
    dataset = rebalance(data, validation, study)  # once: every run trains on this version
    contexts = plan_study_runs(study, recipes, seeds, epochs, train_overrides)
    sizes = [resolve_imgsz(ctx.recipe, validation.recommended_imgsz) for ctx in contexts]
    trainings = [
        train.with_options(task_run_name=f"fine_tune-{ctx.run_key}", tags=[STUDY_TRAIN_TAG]).submit(
            dataset, _at_size(validation, size), ctx
        )
        for ctx, size in zip(contexts, sizes, strict=True)
    ]
    # One evaluation at a time: Ultralytics' output redirection (collect_matches) is process-wide.
    evaluations = [
        evaluate_run(trained.result(), dataset, size, EvalProtocol(split=split, imgsz=eval_imgsz or size), ctx)
        for trained, ctx, size in zip(trainings, contexts, sizes, strict=True)
    ]
    result = publish_study(study, evaluations, dataset, contexts, resamples)
    print(f"study {key}: {Path(result['files']['study.html'])}")
    return result


def _at_size(validation: ValidationOutput, imgsz: int) -> ValidationOutput:
    """The validation output with one recipe's training size (``native`` resolved per recipe)."""
    return validation.model_copy(update={"imgsz": imgsz})
