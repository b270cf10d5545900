"""Dataset validation: the first stage of the flow decides whether training may run.

Everything here only reads the dataset (no ``labels.cache``, no re-saved JPEGs). Each defect
becomes a :class:`Finding` with a stable code, a severity, the file and line, and a one-line fix;
a malformed dataset never crashes the validator, it produces findings.

Splits are resolved the way Ultralytics 8.4 resolves them (``check_det_dataset`` +
``BaseDataset.get_img_files``), so what we validate is exactly what training would read.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import itertools
import json
import math
import os
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import simplejpeg
import yaml
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, PrivateAttr

from phase2.infra.settings import CLASS_NAMES, MINORITY_CLASS

# Same set as ultralytics.data.utils.IMG_FORMATS (kept here: importing ultralytics costs ~1 s).
IMG_FORMATS = frozenset(
    {"avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm"}
)
SPLITS = ("train", "val", "test")
PHASH_SIDE = 32  # imagehash.phash: hash_size 8 x highfreq_factor 4
MODEL_STRIDE = 32  # largest YOLO11 stride: imgsz must be a multiple of it
COORD_TOLERANCE = 0.01  # Ultralytics accepts normalised coordinates up to 1.01
MIN_IMAGE_SIDE = 10  # Ultralytics rejects images below 10 px
# PIL's own default limit; set explicitly because Ultralytics may set Image.MAX_IMAGE_PIXELS = None.
MAX_IMAGE_PIXELS = 89_478_485
PIL_FORMAT_EXTENSIONS = {
    "JPEG": {"jpg", "jpeg"},
    "MPO": {"jpg", "jpeg", "mpo"},
    "PNG": {"png"},
    "BMP": {"bmp"},
    "TIFF": {"tif", "tiff", "dng"},
    "WEBP": {"webp"},
    "JPEG2000": {"jp2"},
    "AVIF": {"avif"},
    "HEIF": {"heic", "heif"},
}


class Severity(StrEnum):
    error = "error"
    warning = "warning"
    info = "info"


# code -> (severity, default one-line fix). Codes are stable: tests, allow-lists and users rely on them.
CODES: dict[str, tuple[Severity, str]] = {
    "YAML_UNREADABLE": (Severity.error, "make the data.yaml path point to a readable .yaml/.yml file"),
    "YAML_PARSE": (Severity.error, "fix the YAML syntax at the given line"),
    "YAML_NOT_MAPPING": (Severity.error, "the data.yaml must be a mapping with train/val/nc/names keys"),
    "YAML_KEY_TYPE": (Severity.error, "give the key the type Ultralytics expects (see message)"),
    "YAML_SPLIT_KEY_MISSING": (Severity.error, "add the missing 'train:'/'val:' key (a folder or .txt list of images)"),
    "YAML_VALIDATION_KEY": (Severity.info, "rename 'validation:' to 'val:' (Ultralytics renames it silently)"),
    "YAML_NAMES_MISSING": (Severity.error, "add 'names:' listing the class names in class-id order"),
    "YAML_NC_NOT_INT": (Severity.error, "set 'nc:' to an integer equal to the number of names"),
    "YAML_NC_MISMATCH": (Severity.error, "set 'nc:' to len(names) or fix the names list"),
    "YAML_NAMES_INVALID": (Severity.error, "names must be a list, or a dict with keys 0..nc-1"),
    "YAML_NAMES_DUPLICATE": (Severity.error, "give every class a unique name"),
    "YAML_NAMES_EXPECTED": (Severity.error, "list exactly the recipe's class names, in the recipe's order"),
    "YAML_PATH_RELATIVE": (
        Severity.warning,
        "make 'path:' absolute or remove it (then paths resolve against the yaml's folder)",
    ),
    "YAML_PATH_ESCAPES_ROOT": (Severity.error, "keep every split inside the dataset root (no '..' out of it)"),
    "SPLIT_MISSING": (Severity.error, "create the folder/list or fix the split path in data.yaml"),
    "SPLIT_EMPTY": (
        Severity.error,
        "put images in the split (allowed formats: " + ", ".join(sorted(IMG_FORMATS)) + ")",
    ),
    "SPLIT_LIST_UNREADABLE": (Severity.error, "a split .txt list must be UTF-8 text, one image path per line"),
    "SPLIT_LIST_ENTRY_IGNORED": (
        Severity.warning,
        "list only image paths with an allowed extension, no trailing spaces",
    ),
    "SPLIT_LIST_CWD_RELATIVE": (
        Severity.warning,
        "start relative entries with './' (relative to the list) or use absolute paths",
    ),
    "IMG_OUTSIDE_ROOT": (Severity.error, "copy the image into the dataset root and list it from there"),
    "IMG_SYMLINK_ESCAPES": (Severity.error, "replace the symlink by a copy of the file inside the dataset root"),
    "IMG_MISSING": (Severity.error, "remove the entry from the split list or restore the image"),
    "IMG_UNREADABLE": (Severity.error, "make the file readable (permissions) or remove it"),
    "IMG_EMPTY": (Severity.error, "remove the zero-byte file or replace it with the real image"),
    "IMG_NOT_IMAGE": (Severity.error, "remove the file or replace it with a real image"),
    "IMG_FORMAT": (Severity.error, "convert the image to JPEG or PNG"),
    "IMG_EXT_MISMATCH": (Severity.warning, "rename the file to the extension of its real format"),
    "IMG_DECOMPRESSION_BOMB": (
        Severity.error,
        "downscale the image (its pixel count exceeds the decompression-bomb guard)",
    ),
    "IMG_CORRUPT": (Severity.error, "re-export the image: it does not decode completely"),
    "IMG_JPEG_NO_EOI": (Severity.error, "re-encode the JPEG (Ultralytics would rewrite it in place during training)"),
    "IMG_TOO_SMALL": (Severity.error, "remove the image or re-export it at >= 10 px per side"),
    "IMG_EXIF_ORIENTATION": (Severity.info, "bake the rotation into the pixels (labels must match the rotated image)"),
    "IMG_NO_LABEL": (Severity.info, "add label files if these images are not meant to be background"),
    "LBL_SPLIT_UNLABELLED": (Severity.error, "put labels in the 'labels' folder beside 'images' (same stem, .txt)"),
    "LBL_ORPHAN": (Severity.error, "delete the label or restore its image (same stem under images/)"),
    "LBL_UNREADABLE": (Severity.error, "make the label a readable UTF-8 text file"),
    "LBL_FIELD_COUNT": (Severity.error, "each row is 'class cx cy w h' (5 fields)"),
    "LBL_NOT_NUMERIC": (Severity.error, "every field must be a number"),
    "LBL_NOT_FINITE": (Severity.error, "replace nan/inf with real coordinates"),
    "LBL_CLASS_NOT_INT": (Severity.error, "the class id must be an integer"),
    "LBL_CLASS_RANGE": (Severity.error, "use a class id in [0, nc) or add the class to names"),
    "LBL_BOX_NONPOSITIVE": (Severity.error, "width and height must be > 0; delete the degenerate box"),
    "LBL_COORD_RANGE": (Severity.error, "normalise coordinates to [0, 1] (divide pixels by image width/height)"),
    "LBL_BOX_OUTSIDE": (Severity.error, "clip the box to the image"),
    "LBL_SEGMENT": (
        Severity.error,
        "convert polygons explicitly with convert_segment_labels() into a copy, or label boxes",
    ),
    "LBL_MIXED_FORMATS": (Severity.error, "use one format per file: all boxes or all polygons"),
    "LBL_DUPLICATE_ROW": (Severity.warning, "delete the repeated row (Ultralytics drops it silently)"),
    "LBL_BOX_TINY": (Severity.warning, "train at a larger imgsz, or drop boxes too small to learn"),
    "DUP_CROSS_SPLIT": (Severity.error, "keep each photograph in exactly one split (the rebalance step can do it)"),
    "DUP_EXACT_WITHIN": (Severity.warning, "delete the extra copies: they over-weight one photograph"),
    "DUP_NEAR_WITHIN": (Severity.info, "check whether these near-identical images should all stay"),
    "IMGSZ_ABOVE_NATIVE": (Severity.warning, "train at the recommended imgsz: larger only upsamples the images"),
    "MINORITY_VAL_SHORTFALL": (Severity.warning, "move minority-class images into val (rebalance) to reach the target"),
}


class DatasetConfigError(ValueError):
    """data.yaml or a split cannot be resolved; the message names the file and the fix."""

    def __init__(self, code: str, file: Path | str, message: str, line: int | None = None, fix: str | None = None):
        self.code, self.file, self.line = code, str(file), line
        self.fix = fix or CODES[code][1]
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {message} [{code}]. Fix: {self.fix}")


class DatasetInvalid(RuntimeError):
    """The dataset has errors that are not allow-listed; the message lists the top findings."""

    def __init__(self, message: str, findings: list[Finding]):
        super().__init__(message)
        self.findings = findings


class Finding(BaseModel):
    code: str
    severity: Severity
    file: str | None = None
    line: int | None = None
    message: str
    fix: str

    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.line else (self.file or "-")


def _finding(
    code: str, file: Path | str | None, message: str, line: int | None = None, fix: str | None = None
) -> Finding:
    severity, default_fix = CODES[code]
    return Finding(
        code=code,
        severity=severity,
        file=None if file is None else str(file),
        line=line,
        message=message,
        fix=fix or default_fix,
    )


class GroupMember(BaseModel):
    split: str
    image: Path


class DuplicateGroup(BaseModel):
    kind: Literal["exact", "near"]
    members: list[GroupMember]
    cross_split: bool


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


class ValidationReport(BaseModel):
    data_yaml: Path
    dataset_root: Path | None
    imgsz: int
    phash_threshold: int
    images_checked: bool
    class_names: list[str]
    findings: list[Finding]
    splits: list[SplitStats]
    classes: list[ClassStats]
    duplicate_groups: list[DuplicateGroup]
    native_sizes: list[NativeSize]
    recommended_imgsz: int | None
    compute_saved_fraction: float | None
    minority: MinorityStats | None
    _files: pd.DataFrame | None = PrivateAttr(default=None)

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.error]

    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.warning]

    def files_table(self) -> pd.DataFrame:
        """One row per image (split, paths, size, format, hashes, instances, finding codes)."""
        return self._files if self._files is not None else pd.DataFrame(columns=list(_FILE_COLUMNS))

    def summary_markdown(self, top: int = 20) -> str:
        counts = Counter((f.severity.value, f.code) for f in self.findings)
        lines = [
            f"# Dataset validation: `{self.data_yaml}`",
            "",
            f"**{len(self.errors())} errors, {len(self.warnings())} warnings**, "
            f"{sum(c for (s, _), c in counts.items() if s == 'info')} info.",
            "",
            "| split | images | labelled | background | instances | per image |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {s.split} | {s.images} | {s.labelled_images} | {s.background_images} | {s.instances} "
            f"| {s.instances_per_image:.2f} |"
            for s in self.splits
        ]
        if self.classes:
            splits = [s.split for s in self.splits]
            lines += ["", "| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
            by_key = {(c.split, c.class_name): c.instances for c in self.classes}
            lines += [
                f"| {n} | " + " | ".join(str(by_key.get((s, n), 0)) for s in splits) + " |" for n in self.class_names
            ]
        if self.native_sizes:
            sizes = ", ".join(f"{n.width}x{n.height} ({n.images})" for n in self.native_sizes)
            lines += [
                "",
                f"Native sizes: {sizes}. Recommended imgsz: **{self.recommended_imgsz}** "
                f"(recipe {self.imgsz}; compute saved {100 * (self.compute_saved_fraction or 0):.0f}%).",
            ]
        if self.minority:
            m = self.minority
            lines += [
                "",
                f"Minority class `{m.class_name}` in val: {m.val_instances} instances in {m.val_images} "
                f"images (target {m.val_target}, shortfall {m.shortfall}).",
            ]
        cross = [g for g in self.duplicate_groups if g.cross_split]
        lines += ["", f"Duplicate groups: {len(self.duplicate_groups)} ({len(cross)} spanning splits)."]
        lines += ["", "| code | severity | count |", "|---|---|---:|"]
        lines += [f"| {code} | {sev} | {n} |" for (sev, code), n in sorted(counts.items())]
        ranked = sorted(self.findings, key=lambda f: list(Severity).index(f.severity))[:top]
        if ranked:
            lines += ["", "## Top findings", "", "| severity | code | where | message | fix |", "|---|---|---|---|---|"]
            lines += [
                f"| {f.severity} | {f.code} | `{f.location()}` | {_md(f.message)} | {_md(f.fix)} |" for f in ranked
            ]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> dict[str, Path]:
        """report.json, files.csv, summary.md, class_counts.png in `out_dir` (never the dataset)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {name: out_dir / name for name in ("report.json", "files.csv", "summary.md", "class_counts.png")}
        _atomic_write_text(paths["report.json"], self.model_dump_json(indent=2))
        tmp_csv = paths["files.csv"].with_suffix(".csv.tmp")
        self.files_table().to_csv(tmp_csv, index=False)
        os.replace(tmp_csv, paths["files.csv"])
        _atomic_write_text(paths["summary.md"], self.summary_markdown())
        _plot_class_counts(self, paths["class_counts.png"])
        return paths


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")  # unique: writers may race
    tmp.write_text(text)
    os.replace(tmp, path)


