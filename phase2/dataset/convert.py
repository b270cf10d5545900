"""A copy of a dataset whose polygon (segment) labels are boxes: what the LBL_SEGMENT fix runs.

Ultralytics finds a label beside its image (last ``/images/`` -> ``/labels/``), so converted
labels need their images beside them: the images are copied (never linked: training may rewrite
a damaged JPEG in place), the labels converted with :func:`convert_segment_labels`, and a
data.yaml with one image list per split (``./`` entries, relative to the copy) is written last.
The source is only read.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from phase2.dataset.labels import convert_segment_labels
from phase2.dataset.layout import is_within, label_path_for, load_class_names, load_data_yaml, resolve_split_images
from phase2.infra.files import atomic_write_text


class ConvertError(ValueError):
    """The output directory can't be used; the message names it and the fix."""

    exit_code = 2  # a usage mistake (see phase2/cli/base.py)


@dataclass(frozen=True)
class ConvertResult:
    data_yaml: Path
    images: int
    label_files: int
    converted_rows: int


def check_new_out_dir(out_dir: Path, source_root: Path) -> None:
    """Refuse an --out that is a file, a non-empty directory, or inside the source dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConvertError(f"--out {out_dir} is an existing file; give a new or empty directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConvertError(f"--out {out_dir} is not empty; give a new or empty directory (nothing is overwritten)")
    if is_within(out_dir, source_root):
        raise ConvertError(
            f"--out {out_dir} is inside the source dataset {source_root}; choose a directory outside it "
            "(the source is never modified)"
        )


def convert_segment_dataset(data_yaml: Path, out_dir: Path) -> ConvertResult:
    """Copy the dataset of `data_yaml` to `out_dir` with every polygon label row turned into its box.

    Raises DatasetConfigError when data.yaml or a split can't be resolved and ConvertError when
    `out_dir` exists and is not empty, or lies inside the source."""
    data_yaml, out_dir = Path(data_yaml).resolve(), Path(out_dir).resolve()
    class_names = load_class_names(data_yaml)
    meta = load_data_yaml(data_yaml).meta
    splits = {split: [str(p) for p in paths] for split, paths in resolve_split_images(data_yaml).items()}
    every = sorted({p for paths in splits.values() for p in paths})
    source_root = Path(os.path.commonpath([str(data_yaml.parent), *(os.path.dirname(p) for p in every)]))
    check_new_out_dir(out_dir, source_root)

    label_files = converted = 0
    for image in every:
        copy = out_dir / os.path.relpath(image, source_root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(image, copy)
        label = label_path_for(image)
        if label.is_file():
            label_files += 1
            try:
                converted += convert_segment_labels(label, label_path_for(copy))
            except (UnicodeDecodeError, ValueError):  # not a label it can read: copied as is, validate reports it
                shutil.copy2(label, label_path_for(copy))
    for split, paths in splits.items():
        entries = "".join(f"./{os.path.relpath(p, source_root)}\n" for p in paths)
        atomic_write_text(out_dir / f"{split}.txt", entries)
    new_yaml = {split: f"{split}.txt" for split in splits} | {"nc": len(class_names), "names": meta["names"]}
    atomic_write_text(out_dir / "data.yaml", yaml.safe_dump(new_yaml, sort_keys=False))
    return ConvertResult(out_dir / "data.yaml", len(every), label_files, converted)
