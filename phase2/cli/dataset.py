"""Read-only dataset and recipe commands: validate, rebalance, history, lint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from phase2.cli.base import JSON_HELP, CliError, app, data_yaml_path, examples, json_mode, out_dir, print_json

DATA_HELP = "The dataset's data.yaml, or the directory holding it."


@app.command(
    "validate",
    epilog=examples(
        "phase2 validate path/to/data.yaml",
        "phase2 validate path/to/dataset --recipe phase2-native --out reports/",
        "phase2 validate data.yaml --json | jq '.findings | length'",
    ),
)
def validate(
    data_yaml: Annotated[Path, typer.Argument(help=DATA_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    imgsz: Annotated[int, typer.Option(min=32, help="Training image size the boxes are checked at, px.")] = 640,
    phash_threshold: Annotated[int, typer.Option(help="Near-duplicate Hamming distance (-1: off).")] = 4,
    out: Annotated[
        Path | None, typer.Option(help="Directory: also write report.json, files.csv, summary.md, class_counts.png.")
    ] = None,
    recipe: Annotated[
        str, typer.Option(help="Recipe whose class names and minority class the dataset is checked against.")
    ] = "phase2-seed",
) -> None:
    """Validate a YOLO dataset (read-only); exit 1 when it has errors."""
    from phase2.dataset.index_cache import default_cache_dir
    from phase2.dataset.validation import validate_dataset
    from phase2.training.recipe import load_recipe

    json_mode(as_json)
    data_yaml = data_yaml_path(data_yaml)
    out = out_dir(out) if out is not None else None
    settings = load_recipe(recipe)
    report = validate_dataset(
        data_yaml,
        imgsz=imgsz,
        phash_threshold=phash_threshold,
        expected_names=settings.classes,
        minority_class=settings.minority_class,
        minority_val_target=settings.rebalance.targets.get(settings.minority_class, 18),
        cache_dir=default_cache_dir(),
    )
    if out is not None:
        report.write(out)
    if not report.splits and report.errors() and not as_json:
        # Nothing could be read (no data.yaml, no split): one error line, not an empty report.
        first, more = report.errors()[0], len(report.errors()) - 1
        where = f"{first.file}:{first.line}" if first.line else (first.file or str(data_yaml))
        extra = f"; {more} more error(s), see --json" if more else ""
        raise CliError(f"{where}: {first.message} ({first.fix}){extra}")
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        typer.echo(report.summary_markdown())
    raise typer.Exit(1 if report.errors() else 0)


@app.command(
    "rebalance",
    epilog=examples(
        "phase2 rebalance data.yaml --target toe_drain=18 --out rebalanced/",
        "phase2 rebalance data.yaml --target toe_drain=18 --test-target toe_drain=25 --out rebalanced/",
        "phase2 validate rebalanced/data.yaml",
    ),
)
def rebalance(
    data_yaml: Annotated[
        Path, typer.Argument(help="The source dataset's data.yaml or its directory (never modified).")
    ],
    target: Annotated[list[str], typer.Option(help="Val instances wanted, CLASS=N (repeatable).")],
    out: Annotated[Path, typer.Option(help="Output directory: data.yaml, image lists, manifest, balance table/plot.")],
    seed: Annotated[int, typer.Option(help="Tie-break seed of the selection.")] = 0,
    phash_threshold: Annotated[int, typer.Option(help="Near-duplicate Hamming distance (-1: exact only).")] = 4,
    leak_priority: Annotated[str, typer.Option(help="Split that keeps a leaked group, first wins.")] = "train,val,test",
    move_test: Annotated[bool, typer.Option(help="Also take groups from test to reach the targets.")] = False,
    test_target: Annotated[
        list[str] | None,
        typer.Option(help="Test (promotion gate) instances wanted, CLASS=N (repeatable): whole train groups move."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Repair cross-split duplicate leaks, then raise val (and, with --test-target, test) class
    instances to targets (whole groups only)."""
    from phase2.dataset.rebalance import parse_targets, rebalance_validation

    json_mode(as_json)
    result = rebalance_validation(
        data_yaml_path(data_yaml),
        out_dir(out),
        parse_targets(target),
        seed=seed,
        phash_threshold=phash_threshold,
        leak_priority=[s.strip() for s in leak_priority.split(",")],
        move_test=move_test,
        test_targets=parse_targets(test_target or []),
    )
    if as_json:
        print_json(
            {
                "version": result.version_id,
                "source_version": result.source_version_id,
                "data_yaml": str(result.data_yaml),
                "repaired_leaks": len(result.repaired_leaks),
                "moved_groups": len(result.moved_groups),
                "balance_csv": str(result.balance_csv),
            }
        )
        return
    typer.echo(f"version {result.version_id} (source {result.source_version_id}): {result.data_yaml}")
    typer.echo(f"repaired leaks: {len(result.repaired_leaks)}, moved groups: {len(result.moved_groups)}")
    typer.echo(result.balance_csv.read_text())


