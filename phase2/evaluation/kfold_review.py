"""Out-of-sample predictions on train for the label review, through k-fold models.

The selected model trained on train, so its predictions there say little about train's labels.
Here train is split into ``k`` folds of whole leak-free groups (copies and near copies of one
photograph, grouped exactly as rebalancing groups them: :func:`phase2.dataset.rebalance.group_images`
over the validation's duplicate groups), so no photograph is ever in a fold and in that fold's
training data. Per fold a model is fine-tuned from the run's start weights on the other folds
(real Ultralytics, through :func:`phase2.training.fine_tune.fine_tune`: a child process,
resumable, a finished fold is not retrained on a rerun) and predicts the held-out fold. The
fold's ``last.pt`` predicts: ``best.pt`` would be picked by validation on the held-out fold.

The same seed and inputs give the same folds; the predictions then join val/test's in one
cleanlab scoring (:func:`phase2.evaluation.label_review.review_labels`).

Ultralytics is imported inside functions: call ``phase2.infra.settings.configure_environment()`` first.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from phase2.dataset.layout import load_class_names, load_data_yaml, resolve_split_images
from phase2.dataset.rebalance import content_hash, group_images
from phase2.evaluation.label_review import OutOfFold, load_split_labels, predict_images
from phase2.infra.files import atomic_write_json, atomic_write_text
from phase2.training.fine_tune import COMPLETE_MARKER, fine_tune
from phase2.training.identity import RunIdentity

log = logging.getLogger(__name__)

KFOLD_JSON = "kfold.json"
# A fold model only predicts: no per-epoch validation (its holdout must not pick the weights),
# no extra checkpoints or plots.
FOLD_TRAIN_OVERRIDES: dict[str, Any] = {"val": False, "save_period": -1, "plots": False}


@dataclass(frozen=True)
class Fold:
    """Fold ``index`` (1-based) of ``k``: its model trains on ``train`` and predicts ``holdout``."""

    index: int
    k: int
    train: list[Path]
    holdout: list[Path]

    @property
    def name(self) -> str:
        return f"fold {self.index}/{self.k}"


class FoldModel(BaseModel):
    """One fold's model: what it trained on and what it predicted."""

    fold: int
    k: int
    weights: Path
    weights_sha256: str
    data_yaml: Path
    train_list: Path
    trained_images: int
    holdout_images: int
    epochs: int
    reused: bool  # finished by an earlier attempt: not retrained
    wall_time_s: float


def assign_folds(
    images: Sequence[Path], duplicate_groups: Sequence[Sequence[Path]], *, k: int, seed: int
) -> list[Fold]:
    """``k`` folds of whole groups, near equal in images: groups in a seeded shuffle, largest first,
    each to the fold with the fewest images so far (the lowest index on a tie)."""
    if k < 2:
        raise ValueError(f"label_review.folds: {k} folds; k-fold needs at least 2")
    groups = [
        sorted({path for _, path in members}, key=str)
        for members in group_images({"train": list(images)}, duplicate_groups)
    ]
    if len(groups) < k:
        raise ValueError(
            f"train has {len(groups)} leak-free group(s) of images, fewer than label_review.folds={k}; "
            f"set label_review.folds to at most {len(groups)}"
        )
    random.Random(seed).shuffle(groups)
    groups.sort(key=len, reverse=True)  # stable: equal sizes keep the seeded order
    members: list[list[Path]] = [[] for _ in range(k)]
    for group in groups:
        smallest = min(range(k), key=lambda i: (len(members[i]), i))
        members[smallest].extend(group)
    return [
        Fold(
            index=i + 1,
            k=k,
            train=sorted((p for j in range(k) if j != i for p in members[j]), key=str),
            holdout=sorted(members[i], key=str),
        )
        for i in range(k)
    ]