def _plot_class_counts(report: ValidationReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s.split for s in report.splits]
    counts = {(c.split, c.class_name): c.instances for c in report.classes}
    x = np.arange(len(report.class_names))
    width = 0.8 / max(1, len(splits))
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for i, split in enumerate(splits):
        values = [counts.get((split, n), 0) for n in report.class_names]
        bars = ax.bar(x + i * width - 0.4 + width / 2, values, width, label=split)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, report.class_names)
    ax.set_ylabel("instances")
    ax.set_title("Instances per class and split")
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- data.yaml + splits


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster where available


@dataclass
class _Config:
    data_yaml: Path
    meta: dict[str, Any]
    key_lines: dict[str, int]
    names: list[str] = field(default_factory=list)
    root: Path | None = None
    splits: dict[str, list[str]] = field(default_factory=dict)  # str, not Path: 100k Paths cost ~1 s
    findings: list[Finding] = field(default_factory=list)


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key, for findings that point into data.yaml."""
    try:
        node = yaml.compose(text, Loader=_YAML_LOADER)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _load_yaml(data_yaml: Path) -> _Config:
    if data_yaml.suffix.lower() not in {".yaml", ".yml"} or not data_yaml.is_file():
        raise DatasetConfigError("YAML_UNREADABLE", data_yaml, "not an existing .yaml/.yml file")
    try:
        text = data_yaml.read_text(encoding="utf-8", errors="ignore")  # as Ultralytics' YAML.load
        meta = yaml.load(text, Loader=_YAML_LOADER)
    except OSError as e:
        raise DatasetConfigError("YAML_UNREADABLE", data_yaml, f"cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise DatasetConfigError(
            "YAML_PARSE", data_yaml, f"invalid YAML: {getattr(e, 'problem', e)}", line=mark.line + 1 if mark else None
        ) from e
    if not isinstance(meta, dict):
        raise DatasetConfigError("YAML_NOT_MAPPING", data_yaml, f"top level is {type(meta).__name__}, not a mapping")
    config = _Config(data_yaml=data_yaml, meta=meta, key_lines=_key_lines(text))
    lines = config.key_lines
    for key, types in {
        "path": (str,),
        "train": (str, list),
        "val": (str, list),
        "test": (str, list),
        "names": (list, dict),
    }.items():
        if meta.get(key) is not None and not isinstance(meta[key], types):
            expected = " or ".join(t.__name__ for t in types)
            raise DatasetConfigError(
                "YAML_KEY_TYPE",
                data_yaml,
                f"'{key}' must be {expected}, not {type(meta[key]).__name__}",
                line=lines.get(key),
            )
    if "val" not in meta and "validation" in meta:
        meta["val"] = meta.pop("validation")
        config.findings.append(
            _finding("YAML_VALIDATION_KEY", data_yaml, "'validation:' used instead of 'val:'", lines.get("validation"))
        )
    for key in ("train", "val"):
        if not meta.get(key):
            raise DatasetConfigError(
                "YAML_SPLIT_KEY_MISSING", data_yaml, f"'{key}:' key missing or empty", line=lines.get(key)
            )
    return config


def _check_names(config: _Config, expected_names: Sequence[str]) -> None:
    meta, file, lines, add = config.meta, config.data_yaml, config.key_lines, config.findings.append
    names = meta.get("names")
    if names is None:
        add(_finding("YAML_NAMES_MISSING", file, "'names:' missing", lines.get("names")))
        return
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            by_id = {}
        if not by_id or sorted(by_id) != list(range(len(by_id))):
            add(
                _finding(
                    "YAML_NAMES_INVALID",
                    file,
                    f"names keys {list(names)} are not 0..{len(names) - 1}",
                    lines.get("names"),
                )
            )
            return
        names = [by_id[i] for i in range(len(by_id))]
    names = [str(n) for n in names]
    config.names = names
    if "nc" in meta:
        nc = meta["nc"]
        try:
            nc_int = int(float(nc)) if not isinstance(nc, bool) and float(nc) == int(float(nc)) else None
        except (TypeError, ValueError):
            nc_int = None
        if nc_int is None:
            add(_finding("YAML_NC_NOT_INT", file, f"'nc: {nc}' is not an integer", lines.get("nc")))
        elif nc_int != len(names):
            add(
                _finding(
                    "YAML_NC_MISMATCH", file, f"nc is {nc_int} but names has {len(names)} entries", lines.get("nc")
                )
            )
    repeated = sorted(n for n, c in Counter(names).items() if c > 1)
    if repeated:
        add(_finding("YAML_NAMES_DUPLICATE", file, f"class names repeated: {repeated}", lines.get("names")))
    if expected_names and list(names) != list(expected_names):
        add(
            _finding(
                "YAML_NAMES_EXPECTED",
                file,
                f"names are {names}, the recipe expects {list(expected_names)}",
                lines.get("names"),
            )
        )


def _datasets_dir() -> Path:
    from ultralytics.utils import DATASETS_DIR  # only needed for the relative-`path:` trap

    return Path(DATASETS_DIR)


def _is_within(path: str | Path, root: str | Path) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _resolve_splits(config: _Config) -> None:
    """Fill config.root/splits like check_det_dataset + get_img_files; problems become findings."""
    meta, file, lines, add = config.meta, config.data_yaml, config.key_lines, config.findings.append
    if meta.get("path"):
        root = Path(meta["path"])
        if not root.is_absolute():
            add(
                _finding(
                    "YAML_PATH_RELATIVE",
                    file,
                    f"relative 'path: {meta['path']}' resolves against the "
                    "current directory, or else Ultralytics' datasets_dir, not the yaml's folder",
                    lines.get("path"),
                )
            )
            if not root.exists():
                root = _datasets_dir() / root
        root = root.resolve()
    else:
        root = file.resolve().parent
    config.root = root
    for split in SPLITS:
        value = meta.get(split)
        if not value:
            continue
        if isinstance(value, str):
            target = (root / value).resolve()
            if not target.exists() and value.startswith("../"):
                target = (root / value[3:]).resolve()
            targets = [target]
        else:
            targets = [(root / str(v)).resolve() for v in value]
        images: list[str] = []
        for target in targets:
            if not _is_within(target, root):
                add(
                    _finding(
                        "YAML_PATH_ESCAPES_ROOT",
                        file,
                        f"{split} path {target} is outside the dataset root {root}",
                        lines.get(split),
                    )
                )
            if target.is_dir():
                images += glob.glob(str(Path(glob.escape(str(target))) / "**" / "*.*"), recursive=True)
            elif target.is_file():
                images += _read_image_list(target, split, add)
            else:
                add(_finding("SPLIT_MISSING", file, f"{split}: {target} does not exist", lines.get(split)))
        kept = sorted(x for x in images if x.rpartition(".")[-1].lower() in IMG_FORMATS)
        if not kept and not any(
            f.code == "SPLIT_MISSING" and f.message.startswith(f"{split}:") for f in config.findings
        ):
            add(
                _finding(
                    "SPLIT_EMPTY", file, f"{split}: no images found in {', '.join(map(str, targets))}", lines.get(split)
                )
            )
        config.splits[split] = kept


def _read_image_list(list_file: Path, split: str, add) -> list[str]:
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        add(_finding("SPLIT_LIST_UNREADABLE", list_file, f"{split} list unreadable: {e}"))
        return []
    parent = str(list_file.parent) + os.sep
    entries = []
    for lineno, raw in enumerate(text.strip().splitlines(), 1):
        entry = raw.replace("./", parent, 1) if raw.startswith("./") else raw
        if not raw.strip():
            continue
        if entry.rpartition(".")[-1].lower() not in IMG_FORMATS:
            add(
                _finding(
                    "SPLIT_LIST_ENTRY_IGNORED",
                    list_file,
                    f"Ultralytics ignores {raw!r} (extension not an image format)",
                    lineno,
                )
            )
        elif not os.path.isabs(entry):
            add(
                _finding(
                    "SPLIT_LIST_CWD_RELATIVE", list_file, f"{raw!r} resolves against the current directory", lineno
                )
            )
        entries.append(entry)
    return entries


def resolve_split_images(data_yaml: Path) -> dict[str, list[Path]]:
    """Images of each split ({'train': [...], 'val': [...], 'test': [...]}) as Ultralytics resolves them.

    Raises DatasetConfigError (file, line, fix) when data.yaml or a split cannot be resolved.
    """
    config = _load_yaml(Path(data_yaml))
    _resolve_splits(config)
    fatal = [f for f in config.findings if f.code.startswith("SPLIT_") and f.severity == Severity.error]
    if fatal:
        f = fatal[0]
        raise DatasetConfigError(f.code, f.file or data_yaml, f.message, line=f.line, fix=f.fix)
    return {split: [Path(p) for p in paths] for split, paths in config.splits.items()}


_IMAGES_DIR, _LABELS_DIR = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"


def _label_path(image: str) -> str:
    return _LABELS_DIR.join(image.rsplit(_IMAGES_DIR, 1)).rsplit(".", 1)[0] + ".txt"


def label_path_for(image: Path | str) -> Path:
    """Ultralytics' img2label_paths rule: last /images/ -> /labels/, extension -> .txt."""
    return Path(_label_path(os.fspath(image)))


