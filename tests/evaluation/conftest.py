"""A real tiny Ultralytics training of real images, shared by the evaluation and selection tests."""

from __future__ import annotations

import stat
from collections import Counter
from pathlib import Path

import pytest

from tests.plugins.data import copy_subset

IMGSZ = 64


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def label_instances(split_dir: Path, names: list[str]) -> dict[str, int]:
    counts = Counter(
        int(line.split()[0])
        for f in (split_dir / "labels").glob("*.txt")
        for line in f.read_text().splitlines()
        if line.strip()
    )
    return {name: counts.get(i, 0) for i, name in enumerate(names)}


@pytest.fixture(scope="package")
def trained_run(real_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(run_dir, data_yaml): 2 epochs of yolo11n on 12 real images, a checkpoint per epoch.

    The dataset copy is made read-only afterwards (labels.cache from training removed) so the
    evaluations below run against a read-only source.
    """
    from ultralytics import YOLO

    root = tmp_path_factory.mktemp("selection")
    data_yaml = copy_subset(real_dataset, root / "data", {"train": 6, "val": 4, "test": 2})
    YOLO("yolo11n.yaml").train(
        data=str(data_yaml),
        imgsz=IMGSZ,
        epochs=2,
        batch=4,
        save_period=1,
        workers=0,
        plots=False,
        conf=0.25,  # as the guide's recipe did: training-time validation then differs from the protocol
        device="cpu",
        project=str(root / "runs"),
        name="train",
        exist_ok=True,
        verbose=False,
    )
    for cache in data_yaml.parent.rglob("*.cache"):
        cache.unlink()
    for path in [data_yaml.parent, *data_yaml.parent.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield root / "runs" / "train", data_yaml
    for path in [data_yaml.parent, *data_yaml.parent.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
