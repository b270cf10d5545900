"""One Ultralytics validation pass that keeps what each image contributed.

:func:`collect_matches` runs ``model.val()`` under the fixed protocol of
:mod:`phase2.evaluation.evaluate` with a validator that records, per image, the predictions
(class, confidence, true-positive flags at the 10 IoU thresholds 0.50:0.95, exactly as
Ultralytics' ``DetectionValidator`` matched them) and the ground truth per class. The
resulting :class:`MatchTable` is all :mod:`phase2.evaluation.uncertainty` needs: point values
and bootstrap intervals come from it without running the model again.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from phase2.evaluation.evaluate import EvalProtocol, dataset_view

N_IOU = 10  # IoU thresholds 0.50:0.05:0.95, as Ultralytics' DetectionValidator


@dataclass(frozen=True)
class MatchTable:
    """Per-image contributions of one validation pass, in the order Ultralytics saw the images.

    ``pred_*`` arrays have one row per prediction kept after NMS; ``pred_image`` indexes
    ``images``; ``tp[k, j]`` says prediction ``k`` matched a ground-truth box at IoU
    threshold ``0.5 + 0.05 j``. ``gt[i, c]`` counts the ground-truth boxes of class ``c`` in
    image ``i``.
    """

    names: list[str]
    images: list[str]
    gt: np.ndarray
    pred_image: np.ndarray
    pred_cls: np.ndarray
    conf: np.ndarray
    tp: np.ndarray
    protocol: EvalProtocol
    weights: str = ""
    weights_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_pred = len(self.pred_cls)
        if not (len(self.pred_image) == len(self.conf) == len(self.tp) == n_pred):
            raise ValueError("match table: pred_image, pred_cls, conf and tp must have one row per prediction")
        if self.tp.ndim != 2 or self.tp.shape[1] != N_IOU:
            raise ValueError(f"match table: tp must have shape (predictions, {N_IOU}), got {self.tp.shape}")
        if self.gt.shape != (len(self.images), len(self.names)):
            raise ValueError(f"match table: gt must have shape (images, classes), got {self.gt.shape}")
        if n_pred and (self.pred_image.min() < 0 or self.pred_image.max() >= len(self.images)):
            raise ValueError("match table: pred_image indexes outside the image list")

    @property
    def n_images(self) -> int:
        return len(self.images)

    def instances(self) -> dict[str, int]:
        totals = self.gt.sum(axis=0)
        return {name: int(totals[c]) for c, name in enumerate(self.names)}

    def target_cls(self) -> np.ndarray:
        """Every ground-truth box's class, as Ultralytics concatenates them."""
        return np.repeat(np.arange(len(self.names)), self.gt.sum(axis=0))

    def reordered(self, images: list[str]) -> MatchTable:
        """The same table with its images in the order ``images`` (the same set)."""
        if sorted(images) != sorted(self.images):
            raise ValueError("the two evaluations did not see the same images; evaluate both on the same split")
        position = {name: i for i, name in enumerate(images)}
        new_index = np.array([position[name] for name in self.images], dtype=np.int64)
        gt = np.zeros_like(self.gt)
        gt[new_index] = self.gt
        return replace(self, images=list(images), gt=gt, pred_image=new_index[self.pred_image])


@contextlib.contextmanager
def output_to_stderr() -> Iterator[None]:
    """Send Ultralytics' banners, progress bars and log lines to stderr while inside.

    Its logger's handler holds the ``sys.stdout`` of import time, so redirecting ``sys.stdout``
    alone is not enough: the handlers that write to stdout are pointed at stderr too.
    """
    moved: list[tuple[logging.StreamHandler[Any], Any]] = []
    for logger in (logging.getLogger("ultralytics"), logging.getLogger()):
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
                moved.append((handler, handler.setStream(sys.stderr)))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


def _recording_validator() -> type:
    """A ``DetectionValidator`` whose metrics object also keeps every image's statistics."""
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import DetMetrics

    class RecordingMetrics(DetMetrics):
        def __init__(self) -> None:
            super().__init__()
            self.per_image: list[dict[str, Any]] = []

        def update_stats(self, stat: dict[str, Any]) -> None:
            super().update_stats(stat)
            self.per_image.append({k: stat[k] for k in ("im_name", "tp", "conf", "pred_cls", "target_cls")})

    class RecordingValidator(DetectionValidator):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.metrics = RecordingMetrics()

    return RecordingValidator