# --------------------------------------------------------------------------- images


@dataclass
class _ImageResult:
    width: int | None = None
    height: int | None = None
    format: str | None = None
    sha256: str | None = None
    phash: int | None = None
    phash_low: np.ndarray | None = None  # 8x8 DCT of a newly decoded image: its phash bits are set in one batch
    new_facts: dict | None = None  # decoded this run (not from the cache): to be cached once hashed
    findings: list[Finding] = field(default_factory=list)


def _pil_open():
    """PIL's own Image.open: Ultralytics replaces it with a wrapper that tries to install pi-heif
    whenever a file is not an image (an auto-install attempt for every non-image we report)."""
    if Image.open.__module__ == Image.__name__:
        return Image.open
    from ultralytics.utils import patches

    return patches._image_open


def _inspect_image(path: str, root: Path | None, known: dict[str, dict] | None = None) -> _ImageResult:
    """Read once: sha256 of the bytes; decode facts from `known` (by content hash) or by decoding."""
    result = _ImageResult()
    add = result.findings.append
    if root is not None:
        if not _is_within(os.path.abspath(path), root):
            add(_finding("IMG_OUTSIDE_ROOT", path, f"image is outside the dataset root {root}"))
        elif not _is_within(real := _realpath(path), _realdir(str(root))):
            add(_finding("IMG_SYMLINK_ESCAPES", path, f"symlink points outside the dataset root: {real}"))
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        add(_finding("IMG_MISSING", path, "listed image does not exist"))
        return result
    except OSError as e:
        add(_finding("IMG_UNREADABLE", path, f"cannot read: {e.strerror or e}"))
        return result
    if not data:
        add(_finding("IMG_EMPTY", path, "zero-byte file"))
        return result
    result.sha256 = hashlib.sha256(data).hexdigest()
    facts = (known or {}).get(result.sha256)
    if facts is None:
        facts, grey = _decode(data)
        result.new_facts = facts
        if grey is not None:
            result.phash_low = _phash_low(grey)
    result.format, result.width, result.height, result.phash = (
        facts["format"],
        facts["width"],
        facts["height"],
        facts["phash"],
    )
    result.findings += [_finding(code, path, message) for code, message in facts["problems"]]
    ext = path.rpartition(".")[-1].lower()
    if facts["format"] and ext not in PIL_FORMAT_EXTENSIONS.get(facts["format"], {ext}):
        add(_finding("IMG_EXT_MISMATCH", path, f"extension .{ext} but content is {facts['format']}"))
    return result


