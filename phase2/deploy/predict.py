"""Detections on new images from a registered model, its export, or a local file.

``--format onnx`` runs the ONNX export through Ultralytics' ONNX Runtime backend (its own
letterbox and NMS, exactly what the parity check measured): no pickle is loaded. ``--format
pt`` safe-loads the .pt first (phase2/training/checkpoints.py). Each image is decoded here, so a
corrupt or non-image file is reported and skipped instead of ending the batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phase2.infra.files import atomic_write_text


@dataclass
class PredictionRun:
    images: int = 0
    detections: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "error"}
    jsonl: Path = Path("detections.jsonl")
    annotated_dir: Path = Path("annotated")


def list_inputs(source: Path) -> list[Path]:
    """A file, or every file under a folder (sorted); hidden files are left out."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such image or folder (pass an image file or a folder of images)")
    return sorted(p for p in source.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.parts))


def load_model(model_file: Path, fmt: str) -> Any:
    """An Ultralytics model for ``model_file``; ``onnx`` never touches a pickle."""
    from ultralytics import YOLO

    if fmt == "onnx":
        if model_file.suffix != ".onnx":
            raise ValueError(f"{model_file}: --format onnx needs an .onnx file (this one would be unpickled)")
        return YOLO(str(model_file), task="detect")
    from phase2.training.checkpoints import verify_checkpoint

    return YOLO(str(verify_checkpoint(model_file)))


def native_imgsz(model_file: Path, fmt: str) -> int | None:
    """The input size a model was exported (onnx: its metadata, read without unpickling) or
    trained (pt) at: what prediction must letterbox to, as the parity check did."""
    import ast

    if fmt == "onnx":
        import onnxruntime

        meta = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"]).get_modelmeta()
        size = ast.literal_eval(meta.custom_metadata_map.get("imgsz", "None"))
    else:
        from phase2.training.checkpoints import load_checkpoint

        size = (load_checkpoint(model_file).get("train_args") or {}).get("imgsz")
    if isinstance(size, (list, tuple)):
        size = max(size)
    return int(size) if isinstance(size, int) else None


def _decoded(paths: Iterable[Path], run: PredictionRun) -> Iterator[tuple[Path, Any]]:
    import cv2

    for path in paths:
        image = cv2.imread(str(path))
        if image is None:
            run.skipped.append({"file": str(path), "error": "not a readable image (corrupt or not an image); skipped"})
            continue
        yield path, image


def predict(
    model: Any, source: Path, out_dir: Path, *, conf: float = 0.25, imgsz: int | None = None, progress: bool = True
) -> PredictionRun:
    """Detect on ``source`` (file or folder): ``out_dir/detections.jsonl`` (one JSON object per
    detection: file, class, confidence, box [x1, y1, x2, y2] in original-image pixels) and
    ``out_dir/annotated/`` (each image with its boxes drawn)."""
    import cv2
    from tqdm import tqdm

    paths = list_inputs(source)
    out_dir = Path(out_dir)
    annotated = out_dir / "annotated"
    annotated.mkdir(parents=True, exist_ok=True)
    run = PredictionRun(jsonl=out_dir / "detections.jsonl", annotated_dir=annotated)
    # Without imgsz, Ultralytics runs a dynamic ONNX at 640 px: always pass the model's own size.
    options: dict[str, Any] = {"conf": conf, "verbose": False, **({"imgsz": imgsz} if imgsz else {})}
    bar = tqdm(paths, desc="predict", unit="image", disable=not progress or len(paths) < 2)
    for path, image in _decoded(bar, run):
        (result,) = model.predict(image, **options)
        run.images += 1
        for cls, score, box in zip(
            result.boxes.cls.tolist(), result.boxes.conf.tolist(), result.boxes.xyxy.tolist(), strict=True
        ):
            run.detections.append(
                {
                    "file": str(path),
                    "class": result.names[int(cls)],
                    "confidence": round(float(score), 6),
                    "box": [round(float(v), 2) for v in box],
                }
            )
        relative = path.relative_to(source) if Path(source).is_dir() else Path(path.name)
        target = annotated / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target.with_suffix(".jpg")), result.plot())
    atomic_write_text(run.jsonl, "".join(json.dumps(d) + "\n" for d in run.detections))
    return run
