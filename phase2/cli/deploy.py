"""`phase2 export` and `phase2 predict`: deployable models outside the flow (phase2/deploy/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from phase2.cli.base import (
    JSON_HELP,
    MODEL_HELP,
    CliError,
    app,
    data_yaml_path,
    examples,
    json_mode,
    out_dir,
    print_json,
)


def _registry() -> Any:
    from phase2.infra.seaweedfs import resolve_s3_settings
    from phase2.infra.settings import DEFAULT_MODEL_NAME
    from phase2.registry.registry import Registry
    from phase2.registry.storage import ObjectStore

    return Registry(ObjectStore(resolve_s3_settings()), DEFAULT_MODEL_NAME)


def _local(model: str) -> bool:
    return Path(model).expanduser().exists()


@app.command(
    "export",
    epilog=examples(
        "phase2 export runs/train/weights/best.pt --format onnx --imgsz 320 --out exports/",
        "phase2 export site-inspection-detector:production --format onnx --data data.yaml --split test --out exports/ "
        "--json",
    ),
)
def export_command(
    weights: Annotated[str, typer.Argument(help=MODEL_HELP)],
    out: Annotated[Path, typer.Option("--out", help="Directory for the export (and the safe copy of the .pt).")],
    fmt: Annotated[str, typer.Option("--format", help="onnx, openvino or torchscript.")] = "onnx",
    data: Annotated[Path | None, typer.Option(help="A data.yaml: measure parity with the .pt on --split.")] = None,
    split: Annotated[str, typer.Option(help="Split parity is measured on (with --data).")] = "test",
    imgsz: Annotated[int | None, typer.Option(help="Input size (default: the model's training imgsz).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Export a model with Ultralytics' exporter (onnx: onnxslim, pinned opset); with --data, measure
    its parity with the .pt (|Δ mAP50|, |Δ mAP50-95|, box agreement). Exit 1 when outside tolerance."""
    json_mode(as_json)
    from phase2.deploy.export import FORMATS, export_weights
    from phase2.deploy.package import export_record
    from phase2.deploy.parity import measure_parity
    from phase2.deploy.settings import ExportSettings
    from phase2.evaluation.evaluate import EvalProtocol
    from phase2.evaluation.matches import collect_matches
    from phase2.training.checkpoints import load_checkpoint, verify_checkpoint

    if fmt not in FORMATS:
        raise CliError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}", exit_code=2)
    local = verify_checkpoint(Path(weights)) if _local(weights) else _registry().resolve_reference(weights)
    size = imgsz or int((load_checkpoint(local).get("train_args") or {}).get("imgsz") or 640)
    exported = export_weights(local, fmt, imgsz=size, out_dir=out_dir(out))  # type: ignore[arg-type]
    parity = problems = None
    if data is not None:
        reference = collect_matches(local, data_yaml_path(data), EvalProtocol(split=split, imgsz=size))
        parity, problems = measure_parity(local, exported, data_yaml_path(data), reference, ExportSettings())
    record = export_record(exported, parity, problems).model_dump(mode="json")
    record["path"] = str(exported.path)
    if as_json:
        print_json(record)
    else:
        typer.echo(f"{fmt}: {exported.path} ({size} px)")
        if parity is not None:
            typer.echo(json.dumps(record["parity"], indent=2))
            typer.echo("usable" if record["usable"] else f"NOT USABLE: {record['reason']}")
    if parity is not None and problems:
        raise typer.Exit(1)


@app.command(
    "predict",
    epilog=examples(
        "phase2 predict site-inspection-detector:production photos/ --format onnx --out predictions/",
        "phase2 predict exports/best.onnx photo.jpg --conf 0.4 --json",
    ),
)
def predict_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP.replace("a local .pt", "a local .pt or .onnx"))],
    images: Annotated[Path, typer.Argument(help="An image or a folder of images.")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="onnx (no pickle loaded) or pt; default: the file's, else onnx.")
    ] = None,
    conf: Annotated[float, typer.Option(help="Confidence threshold.", min=0.0, max=1.0)] = 0.25,
    imgsz: Annotated[
        int | None, typer.Option(help="Input size (default: the model's own, as exported/trained).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Directory: detections.jsonl and annotated/.")] = Path(
        "predictions"
    ),
    as_json: Annotated[bool, typer.Option("--json", help=JSON_HELP)] = False,
) -> None:
    """Detect objects: one JSON line per detection (file, class, confidence, box in original-image
    pixels) and annotated images; unreadable files are reported and skipped."""
    json_mode(as_json)
    from phase2.deploy.predict import load_model, native_imgsz, predict

    chosen = fmt or (Path(model).suffix.lstrip(".") if Path(model).suffix in (".pt", ".onnx") else "onnx")
    if chosen not in ("onnx", "pt"):
        raise CliError(f"--format {chosen!r}: use onnx or pt", exit_code=2)
    registry = None if _local(model) else _registry()
    if chosen == "onnx":
        model_file = registry.resolve_export(model, "onnx") if registry else Path(model).resolve()
    else:
        model_file = registry.resolve_reference(model) if registry else Path(model).resolve()
    size = imgsz or native_imgsz(model_file, chosen)
    run = predict(load_model(model_file, chosen), images, out_dir(out), conf=conf, imgsz=size)
    for skipped in run.skipped:
        typer.echo(f"warning: {skipped['file']}: {skipped['error']}", err=True)
    if as_json:
        print_json(
            {
                "model": str(model_file),
                "format": chosen,
                "imgsz": size,
                "images": run.images,
                "detections": run.detections,
                "skipped": run.skipped,
                "jsonl": str(run.jsonl),
                "annotated": str(run.annotated_dir),
            }
        )
        return
    typer.echo(
        f"{run.images} image(s), {len(run.detections)} detection(s), {len(run.skipped)} skipped; "
        f"detections: {run.jsonl}; annotated images: {run.annotated_dir}"
    )
