"""Stage 0: the run's identity (run key, recipe, dataset version) and the no-new-data check."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from phase2.dataset.index_cache import FileIndex, default_cache_dir
from phase2.dataset.rebalance import dataset_version_id
from phase2.infra.files import sha256_file
from phase2.infra.publishing import logger, object_store
from phase2.infra.settings import configure_environment
from phase2.registry.registry import Registry
from phase2.runs import RunContext, RunLayout, derive_run_key
from phase2.training.recipe import Recipe, lint_recipe, load_recipe
from tasks import RETRIES, RETRY_DELAY_S


@task(name="plan_run", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_S)
def plan_run(
    data: str,
    baseline: str,
    recipe_name: str,
    recipe: Recipe | None,
    model_name: str,
    run_name: str | None,
    skip_if_unchanged: bool,
    flow_run_id: str | None,
) -> RunContext:
    configure_environment()
    recipe = recipe or load_recipe(recipe_name)
    data_yaml = Path(data).expanduser().resolve()
    if not data_yaml.is_file():
        raise FileNotFoundError(f"{data_yaml}: data.yaml not found. Pass data=PATH/TO/data.yaml")
    try:
        index = FileIndex.load(default_cache_dir())  # unchanged files are not re-read: the no-new-data check is instant
        source_version = dataset_version_id(data_yaml, index)
        index.save()
    except Exception as exc:  # a broken dataset: validation will say exactly what is wrong
        logger().warning("dataset version could not be computed (%s); validation follows", exc)
        source_version = "unversioned-" + sha256_file(data_yaml)[:16]
    run_key = run_name or derive_run_key(
        data_yaml=data_yaml, source_version=source_version, baseline=baseline, recipe=recipe, model_name=model_name
    )
    ctx = RunContext(
        layout=RunLayout.for_run(run_key),
        model_name=model_name,
        source_dataset_version=source_version,
        recipe=recipe,
        baseline=baseline,
        flow_run_id=flow_run_id,
    )
    ctx.layout.root.mkdir(parents=True, exist_ok=True)
    for warning in lint_recipe(recipe):
        logger().warning("recipe %s: %s: %s", recipe.name, warning.field, warning.message)
    if skip_if_unchanged:
        production = Registry(object_store(), model_name).alias_target("production")
        if production is not None and production.trained_on(source_version):
            ctx.skip_reason = f"no new data: dataset {source_version[:12]} is what {production.ref} was trained on"
    return ctx
