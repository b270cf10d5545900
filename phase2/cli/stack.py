"""The local stack and runs: up, down, status, deploy, run, runs, recover, report, wandb publish."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from phase2.cli.base import JSON_HELP, MODEL_HELP, CliError, app, examples, json_mode, print_json, wandb_app
from phase2.infra.settings import PROJECT_ROOT, configure_environment


def _stack(ui: bool = True) -> Any:
    from phase2.infra.prefect_stack import LocalStack

    return LocalStack(ui=ui)


@app.command("up", epilog=examples("phase2 up", "phase2 up --no-deploy"))
def up(deploy: Annotated[bool, typer.Option(help="Also create the pool and apply prefect.yaml.")] = True) -> None:
    """Start the local stack: SeaweedFS (S3), Prefect server + UI, process pool, deployments, worker."""
    stack = _stack()
    stack.up(deploy=deploy)
    print_json(stack.status())
    typer.echo(f"\nexport PREFECT_API_URL={stack.server.api_url}  # to use the prefect CLI against it")


@app.command("down", epilog=examples("phase2 down"))
def down() -> None:
    """Stop everything `up` started (idempotent). Data stays in the state dir."""
    stack = _stack()
    stack.down()
    typer.echo(f"stopped; state kept in {stack.state}")


@app.command("status", epilog=examples("phase2 status", "phase2 status | jq .s3.running"))
def status() -> None:
    """What is running, where, and where state lives (JSON)."""
    print_json(_stack().status())


@app.command(
    "deploy",
    epilog=examples(
        "phase2 deploy   # against the running local stack (`phase2 up`)",
        "PREFECT_API_URL=http://prefect.example:4200/api phase2 deploy",
    ),
)
def deploy() -> None:
    """Work pool + deployments from prefect.yaml against PREFECT_API_URL, else the running local stack."""
    from phase2.infra.prefect_stack import reachable_prefect_api

    stack = _stack()
    api_url = reachable_prefect_api(stack.state)
    env = {
        **os.environ,
        **configure_environment(),
        "PREFECT_API_URL": api_url,
        "PHASE2_WORK_POOL": stack.pool,
        "PHASE2_PROJECT_DIR": str(PROJECT_ROOT),
    }
    stack.deploy(env)
    typer.echo(f"deployments applied to {api_url}; start a worker with: prefect worker start --pool {stack.pool}")


@app.command(
    "run",
    epilog=examples(
        "phase2 run   # the demo: synthetic data, from-scratch baseline",
        "phase2 run --data path/to/data.yaml --baseline best.pt --recipe phase2-native",
        "phase2 run --data path/to/dataset --baseline site-inspection-detector:production",
    ),
)
def run(
    data: Annotated[
        Path | None, typer.Option(help="data.yaml or its directory; default: a generated synthetic demo set.")
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(help="Start weights. " + MODEL_HELP + " Default: a baseline trained on the demo set."),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(help="Recipe name or path (default phase2-demo without --data, phase2-seed with it)."),
    ] = None,
    keep_up: Annotated[bool, typer.Option(help="Leave the services this command started running afterwards.")] = False,
    timeout: Annotated[int, typer.Option(min=1, help="Seconds to wait for the flow run.")] = 6 * 3600,
) -> None:
    """Start the stack (or use the running one), run `prefect deployment run phase2/train --watch`,
    print where results are. Afterwards it stops only what it started: a stack that was already
    up (`phase2 up`) stays up."""
    from phase2.cli.base import data_yaml_path
    from phase2.demo import prepare_demo, run_summary, trigger_training
    from phase2.training.recipe import load_recipe

    if data is None:
        data, demo_baseline = prepare_demo()
        baseline = baseline or str(demo_baseline)
        recipe = recipe or "phase2-demo"
    else:
        data = data_yaml_path(data)
    if baseline is None:
        raise CliError("--baseline is required with --data (weights to fine-tune from)", exit_code=2)
    load_recipe(recipe or "phase2-seed")  # a bad recipe fails here, not after the stack started
    stack = _stack(ui=False)
    stopped: list[str] = []
    try:
        env = stack.up()
        summary = trigger_training(
            env, data=Path(data).resolve(), baseline=baseline, recipe=recipe or "phase2-seed", timeout=timeout
        )
    finally:
        if not keep_up:
            stopped = stack.stop_started()
    typer.echo(run_summary(summary, stack_up=not stopped))
    if summary.get("state") != "COMPLETED":
        raise typer.Exit(1)


@app.command(
    "recover",
    epilog=examples("phase2 recover --dry-run", "PREFECT_API_URL=http://127.0.0.1:4200/api phase2 recover --json"),
)
def recover(
    dry_run: Annotated[bool, typer.Option(help="Only list the orphaned runs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Mark phase2 runs whose worker/flow-run process died as Crashed, freeing the concurrency slot.

    Talks to PREFECT_API_URL, else the running local stack; never to a temporary Prefect server.
    """
    from phase2.infra.prefect_stack import reachable_prefect_api

    json_mode(as_json)
    os.environ["PREFECT_API_URL"] = reachable_prefect_api()
    from phase2.infra.recovery import recover_orphaned_runs

    orphans = recover_orphaned_runs(dry_run=dry_run)
    if as_json:
        print_json({"dry_run": dry_run, "orphans": [o.model_dump(mode="json") for o in orphans]})
        return
    for orphan in orphans:
        typer.echo(
            f"{'orphaned' if dry_run else 'crashed'}: {orphan.name} ({orphan.id}) "
            f"was {orphan.state}, pid {orphan.infrastructure_pid} gone"
        )
    if not orphans:
        typer.echo("no orphaned runs")


