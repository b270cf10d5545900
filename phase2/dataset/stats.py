"""Dataset statistics from the validator's file and box tables: per split, per class, native sizes, minority."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel

MODEL_STRIDE = 32  # largest YOLO11 stride: imgsz must be a multiple of it


class ClassStats(BaseModel):
    split: str
    class_id: int
    class_name: str
    images: int
    instances: int
    instances_per_image: float
    median_box_w_px: float | None
    median_box_h_px: float | None
    min_box_side_px_at_imgsz: float | None


class SplitStats(BaseModel):
    split: str
    images: int
    labelled_images: int
    background_images: int
    instances: int
    instances_per_image: float


class NativeSize(BaseModel):
    width: int
    height: int
    images: int


class MinorityStats(BaseModel):
    class_name: str
    val_instances: int
    val_images: int
    val_target: int
    shortfall: int


def split_stats(images: Mapping[str, Sequence[str]], files: pd.DataFrame) -> list[SplitStats]:
    stats = []
    for split, paths in images.items():
        rows = files[files["split"] == split]
        labelled = int((rows["label_state"] == "ok").sum())
        instances = int(rows["instances"].sum())
        stats.append(
            SplitStats(
                split=split,
                images=len(paths),
                labelled_images=labelled,
                background_images=int(rows["label_state"].isin(["missing", "empty"]).sum()),
                instances=instances,
                instances_per_image=instances / max(1, len(paths)),
            )
        )
    return stats


def class_stats(images: Mapping[str, Sequence[str]], boxes: pd.DataFrame, names: Sequence[str]) -> list[ClassStats]:
    # A mask per (split, class) on plain arrays: a pandas groupby with five aggregations costs ~50x more
    # here, and the validator's own time is benchmarked against Ultralytics' scan.
    split_of, cls_of, image_of = (boxes[c].to_numpy() for c in ("split", "cls", "image"))
    w_native, h_native = boxes["w_native"].to_numpy(dtype=float), boxes["h_native"].to_numpy(dtype=float)
    min_side = np.minimum(boxes["w_px"].to_numpy(dtype=float), boxes["h_px"].to_numpy(dtype=float))

    def rounded(values: np.ndarray, reduce: Callable[[np.ndarray], float]) -> float | None:
        values = values[~np.isnan(values)]
        return round(float(reduce(values)), 2) if len(values) else None

    out = []
    for split, paths in images.items():
        in_split = split_of == split
        for cls, name in enumerate(names):
            mask = in_split & (cls_of == cls)
            n = int(mask.sum())
            out.append(
                ClassStats(
                    split=split,
                    class_id=cls,
                    class_name=name,
                    images=len(set(image_of[mask])),
                    instances=n,
                    instances_per_image=n / max(1, len(paths)),
                    median_box_w_px=rounded(w_native[mask], np.median),
                    median_box_h_px=rounded(h_native[mask], np.median),
                    min_box_side_px_at_imgsz=rounded(min_side[mask], np.min),
                )
            )
    return out


def native_sizes(files: pd.DataFrame) -> list[NativeSize]:
    """Images per native (width, height), from the images that decoded."""
    sized = files.dropna(subset=["width", "height"])
    if sized.empty:  # label-only: nothing decoded (and an empty groupby costs more than the rest)
        return []
    counts = sized.groupby(["width", "height"]).size()
    return [NativeSize(width=int(w), height=int(h), images=int(n)) for (w, h), n in counts.items()]


def largest_side(sizes: Sequence[NativeSize]) -> int | None:
    """The longest side of any of these native sizes (None: there are none)."""
    return max((max(s.width, s.height) for s in sizes), default=None)


def recommended_imgsz(largest_side: int) -> int:
    """The smallest training size that covers the largest native side (a multiple of the model stride)."""
    return math.ceil(largest_side / MODEL_STRIDE) * MODEL_STRIDE


def minority_stats(
    boxes: pd.DataFrame, class_names: Sequence[str], minority_class: str, target: int
) -> MinorityStats | None:
    """Instances and images of `minority_class` in val against its target (None: no such class)."""
    if minority_class not in class_names:
        return None
    cls = list(class_names).index(minority_class)
    val = boxes[(boxes["split"] == "val") & (boxes["cls"] == cls)]
    return MinorityStats(
        class_name=minority_class,
        val_instances=len(val),
        val_images=int(val["image"].nunique()),
        val_target=target,
        shortfall=max(0, target - len(val)),
    )
