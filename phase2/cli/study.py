"""`phase2 study`: K recipes x S seeds from the same start weights, compared with intervals.

Runs the ``phase2-study`` flow in this process against the local stack's SeaweedFS and Prefect
server (started if needed, and stopped afterwards only if this command started them), or against
``PREFECT_API_URL`` and the S3 settings of the environment when ``PREFECT_API_URL`` is set. The
deployment ``phase2/study`` runs the same flow on the work pool.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from phase2.cli.base import JSON_HELP, MODEL_HELP, CliError, app, data_yaml_path, examples, json_mode, print_json


def _parse_overrides(values: list[str]) -> dict[str, Any]:
    import yaml

    overrides = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set {item!r}: expected KEY=VALUE, e.g. --set device=cpu", exit_code=2)
        overrides[key.strip()] = yaml.safe_load(value)  # YAML scalars: 0.01, true, cpu
    return overrides


def study_table(result: dict[str, Any]) -> str:
    """The per-recipe rows and the pooled Δ against the first recipe, as text."""
    from phase2.study.page import fmt

    lines = [
        f"study {result['study']}: {len(result['runs'])} runs, {result['split']} ({result['n_images']} images); "
        "nothing registered",
    ]
    for row in result["recipes"]:
        cells = [f"{k} {fmt(v['mean'])} ± {fmt(v['sd'])}" for k, v in row["metrics"].items()]
        lines.append(
            f"{row['recipe']:<16} imgsz {row['imgsz']:<4} seeds {row['seeds']}  "
            + "  ".join(cells)
            + f"  s/epoch {fmt(row['s_per_epoch'])}  compute {fmt(row['compute_s'])} s"
        )
    for c in result["comparisons"]:
        for k, d in c["pooled"].items():
            lines.append(
                f"{c['b']} - {c['a']}: Δ {k} {fmt(d['value'], True)} {fmt(d['ci95'], True)} "
                f"P(B>A)={fmt(d['p_b_better'])}"
            )
    return "\n".join(lines + [f"page: {result['files']['study.html']}"])


@app.command(
    "study",
    epilog=examples(
        "phase2 study --data data.yaml --baseline best.pt   # phase2-seed vs phase2-native, seeds 0 1 2",
        "phase2 study --data data.yaml --baseline site-inspection-detector:production "
        "--recipe phase2-native --recipe my-variant.yaml --seeds 0,1,2 --epochs 10 --json",
        "phase2 study --data data.yaml --baseline best.pt --epochs 3 --set device=cpu --set workers=0 --parallel 1",
    ),
)
def study_command(
    data: Annotated[Path, typer.Option("--data", help="The dataset's data.yaml or its directory (read-only).")],
    baseline: Annotated[str, typer.Option(help="Start weights of every run. " + MODEL_HELP)],
    recipe: Annotated[
        list[str] | None, typer.Option("--recipe", help="A recipe name or path; repeat it. Default: seed and native.")
    ] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated training seeds.")] = "0,1,2",
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs of every run (default: each recipe's).")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE training argument for every run; repeat it.")
    ] = None,
    split: Annotated[str, typer.Option(help="The split every model is evaluated on.")] = "val",
    parallel: Annotated[
        int | None, typer.Option(min=1, help="Runs trained at the same time (default: Prefect's thread pool).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The study key (default: derived from the inputs).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Fine-tune each recipe with each seed from the same start weights on one dataset version,
    evaluate every result on the same split and report per recipe the mean and sd across seeds
    and the paired bootstrap Δ between recipes (HTML page, JSON, Prefect table, W&B group).
    Nothing is registered or promoted."""
    from phase2.study.plan import study_recipes

    json_mode(as_json)
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise CliError(f"--seeds {seeds!r}: expected integers such as 0,1,2", exit_code=2) from None
    recipes = recipe or ["phase2-seed", "phase2-native"]
    train_overrides = _parse_overrides(overrides or [])
    study_recipes(recipes, seed_list, epochs=epochs, train_overrides=train_overrides)  # fails here, before any start
    data_yaml = data_yaml_path(data)
    if not data_yaml.is_file():
        raise CliError(f"{data_yaml}: no such data.yaml (pass --data PATH/TO/data.yaml or its directory)", exit_code=2)
    inputs = {"data": str(data_yaml.resolve()), "baseline": baseline, "recipes": recipes, "seeds": seed_list}
    options = {"epochs": epochs, "train_overrides": train_overrides, "split": split, "study_name": name}
    result = _run_study(parallel=parallel, **inputs, **options)
    if as_json:
        print_json(result)
    else:
        typer.echo(study_table(result))


def _run_study(*, parallel: int | None, **parameters: Any) -> dict[str, Any]:
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

    from flows.study import phase2_study

    runner: TaskRunner[Any] = ThreadPoolTaskRunner(max_workers=parallel)
    study_flow = phase2_study.with_options(task_runner=runner)
    if os.environ.get("PREFECT_API_URL"):  # a Prefect server (and S3 settings) of the user's
        return study_flow(**parameters)
    from phase2.infra.prefect_stack import LocalStack

    stack = LocalStack(ui=False)
    try:
        stack.s3.start()
        stack.server.start()
        with temporary_settings({PREFECT_API_URL: stack.server.api_url}):  # S3: the local SeaweedFS
            return study_flow(**parameters)
    finally:
        stack.stop_started()
