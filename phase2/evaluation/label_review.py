"""Label review: which val/test labels the selected model disagrees with, worst first.

The selected model predicts every val and test image (out of sample: it was trained on train
only); with ``kfold_train`` every train image is predicted by the k-fold model that did not
train on it (phase2/evaluation/kfold_review.py), scored in the same call. cleanlab's ObjectLab
scoring (``cleanlab.object_detection``) compares those predictions with the labels: per image a
label-quality score in [0, 1] (low: probably wrong) and three subtype scores, each pooled over
the image's boxes:

- ``overlooked``: a confident prediction with no label near it (a missing box),
- ``swap``: a label box where the model confidently sees another class (a wrong class),
- ``badloc``: a label box that the model's box of the same class only partly covers (a badly placed box).

It writes a review queue (CSV and JSON, every image, worst first) and small PNGs of the
``top_n`` shown images (``minority_class`` images with a suspected issue first) with the label
(green), the prediction (red) and the suspect box (orange). It changes nothing in the data: it points.

Ultralytics is imported inside functions: call ``phase2.infra.settings.configure_environment()`` first.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from phase2.dataset.labels import read_boxes
from phase2.dataset.layout import label_path_for, load_class_names, resolve_split_images
from phase2.infra.files import atomic_write_json

QUEUE_CSV = "review_queue.csv"
QUEUE_JSON = "review_queue.json"
SUMMARY_JSON = "label_review.json"
TILES_DIR = "tiles"
ISSUE_NAMES = {"overlooked": "missing box", "swap": "wrong class", "badloc": "badly placed box"}
LABEL_COLOUR, PREDICTION_COLOUR, SUSPECT_COLOUR = (0, 200, 0), (230, 30, 30), (255, 150, 0)
NO_ISSUE_TOLERANCE = 1e-6  # a subtype score this close to 1 suspects nothing (swap gives 1 - tiny similarity)
SHOWN_PREDICTION_CONF = 0.25  # drawn predictions only (every prediction is scored)
KFOLD_DIR = "kfold"  # the fold models' trainings, kept across reruns of the review
SELECTED_MODEL = "selected model"


class LabelReviewSettings(BaseModel):
    """The recipe's ``label_review`` switch."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    top_n: PositiveInt = Field(12, description="Worst images drawn in the report (the queue lists all).")
    splits: list[Literal["val", "test"]] = Field(["val", "test"], min_length=1)
    kfold_train: bool = Field(
        False,
        description="Also score train, through k-fold models (phase2/evaluation/kfold_review.py): one "
        "fine-tune per fold from the run's start weights. Costs `folds` trainings.",
    )
    folds: int = Field(3, ge=2, description="k of kfold_train: folds of whole duplicate groups.")
    kfold_epochs: PositiveInt | None = Field(
        None, description="Epochs of each fold model (unset: the recipe's train.epochs)."
    )
    conf: float = Field(
        0.001,
        gt=0,
        lt=1,
        description="Prediction confidence floor: the evaluation protocol's, so cleanlab sees the full "
        "ranking (its per-class AP in find_label_issues and its similarity floor use low-confidence boxes too).",
    )
    high_probability_threshold: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Confidence above which a prediction can mean a missing box or a wrong class "
        "(cleanlab's default 0.95 suits softmax detectors; YOLO confidences rarely pass 0.9).",
    )
    low_probability_threshold: float = Field(
        0.25, gt=0, lt=1, description="Confidence above which a prediction can mean a badly placed box (cleanlab: 0.5)."
    )


@dataclass
class ReviewImage:
    """One image's labels in pixel xyxy (what cleanlab reads)."""

    path: Path
    split: str
    width: int
    height: int
    classes: np.ndarray  # (L,) int
    boxes: np.ndarray  # (L, 4) x1 y1 x2 y2, pixels
    label_file: Path = field(default_factory=Path)
    scored_by: str = SELECTED_MODEL  # the model whose predictions score it (a fold model for train)


@dataclass
class OutOfFold:
    """Images predicted by other models than the selected one (train, by k-fold models), scored
    together with val/test; ``summary`` goes into label_review.json as ``kfold``."""

    images: list[ReviewImage]
    predictions: list[list[np.ndarray]]
    summary: dict[str, Any]


# --------------------------------------------------------------------------- inputs


