"""The real dataset (read-only, path from one setting) and small copies of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from phase2.infra.settings import configure_environment, real_dataset_dir

# A recipe small enough for tests: 2 epochs at 64 px on a handful of images.
TINY_RECIPE = {
    "name": "tiny",
    "train": {
        "model": "baseline",
        "epochs": 2,
        "imgsz": 64,
        "batch": 4,
        "workers": 0,
        "device": "cpu",
        "optimizer": "AdamW",
        "lr0": 0.001,
        "warmup_bias_lr": 0.001,
        "warmup_epochs": 0,
        "mosaic": 0.0,
        "close_mosaic": 0,
        "save_period": 1,
        "plots": True,
    },
    "rebalance": {"targets": {"toe_drain": 2}},
    "promotion": {"absolute_min": {"mAP50": 0.0}},
}


@pytest.fixture(scope="session", autouse=True)
def phase2_state(tmp_path_factory) -> Path:
    """Every test session gets its own state dir: nothing lands in the user's home."""
    state = Path(os.environ.get("PHASE2_TEST_STATE_DIR") or tmp_path_factory.mktemp("state"))
    os.environ["PHASE2_STATE_DIR"] = str(state)
    os.environ.pop("WANDB_API_KEY", None)
    configure_environment(state)
    return state


@pytest.fixture(scope="session")
def real_dataset() -> Path:
    """../shared/datasets/site-inspection (or $PHASE2_REAL_DATASET). Never write into it."""
    root = real_dataset_dir()
    if not (root / "data.yaml").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"real dataset missing at {root} (set PHASE2_REAL_DATASET)")
        pytest.skip(f"real dataset not found at {root}; set PHASE2_REAL_DATASET to run this test")
    return root


def copy_subset(src: Path, dst: Path, per_split: dict[str, int], prefer_class: int | None = 2) -> Path:
    """Copy the first N images (+labels) of each split, images with `prefer_class` first.

    Deterministic (sorted names). Returns the new data.yaml path.
    """
    import yaml

    meta = yaml.safe_load((src / "data.yaml").read_text())
    for split, n in per_split.items():
        labels = src / split / "labels"
        images = sorted(
            (src / split / "images").iterdir(),
            key=lambda img: (not _has_class(labels / (img.stem + ".txt"), prefer_class), img.name),
        )
        (dst / split / "images").mkdir(parents=True, exist_ok=True)
        (dst / split / "labels").mkdir(parents=True, exist_ok=True)
        for img in images[:n]:
            shutil.copy2(img, dst / split / "images" / img.name)
            label = src / split / "labels" / (img.stem + ".txt")
            if label.exists():
                shutil.copy2(label, dst / split / "labels" / label.name)
    out = {
        "train": "./train/images",
        "val": "./val/images",
        "test": "./test/images",
        "nc": meta["nc"],
        "names": meta["names"],
    }
    (dst / "data.yaml").write_text(yaml.safe_dump(out, sort_keys=False))
    return dst / "data.yaml"


def _has_class(label: Path, class_id: int | None) -> bool:
    if class_id is None or not label.exists():
        return False
    return any(line.split()[:1] == [str(class_id)] for line in label.read_text().splitlines())


@pytest.fixture(scope="session")
def seed_guide(real_dataset) -> Path:
    """The user's REPRODUCTION_GUIDE.md, next to the real dataset (../../seed/ from it)."""
    guide = Path(os.environ.get("PHASE2_SEED_GUIDE") or real_dataset.parents[1] / "seed" / "REPRODUCTION_GUIDE.md")
    if not guide.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"reproduction guide missing at {guide} (set PHASE2_SEED_GUIDE)")
        pytest.skip(f"reproduction guide not found at {guide}; set PHASE2_SEED_GUIDE to run this test")
    return guide


@pytest.fixture
def small_real_dataset(real_dataset, tmp_path) -> Path:
    """A handful of real images per split, in a temp dir (writable); returns data.yaml."""
    return copy_subset(real_dataset, tmp_path / "site-small", {"train": 8, "val": 4, "test": 3})
