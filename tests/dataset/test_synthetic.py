"""The embedded demo dataset: deterministic, YOLO-valid, the right minority, and learnable."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import imagehash
import pytest
import yaml
from PIL import Image

from phase2.dataset.synthetic import DEMO_SETTINGS, generate_synthetic_dataset

CLASS_NAMES = DEMO_SETTINGS.classes

SMALL = dict(n_train=12, n_val=6, n_test=4, imgsz=96)


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _labels(root: Path, split: str) -> list[list[str]]:
    return [
        line.split() for f in sorted((root / split / "labels").glob("*.txt")) for line in f.read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "data", seed=0, **SMALL)


def test_same_seed_gives_byte_identical_files(small_dataset, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "again", seed=0, **SMALL)
    first, second = _digests(small_dataset.parent), _digests(again.parent)
    n_images = SMALL["n_train"] + SMALL["n_val"] + SMALL["n_test"]
    assert len(first) == 2 * n_images + 2  # image + label each, data.yaml, README.md
    assert first == second


def test_other_seed_gives_other_images(small_dataset, tmp_path):
    other = generate_synthetic_dataset(tmp_path / "other", seed=1, **SMALL)
    first, second = _digests(small_dataset.parent), _digests(other.parent)
    changed = [k for k in first if k.endswith(".jpg") and first[k] != second[k]]
    assert len(changed) == sum(SMALL[k] for k in ("n_train", "n_val", "n_test"))


def test_data_yaml_names_classes_in_order_with_relative_splits(small_dataset):
    data = yaml.safe_load(small_dataset.read_text())
    assert data["names"] == list(CLASS_NAMES)
    assert data["nc"] == 4
    for split in ("train", "val", "test"):
        assert not Path(data[split]).is_absolute()
        assert (small_dataset.parent / data[split]).is_dir()
    assert "SYNTHETIC" in (small_dataset.parent / "README.md").read_text()


def test_val_holds_exactly_three_toe_drain_and_toe_drain_is_the_minority(small_dataset):
    root = small_dataset.parent
    toe_drain = CLASS_NAMES.index("toe_drain")
    val_classes = [int(row[0]) for row in _labels(root, "val")]
    assert val_classes.count(toe_drain) == 3
    train_counts = [sum(int(r[0]) == c for r in _labels(root, "train")) for c in range(4)]
    assert 0 < train_counts[toe_drain] < min(n for c, n in enumerate(train_counts) if c != toe_drain)


def test_images_decode_and_labels_are_valid_yolo_rows(small_dataset):
    root = small_dataset.parent
    for split in ("train", "val", "test"):
        images = sorted((root / split / "images").glob("*.jpg"))
        labels = sorted((root / split / "labels").glob("*.txt"))
        assert [p.stem for p in images] == [p.stem for p in labels]
        assert len(images) == SMALL[f"n_{split}"]
        for image_path in images:
            with Image.open(image_path) as image:
                image.load()  # full decode, not just the header
                assert image.size == (SMALL["imgsz"], SMALL["imgsz"])
        for row in _labels(root, split):
            assert len(row) == 5
            assert row[0] in {"0", "1", "2", "3"}
            cx, cy, w, h = map(float, row[1:])
            assert 0 < w <= 1 and 0 < h <= 1
            assert cx - w / 2 + 1e-6 >= 0 and cx + w / 2 - 1e-6 <= 1
            assert cy - h / 2 + 1e-6 >= 0 and cy + h / 2 - 1e-6 <= 1
            # toe_drain, the smallest class, still spans several pixels
            assert min(w, h) * SMALL["imgsz"] >= 4


def test_no_two_images_are_identical_or_near_duplicates(tmp_path):
    data_yaml = generate_synthetic_dataset(tmp_path / "d", seed=0, n_train=40, n_val=10, n_test=6, imgsz=96)
    paths = sorted(data_yaml.parent.rglob("*.jpg"))
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}) == len(paths)
    hashes = [imagehash.phash(Image.open(p)) for p in paths]
    assert min(a - b for a, b in itertools.combinations(hashes, 2)) > 6


def test_classes_are_data_the_generator_can_draw():
    from phase2.dataset.synthetic import DemoSettings

    settings = DEMO_SETTINGS.model_dump()
    with pytest.raises(ValueError, match="classes must list each of"):
        DemoSettings.model_validate(settings | {"classes": [*CLASS_NAMES[:3], "crack"]})


def test_rejects_a_val_split_too_small_for_the_minority(tmp_path):
    with pytest.raises(ValueError, match="n_val must be >= 3"):
        generate_synthetic_dataset(tmp_path / "d", n_train=4, n_val=2, n_test=1, imgsz=96)


def test_refuses_a_non_empty_target_and_leaves_it_alone(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic_dataset(target, n_train=4, n_val=3, n_test=1, imgsz=96)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_train_baseline_returns_the_trained_best_pt(tmp_path):
    from phase2.dataset.synthetic import train_baseline
    from phase2.training.checkpoints import load_checkpoint

    tiny = DEMO_SETTINGS.model_copy(update=dict(imgsz=96, baseline=dict(epochs=1, batch=4, nbs=4, mosaic=0.0)))
    data_yaml = generate_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, n_test=1, imgsz=96)
    best = train_baseline(data_yaml, tmp_path / "runs", settings=tiny)
    assert best == tmp_path / "runs" / "baseline" / "weights" / "best.pt"
    checkpoint = load_checkpoint(best)
    assert checkpoint["train_args"]["imgsz"] == 96
    assert list(checkpoint["model"].names.values()) == list(CLASS_NAMES)


@pytest.mark.slow
def test_demo_recipe_learns_the_scenes_to_map50_half(tmp_path):
    """The demo as `make run` does it: from-scratch baseline, then fine-tune; val mAP50 >= 0.5."""
    from ultralytics import YOLO

    from phase2.dataset.synthetic import generate_demo_dataset, train_baseline, train_demo_model
    from phase2.training.recipe import load_recipe

    s = DEMO_SETTINGS
    data_yaml = generate_demo_dataset(tmp_path / "data")
    baseline = train_baseline(data_yaml, tmp_path / "runs")
    recipe = load_recipe("phase2-demo").train.ultralytics_kwargs(s.imgsz)
    finetune_args = recipe | {"device": "cpu", "plots": False, "save_period": -1}  # the CPU, no extra files
    finetuned = train_demo_model(baseline, data_yaml, tmp_path / "runs", "finetune", finetune_args)
    metrics = YOLO(str(finetuned)).val(
        data=str(data_yaml), imgsz=s.imgsz, device="cpu", plots=False, project=str(tmp_path / "runs"), name="val"
    )
    assert metrics.box.map50 >= 0.5