@app.command(
    "history",
    epilog=examples(
        "phase2 history runs/train/results.csv",
        "phase2 history results.csv --patience 15 --epochs 80   # without args.yaml next to it",
        "phase2 history results.csv --json | jq .stop_reason",
    ),
)
def history(
    results_csv: Annotated[
        Path, typer.Argument(help="An Ultralytics results.csv, or its run folder (args.yaml next to it is read too).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
    patience: Annotated[int | None, typer.Option(min=1, help="Early-stopping patience (default: args.yaml).")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Planned epochs (default: args.yaml).")] = None,
) -> None:
    """Summarize a training history: best/worst/mean/last per metric and why training stopped."""
    from phase2.training.history import summarize_history

    json_mode(as_json)
    if results_csv.is_dir():
        results_csv = results_csv / "results.csv"
    summary = summarize_history(results_csv, patience=patience, epochs=epochs)
    if as_json:
        print_json(summary.model_dump(mode="json"))
    else:
        typer.echo(summary.to_markdown())


def dataset_largest_side(data_yaml: Path) -> int | None:
    """The largest native image side in the dataset (image headers only)."""
    import pandas as pd
    from PIL import Image, UnidentifiedImageError

    from phase2.dataset.layout import resolve_split_images
    from phase2.dataset.stats import largest_side, native_sizes

    rows = []
    for images in resolve_split_images(data_yaml).values():
        for image in images:
            try:
                with Image.open(image) as im:
                    rows.append({"width": im.width, "height": im.height})
            except (OSError, UnidentifiedImageError):
                continue  # `phase2 validate` reports unreadable images
    return largest_side(native_sizes(pd.DataFrame(rows, columns=["width", "height"])))


@app.command(
    "lint",
    epilog=examples(
        "phase2 lint phase2-seed",
        "phase2 lint phase2-seed --data path/to/data.yaml --strict   # exit 1 on findings (CI gate)",
        "phase2 lint configs/my-recipe.yaml --native 312 --json",
    ),
)
def lint(
    recipe: Annotated[str, typer.Argument(help="Recipe name in configs/ (with or without .yaml) or a path.")],
    data: Annotated[
        Path | None, typer.Option(help="A data.yaml (or its directory): native image sizes are read from it.")
    ] = None,
    native: Annotated[
        int | None,
        typer.Option(min=1, help="Largest native image side in px, when there is no --data (e.g. 312)."),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 when there are findings.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Recipe settings that silently do something else than intended.

    The image-size check (IMGSZ_ABOVE_NATIVE) needs the dataset's native size: pass --data (or
    --native). Without --strict, findings are advice and the exit code is 0.
    """
    from phase2.training.recipe import lint_recipe, load_recipe

    json_mode(as_json)
    settings = load_recipe(recipe)
    if data is not None and native is not None:
        raise CliError("--data and --native both give the native size: pass one of them", exit_code=2)
    if data is not None:
        native = dataset_largest_side(data_yaml_path(data))
        if native is None:
            raise CliError(f"{data}: no readable image to read native sizes from (run `phase2 validate {data}`)")
    warnings = lint_recipe(settings, native_imgsz=native)
    if as_json:
        print_json({"recipe": settings.name, "native": native, "findings": [w.model_dump() for w in warnings]})
    else:
        for w in warnings:
            typer.echo(f"{w.code}  {w.field}: {w.message}")
        if not warnings:
            typer.echo("no findings")
        elif native is None:
            typer.echo("(image size not checked: pass --data DATA_YAML or --native PX)", err=True)
    if strict and warnings:
        raise typer.Exit(1)


DIFF_SPEC_HELP = (
    "A data.yaml (or its folder), a dataset version id (16 hex digits), or a registry reference "
    "NAME:VERSION|ALIAS meaning the dataset that model was trained on."
)


DIFF_EXAMPLES = (
    "phase2 diff old/data.yaml new/data.yaml",
    "phase2 diff site-inspection-detector:production path/to/data.yaml   # what changed since production's data",
    "phase2 diff 3f2a9c0d1e4b5a67 data.yaml --json | jq '.images.added | length'",
)


@app.command("diff", epilog=examples(*DIFF_EXAMPLES))
def diff(
    old: Annotated[str, typer.Argument(help=DIFF_SPEC_HELP)],
    new: Annotated[str, typer.Argument(help=DIFF_SPEC_HELP)],
    phash_threshold: Annotated[int, typer.Option(help="Near-duplicate Hamming distance for leakage (-1: off).")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """What changed between two datasets: images (by content: a rename is a move), labels, class counts, new leaks."""
    from phase2.cli.registry import open_registry
    from phase2.dataset.diff import DiffError, diff_listings, diff_markdown, resolve_listing
    from phase2.dataset.index_cache import default_cache_dir

    json_mode(as_json)
    try:
        before, after = (resolve_listing(spec, default_cache_dir(), open_registry) for spec in (old, new))
    except DiffError as exc:
        raise CliError(str(exc), exit_code=2) from None
    result = diff_listings(before, after, phash_threshold=phash_threshold)
    if as_json:
        print_json(result)
    else:
        typer.echo(diff_markdown(result))
