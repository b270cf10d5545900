"""`phase2 evaluate` and `phase2 compare`: metrics with 95% bootstrap intervals.

Heavy imports happen inside the commands; ``--json`` prints pure JSON on stdout (Ultralytics'
output goes to stderr).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from phase2.cli.base import JSON_HELP, MODEL_HELP, app, data_yaml_path, examples, json_mode, print_json


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

    # Expected failures (a missing file, a bad reference, an unsafe checkpoint) reach the CLI's boundary.
    protocol = EvalProtocol(split=split, imgsz=imgsz)
    weights = [resolve_weights(ref) for ref in refs]
    return [collect_matches(path, data_yaml_path(data), protocol, device) for path in weights]


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


Data = Annotated[Path, typer.Option("--data", help="The dataset's data.yaml or its directory (read-only).")]
Imgsz = Annotated[int, typer.Option(min=32, help="Validation image size (the protocol's imgsz).")]
Json = Annotated[bool, typer.Option("--json", help=JSON_HELP)]
Resamples = Annotated[int, typer.Option(help="Bootstrap resamples (>= 1000 for reported intervals).")]
Seed = Annotated[int, typer.Option(help="Bootstrap seed.")]
Device = Annotated[str | None, typer.Option(help="Inference device (default: Ultralytics' choice).")]


@app.command(
    "evaluate",
    epilog=examples(
        "phase2 evaluate site-inspection-detector:production --data data.yaml --split test",
        "phase2 evaluate runs/train/weights/best.pt --data data.yaml --json",
    ),
)
def evaluate_command(
    weights: Annotated[str, typer.Argument(help=MODEL_HELP)],
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

    json_mode(as_json)
    (table,) = _tables([weights], data, split, imgsz, device)
    result = evaluate_table(table, resamples=resamples, seed=seed)
    if as_json:
        print_json(result)
    else:
        typer.echo(evaluation_table(result))


@app.command(
    "compare",
    epilog=examples(
        "phase2 compare site-inspection-detector:production runs/train/weights/best.pt --data data.yaml",
        "phase2 compare v3 v4 --data data.yaml --split test --json",
    ),
)
def compare_command(
    a: Annotated[str, typer.Argument(help="Model A (the reference). " + MODEL_HELP)],
    b: Annotated[str, typer.Argument(help="Model B (the candidate), spelled like A.")],
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

    json_mode(as_json)
    table_a, table_b = _tables([a, b], data, split, imgsz, device)
    result = compare_tables(table_a, table_b, resamples=resamples, seed=seed)
    if as_json:
        print_json(result)
    else:
        typer.echo(comparison_table(result))
