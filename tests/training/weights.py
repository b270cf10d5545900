"""Weights files for tests: a real YOLO11 checkpoint and a malicious pickle that looks like one."""

from __future__ import annotations

from pathlib import Path


class _WritesMarker:
    """Unpickling this runs ``exec``: it writes ``marker`` (what an attacker's payload would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('unpickled')",))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A torch.save zip shaped like an Ultralytics checkpoint whose model, once unpickled with
    ``weights_only=False``, writes ``marker``."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "train_args": {"epochs": 2}, "ema": _WritesMarker(marker), "model": None}, path)
    return path


def yolo_checkpoint(path: Path) -> Path:
    """An untrained yolo11n saved as Ultralytics saves its final weights (fp16 model, epoch -1)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel

    path.parent.mkdir(parents=True, exist_ok=True)
    model = DetectionModel("yolo11n.yaml", nc=4, verbose=False).half()
    torch.save({"epoch": -1, "model": model, "ema": None, "train_args": {}, "train_metrics": {}}, path)
    return path
