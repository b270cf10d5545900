"""Exports made with Ultralytics' own exporter at the evaluation protocol's image size.

The weights are copied into the output folder first (Ultralytics writes the export next to the
weights; the source may be read-only or shared) and safe-loaded before Ultralytics unpickles them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import BaseModel

from phase2.deploy.settings import ONNX_OPSET, ExportFormat

# Format -> (package that must be importable, the exported path's suffix after the weights' stem).
FORMATS: dict[str, tuple[str, str]] = {
    "onnx": ("onnxruntime", ".onnx"),
    "openvino": ("openvino", "_openvino_model"),
    "torchscript": ("torch", ".torchscript"),
}


class ExportError(RuntimeError):
    """An export that could not be made (message says which format and why)."""


class ExportedModel(BaseModel):
    format: str
    path: Path  # the file (onnx, torchscript) or folder (openvino) to load
    imgsz: int
    half: bool
    opset: int | None

    def files(self) -> dict[str, Path]:
        """{path relative to the export's parent: file} of everything the export consists of."""
        if self.path.is_dir():
            return {str(p.relative_to(self.path.parent)): p for p in sorted(self.path.rglob("*")) if p.is_file()}
        return {self.path.name: self.path}


def format_available(fmt: str) -> bool:
    import importlib.util

    package = FORMATS[fmt][0]
    return importlib.util.find_spec(package) is not None


def export_weights(
    weights: Path, fmt: ExportFormat, *, imgsz: int, out_dir: Path, half: bool = False, stem: str | None = None
) -> ExportedModel:
    """Export ``weights`` to ``fmt`` at ``imgsz`` into ``out_dir``.

    Every format with dynamic batch and image axes (``imgsz`` is its recorded size, what
    Ultralytics' predictor letterboxes to); ONNX: onnxslim on, opset :data:`ONNX_OPSET`. Raises
    :class:`ExportError` when the format's package is missing or the exporter fails.
    """
    from ultralytics import YOLO

    from phase2.evaluation.matches import output_to_stderr
    from phase2.training.checkpoints import verify_checkpoint

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if not format_available(fmt):
        # Checked here, before Ultralytics' exporter, which would try to pip-install it (offline: fails late).
        raise ExportError(
            f"cannot export {fmt}: the package {FORMATS[fmt][0]!r} is not installed; "
            f"pip install -e '.[dev]' installs the pinned version, or remove {fmt} from the recipe's export.formats"
        )
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / (f"{stem}.pt" if stem else Path(weights).name)  # the export is named after it
    if Path(weights).resolve() != source:
        shutil.copyfile(verify_checkpoint(Path(weights).resolve()), source)
    options: dict[str, object] = {"format": fmt, "imgsz": imgsz, "half": half, "batch": 1}
    # Dynamic axes, every format: the export then validates like the .pt (rectangular batches of the
    # protocol's batch size); a static one is validated square at batch 1, a different input that
    # moved mAP50 by 0.009 (onnx, real test split) and 0.059 (openvino and torchscript, learned val
    # images) with the boxes otherwise identical (measured).
    options["dynamic"] = True
    if fmt == "onnx":
        options |= {"simplify": True, "opset": ONNX_OPSET}
    if not half:
        options["device"] = "cpu"  # fp16 export needs a GPU; fp32 exports are made on the CPU everywhere
    try:
        with output_to_stderr():
            exported = Path(str(YOLO(str(verify_checkpoint(source))).export(**options)))
    except Exception as error:  # Ultralytics raises many types; the format and cause are what matter
        raise ExportError(f"{fmt} export of {weights} failed: {error}") from error
    return ExportedModel(format=fmt, path=exported, imgsz=imgsz, half=half, opset=ONNX_OPSET if fmt == "onnx" else None)