def load_split_labels(data_yaml: Path, split: str) -> list[ReviewImage]:
    """The images of ``split`` (sorted) with their labels converted to pixel xyxy (image size via PIL)."""
    from PIL import Image

    images = resolve_split_images(Path(data_yaml)).get(split)
    if not images:
        raise ValueError(f"{data_yaml}: no '{split}' split to review; add `{split}: path/to/{split}/images`")
    loaded = []
    for image in sorted(images):
        with Image.open(image) as opened:
            width, height = opened.size
        label_file = label_path_for(image)
        rows = read_boxes(label_file)
        yolo = np.asarray([row[1:] for row in rows], dtype=float).reshape(-1, 4)
        scale = np.array([width, height, width, height], dtype=float)
        xyxy = np.concatenate([yolo[:, :2] - yolo[:, 2:] / 2, yolo[:, :2] + yolo[:, 2:] / 2], axis=1) * scale
        loaded.append(
            ReviewImage(
                path=Path(image),
                split=split,
                width=width,
                height=height,
                classes=np.asarray([row[0] for row in rows], dtype=int),
                boxes=xyxy,
                label_file=label_file,
            )
        )
    return loaded


def predict_images(
    weights: Path, images: Sequence[Path], *, imgsz: int, conf: float, num_classes: int, batch: int = 16
) -> list[list[np.ndarray]]:
    """Per image, cleanlab's prediction format: one ``(M, 5)`` array ``[x1, y1, x2, y2, conf]`` per class."""
    from ultralytics import YOLO
    from ultralytics.engine.results import Results

    from phase2.training.checkpoints import verify_checkpoint

    model = YOLO(str(verify_checkpoint(weights)))  # a safe load first: Ultralytics unpickles fully
    if len(model.names) != num_classes:
        raise ValueError(f"{weights}: the model has {len(model.names)} classes, the dataset {num_classes}")
    predictions = []
    for start in range(0, len(images), batch):
        chunk = [str(p) for p in images[start : start + batch]]
        for result in model.predict(chunk, imgsz=imgsz, conf=conf, verbose=False):
            assert isinstance(result, Results)  # a detection model's result
            rows = np.zeros((0, 6))
            if result.boxes is not None:
                boxes = result.boxes.cpu().numpy()
                rows = np.column_stack([np.asarray(boxes.xyxy), np.asarray(boxes.conf), np.asarray(boxes.cls)])
            predictions.append([rows[rows[:, 5] == k, :5].astype(float) for k in range(num_classes)])
    return predictions


# --------------------------------------------------------------------------- scoring


def cleanlab_labels(images: Sequence[ReviewImage]) -> list[dict[str, Any]]:
    return [{"bboxes": im.boxes, "labels": im.classes, "image_name": str(im.path)} for im in images]


def score_images(
    labels: list[dict[str, Any]],
    predictions: list[list[np.ndarray]],
    *,
    high_probability_threshold: float | None = None,
    low_probability_threshold: float | None = None,
) -> pd.DataFrame:
    """Per image: ``score`` (cleanlab's label quality), the three pooled subtype scores, the worst
    box of each subtype, and cleanlab's ``find_label_issues`` flag.

    With both thresholds None (cleanlab's own constants) ``score`` is exactly
    ``cleanlab.object_detection.rank.get_label_quality_scores``; other thresholds go through the
    same public subtype functions and the same aggregation (equal-weight geometric mean).
    """
    from cleanlab.internal.constants import HIGH_PROBABILITY_THRESHOLD, LOW_PROBABILITY_THRESHOLD, TINY_VALUE
    from cleanlab.object_detection import filter as od_filter
    from cleanlab.object_detection import rank

    high = HIGH_PROBABILITY_THRESHOLD if high_probability_threshold is None else high_probability_threshold
    low = LOW_PROBABILITY_THRESHOLD if low_probability_threshold is None else low_probability_threshold
    per_box = {
        "overlooked": rank.compute_overlooked_box_scores(
            labels=labels, predictions=predictions, high_probability_threshold=high
        ),
        "swap": rank.compute_swap_box_scores(labels=labels, predictions=predictions, high_probability_threshold=high),
        "badloc": rank.compute_badloc_box_scores(labels=labels, predictions=predictions, low_probability_threshold=low),
    }
    pooled = {name: rank.pool_box_scores_per_image(scores) for name, scores in per_box.items()}
    score = np.exp(sum(np.log(TINY_VALUE + pooled[name]) for name in pooled) / len(pooled))
    flagged = od_filter.find_label_issues(labels, predictions)
    rows = []
    for i in range(len(labels)):
        row: dict[str, Any] = {"score": float(score[i]), "flagged": bool(flagged[i])}
        for name in per_box:
            box_scores = per_box[name][i]
            row[name] = float(pooled[name][i])
            finite = np.flatnonzero(~np.isnan(box_scores))
            row[f"{name}_box"] = int(finite[np.argmin(box_scores[finite])]) if finite.size else None
        subtype = min(per_box, key=lambda name: row[name])
        suspected = row[subtype] < 1.0 - NO_ISSUE_TOLERANCE
        row["issue"] = ISSUE_NAMES[subtype] if suspected else "none"
        row["issue_subtype"] = subtype if suspected else ""
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- the queue and its pictures