@app.command("runs", epilog=examples("phase2 runs", "phase2 runs --json | jq '.[0].report'"))
def runs_command(as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False) -> None:
    """Past runs in this state dir, newest first: key, date, model version, decision, report path."""
    from phase2.runs import list_runs

    past = list_runs()
    if as_json:
        print_json([run.model_dump(mode="json") for run in past])
        return
    if not past:
        typer.echo("no runs yet (`phase2 run` starts one)")
    for run in past:
        decision = {True: "promoted", False: "not promoted", None: "-"}[run.promoted]
        typer.echo(
            f"{run.run_key:14} {run.finished_at or '-':25} {run.model or '-':32} {decision:13} "
            f"{run.report or run.status}"
        )


@app.command(
    "report",
    epilog=examples(
        "phase2 report 3f2a9c1e --open",
        "phase2 report 3f2a9c1e --out review/   # or --out review/run.html",
    ),
)
def report_command(
    run: Annotated[str, typer.Argument(help="Run key (folder under <state>/pipeline) or Prefect flow run id.")],
    out: Annotated[Path | None, typer.Option(help="Also copy the HTML here (a directory or a .html file).")] = None,
    open_it: Annotated[bool, typer.Option("--open", help="Open it in the default browser.")] = False,
    rebuild: Annotated[bool, typer.Option(help="Build it again from the run's files.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """The self-contained HTML review report of a past run: local copy, else S3, else built."""
    import shutil
    import webbrowser

    from phase2.infra.seaweedfs import resolve_s3_settings
    from phase2.registry.storage import ObjectStore
    from phase2.report.past_runs import report_for_run

    json_mode(as_json)
    html = report_for_run(run, rebuild=rebuild, store=ObjectStore(resolve_s3_settings(), max_attempts=2))
    if out is not None:
        # --out is a directory (as in every command) unless it names a .html file.
        target = out if out.suffix.lower() in (".html", ".htm") and not out.is_dir() else out / html.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(html, target)
        html = target
    if as_json:
        print_json({"run": run, "report": str(html.resolve())})
    else:
        typer.echo(str(html))
    if open_it:
        webbrowser.open(html.resolve().as_uri())


@wandb_app.command("publish", epilog=examples("WANDB_API_KEY=… phase2 wandb publish"))
def wandb_publish(
    collection: Annotated[
        str, typer.Option(help="W&B Registry collection for the model artifacts.")
    ] = "site-inspection-detector",
) -> None:
    """Sync offline runs and link their models to the W&B Registry (idempotent; needs WANDB_API_KEY)."""
    from phase2.infra.tracking import publish_offline_runs

    published = publish_offline_runs(Path(os.environ["WANDB_DIR"]), registry_collection=collection)
    typer.echo("\n".join(published) or "nothing new to publish")
