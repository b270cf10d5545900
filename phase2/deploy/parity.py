"""An export measured against the .pt it came from, under the fixed evaluation protocol.

Two numbers per export, both on the gate split:
- mAP: Ultralytics' own validation of the export (``YOLO(export).val``, the same view of the
  split and the same conf/iou/imgsz as :func:`phase2.evaluation.matches.collect_matches` gives
  the .pt); |Δ mAP50| and |Δ mAP50-95|.
- box agreement: the share of the .pt's detections at ``box_conf`` that the export reproduces
  (same class, IoU >= ``box_iou``, Ultralytics' ``box_iou``). mAP can hide an export that moves
  boxes a little everywhere; this cannot.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from phase2.deploy.export import ExportedModel
from phase2.deploy.settings import ExportSettings
from phase2.evaluation.evaluate import EvalProtocol, dataset_view
from phase2.evaluation.matches import MatchTable, output_to_stderr
from phase2.registry.manifest import ExportParity


def validate_export(export: ExportedModel, data_yaml: Path, protocol: EvalProtocol) -> dict[str, float]:
    """``YOLO(export).val`` on ``protocol.split`` under ``protocol``: {mAP50, mAP50-95}.

    A static export validates at its own input size (Ultralytics reads it from the export's
    metadata), so an export made at the wrong size shows up here as a gap to the .pt.
    """
    from ultralytics import YOLO

    with output_to_stderr(), tempfile.TemporaryDirectory(prefix="phase2-parity-") as work:
        view_yaml = dataset_view(Path(data_yaml).resolve(), protocol.split, Path(work) / "view")
        metrics = YOLO(str(export.path), task="detect").val(**protocol.val_arguments(view_yaml, Path(work) / "val"))
    return {"mAP50": float(metrics.box.map50), "mAP50-95": float(metrics.box.map)}


def box_agreement(
    weights: Path, export: ExportedModel, images: list[Path], protocol: EvalProtocol, settings: ExportSettings
) -> tuple[int, int]:
    """(.pt boxes at ``settings.box_conf``, how many of them the export reproduces)."""
    from ultralytics import YOLO
    from ultralytics.utils.metrics import box_iou

    from phase2.training.checkpoints import verify_checkpoint

    options: dict[str, Any] = {
        "conf": settings.box_conf,
        "iou": protocol.iou,
        "imgsz": protocol.imgsz,
        "verbose": False,
    }
    reference: Any = YOLO(str(verify_checkpoint(weights)))
    candidate: Any = YOLO(str(export.path), task="detect")
    total = matched = 0
    with output_to_stderr():
        for image in images:
            (ours,) = reference.predict(str(image), **options)
            (theirs,) = candidate.predict(str(image), **options)
            if len(ours.boxes) == 0:
                continue
            total += len(ours.boxes)
            if len(theirs.boxes) == 0:
                continue
            iou = box_iou(ours.boxes.xyxy.cpu(), theirs.boxes.xyxy.cpu())
            same_class = ours.boxes.cls.cpu()[:, None] == theirs.boxes.cls.cpu()[None, :]
            matched += int(((iou >= settings.box_iou) & same_class).any(dim=1).sum())
    return total, matched


def measure_parity(
    weights: Path,
    export: ExportedModel,
    data_yaml: Path,
    reference: MatchTable,
    settings: ExportSettings,
) -> tuple[ExportParity, list[str]]:
    """The export's parity with ``weights`` (whose validation pass is ``reference``) and the
    reasons it is outside ``settings``' tolerances (empty: usable)."""
    from phase2.dataset.layout import resolve_split_images
    from phase2.evaluation.uncertainty import point_metrics

    protocol = reference.protocol
    # Ultralytics' own mAP of the table (ap_per_class): the same numbers its val() printed for the
    # .pt, also for a table selection saved (which keeps no val() output).
    pt = {k: float(v[0]) for k, v in point_metrics(reference).overall.items()}
    exported = validate_export(export, data_yaml, protocol)
    images = sorted(resolve_split_images(Path(data_yaml))[protocol.split])
    boxes_pt, boxes_matched = box_agreement(weights, export, images, protocol, settings)
    parity = ExportParity(
        split=protocol.split,
        n_images=reference.n_images,
        imgsz=protocol.imgsz,
        map50_pt=float(pt["mAP50"]),
        map50_export=exported["mAP50"],
        map50_95_pt=float(pt["mAP50-95"]),
        map50_95_export=exported["mAP50-95"],
        delta_map50=abs(exported["mAP50"] - float(pt["mAP50"])),
        delta_map50_95=abs(exported["mAP50-95"] - float(pt["mAP50-95"])),
        box_conf=settings.box_conf,
        box_iou=settings.box_iou,
        boxes_pt=boxes_pt,
        boxes_matched=boxes_matched,
        box_agreement=boxes_matched / boxes_pt if boxes_pt else None,
    )
    return parity, parity_problems(parity, export, settings)


def parity_problems(parity: ExportParity, export: ExportedModel, settings: ExportSettings) -> list[str]:
    """Why an export is outside tolerance, one plain sentence each."""
    problems = []
    if export.imgsz != parity.imgsz:
        problems.append(f"exported at {export.imgsz} px, the protocol evaluates at {parity.imgsz} px")
    for label, delta in (("mAP50", parity.delta_map50), ("mAP50-95", parity.delta_map50_95)):
        if delta > settings.tolerance_map:
            problems.append(f"|Δ {label}| = {delta:.4f} vs the .pt exceeds the tolerance {settings.tolerance_map:g}")
    if parity.box_agreement is not None and parity.box_agreement < settings.tolerance_box_agreement:
        problems.append(
            f"reproduces {parity.boxes_matched}/{parity.boxes_pt} ({parity.box_agreement:.1%}) of the .pt's boxes "
            f"at conf >= {parity.box_conf:g} (IoU >= {parity.box_iou:g}, same class); "
            f"tolerance {settings.tolerance_box_agreement:.0%}"
        )
    return problems