class LabelReviewResult(BaseModel):
    """What the label review wrote (``label_review.json`` holds it; the report reads that file)."""

    weights: Path
    imgsz: int
    splits: list[str]
    settings: LabelReviewSettings
    minority_class: str | None
    n_images: int
    n_flagged: int = Field(description="images cleanlab's find_label_issues flags")
    issues: dict[str, int] = Field(description="suspected issue -> images, over the whole queue")
    queue_csv: Path
    queue_json: Path
    shown: list[dict[str, Any]] = Field(description="the top_n queue rows drawn, each with its tile file name")
    kfold: dict[str, Any] | None = Field(None, description="the k-fold models that scored train (kfold.json)")


def _box_text(names: list[str], class_id: int, xyxy: Sequence[float]) -> str:
    return f"{names[class_id] if class_id < len(names) else class_id} [{', '.join(f'{v:.0f}' for v in xyxy)}]"


def _suspect(image: ReviewImage, prediction: list[np.ndarray], row: dict[str, Any], names: list[str]) -> str | None:
    """The box the issue points at, as text (overlooked: a predicted box; swap/badloc: a label box)."""
    subtype = row["issue_subtype"]
    index = row.get(f"{subtype}_box") if subtype else None
    if index is None or pd.isna(index):
        return None
    index = int(index)
    if subtype == "overlooked":
        boxes = [(k, box) for k, per_class in enumerate(prediction) for box in per_class]
        class_id, box = boxes[index]
        return f"predicted {_box_text(names, class_id, box[:4])} conf {box[4]:.2f} has no label"
    what = "labelled" if subtype == "swap" else "placed"
    return f"label {_box_text(names, int(image.classes[index]), image.boxes[index])} looks wrongly {what}"


def queue_table(
    images: Sequence[ReviewImage],
    predictions: list[list[np.ndarray]],
    scores: pd.DataFrame,
    names: list[str],
    minority_class: str | None,
) -> pd.DataFrame:
    """The review queue: one row per image, lowest label quality first."""
    minority = names.index(minority_class) if minority_class in names else None
    rows = []
    for image, prediction, row in zip(images, predictions, scores.to_dict(orient="records"), strict=True):
        predicted = {k for k, per_class in enumerate(prediction) if (per_class[:, 4] >= SHOWN_PREDICTION_CONF).any()}
        rows.append(
            {
                "image": str(image.path),
                "label_file": str(image.label_file),
                "split": image.split,
                "scored_by": image.scored_by,
                "score": row["score"],
                "issue": row["issue"],
                "suspect": _suspect(image, prediction, row, names),
                "flagged_by_cleanlab": row["flagged"],
                "missing_box_score": row["overlooked"],
                "wrong_class_score": row["swap"],
                "badly_placed_score": row["badloc"],
                "minority": minority is not None and (minority in image.classes or minority in predicted),
                "labels": len(image.classes),
                "predictions_over_conf": int(sum(int((p[:, 4] >= SHOWN_PREDICTION_CONF).sum()) for p in prediction)),
                "_subtype": row["issue_subtype"],
                "_box": row[f"{row['issue_subtype']}_box"] if row["issue_subtype"] else None,
            }
        )
    table = pd.DataFrame(rows).sort_values(["score", "image"], kind="stable").reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def draw_tile(
    image: ReviewImage, prediction: list[np.ndarray], names: list[str], out: Path, *, suspect: tuple[str, int] | None
) -> Path:
    """A small PNG: label boxes green, predictions (conf >= 0.25) red, the suspect box orange and thick."""
    from PIL import Image, ImageDraw

    tile_width = 360
    with Image.open(image.path) as source:
        tile = source.convert("RGB")
    scale = tile_width / tile.width
    tile = tile.resize((tile_width, max(1, round(tile.height * scale))))
    draw = ImageDraw.Draw(tile)
    for class_id, box in zip(image.classes, image.boxes, strict=True):
        draw.rectangle([v * scale for v in box], outline=LABEL_COLOUR, width=2)
        draw.text((box[0] * scale + 2, box[1] * scale + 1), names[int(class_id)], fill=LABEL_COLOUR)
    flat = [(k, box) for k, per_class in enumerate(prediction) for box in per_class]
    for class_id, box in flat:
        if box[4] >= SHOWN_PREDICTION_CONF:
            scaled = [v * scale for v in box[:4]]
            draw.rectangle(scaled, outline=PREDICTION_COLOUR, width=1)
            draw.text((scaled[0] + 2, scaled[3] - 11), f"{names[class_id]} {box[4]:.2f}", fill=PREDICTION_COLOUR)
    if suspect is not None:
        subtype, index = suspect
        box = flat[index][1][:4] if subtype == "overlooked" else image.boxes[index]
        draw.rectangle([v * scale for v in box], outline=SUSPECT_COLOUR, width=4)
    out.parent.mkdir(parents=True, exist_ok=True)
    tile.save(out, optimize=True)
    return out


