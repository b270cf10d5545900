"""The one way this project unpickles weights: ``torch.load(weights_only=True)`` and an allow-list.

A ``.pt`` file is a pickle; an unrestricted load runs whatever code it carries, and a sha256 that
matches a hash stored in the same bucket proves only that the file is the one someone with write
access put there. So every checkpoint is loaded here with torch's weights-only unpickler, which
rebuilds tensors, containers and only the classes in :data:`YOLO_CHECKPOINT_GLOBALS`: exactly the
classes a YOLO11 checkpoint written by Ultralytics 8.4.190 references (stripped ``best.pt`` and
mid-training ``last.pt``/``epochN.pt`` alike; tests/training/test_checkpoints.py derives them from
a real training and fails when Ultralytics starts writing others).

Ultralytics itself loads with ``weights_only=False``: call :func:`verify_checkpoint` on every file
before handing it to ``YOLO(path)``, so a file that is not a plain checkpoint never reaches it.
"""

from __future__ import annotations

import importlib
import pickle
import threading
from pathlib import Path
from typing import Any

__all__ = ["YOLO_CHECKPOINT_GLOBALS", "UnsafeCheckpoint", "load_checkpoint", "verify_checkpoint"]

YOLO_CHECKPOINT_GLOBALS = (
    "torch.nn.modules.activation.SiLU",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
    "ultralytics.nn.modules.block.Attention",
    "ultralytics.nn.modules.block.Bottleneck",
    "ultralytics.nn.modules.block.C2PSA",
    "ultralytics.nn.modules.block.C3k",
    "ultralytics.nn.modules.block.C3k2",
    "ultralytics.nn.modules.block.DFL",
    "ultralytics.nn.modules.block.PSABlock",
    "ultralytics.nn.modules.block.SPPF",
    "ultralytics.nn.modules.conv.Concat",
    "ultralytics.nn.modules.conv.Conv",
    "ultralytics.nn.modules.conv.DWConv",
    "ultralytics.nn.modules.head.Detect",
    "ultralytics.nn.tasks.DetectionModel",
    "ultralytics.utils.IterableSimpleNamespace",  # the EMA model's args in un-stripped checkpoints
)

_registered = False
_lock = threading.Lock()


class UnsafeCheckpoint(RuntimeError):
    """A weights file that is not a plain Ultralytics YOLO checkpoint; nothing in it was run."""


def _allow_yolo_classes() -> None:
    """Register the allow-list once per process (``add_safe_globals``, not the ``safe_globals``
    context manager, whose exit would strip the list from a load running in another thread)."""
    global _registered
    with _lock:
        if _registered:
            return
        import torch

        classes = []
        for name in YOLO_CHECKPOINT_GLOBALS:
            module, _, attr = name.rpartition(".")
            classes.append(getattr(importlib.import_module(module), attr))
        torch.serialization.add_safe_globals(classes)
        _registered = True


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Unpickle an Ultralytics checkpoint without running code; :class:`UnsafeCheckpoint` (naming
    the file and what it references) when it is anything else."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        referenced = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError, EOFError, pickle.UnpicklingError, KeyError) as exc:
        raise UnsafeCheckpoint(
            f"{path}: not a PyTorch checkpoint (not the zip torch.save writes: {exc}); refusing to load it"
        ) from None
    foreign = sorted(referenced - set(YOLO_CHECKPOINT_GLOBALS))
    if foreign:
        raise UnsafeCheckpoint(
            f"{path}: refusing to load it: it references {', '.join(foreign[:5])}"
            f"{' ...' if len(foreign) > 5 else ''}, which an Ultralytics YOLO checkpoint does not "
            "(a pickle that can run code); use weights written by Ultralytics training"
        )
    _allow_yolo_classes()
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpoint(f"{path}: refused by the weights-only loader: {first_line}") from None
    if not isinstance(checkpoint, dict):
        raise UnsafeCheckpoint(f"{path}: not an Ultralytics checkpoint (holds a {type(checkpoint).__name__})")
    return checkpoint


def verify_checkpoint(path: Path | str) -> Path:
    """Load ``path`` safely and return it: call before ``YOLO(path)`` (Ultralytics unpickles with
    ``weights_only=False``). Raises :class:`UnsafeCheckpoint` for anything but a YOLO checkpoint."""
    load_checkpoint(path)
    return Path(path)