def write_fold_dataset(data_yaml: Path, fold: Fold, out_dir: Path) -> Path:
    """An image-list version of ``data_yaml`` (as rebalancing writes): train = the other folds,
    val = the held-out fold (only Ultralytics' final-epoch metrics read it). Nothing is copied."""
    meta = load_data_yaml(Path(data_yaml)).meta
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "train.txt", "".join(f"{p}\n" for p in fold.train))
    atomic_write_text(out_dir / "holdout.txt", "".join(f"{p}\n" for p in fold.holdout))
    config = {"train": "train.txt", "val": "holdout.txt", "nc": len(load_class_names(Path(data_yaml)))}
    config["names"] = meta["names"]
    return atomic_write_text(out_dir / "data.yaml", yaml.safe_dump(config, sort_keys=False))


def kfold_predictions(
    data_yaml: Path,
    out_dir: Path,
    *,
    start_weights: Path | str,
    train_args: dict[str, Any],
    duplicate_groups: Sequence[Sequence[Path]],
    k: int,
    imgsz: int,
    conf: float,
    store: Any = None,
    run_prefix: str = "",
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger] = log,
) -> OutOfFold:
    """Every train image of ``data_yaml`` predicted (at ``imgsz``, ``conf``) by the fold model that
    did not train on it. ``train_args`` are the Ultralytics arguments of every fold's training
    (``seed`` also shuffles the folds); fold ``i`` trains into ``out_dir/fold-i``, with checkpoints
    under ``run_prefix/fold-i`` in ``store`` when given. Writes ``out_dir/kfold.json``."""
    data_yaml, out_dir = Path(data_yaml), Path(out_dir)
    names = load_class_names(data_yaml)
    train = sorted((p.resolve() for p in resolve_split_images(data_yaml).get("train") or []), key=str)
    if not train:
        raise ValueError(f"{data_yaml}: no train images to score through k-fold models; set kfold_train: false")
    args = {**train_args, **FOLD_TRAIN_OVERRIDES}
    groups = [[Path(p).resolve() for p in group] for group in duplicate_groups]  # as the image lists
    folds = assign_folds(train, groups, k=k, seed=int(args.get("seed", 0)))
    labels = {im.path.resolve(): im for im in load_split_labels(data_yaml, "train")}
    images, predictions, models = [], [], []
    hashes: dict[Path, str] = {}
    for fold in folds:
        started = time.monotonic()
        fold_dir = out_dir / f"fold-{fold.index}"
        fold_yaml = write_fold_dataset(data_yaml, fold, fold_dir / "data")
        version = content_hash({"train": fold.train, "val": fold.holdout}, names, hashes)
        logger.info(
            "label review %s: training on %d train images, holding out %d (fold data %s)",
            fold.name,
            len(fold.train),
            len(fold.holdout),
            version,
        )
        reused = (fold_dir / "train" / COMPLETE_MARKER).exists()
        trained = fine_tune(
            weights=start_weights,
            data_yaml=fold_yaml,
            train_args=args,
            identity=RunIdentity.of(dataset_version=version, weights=start_weights, train_args=args),
            save_dir=fold_dir / "train",
            store=store,
            run_prefix=f"{run_prefix}/fold-{fold.index}",
            logger=logger,
        )
        fold_images = [labels[path] for path in fold.holdout]
        for image in fold_images:
            image.scored_by = fold.name
        predictions += predict_images(
            trained.last, [im.path for im in fold_images], imgsz=imgsz, conf=conf, num_classes=len(names)
        )
        images += fold_images
        models.append(
            FoldModel(
                fold=fold.index,
                k=k,
                weights=trained.last,
                weights_sha256=trained.last_sha256,
                data_yaml=fold_yaml,
                train_list=fold_dir / "data" / "train.txt",
                trained_images=len(fold.train),
                holdout_images=len(fold.holdout),
                epochs=trained.epochs_completed,
                reused=reused,
                wall_time_s=round(time.monotonic() - started, 1),
            )
        )
        logger.info(
            "label review %s: predicted %d held-out images in %.0f s%s",
            fold.name,
            len(fold_images),
            models[-1].wall_time_s,
            " (trained by an earlier attempt: reused)" if reused else "",
        )
    summary = {"k": k, "seed": int(args.get("seed", 0)), "folds": [m.model_dump(mode="json") for m in models]}
    atomic_write_json(out_dir / KFOLD_JSON, summary)
    return OutOfFold(images=images, predictions=predictions, summary=summary)