def table_from_records(records: list[dict[str, Any]], names: list[str], protocol: EvalProtocol) -> MatchTable:
    """A :class:`MatchTable` from the per-image statistics the validator recorded."""
    nc = len(names)
    images = [str(r["im_name"]) for r in records]
    if len(set(images)) != len(images):
        raise ValueError("two images of the split share a file name; the per-image table needs unique names")
    gt = np.zeros((len(records), nc), dtype=np.int64)
    for i, r in enumerate(records):
        gt[i] = np.bincount(np.asarray(r["target_cls"], dtype=np.int64), minlength=nc)[:nc]
    counts = [len(r["conf"]) for r in records]
    cat = np.concatenate
    return MatchTable(
        names=list(names),
        images=images,
        gt=gt,
        pred_image=np.repeat(np.arange(len(records), dtype=np.int64), counts),
        pred_cls=cat([np.asarray(r["pred_cls"]).reshape(-1) for r in records]).astype(np.int64)
        if records
        else np.zeros(0, np.int64),
        conf=cat([np.asarray(r["conf"]).reshape(-1) for r in records]) if records else np.zeros(0),
        tp=cat([np.asarray(r["tp"], dtype=bool).reshape(-1, N_IOU) for r in records])
        if records
        else np.zeros((0, N_IOU), bool),
        protocol=protocol,
    )


def collect_matches(weights: Path, data_yaml: Path, protocol: EvalProtocol, device: str | None = None) -> MatchTable:
    """One validation pass of ``weights`` on ``protocol.split`` under ``protocol``, kept per image.

    The dataset is read through the same throw-away view as
    :func:`~phase2.evaluation.evaluate.evaluate_checkpoint` (nothing written into it), the
    checkpoint is safe-loaded first, and Ultralytics' output goes to stderr.
    """
    from ultralytics import YOLO

    from phase2.infra.files import sha256_file
    from phase2.training.checkpoints import verify_checkpoint

    weights, data_yaml = Path(weights).resolve(), Path(data_yaml).resolve()
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such checkpoint")
    if not data_yaml.is_file():
        raise FileNotFoundError(f"{data_yaml}: no such dataset yaml")
    with output_to_stderr(), tempfile.TemporaryDirectory(prefix="phase2-matches-") as work:
        model = YOLO(str(verify_checkpoint(weights)))
        view_yaml = dataset_view(data_yaml, protocol.split, Path(work) / "view")
        raw = yaml.safe_load(view_yaml.read_text())["names"]
        names = [str(n) for n in (raw.values() if isinstance(raw, dict) else raw)]
        if [model.names[i] for i in sorted(model.names)] != names:
            raise ValueError(
                f"{weights}: model classes {list(model.names.values())} differ from {data_yaml} names {names}; "
                "evaluate with the dataset the model was trained for"
            )
        metrics = model.val(
            validator=_recording_validator(),
            **protocol.val_arguments(view_yaml, Path(work) / "val"),
            **({"device": device} if device is not None else {}),
        )
    table = table_from_records(metrics.per_image, names, protocol)
    box = metrics.box
    return replace(
        table,
        weights=str(weights),
        weights_sha256=sha256_file(weights),
        extra={"ultralytics": {"precision": box.mp, "recall": box.mr, "mAP50": box.map50, "mAP50-95": box.map}},
    )


_ARRAYS = ("gt", "pred_image", "pred_cls", "conf", "tp")  # a MatchTable's array fields


def save_match_table(table: MatchTable, path: Path) -> Path:
    """Write ``table`` as one .npz (arrays, plus names/images/protocol as JSON), atomically."""
    import json

    from phase2.infra.files import atomic_path

    meta = {
        "names": table.names,
        "images": table.images,
        "protocol": table.protocol.model_dump(),
        "weights": table.weights,
        "weights_sha256": table.weights_sha256,
    }
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as out:
        np.savez_compressed(out, meta=np.array(json.dumps(meta)), **{k: getattr(table, k) for k in _ARRAYS})
    return Path(path)


def load_match_table(path: Path) -> MatchTable:
    """The table :func:`save_match_table` wrote (no pickles are loaded)."""
    import json

    with np.load(Path(path), allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return MatchTable(
            **{k: meta[k] for k in ("names", "images", "weights", "weights_sha256")},
            **{k: data[k] for k in _ARRAYS},
            protocol=EvalProtocol(**meta["protocol"]),
        )
