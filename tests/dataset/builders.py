"""Small generated datasets for the dataset tests (and the reliability tests that break them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

CLASS_NAMES = ("rock_toe", "slope_drain", "toe_drain", "vegetation")
MINORITY_CLASS = "toe_drain"
LAYOUT = {"train": 3, "val": 2, "test": 1}


def noise_jpeg(path: Path, seed: int, size: tuple[int, int] = (64, 64), **save) -> Path:
    """Smooth random blobs (upscaled 8x8 noise): photo-like spectra, so phash behaves as on photos."""
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)
    image.save(path, **({"format": "JPEG", "quality": 90} | save))
    return path


def make_dataset(root: Path) -> Path:
    """A valid dataset: every class present, class 2 (toe_drain) in val."""
    seed = 0
    for split, n in LAYOUT.items():
        for i in range(n):
            seed += 1
            noise_jpeg(root / split / "images" / f"{split}{i}.jpg", seed)
            label = root / split / "labels" / f"{split}{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(f"{seed % 4} 0.5 0.5 0.3 0.2\n2 0.25 0.25 0.2 0.2\n")
    meta = {
        "train": "./train/images",
        "val": "./val/images",
        "test": "./test/images",
        "nc": 4,
        "names": list(CLASS_NAMES),
    }
    (root / "data.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return root / "data.yaml"


def set_yaml(root: Path, text: str) -> None:
    (root / "data.yaml").write_text(text)


def edit_yaml(root: Path, **changes) -> None:
    meta = yaml.safe_load((root / "data.yaml").read_text())
    meta.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        meta.pop(key)
    (root / "data.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def yaml_line(root: Path, key: str) -> int:
    return next(
        i for i, line in enumerate((root / "data.yaml").read_text().splitlines(), 1) if line.startswith(f"{key}:")
    )


def phase2(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed `phase2` command in a subprocess, run from `cwd` with its own state dir (plus `env`;
    PHASE2_DATA_ROOTS only when given)."""
    environ = {k: v for k, v in os.environ.items() if k != "PHASE2_DATA_ROOTS"}
    environ |= {"PHASE2_STATE_DIR": str(cwd / ".phase2-state")} | env
    command = [str(Path(sys.executable).with_name("phase2")), *args]
    return subprocess.run(command, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300)