@functools.lru_cache(maxsize=4096)
def _realdir(directory: str) -> str:
    return os.path.realpath(directory)


def _realpath(path: str) -> str:
    """os.path.realpath with the directory part cached: one lstat per image instead of one per
    path component (the images of a split share a handful of directories)."""
    if os.path.islink(path):
        return os.path.realpath(path)
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(_realdir(directory), name)


def _decode(data: bytes) -> tuple[dict, np.ndarray | None]:
    """What the bytes alone determine (format, EXIF-corrected size, problems as (code, message)),
    plus a small grey image (>= 32 px a side) for the perceptual hash. A pure function of the
    content: cacheable by sha256."""
    problems: list[tuple[str, str]] = []
    facts = {"format": None, "width": None, "height": None, "phash": None, "problems": problems}
    header = _plain_jpeg_header(data)
    if header:  # most images: simplejpeg read the size; PIL's (Python) header parser is not needed
        facts["format"], (width, height), orientation, im = "JPEG", header, None, None
    else:
        try:
            im = _pil_open()(io.BytesIO(data))
        except UnidentifiedImageError:
            problems.append(("IMG_NOT_IMAGE", "not an image (unrecognised content)"))
            return facts, None
        except Image.DecompressionBombError as e:
            problems.append(("IMG_DECOMPRESSION_BOMB", str(e)))
            return facts, None
        except Exception as e:
            problems.append(("IMG_CORRUPT", f"header unreadable: {e}"))
            return facts, None
        facts["format"] = im.format
        width, height = im.size
        if (im.format or "").lower() not in IMG_FORMATS | {"jpeg2000"}:
            problems.append(("IMG_FORMAT", f"format {im.format} is not one Ultralytics accepts"))
            return facts, None
        try:
            orientation = im.getexif().get(274)
        except Exception:
            orientation = None
    if width * height > MAX_IMAGE_PIXELS:
        problems.append(
            ("IMG_DECOMPRESSION_BOMB", f"{width}x{height} = {width * height} px exceeds {MAX_IMAGE_PIXELS} px")
        )
        return facts, None
    if orientation in {5, 6, 7, 8}:  # rotated 90/270: Ultralytics swaps width and height
        width, height = height, width
    if orientation not in (None, 1):
        problems.append(
            ("IMG_EXIF_ORIENTATION", f"EXIF orientation {orientation}: Ultralytics rotates the image when loading")
        )
    facts["width"], facts["height"] = width, height
    try:
        grey = _decode_jpeg_grey(data) if facts["format"] in {"JPEG", "MPO"} else _decode_pil_grey(im)
    except Exception as e:
        problems.append(("IMG_CORRUPT", f"does not decode completely: {e}"))
        return facts, None
    if min(width, height) < MIN_IMAGE_SIDE:
        problems.append(("IMG_TOO_SMALL", f"{width}x{height} is below {MIN_IMAGE_SIDE} px"))
    if facts["format"] in {"JPEG", "MPO"} and not data.endswith(b"\xff\xd9"):
        problems.append(("IMG_JPEG_NO_EOI", "JPEG lacks its end-of-image marker"))
    return facts, grey


