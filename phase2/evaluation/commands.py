"""`phase2 evaluate` and `phase2 compare`: metrics with 95% bootstrap intervals.

Registered in :mod:`phase2.cli` (``app.command("evaluate")(evaluate_command)``). Heavy imports
happen inside the functions; ``--json`` prints pure JSON on stdout (Ultralytics' output goes
to stderr).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

WEIGHTS_HELP = "A local .pt, an s3:// URI or a registry reference such as site-inspection-detector:production."


def _fail(error: Exception) -> NoReturn:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(1)


def resolve_weights(ref: str) -> Path:
    """Local, sha256-verified and safe-loaded weights for ``ref`` (as the fine-tune start weights)."""
    from phase2.infra.seaweedfs import resolve_s3_settings
    from phase2.infra.settings import DEFAULT_MODEL_NAME, state_dir
    from phase2.registry.registry import Registry
    from phase2.registry.storage import ObjectStore

    registry = Registry(ObjectStore(resolve_s3_settings()), DEFAULT_MODEL_NAME)
    return registry.resolve_reference(ref, cache_dir=state_dir() / "cache")


def _tables(refs: list[str], data: Path, split: str, imgsz: int, device: str | None) -> list[Any]:
    from phase2.evaluation.evaluate import EvalProtocol
    from phase2.evaluation.matches import collect_matches
    from phase2.registry.storage import StorageError
    from phase2.training.checkpoints import UnsafeCheckpoint

    try:
        protocol = EvalProtocol(split=split, imgsz=imgsz)
        return [collect_matches(resolve_weights(ref), data, protocol, device) for ref in refs]
    except (StorageError, UnsafeCheckpoint, FileNotFoundError, ValueError) as error:
        _fail(error)


def _fmt(entry: dict[str, Any] | None, delta: bool = False) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    ci = entry.get("ci95") or [float("nan"), float("nan")]
    sign = "+" if delta else ""
    text = f"{entry['value']:{sign}.4f} [{ci[0]:{sign}.4f}, {ci[1]:{sign}.4f}]"
    return text + (f"  P(B>A)={entry['p_b_better']:.2f}" if delta and entry.get("p_b_better") is not None else "")


def evaluation_table(result: dict[str, Any]) -> str:
    """A small human-readable table of one ``phase2 evaluate`` result."""
    boot = result["bootstrap"]
    lines = [
        f"{result['split']}: {result['n_images']} images, imgsz {result['protocol']['imgsz']}; 95% intervals: "
        f"{boot['method']} bootstrap over images, {boot['resamples']} resamples, seed {boot['seed']}",
        f"{'metric':<22} value  [95% interval]",
    ]
    lines += [f"{name:<22} {_fmt(entry)}" for name, entry in result["metrics"].items()]
    for name, entry in result["per_class"].items():
        n = result["instances"].get(name, 0)
        lines += [f"{name + ' ' + k + f' (n={n})':<22} {_fmt(v)}" for k, v in entry.items()]
    return "\n".join(lines)


def comparison_table(result: dict[str, Any]) -> str:
    """A small human-readable table of one ``phase2 compare`` result (Δ = B − A)."""
    a, b = result["a"], result["b"]
    lines = [evaluation_table(a).splitlines()[0], f"A: {a['weights']['path']}", f"B: {b['weights']['path']}"]
    lines.append(f"{'metric':<22} {'A':<28} {'B':<28} delta B-A [95%]")
    for name, entry in result["delta"].items():
        lines.append(f"{name:<22} {_fmt(a['metrics'][name]):<28} {_fmt(b['metrics'][name]):<28} {_fmt(entry, True)}")
    for cls, entries in result["per_class_delta"].items():
        for k, entry in entries.items():
            lines.append(
                f"{cls + ' ' + k:<22} {_fmt(a['per_class'][cls][k]):<28} {_fmt(b['per_class'][cls][k]):<28} "
                f"{_fmt(entry, True)}"
            )
    return "\n".join(lines)


Data = Annotated[Path, typer.Option("--data", help="The dataset's data.yaml (read-only).")]
Imgsz = Annotated[int, typer.Option(help="Validation image size (the protocol's imgsz).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON only (stdout).")]
Resamples = Annotated[int, typer.Option(help="Bootstrap resamples (>= 1000 for reported intervals).")]
Seed = Annotated[int, typer.Option(help="Bootstrap seed.")]
Device = Annotated[str | None, typer.Option(help="Inference device (default: Ultralytics' choice).")]


def evaluate_command(
    weights: Annotated[str, typer.Argument(help=WEIGHTS_HELP)],
    data: Data,
    split: Annotated[str, typer.Option(help="val or test.")] = "val",
    imgsz: Imgsz = 640,
    as_json: Json = False,
    resamples: Resamples = 1000,
    seed: Seed = 0,
    device: Device = None,
) -> None:
    """Evaluate one model: P, R, mAP50, mAP50-95 and per-class AP with 95% bootstrap intervals."""
    from phase2.evaluation.uncertainty import evaluate_table

    (table,) = _tables([weights], data, split, imgsz, device)
    try:
        result = evaluate_table(table, resamples=resamples, seed=seed)
    except ValueError as error:
        _fail(error)
    typer.echo(json.dumps(result, indent=2) if as_json else evaluation_table(result))


def compare_command(
    a: Annotated[str, typer.Argument(help="Model A (the reference). " + WEIGHTS_HELP)],
    b: Annotated[str, typer.Argument(help="Model B (the candidate).")],
    data: Data,
    split: Annotated[str, typer.Option(help="val or test.")] = "test",
    imgsz: Imgsz = 640,
    as_json: Json = False,
    resamples: Resamples = 1000,
    seed: Seed = 0,
    device: Device = None,
) -> None:
    """Compare two models on the same images: Δ = B − A with its 95% interval and P(B > A)."""
    from phase2.evaluation.uncertainty import compare_tables

    table_a, table_b = _tables([a, b], data, split, imgsz, device)
    try:
        result = compare_tables(table_a, table_b, resamples=resamples, seed=seed)
    except ValueError as error:
        _fail(error)
    typer.echo(json.dumps(result, indent=2) if as_json else comparison_table(result))
