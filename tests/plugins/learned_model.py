"""A small model that has learned something on the real data, trained once per test session.

A YOLO11n trained from scratch until it reproduces the labels of 10 real val images (128 px,
100 epochs, ~60 s on 2 cores). Its boxes are confident and depend on the image: it ranks
planted label errors (tests/evaluation/test_label_review.py) and gives export parity
(tests/deploy/) a model whose mAP is far from 0, so a lossy export shows up as a gap.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.plugins.data import copy_subset

LEARNED_IMGSZ = 128
LEARNED_EPOCHS = 100
LEARNED_IMAGES = 10
# No augmentation, small batches with a step each (nbs = batch), a high learning rate: the
# model learns these images' labels.
MEMORIZE = {
    "imgsz": LEARNED_IMGSZ,
    "epochs": LEARNED_EPOCHS,
    "batch": 2,
    "nbs": 2,
    "workers": 0,
    "device": "cpu",
    "val": False,
    "plots": False,
    "optimizer": "AdamW",
    "lr0": 0.002,
    "warmup_epochs": 0,
    "mosaic": 0.0,
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.0,
    "fliplr": 0.0,
    "scale": 0.0,
    "translate": 0.0,
    "erasing": 0.0,
    "seed": 0,
    "exist_ok": True,
    "verbose": False,
}


def val_copy(real_dataset: Path, dst: Path, n_images: int = LEARNED_IMAGES) -> Path:
    """N real val images with their labels, as both the train and the val split of a dataset."""
    data_yaml = copy_subset(real_dataset, dst, {"val": n_images})
    config = yaml.safe_load(data_yaml.read_text())
    data_yaml.write_text(yaml.safe_dump({**config, "train": "./val/images", "test": None}, sort_keys=False))
    return data_yaml


@pytest.fixture(scope="session")
def learned_model(real_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(weights, data_yaml): the model described above and the dataset it learned (shared by the
    whole session: copy it before changing anything)."""
    from ultralytics import YOLO

    root = tmp_path_factory.mktemp("learned-model")
    data_yaml = val_copy(real_dataset, root / "clean")
    YOLO("yolo11n.yaml").train(data=str(data_yaml), project=str(root / "runs"), name="memorize", **MEMORIZE)
    return root / "runs" / "memorize" / "weights" / "last.pt", data_yaml