# libjpeg's warnings for damaged entropy-coded data (JWRN_JPEG_EOF, JWRN_HIT_MARKER, JWRN_EXTRANEOUS_DATA,
# JWRN_HUFF_BAD_CODE, ...): PIL ignores them and returns grey or garbled blocks.
_JPEG_DAMAGE = ("Premature end of JPEG file", "Corrupt JPEG data")


def _plain_jpeg_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG without EXIF or MPF segments (so no orientation and not an MPO), from
    libjpeg-turbo's header parser; None means "ask PIL" (other formats, EXIF, unreadable headers)."""
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    pos = 2
    while True:  # the marker segments before the scan data; anything unexpected: let PIL judge
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:  # start of scan: no metadata after this
            break
        if (marker == 0xE1 and data.startswith(b"Exif\x00\x00", pos + 4)) or (
            marker == 0xE2 and data.startswith(b"MPF\x00", pos + 4)
        ):
            return None
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return width, height


def _decode_jpeg_grey(data: bytes) -> np.ndarray:
    """Decode every byte of the entropy-coded data with libjpeg-turbo (GIL released, so the decode pool
    runs in parallel), scaled in the IDCT to >= 32 px a side: the perceptual hash needs no more.
    strict=True turns libjpeg's damage warnings into errors; other refusals (colour conversions
    libjpeg-turbo lacks) fall back to PIL."""
    try:
        return simplejpeg.decode_jpeg(
            data, colorspace="GRAY", min_height=PHASH_SIDE, min_width=PHASH_SIDE, strict=True
        )[..., 0]
    except ValueError as e:
        if any(marker in str(e) for marker in _JPEG_DAMAGE):
            raise ValueError(f"damaged JPEG data ({e})") from e
    im = _pil_open()(io.BytesIO(data))
    im.draft("L", (PHASH_SIDE, PHASH_SIDE))
    return _decode_pil_grey(im)


def _decode_pil_grey(im: Image.Image) -> np.ndarray:
    """Any other format: full decode by PIL, then the hash's 32x32 grey image (PIL's LANCZOS)."""
    im.load()
    return np.asarray(im.convert("L").resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS))


@functools.cache
def _phash_projection(size: int) -> np.ndarray:
    """(8, size): PIL's LANCZOS resampling from `size` to 32 samples (read off PIL itself by resizing
    an identity image in float mode) followed by the 8 lowest rows of the 32-point DCT-II that
    imagehash.phash takes (scipy.fftpack.dct). Resize and DCT are linear, so one matrix does both."""
    from scipy.fftpack import dct

    dct_low = dct(np.eye(PHASH_SIDE), axis=0)[:8]
    if size == PHASH_SIDE:
        return dct_low
    eye = Image.fromarray(np.eye(size, dtype=np.float32), mode="F")
    resize = np.asarray(eye.resize((PHASH_SIDE, size), Image.Resampling.LANCZOS), dtype=np.float64).T
    return dct_low @ resize


def _phash_low(grey: np.ndarray) -> np.ndarray:
    """The 8x8 lowest DCT frequencies of the image's 32x32 LANCZOS thumbnail: two small matmuls (numpy
    releases the GIL, so this runs in the decode threads)."""
    return _phash_projection(grey.shape[0]) @ grey.astype(np.float64) @ _phash_projection(grey.shape[1]).T


