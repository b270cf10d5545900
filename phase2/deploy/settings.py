"""The recipe's ``export:`` section. Imports nothing of the pipeline (the recipe imports it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ExportFormat = Literal["onnx", "openvino", "torchscript"]

# The ONNX opset every export is made with: pinned so an Ultralytics or torch upgrade does not
# silently change the graph people deploy (17 runs on onnxruntime >= 1.14 and OpenCV DNN).
ONNX_OPSET = 17


class ExportSettings(BaseModel):
    """Which deployable formats a registered version carries and how close they must stay to the .pt."""

    model_config = ConfigDict(extra="forbid")

    formats: list[ExportFormat] = Field(
        default_factory=lambda: list[ExportFormat](["onnx"]),
        description="Formats exported at registration (openvino/torchscript need their package installed).",
    )
    half: bool = Field(False, description="fp16 exports (GPU exporter only); the parity check still applies.")
    tolerance_map: float = Field(
        0.005, ge=0, le=1, description="Largest |Δ mAP50| and |Δ mAP50-95| vs the .pt for a usable export."
    )
    tolerance_box_agreement: float = Field(
        0.99, ge=0, le=1, description="Smallest share of the .pt's confident boxes the export must reproduce."
    )
    box_conf: float = Field(0.25, gt=0, le=1, description="Confidence at which boxes are compared.")
    box_iou: float = Field(0.9, gt=0, le=1, description="IoU at which an export box reproduces a .pt box.")