def review_labels(
    weights: Path,
    data_yaml: Path,
    out_dir: Path,
    *,
    imgsz: int,
    settings: LabelReviewSettings,
    minority_class: str | None = None,
    out_of_fold: OutOfFold | None = None,
) -> LabelReviewResult:
    """Score every image of ``settings.splits`` with ``weights``' predictions at ``imgsz`` (the
    evaluation protocol's), and ``out_of_fold``'s images with their own predictions, in one
    scoring; write the queue, the tiles of the ``top_n`` shown images (``minority_class`` images
    with a suspected issue first) and ``label_review.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.iterdir():  # an earlier attempt's outputs; its fold models are reused
        if old.is_dir() and old.name != KFOLD_DIR:
            shutil.rmtree(old)
        elif not old.is_dir():
            old.unlink()
    names = load_class_names(Path(data_yaml))
    present = resolve_split_images(Path(data_yaml))
    splits: list[str] = [split for split in settings.splits if present.get(split)]  # test may be absent
    if not splits:
        raise ValueError(f"{data_yaml}: none of the splits {settings.splits} to review has images; fix data.yaml")
    images = [image for split in splits for image in load_split_labels(data_yaml, split)]
    predictions = predict_images(
        weights, [im.path for im in images], imgsz=imgsz, conf=settings.conf, num_classes=len(names)
    )
    if out_of_fold is not None:
        images, predictions = images + out_of_fold.images, predictions + out_of_fold.predictions
        splits += sorted({im.split for im in out_of_fold.images})
    scores = score_images(
        cleanlab_labels(images),
        predictions,
        high_probability_threshold=settings.high_probability_threshold,
        low_probability_threshold=settings.low_probability_threshold,
    )
    table = queue_table(images, predictions, scores, names, minority_class)
    by_path = {str(im.path): (im, pred) for im, pred in zip(images, predictions, strict=True)}
    # A wrong minority-class label moves the gate's numbers most: those images are shown first.
    first = table["minority"] & (table["issue"] != "none")
    shown_rows = table.assign(_first=first).sort_values(["_first", "rank"], ascending=[False, True], kind="stable")
    shown_rows = shown_rows.drop(columns="_first").head(settings.top_n)
    shown = []
    for order, row in enumerate(json.loads(shown_rows.to_json(orient="records"))):
        image, prediction = by_path[row["image"]]
        suspect = (row["_subtype"], int(row["_box"])) if row["_subtype"] and pd.notna(row["_box"]) else None
        tile = draw_tile(
            image, prediction, names, out_dir / TILES_DIR / f"{order:02d}_{image.path.stem}.png", suspect=suspect
        )
        shown.append({**{k: v for k, v in row.items() if not k.startswith("_")}, "tile": tile.name})
    public = table.drop(columns=["_subtype", "_box"])
    public.to_csv(out_dir / QUEUE_CSV, index=False)
    atomic_write_json(out_dir / QUEUE_JSON, json.loads(public.to_json(orient="records")))
    result = LabelReviewResult(
        weights=Path(weights),
        imgsz=imgsz,
        splits=splits,
        settings=settings,
        minority_class=minority_class,
        n_images=len(table),
        n_flagged=int(public["flagged_by_cleanlab"].sum()),
        issues={str(k): int(v) for k, v in public["issue"].value_counts().items()},
        queue_csv=out_dir / QUEUE_CSV,
        queue_json=out_dir / QUEUE_JSON,
        shown=shown,
        kfold=out_of_fold.summary if out_of_fold is not None else None,
    )
    atomic_write_json(out_dir / SUMMARY_JSON, result.model_dump(mode="json"))
    return result