def _phash_bits(lows: Sequence[np.ndarray]) -> list[int]:
    """imagehash.phash's 64 bits: each low frequency above the image's median of them."""
    low = np.asarray(lows, dtype=np.float64).reshape(len(lows), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    return [int.from_bytes(row.tobytes(), "big") for row in np.packbits(bits, axis=1)]


def _phash_batch(greys: Sequence[np.ndarray]) -> list[int]:
    """imagehash.phash of grey images of any size. Equal to imagehash on 32x32 input (tested); on
    larger input it skips imagehash's rounding of the thumbnail to uint8, which can flip a bit near
    the median."""
    return _phash_bits([_phash_low(grey) for grey in greys])


def _chunks(items: list, n: int) -> list[list]:
    size = max(1, math.ceil(len(items) / n))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _inspect_images(
    paths: list[str],
    root: Path | None,
    pool: ThreadPoolExecutor,
    known: dict[str, dict] | None = None,
    labels: list[str] = (),
    nc: int = 0,
) -> Callable[[], tuple[list[_ImageResult], list[_LabelResult]]]:
    """Start inspecting `paths` (and parsing `labels`) in `pool`; returns a function that waits for the
    results and adds the images' perceptual hashes.

    Image and label chunks alternate in the queue so that one thread parses labels (Python, holds the
    GIL) while the other decodes JPEGs (GIL released): a thread doing only Python would make every
    decoding thread wait up to the interpreter's switch interval for the GIL after each image."""
    n_chunks = 4 * (os.cpu_count() or 1)
    image_futures, label_futures = [], []
    for image_chunk, label_chunk in itertools.zip_longest(_chunks(paths, n_chunks), _chunks(list(labels), n_chunks)):
        if image_chunk:
            image_futures.append(
                pool.submit(lambda chunk: [_inspect_image(p, root, known) for p in chunk], image_chunk)
            )
        if label_chunk:
            label_futures.append(pool.submit(lambda chunk: [_parse_label(p, nc) for p in chunk], label_chunk))

    def collect() -> tuple[list[_ImageResult], list[_LabelResult]]:
        results = [r for f in image_futures for r in f.result()]
        hashed = [r for r in results if r.phash_low is not None]
        if hashed:
            for r, code in zip(hashed, _phash_bits([r.phash_low for r in hashed])):
                r.phash, r.new_facts["phash"], r.phash_low = code, code, None
        return results, [r for f in label_futures for r in f.result()]

    return collect


# --------------------------------------------------------------------------- labels


@dataclass
class _LabelResult:
    state: Literal["missing", "empty", "ok", "invalid"]
    boxes: list[tuple[int, int, float, float, float, float]] = field(default_factory=list)  # line, cls, cx, cy, w, h
    findings: list[Finding] = field(default_factory=list)


def _parse_label(path: str, nc: int) -> _LabelResult:
    """Parse one YOLO detection label; tolerant of BOM, CRLF and blank lines; one finding per bad row."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return _LabelResult("missing")
    except OSError as e:
        return _LabelResult("invalid", findings=[_finding("LBL_UNREADABLE", path, f"cannot read: {e.strerror or e}")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return _LabelResult("invalid", findings=[_finding("LBL_UNREADABLE", path, f"not UTF-8 text: {e}")])
    result = _LabelResult("empty")
    boxes, findings = result.boxes, result.findings
    seen: dict[tuple[float, ...], int] = {}
    lo, hi = -COORD_TOLERANCE, 1 + COORD_TOLERANCE
    first_segment = first_box = None
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        n = len(parts)
        if n == 0:
            continue
        if n != 5:
            if n >= 7 and n % 2 == 1:
                first_segment = first_segment or lineno
            else:
                findings.append(_finding("LBL_FIELD_COUNT", path, f"{n} fields, expected 5", lineno))
            continue
        first_box = first_box or lineno
        try:
            c, x, y, w, h = map(float, parts)
        except ValueError:
            bad = next(p for p in parts if not _is_float(p))
            findings.append(_finding("LBL_NOT_NUMERIC", path, f"field {bad!r} is not a number", lineno))
            continue
        if (
            0 <= c < nc
            and not c % 1
            and w > 0
            and h > 0
            and lo <= x - w / 2
            and x + w / 2 <= hi
            and lo <= y - h / 2
            and y + h / 2 <= hi
        ):  # fast path: a valid box passes one test
            key = (c, x, y, w, h)
            if key in seen:
                findings.append(_finding("LBL_DUPLICATE_ROW", path, f"same box as line {seen[key]}", lineno))
            else:
                seen[key] = lineno
                boxes.append((lineno, int(c), x, y, w, h))
            continue
        if not math.isfinite(c + x + y + w + h):  # one check: nan/inf anywhere makes the sum non-finite
            findings.append(_finding("LBL_NOT_FINITE", path, f"non-finite value in {line.strip()!r}", lineno))
            continue
        if c % 1:
            findings.append(_finding("LBL_CLASS_NOT_INT", path, f"class id {parts[0]} is not an integer", lineno))
            continue
        if not 0 <= c < nc:
            findings.append(_finding("LBL_CLASS_RANGE", path, f"class id {parts[0]} outside [0, {nc})", lineno))
            continue
        if w <= 0 or h <= 0:
            findings.append(_finding("LBL_BOX_NONPOSITIVE", path, f"width {w} / height {h} not > 0", lineno))
            continue
        if not (lo <= x <= hi and lo <= y <= hi and w <= hi and h <= hi):
            findings.append(
                _finding("LBL_COORD_RANGE", path, f"coordinates {x} {y} {w} {h} not normalised to [0, 1]", lineno)
            )
            continue
        # Only failure left once the fast path rejected the row: the box crosses an image edge.
        findings.append(
            _finding(
                "LBL_BOX_OUTSIDE",
                path,
                f"box [{x - w / 2:.3f}, {y - h / 2:.3f}, {x + w / 2:.3f}, {y + h / 2:.3f}] extends outside the image",
                lineno,
            )
        )
    if first_segment:
        if first_box:
            findings.append(
                _finding(
                    "LBL_MIXED_FORMATS",
                    path,
                    "file mixes polygon and box rows (Ultralytics drops the whole image)",
                    first_segment,
                )
            )
        else:
            findings.append(
                _finding(
                    "LBL_SEGMENT",
                    path,
                    "polygon (segment) rows: Ultralytics would silently convert them to boxes",
                    first_segment,
                )
            )
    if any(f.severity == Severity.error for f in findings):
        result.state = "invalid"
    elif boxes:
        result.state = "ok"
    return result


def _label_arrays(results: Iterable[_LabelResult]) -> tuple[list[str], list[list[Finding]], np.ndarray, np.ndarray]:
    """Per label: state, findings, box count; and all boxes as one (N, 6) array
    (line, class, cx, cy, w, h), which becomes the box table without per-row objects."""
    states, findings, counts, rows = [], [], [], []
    for result in results:
        states.append(result.state)
        findings.append(result.findings)
        counts.append(len(result.boxes))
        rows += result.boxes
    return states, findings, np.asarray(counts, np.int64), np.asarray(rows, np.float64).reshape(-1, 6)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def convert_segment_labels(label_file: Path, out_file: Path) -> int:
    """Explicit polygon -> box conversion into `out_file` (never in place); returns rows converted."""
    rows, converted = [], 0
    for line in Path(label_file).read_text(encoding="utf-8-sig").splitlines():
        parts = line.split()
        if len(parts) >= 7 and len(parts) % 2 == 1:
            xy = np.asarray(parts[1:], dtype=float).reshape(-1, 2)
            (x0, y0), (x1, y1) = xy.min(0).clip(0, 1), xy.max(0).clip(0, 1)
            rows.append(f"{parts[0]} {(x0 + x1) / 2:.6f} {(y0 + y1) / 2:.6f} {x1 - x0:.6f} {y1 - y0:.6f}")
            converted += 1
        elif parts:
            rows.append(" ".join(parts))
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(Path(out_file), "\n".join(rows) + ("\n" if rows else ""))
    return converted


# --------------------------------------------------------------------------- duplicates


def _hash_images(images: dict[str, list[Path]]) -> dict[Path, _ImageResult]:
    paths = sorted({p for ps in images.values() for p in ps})
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(paths, _inspect_images([str(p) for p in paths], None, pool)()[0]))


def find_duplicate_groups(
    images: dict[str, list[Path]] | dict[str, list[str]],
    phash_threshold: int = 4,
    hashes: dict[Any, tuple[str | None, int | None]] | None = None,
) -> list[DuplicateGroup]:
    """Exact (sha256 of the bytes) and near (perceptual-hash Hamming <= threshold) duplicate groups.

    A near group joins images whose content differs but that look alike (with their exact copies).
    `hashes` ({image: (sha256, phash)}, keyed like `images`) skips re-reading images already hashed.
    """
    if hashes is None:
        hashes = {p: (r.sha256, r.phash) for p, r in _hash_images(images).items()}
    members = [(split, path) for split, paths in images.items() for path in paths]
    by_sha: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for split, path in members:
        sha = hashes.get(path, (None, None))[0]
        if sha:
            by_sha[sha].append((split, path))

    def group(kind: str, items: list[tuple[str, Path]]) -> DuplicateGroup:
        items = sorted(set(items), key=lambda m: (SPLITS.index(m[0]) if m[0] in SPLITS else 9, str(m[1])))
        return DuplicateGroup(
            kind=kind,
            members=[GroupMember(split=s, image=p) for s, p in items],
            cross_split=len({s for s, _ in items}) > 1,
        )

    groups = [group("exact", items) for items in by_sha.values() if len(items) > 1]
    shas = [sha for sha, items in by_sha.items() if hashes[items[0][1]][1] is not None]
    if phash_threshold >= 0 and len(shas) > 1:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        codes = np.array([hashes[by_sha[s][0][1]][1] for s in shas], dtype=np.uint64)
        rows, cols = [], []
        for start in range(0, len(codes), 2048):  # chunks bound memory at 2048 x n
            dist = np.bitwise_count(codes[start : start + 2048, None] ^ codes[None, :])
            r, c = np.nonzero(dist <= phash_threshold)
            keep = r + start < c
            rows.append(r[keep] + start)
            cols.append(c[keep])
        r, c = np.concatenate(rows), np.concatenate(cols)
        if len(r):
            graph = coo_matrix((np.ones(len(r)), (r, c)), shape=(len(shas), len(shas)))
            _, component = connected_components(graph, directed=False)
            for comp in np.unique(component[np.concatenate([r, c])]):
                idx = np.flatnonzero(component == comp)
                groups.append(group("near", [m for i in idx for m in by_sha[shas[i]]]))
    return groups


# --------------------------------------------------------------------------- the whole check


class _FactsCache:
    """{sha256: decode facts} in one JSON file; content-keyed, so it can never be stale. The file name
    carries the format version and the decoders' versions (a new decoder may judge bytes differently)."""

    def __init__(self, cache_dir: Path):
        import PIL

        self.path = Path(cache_dir) / f"image-facts-v2-pillow{PIL.__version__}-simplejpeg{simplejpeg.__version__}.json"
        try:
            self.facts: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.facts = {}

    def save(self, new: list[_ImageResult]) -> None:
        if not new:
            return
        self.facts.update({r.sha256: r.new_facts for r in new})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_text(self.path, json.dumps(self.facts))


_FILE_COLUMNS = (
    "split",
    "image",
    "label",
    "label_state",
    "width",
    "height",
    "format",
    "sha256",
    "phash",
    "instances",
    "codes",
)
_BOX_COLUMNS = ("split", "image", "label", "line", "cls", "cx", "cy", "w", "h")


def validate_dataset(
    data_yaml: Path,
    *,
    imgsz: int = 640,
    phash_threshold: int = 4,
    min_box_px: float = 2.0,
    minority_class: str = MINORITY_CLASS,
    minority_val_target: int = 18,
    expected_names: Sequence[str] = CLASS_NAMES,
    check_images: bool = True,
    cache_dir: Path | None = None,
) -> ValidationReport:
    """Validate data.yaml, images, labels, duplicates and statistics; never writes in the dataset.

    `check_images=False` is the label-only path: no decoding, hashing or duplicate search.
    `cache_dir` (e.g. the state dir, never the dataset) keeps each image's decode results keyed by
    its content sha256, so a re-run reads and hashes every image but decodes only new content.
    """
    data_yaml = Path(data_yaml)
    try:
        config = _load_yaml(data_yaml)
    except DatasetConfigError as e:
        finding = _finding(e.code, e.file, str(e).split(f" [{e.code}]")[0].split(": ", 1)[-1], e.line, e.fix)
        return _empty_report(data_yaml, imgsz, phash_threshold, check_images, [finding])
    _check_names(config, expected_names)
    _resolve_splits(config)
    findings = config.findings
    nc = len(config.names) if config.names else 0
    images = config.splits

    all_paths = sorted({p for ps in images.values() for p in ps})
    label_of = {image: _label_path(image) for image in all_paths}
    entries = [(split, image) for split, paths in images.items() for image in paths]
    image_results: dict[str, _ImageResult] = {}
    if check_images and all_paths:
        cache = _FactsCache(cache_dir) if cache_dir is not None else None
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            collected_images, collected_labels = _inspect_images(
                all_paths, config.root, pool, cache.facts if cache else None, [label_of[i] for i in all_paths], nc
            )()
        image_results = dict(zip(all_paths, collected_images))
        label_result = dict(zip(all_paths, collected_labels))
        label_results = [label_result[image] for _, image in entries]
        if cache:
            cache.save([r for r in image_results.values() if r.new_facts is not None])
    else:  # label-only: serial (pure Python, threads would only contend for the GIL)
        label_results = [_parse_label(label_of[image], nc) for _, image in entries]
    states, label_findings, box_counts, box_array = _label_arrays(label_results)
    for found in label_findings:
        findings.extend(found)
    for result in image_results.values():
        findings.extend(result.findings)
    findings.extend(_orphan_labels(set(label_of.values())))

    not_checked = _ImageResult()  # label-only path: one shared empty result
    file_rows = []
    for k, (split, image) in enumerate(entries):
        ires, found = image_results.get(image, not_checked), label_findings[k]
        codes = ";".join(sorted({f.code for f in found + ires.findings})) if found or ires.findings else ""
        file_rows.append(
            (
                split,
                image,
                label_of[image],
                states[k],
                ires.width,
                ires.height,
                ires.format,
                ires.sha256,
                None if ires.phash is None else f"{ires.phash:016x}",
                int(box_counts[k]),
                codes,
            )
        )
    split_states = {split: Counter() for split in images}
    for (split, _), state in zip(entries, states):
        split_states[split][state] += 1
    for split, paths in images.items():
        states_here = split_states[split]
        background = states_here["missing"] + states_here["empty"]
        if paths and states_here["missing"] == len(paths):
            findings.append(
                _finding(
                    "LBL_SPLIT_UNLABELLED",
                    os.path.dirname(label_of[paths[0]]),
                    f"{split}: none of its {len(paths)} images has a label file",
                )
            )
        elif background:
            findings.append(
                _finding(
                    "IMG_NO_LABEL",
                    os.path.dirname(label_of[paths[0]]),
                    f"{split}: {states_here['missing']} images without a label file and "
                    f"{states_here['empty']} with an empty one are trained as background",
                )
            )
    files = pd.DataFrame(file_rows, columns=list(_FILE_COLUMNS))
    boxes = pd.DataFrame(box_array, columns=list(_BOX_COLUMNS[3:])).astype({"line": np.int64, "cls": np.int64})
    owner = files.iloc[np.repeat(np.arange(len(files)), files["instances"].to_numpy(dtype=np.int64))]
    for column in ("split", "image", "label", "width", "height"):
        boxes[column] = owner[column].to_numpy()
    # Pixels at the training imgsz: Ultralytics letterboxes the longer side to imgsz. Without
    # native sizes (label-only) assume a square image: an upper bound, so flags stay true.
    longer = boxes[["width", "height"]].max(axis=1).astype(float)
    scale_w = (boxes["width"].astype(float) * imgsz / longer).fillna(imgsz)
    scale_h = (boxes["height"].astype(float) * imgsz / longer).fillna(imgsz)
    boxes["w_px"], boxes["h_px"] = boxes["w"] * scale_w, boxes["h"] * scale_h
    boxes["w_native"], boxes["h_native"] = boxes["w"] * boxes["width"], boxes["h"] * boxes["height"]
    tiny = boxes[(boxes["w_px"] < min_box_px) | (boxes["h_px"] < min_box_px)]
    findings.extend(
        _finding(
            "LBL_BOX_TINY",
            t.label,
            f"box is {t.w_px:.1f}x{t.h_px:.1f} px at imgsz {imgsz} (< {min_box_px} px)",
            int(t.line),
        )
        for t in tiny.itertuples()
    )

    duplicate_groups: list[DuplicateGroup] = []
    if check_images:
        hashes = {p: (r.sha256, r.phash) for p, r in image_results.items()}
        duplicate_groups = find_duplicate_groups(images, phash_threshold, hashes=hashes)
        findings.extend(_duplicate_finding(g) for g in duplicate_groups)

    report = ValidationReport(
        data_yaml=data_yaml,
        dataset_root=config.root,
        imgsz=imgsz,
        phash_threshold=phash_threshold,
        images_checked=check_images,
        class_names=config.names,
        findings=findings,
        splits=_split_stats(images, files),
        classes=_class_stats(images, files, boxes, config.names),
        duplicate_groups=duplicate_groups,
        native_sizes=[],
        recommended_imgsz=None,
        compute_saved_fraction=None,
        minority=None,
    )
    _size_advice(report, files)
    _minority_stats(report, boxes, minority_class, minority_val_target)
    report._files = files
    return report


def _empty_report(
    data_yaml: Path, imgsz: int, phash_threshold: int, check_images: bool, findings: list[Finding]
) -> ValidationReport:
    return ValidationReport(
        data_yaml=data_yaml,
        dataset_root=None,
        imgsz=imgsz,
        phash_threshold=phash_threshold,
        images_checked=check_images,
        class_names=[],
        findings=findings,
        splits=[],
        classes=[],
        duplicate_groups=[],
        native_sizes=[],
        recommended_imgsz=None,
        compute_saved_fraction=None,
        minority=None,
    )


def _orphan_labels(expected: set[str]) -> list[Finding]:
    label_dirs = {label.rpartition(os.sep)[0] for label in expected}
    found = []
    for folder in sorted(label_dirs):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        found += [
            _finding("LBL_ORPHAN", e.path, "label has no image in any split")
            for e in entries
            if e.name.endswith(".txt") and e.path not in expected
        ]
    return found


def _duplicate_finding(group: DuplicateGroup) -> Finding:
    listing = ", ".join(f"{m.split}:{m.image}" for m in group.members)
    if group.cross_split:
        splits = sorted({m.split for m in group.members}, key=lambda s: SPLITS.index(s) if s in SPLITS else 9)
        return _finding(
            "DUP_CROSS_SPLIT",
            group.members[0].image,
            f"{group.kind} duplicates across {'/'.join(splits)} (leakage): {listing}",
        )
    code = "DUP_EXACT_WITHIN" if group.kind == "exact" else "DUP_NEAR_WITHIN"
    return _finding(
        code,
        group.members[0].image,
        f"{len(group.members)} {group.kind} duplicates in {group.members[0].split}: {listing}",
    )


def _split_stats(images: dict[str, list[str]], files: pd.DataFrame) -> list[SplitStats]:
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


def _class_stats(
    images: dict[str, list[str]], files: pd.DataFrame, boxes: pd.DataFrame, names: list[str]
) -> list[ClassStats]:
    # A mask per (split, class) on plain arrays: a pandas groupby with five aggregations costs ~50x more
    # here, and the validator's own time is benchmarked against Ultralytics' scan.
    split_of, cls_of, image_of = (boxes[c].to_numpy() for c in ("split", "cls", "image"))
    w_native, h_native = boxes["w_native"].to_numpy(dtype=float), boxes["h_native"].to_numpy(dtype=float)
    min_side = np.minimum(boxes["w_px"].to_numpy(dtype=float), boxes["h_px"].to_numpy(dtype=float))

    def rounded(values: np.ndarray, reduce) -> float | None:
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


def _size_advice(report: ValidationReport, files: pd.DataFrame) -> None:
    sized = files.dropna(subset=["width", "height"])
    if sized.empty:
        return
    counts = sized.groupby(["width", "height"]).size()
    report.native_sizes = [NativeSize(width=int(w), height=int(h), images=int(n)) for (w, h), n in counts.items()]
    largest = int(max(sized["width"].max(), sized["height"].max()))
    recommended = math.ceil(largest / MODEL_STRIDE) * MODEL_STRIDE
    report.recommended_imgsz = recommended
    report.compute_saved_fraction = round(max(0.0, 1 - (recommended / report.imgsz) ** 2), 4)
    if recommended < report.imgsz:
        report.findings.append(
            _finding(
                "IMGSZ_ABOVE_NATIVE",
                report.data_yaml,
                f"largest native side is {largest} px but the recipe trains at {report.imgsz}: imgsz {recommended} "
                f"covers it with {100 * report.compute_saved_fraction:.0f}% less compute",
                fix=f"set imgsz: {recommended} in the recipe",
            )
        )


def _minority_stats(report: ValidationReport, boxes: pd.DataFrame, minority_class: str, target: int) -> None:
    if minority_class not in report.class_names or "val" not in {s.split for s in report.splits}:
        return
    cls = report.class_names.index(minority_class)
    val = boxes[(boxes["split"] == "val") & (boxes["cls"] == cls)]
    report.minority = MinorityStats(
        class_name=minority_class,
        val_instances=len(val),
        val_images=int(val["image"].nunique()),
        val_target=target,
        shortfall=max(0, target - len(val)),
    )
    if len(val) < target:
        report.findings.append(
            _finding(
                "MINORITY_VAL_SHORTFALL",
                report.data_yaml,
                f"val has {len(val)} {minority_class} instances, target {target}",
            )
        )


def ensure_valid(report: ValidationReport, allow: Iterable[str] = (), top: int = 10) -> None:
    """Raise DatasetInvalid listing the top error findings whose code is not allow-listed."""
    allowed = set(allow)
    blocking = [f for f in report.errors() if f.code not in allowed]
    if not blocking:
        return
    counts = Counter(f.code for f in blocking)
    lines = [
        f"{len(blocking)} dataset errors in {report.data_yaml} ("
        + ", ".join(f"{c} x{n}" for c, n in counts.most_common())
        + "):"
    ]
    lines += [f"  {f.code} {f.location()}: {f.message} -> fix: {f.fix}" for f in blocking[:top]]
    if len(blocking) > top:
        lines.append(f"  ... and {len(blocking) - top} more (see report.json)")
    raise DatasetInvalid("\n".join(lines), blocking)
