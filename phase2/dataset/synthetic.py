"""The embedded default: a small synthetic site-inspection dataset and its "phase 1" baseline.

`make run` without arguments needs data and starting weights that work offline on a 2-core
CPU. The scenes imitate the four real classes with shapes a from-scratch yolo11n learns in a
few minutes: grey rock clusters along a line (rock_toe), long thin diagonal concrete drains
(slope_drain), small dark framed rectangles (toe_drain, the rare minority) and clumps of
green blobs (vegetation) on a varied earth-tone ground.

Everything is drawn from numpy RNGs seeded per image, so a seed always gives byte-identical
files, and a split's images do not depend on the other splits' sizes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, field_validator

from phase2.dataset.layout import SPLITS
from phase2.infra.settings import PROJECT_ROOT

VAL_TOE_DRAIN_INSTANCES = 3
JPEG_QUALITY = 92
GENERATOR_VERSION = "1"

# Dry clay, sand, dark loam, ochre, grey silt: the ground colours of earthworks sites.
_EARTH_TONES = np.array(
    [(176, 138, 96), (196, 170, 128), (120, 92, 66), (170, 128, 70), (150, 140, 120), (140, 110, 80)],
    dtype=float,
)

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


# The scene drawn for each class (see the _draw_* functions); the settings file orders them into class ids.
DRAWN_CLASSES = frozenset({"rock_toe", "slope_drain", "toe_drain", "vegetation"})


class DemoSettings(BaseModel):
    """The measured demo choice: classes, dataset sizes, image size and the baseline's training.

    `baseline` holds Ultralytics train() arguments (besides data/model/project); the demo's
    fine-tune is the recipe configs/phase2-demo.yaml.
    """

    model_config = ConfigDict(extra="forbid")

    classes: tuple[str, ...] = Field(description="class names in class-id order; toe_drain is the minority")
    seed: int = 0
    n_train: int
    n_val: int
    n_test: int
    imgsz: int
    toe_drain_train_fraction: float = Field(description="share of train images holding one toe_drain")
    cpu_threads: int = 2
    baseline: dict[str, Any]

    @field_validator("classes")
    @classmethod
    def _drawable(cls, classes: tuple[str, ...]) -> tuple[str, ...]:
        if sorted(classes) != sorted(DRAWN_CLASSES):
            raise ValueError(f"classes must list each of {sorted(DRAWN_CLASSES)} once (in class-id order)")
        return classes


DEMO_SETTINGS_FILE = PROJECT_ROOT / "configs" / "demo" / "phase1-baseline.yaml"
DEMO_SETTINGS = DemoSettings.model_validate(yaml.safe_load(DEMO_SETTINGS_FILE.read_text()))
CLASSES = DEMO_SETTINGS.classes
ROCK_TOE, SLOPE_DRAIN, TOE_DRAIN, VEGETATION = (
    CLASSES.index(name) for name in ("rock_toe", "slope_drain", "toe_drain", "vegetation")
)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Earth-tone ground: a jittered base colour, soft large-scale shading, fine grain."""
    base = _EARTH_TONES[rng.integers(len(_EARTH_TONES))] + rng.uniform(-18, 18, 3)
    cells = int(rng.integers(3, 7))
    # Mostly brightness with a little tint, so the ground stays earth-coloured.
    coarse = rng.uniform(-1, 1, (cells, cells, 1)) * rng.uniform(10, 30) + rng.uniform(-6, 6, (cells, cells, 3))
    shading = Image.fromarray(((coarse + 128).clip(0, 255)).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    grain = rng.normal(0, rng.uniform(4, 10), (size, size, 1))
    pixels = base + (np.asarray(shading, dtype=float) - 128) + grain
    return pixels.clip(0, 255).astype(np.uint8)


def _clip_box(box: Box, size: int) -> Box:
    x0, y0, x1, y1 = box
    return max(0.0, x0), max(0.0, y0), min(float(size), x1), min(float(size), y1)


def _draw_rock_toe(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> Box:
    """Grey rocks strung along a gently sloping line, like riprap at the foot of a bank."""
    length = rng.uniform(0.3, 0.55) * size
    angle = rng.uniform(-0.35, 0.35)
    radius = rng.uniform(0.03, 0.05) * size
    cx0 = rng.uniform(radius, size - length * np.cos(angle) - radius)
    cy0 = rng.uniform(0.15 * size, 0.85 * size)
    xs, ys = [], []
    for t in np.linspace(0, 1, int(rng.integers(6, 11))):
        r = radius * rng.uniform(0.7, 1.2)
        x = cx0 + t * length * np.cos(angle) + rng.uniform(-0.3, 0.3) * r
        y = cy0 + t * length * np.sin(angle) + rng.uniform(-0.5, 0.5) * r
        grey = int(rng.integers(105, 185))
        draw.ellipse((x - r, y - r * 0.8, x + r, y + r * 0.8), fill=(grey, grey, grey - 6), outline=(60, 60, 58))
        xs += [x - r, x + r]
        ys += [y - r * 0.8, y + r * 0.8]
    return _clip_box((min(xs), min(ys), max(xs), max(ys)), size)


def _draw_slope_drain(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> Box:
    """A long, thin, pale concrete channel running diagonally down the slope."""
    dx, dy = rng.uniform(0.35, 0.7, 2) * size
    x0, y0 = rng.uniform(0.05 * size, size - dx - 0.05 * size), rng.uniform(0.05 * size, size - dy - 0.05 * size)
    if rng.random() < 0.5:  # either diagonal direction
        start, end = (x0, y0), (x0 + dx, y0 + dy)
    else:
        start, end = (x0 + dx, y0), (x0, y0 + dy)
    width = rng.uniform(0.025, 0.04) * size
    draw.line((start, end), fill=(70, 70, 72), width=int(round(width + 2)))
    shade = int(rng.integers(195, 235))
    draw.line((start, end), fill=(shade, shade, shade - 4), width=int(round(width)))
    half = width / 2 + 1
    return _clip_box((x0 - half, y0 - half, x0 + dx + half, y0 + dy + half), size)


def _draw_toe_drain(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> Box:
    """A small dark outlet in a pale concrete frame, at the foot of the slope."""
    w, h = rng.uniform(0.08, 0.12) * size, rng.uniform(0.06, 0.09) * size
    x0, y0 = rng.uniform(0.03 * size, size - w - 0.03 * size), rng.uniform(0.03 * size, size - h - 0.03 * size)
    frame = int(rng.integers(175, 215))
    draw.rectangle((x0, y0, x0 + w, y0 + h), fill=(frame, frame, frame - 5))
    inset = max(1.0, 0.2 * min(w, h))
    dark = int(rng.integers(10, 40))
    draw.rectangle((x0 + inset, y0 + inset, x0 + w - inset, y0 + h - inset), fill=(dark, dark, dark + 4))
    return _clip_box((x0, y0, x0 + w, y0 + h), size)


def _draw_vegetation(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> Box:
    """A clump of overlapping green blobs (shrubs, grass tufts)."""
    extent = rng.uniform(0.15, 0.28) * size
    cx, cy = rng.uniform(extent / 2, size - extent / 2, 2)
    xs, ys = [], []
    for _ in range(int(rng.integers(4, 9))):
        r = rng.uniform(0.2, 0.35) * extent
        x = float(np.clip(cx + rng.uniform(-0.5, 0.5) * (extent - 2 * r), r, size - r))
        y = float(np.clip(cy + rng.uniform(-0.5, 0.5) * (extent - 2 * r), r, size - r))
        green = (int(rng.integers(30, 80)), int(rng.integers(100, 170)), int(rng.integers(20, 60)))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=green)
        xs += [x - r, x + r]
        ys += [y - r, y + r]
    return _clip_box((min(xs), min(ys), max(xs), max(ys)), size)


_DRAWERS = {
    ROCK_TOE: _draw_rock_toe,
    SLOPE_DRAIN: _draw_slope_drain,
    TOE_DRAIN: _draw_toe_drain,
    VEGETATION: _draw_vegetation,
}
# Drawn large to small so small objects stay visible on top.
_DRAW_ORDER = (SLOPE_DRAIN, VEGETATION, ROCK_TOE, TOE_DRAIN)


def _overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller


def _scene(rng: np.random.Generator, size: int, toe_drains: int) -> tuple[Image.Image, list[tuple[int, Box]]]:
    """One image and its (class, box) objects; objects are re-placed until they barely overlap.

    Other classes may lose an object that finds no room, but the scene is redrawn until every
    requested toe_drain is in it: the minority counts are exact.
    """
    while True:
        counts = {
            ROCK_TOE: int(rng.choice([0, 1, 1, 2])),
            SLOPE_DRAIN: int(rng.choice([0, 1, 1, 2])),
            VEGETATION: int(rng.choice([0, 1, 1, 2])),
            TOE_DRAIN: toe_drains,
        }
        if sum(counts.values()) == 0:
            counts[int(rng.choice([ROCK_TOE, SLOPE_DRAIN, VEGETATION]))] = 1
        image = Image.fromarray(_background(rng, size))
        objects: list[tuple[int, Box]] = []
        for cls in _DRAW_ORDER:
            for _ in range(counts[cls]):
                # Each try draws on a scratch copy, so a rejected placement leaves no trace.
                for _attempt in range(30):
                    candidate = image.copy()
                    box = _DRAWERS[cls](ImageDraw.Draw(candidate), rng, size)
                    if all(_overlap(box, other) < 0.15 for _, other in objects):
                        image = candidate
                        objects.append((cls, box))
                        break
        if sum(cls == TOE_DRAIN for cls, _ in objects) == toe_drains:
            return image, objects


def _yolo_rows(objects: list[tuple[int, Box]], size: int) -> str:
    rows = []
    for cls, (x0, y0, x1, y1) in objects:
        cx, cy, w, h = (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size
        rows.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "\n".join(rows) + "\n"


def _toe_drain_images(rng: np.random.Generator, n_images: int, n_instances: int) -> set[int]:
    if n_instances > n_images:
        raise ValueError(f"cannot place {n_instances} toe_drain instances in {n_images} images (one per image)")
    return set(rng.choice(n_images, size=n_instances, replace=False).tolist())


def generate_synthetic_dataset(
    out_dir: Path,
    *,
    seed: int = 0,
    n_train: int,
    n_val: int,
    n_test: int,
    imgsz: int,
    toe_drain_train_fraction: float = 0.2,
) -> Path:
    """Write a YOLO-format synthetic dataset under `out_dir`; returns its data.yaml.

    Val holds exactly 3 toe_drain instances (the situation the Phase 2 guide started from);
    train holds one in `toe_drain_train_fraction` of its images, test one in a fifth of its
    images. Same arguments, same bytes.
    """
    if min(n_train, n_val, n_test) < 1:
        raise ValueError("each split needs at least one image")
    if n_val < VAL_TOE_DRAIN_INSTANCES:
        raise ValueError(f"n_val must be >= {VAL_TOE_DRAIN_INSTANCES} to hold the val toe_drain instances")
    if imgsz < 96:
        raise ValueError(f"imgsz must be >= 96 (got {imgsz}) so toe_drain boxes stay several pixels wide")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty: pass a new or empty directory for the synthetic dataset")
    # Built beside the target and renamed into place, so a crash never leaves a half dataset.
    final_dir, out_dir = out_dir, out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(out_dir, ignore_errors=True)
    toe_drain_counts = {
        "train": max(1, round(toe_drain_train_fraction * n_train)),
        "val": VAL_TOE_DRAIN_INSTANCES,
        "test": max(1, round(0.2 * n_test)),
    }
    instances = {split: [0] * len(CLASSES) for split in SPLITS}
    for split_index, (split, n_images) in enumerate(zip(SPLITS, (n_train, n_val, n_test), strict=True)):
        images_dir, labels_dir = out_dir / split / "images", out_dir / split / "labels"
        images_dir.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        with_toe_drain = _toe_drain_images(
            np.random.default_rng([seed, split_index]), n_images, toe_drain_counts[split]
        )
        for index in range(n_images):
            rng = np.random.default_rng([seed, split_index, index])
            image, objects = _scene(rng, imgsz, toe_drains=int(index in with_toe_drain))
            stem = f"{split}_{index:04d}"
            image.save(images_dir / f"{stem}.jpg", quality=JPEG_QUALITY, subsampling=0)
            (labels_dir / f"{stem}.txt").write_text(_yolo_rows(objects, imgsz))
            for cls, _ in objects:
                instances[split][cls] += 1
    data = {
        "train": "./train/images",
        "val": "./val/images",
        "test": "./test/images",
        "nc": len(CLASSES),
        "names": list(CLASSES),
    }
    (out_dir / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    _write_readme(out_dir, seed, imgsz, {"train": n_train, "val": n_val, "test": n_test}, instances)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if final_dir.exists():
        final_dir.rmdir()  # empty, checked above
    out_dir.rename(final_dir)
    return final_dir / "data.yaml"


def generate_demo_dataset(out_dir: Path, *, settings: DemoSettings = DEMO_SETTINGS) -> Path:
    """The demo's dataset as `settings` describe it; returns its data.yaml."""
    return generate_synthetic_dataset(
        out_dir,
        seed=settings.seed,
        n_train=settings.n_train,
        n_val=settings.n_val,
        n_test=settings.n_test,
        imgsz=settings.imgsz,
        toe_drain_train_fraction=settings.toe_drain_train_fraction,
    )


def _write_readme(
    out_dir: Path, seed: int, imgsz: int, images: dict[str, int], instances: dict[str, list[int]]
) -> None:
    header = "| split | images | " + " | ".join(CLASSES) + " |"
    rule = "|-------|-------:|" + "---:|" * len(CLASSES)
    rows = [f"| {s} | {images[s]} | " + " | ".join(str(n) for n in instances[s]) + " |" for s in SPLITS]
    text = f"""# Synthetic site-inspection demo data

SYNTHETIC: every image was drawn by `tasks/synthetic.py` (generator version {GENERATOR_VERSION},
seed {seed}, {imgsz}x{imgsz} JPEG). No photograph and no third-party data is included, so no
attribution applies. It stands in for the real site-inspection dataset in the offline demo
(`make run` with no arguments); metrics on it say nothing about real-world performance.

Classes, in order: {", ".join(CLASSES)}. toe_drain is the minority, with exactly
{VAL_TOE_DRAIN_INSTANCES} validation instances.

{header}
{rule}
{chr(10).join(rows)}
"""
    (out_dir / "README.md").write_text(text)


def use_cpu_threads(model: Any, threads: int) -> None:
    """Make an Ultralytics trainer use `threads` CPU threads.

    Ultralytics' select_device() resets torch to cpu_count - 1 threads (1 on 2 cores) when the
    trainer is built, overriding OMP_NUM_THREADS; this callback runs right after that.
    """
    import torch

    model.add_callback("on_pretrain_routine_start", lambda trainer: torch.set_num_threads(threads))


def train_demo_model(
    model_source: str | Path,
    data_yaml: Path,
    out_dir: Path,
    name: str,
    train_args: dict[str, Any],
    *,
    settings: DemoSettings = DEMO_SETTINGS,
) -> Path:
    """Train `model_source` (a model .yaml or weights) on `data_yaml` the demo's way: on the CPU with
    the settings' threads, seeded and deterministic, into `out_dir`/`name`; returns its best.pt.

    Call phase2.infra.settings.configure_environment() first (offline Ultralytics).
    """
    from ultralytics import YOLO

    from phase2.training.checkpoints import verify_checkpoint

    if str(model_source).endswith(".pt"):
        verify_checkpoint(model_source)  # a safe load first: Ultralytics unpickles fully
    model = YOLO(str(model_source))
    use_cpu_threads(model, settings.cpu_threads)
    demo_defaults = {
        "imgsz": settings.imgsz,
        "workers": 0,
        "device": "cpu",
        "plots": False,
        "seed": settings.seed,
        "deterministic": True,
    }
    model.train(
        **(demo_defaults | train_args),
        data=str(Path(data_yaml).resolve()),
        project=str(Path(out_dir).resolve()),
        name=name,
        exist_ok=True,
    )
    if model.trainer is None:
        raise RuntimeError(f"{name} training did not start a trainer")
    best = Path(model.trainer.best)
    if not best.is_file():
        raise RuntimeError(f"{name} training wrote no best.pt under {best.parent}")
    return best


def train_baseline(data_yaml: Path, out_dir: Path, *, settings: DemoSettings = DEMO_SETTINGS) -> Path:
    """Train the from-scratch "phase 1" yolo11n on `data_yaml`; returns its best.pt."""
    return train_demo_model("yolo11n.yaml", data_yaml, out_dir, "baseline", settings.baseline, settings=settings)
