"""Dataset validation: the first stage of the flow decides whether training may run.

Everything here only reads the dataset (no ``labels.cache``, no re-saved JPEGs). Each defect
becomes a :class:`Finding` with a stable code, a severity, the file and line, and a one-line fix;
a malformed dataset never crashes the validator, it produces findings.

Splits are resolved the way Ultralytics 8.4 resolves them (see :mod:`phase2.dataset.layout`), so
what we validate is exactly what training would read.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel, PrivateAttr, ValidationError

from phase2.dataset.duplicates import DuplicateGroup, find_duplicate_groups
from phase2.dataset.findings import Finding, Severity
from phase2.dataset.images import FactsCache, ImageResult, inspect_images
from phase2.dataset.index_cache import FileIndex, ResultMemo, code_version, stat_fingerprint
from phase2.dataset.labels import ParsedLabel, parse_label
from phase2.dataset.layout import (
    DatasetConfig,
    DatasetConfigError,
    check_names,
    label_path_str,
    load_data_yaml,
    resolve_splits,
    split_order,
)
from phase2.dataset.layout import data_roots as layout_data_roots
from phase2.dataset.stats import (
    ClassStats,
    MinorityStats,
    NativeSize,
    SplitStats,
    class_stats,
    largest_side,
    minority_stats,
    native_sizes,
    recommended_imgsz,
    split_stats,
)
from phase2.infra.files import atomic_path, atomic_write_text

if TYPE_CHECKING:  # the recipe is only read here; the dataset package does not depend on training
    from phase2.training.recipe import Recipe

FILE_COLUMNS = (
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
_BOX_COLUMNS = ("line", "cls", "cx", "cy", "w", "h")


class DatasetInvalid(RuntimeError):
    """The dataset has errors that are not allow-listed; the message lists the top findings."""

    def __init__(self, message: str, findings: list[Finding]):
        super().__init__(message)
        self.findings = findings


class ValidationReport(BaseModel):
    data_yaml: Path
    dataset_root: Path | None
    # The training size the boxes were checked at; with ``imgsz=None`` ("native") the dataset's
    # recommended size, None only when no image decoded (nothing to derive it from).
    imgsz: int | None
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

    def largest_native_side(self) -> int | None:
        """The longest side of any image that decoded (None: no image was decoded)."""
        return largest_side(self.native_sizes)

    def files_table(self) -> pd.DataFrame:
        """One row per image (split, paths, size, format, hashes, instances, finding codes)."""
        return self._files if self._files is not None else pd.DataFrame(columns=list(FILE_COLUMNS))

    def finding_groups(self) -> list[tuple[Finding, int]]:
        """Findings grouped by severity, code and fix (messages carry per-file details): each group's
        first finding and its size, errors first, then the largest groups."""
        groups: dict[tuple[str, str, str], list[Finding]] = {}
        for f in self.findings:
            groups.setdefault((f.severity.value, f.code, f.fix), []).append(f)
        order = list(Severity)
        ranked = sorted(groups.values(), key=lambda g: (order.index(g[0].severity), -len(g), g[0].code))
        return [(g[0], len(g)) for g in ranked]

    def summary_markdown(self) -> str:
        counts = Counter(f.severity for f in self.findings)
        lines = [
            f"# Dataset validation: `{self.data_yaml}`",
            "",
            f"**{counts[Severity.error]} errors, {counts[Severity.warning]} warnings**, {counts[Severity.info]} info.",
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
        groups = self.finding_groups()
        if groups:
            lines += [
                "",
                "## Findings (grouped by code; `--json` lists every one)",
                "",
                "| severity | code | count | first example | message | fix |",
                "|---|---|---:|---|---|---|",
            ]
            for first, n in groups:
                more = f" ({n - 1} more — see --json for all)" if n > 1 else ""
                lines.append(
                    f"| {first.severity} | {first.code} | {n} | `{first.location()}`{more} | {_md(first.message)} "
                    f"| {_md(first.fix)} |"
                )
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> dict[str, Path]:
        """report.json, files.csv, summary.md, class_counts.png in `out_dir` (never the dataset)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {name: out_dir / name for name in ("report.json", "files.csv", "summary.md", "class_counts.png")}
        atomic_write_text(paths["report.json"], self.model_dump_json(indent=2))
        with atomic_path(paths["files.csv"]) as tmp:
            self.files_table().to_csv(tmp, index=False)
        atomic_write_text(paths["summary.md"], self.summary_markdown())
        _plot_class_counts(self, paths["class_counts.png"])
        return paths


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def validate_dataset(
    data_yaml: Path,
    *,
    imgsz: int | None = 640,
    phash_threshold: int = 4,
    min_box_px: float = 2.0,
    expected_names: Sequence[str] | None = None,
    minority_class: str | None = None,
    minority_val_target: int = 18,
    check_images: bool = True,
    cache_dir: Path | None = None,
    data_roots: Sequence[str | Path] | None = None,
) -> ValidationReport:
    """Validate data.yaml, images, labels, duplicates and statistics; never writes in the dataset.

    `expected_names` (the recipe's classes, in order) must equal data.yaml's names; None checks
    only data.yaml's own consistency. `minority_class` (None: none) gets its val instances counted
    against `minority_val_target`.
    `imgsz` is the training size the boxes are checked at; None means the recipe's ``native``: the
    recommended size derived here from the images' native sizes (then ``report.imgsz`` is it).
    `check_images=False` is the label-only path: no decoding, hashing or duplicate search.
    `cache_dir` (e.g. the state dir, never the dataset) keeps each image's decode results keyed by
    its content sha256, each file's sha256 keyed by its stat (path, size, mtime_ns, inode: git's
    index), and the whole report keyed by every input's stat, the parameters and this code: a
    re-run with nothing changed reads no file; a changed file is re-read and re-hashed.
    `data_roots` (None: the worker setting PHASE2_DATA_ROOTS; empty: none) are the only folders
    read: lists, images and labels outside them are errors and stay unread. Without roots, paths
    outside the yaml's folder are warnings.
    """
    data_yaml = Path(data_yaml)
    roots = layout_data_roots() if data_roots is None else tuple(os.path.realpath(r) for r in data_roots)
    try:
        config = load_data_yaml(data_yaml, roots)
    except DatasetConfigError as e:
        return _empty_report(data_yaml, imgsz, phash_threshold, check_images, [e.finding()])
    check_names(config, expected_names)
    resolve_splits(config, roots)
    findings = config.findings
    nc = len(config.names)
    images = config.splits

    all_paths = sorted({p for ps in images.values() for p in ps})
    label_of = {image: label_path_str(image) for image in all_paths}
    entries = [(split, image) for split, paths in images.items() for image in paths]
    readable = [p for p in all_paths if p not in config.refused]  # outside PHASE2_DATA_ROOTS: never opened
    memo_key = None
    if cache_dir is not None and check_images:
        params = [imgsz, phash_threshold, min_box_px, expected_names, minority_class, minority_val_target, roots]
        memo_key = _memo_key(config, params, readable, [label_of[i] for i in readable])
        if memo_key and (memoised := _memoised_report(cache_dir, memo_key)) is not None:
            return memoised
    refused = ParsedLabel("invalid")
    image_results: dict[str, ImageResult] = {}
    if check_images and readable:
        cache = FactsCache(cache_dir) if cache_dir is not None else None
        index = FileIndex.load(cache_dir) if cache_dir is not None else None
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            collected_images, collected_labels = inspect_images(
                readable, pool, cache.facts if cache else None, [label_of[i] for i in readable], nc, index
            )()
        image_results = dict(zip(readable, collected_images, strict=True))
        label_result = dict(zip(readable, collected_labels, strict=True))
        label_results = [label_result.get(image, refused) for _, image in entries]
        if cache and index:
            cache.save(list(image_results.values()))
            index.save()
    else:  # label-only: serial (pure Python, threads would only contend for the GIL)
        label_results = [
            refused if image in config.refused else parse_label(label_of[image], nc) for _, image in entries
        ]
    states, label_findings, box_counts, box_array = _label_arrays(label_results)
    for found in label_findings:
        findings.extend(found)
    for result in image_results.values():
        findings.extend(result.findings)
    findings.extend(_orphan_labels({label_of[image] for image in readable}))

    not_checked = ImageResult()  # label-only path: one shared empty result
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
    split_states: dict[str, Counter[str]] = {split: Counter() for split in images}
    for (split, _), state in zip(entries, states, strict=True):
        split_states[split][state] += 1
    for split, paths in images.items():
        states_here = split_states[split]
        background = states_here["missing"] + states_here["empty"]
        if paths and states_here["missing"] == len(paths):
            findings.append(
                Finding.of(
                    "LBL_SPLIT_UNLABELLED",
                    os.path.dirname(label_of[paths[0]]),
                    f"{split}: none of its {len(paths)} images has a label file",
                )
            )
        elif background:
            findings.append(
                Finding.of(
                    "IMG_NO_LABEL",
                    os.path.dirname(label_of[paths[0]]),
                    f"{split}: {states_here['missing']} images without a label file and "
                    f"{states_here['empty']} with an empty one are trained as background",
                )
            )
    files = pd.DataFrame(file_rows, columns=list(FILE_COLUMNS))
    boxes = pd.DataFrame(box_array, columns=list(_BOX_COLUMNS)).astype({"line": np.int64, "cls": np.int64})
    owner = files.iloc[np.repeat(np.arange(len(files)), files["instances"].to_numpy(dtype=np.int64))]
    for column in ("split", "image", "label", "width", "height"):
        boxes[column] = owner[column].to_numpy()
    sizes = native_sizes(files)
    if imgsz is None and (largest := largest_side(sizes)) is not None:
        imgsz = recommended_imgsz(largest)  # native: the size training will use, before any check uses it
    # Pixels at the training imgsz: Ultralytics letterboxes the longer side to imgsz. Without
    # native sizes (label-only) assume a square image: an upper bound, so flags stay true. An
    # unresolvable "native" (no image decoded) checks nothing: NaN compares false.
    size = float("nan") if imgsz is None else float(imgsz)
    longer = boxes[["width", "height"]].max(axis=1).astype(float)
    scale_w = (boxes["width"].astype(float) * size / longer).fillna(size)
    scale_h = (boxes["height"].astype(float) * size / longer).fillna(size)
    boxes["w_px"], boxes["h_px"] = boxes["w"] * scale_w, boxes["h"] * scale_h
    boxes["w_native"], boxes["h_native"] = boxes["w"] * boxes["width"], boxes["h"] * boxes["height"]
    tiny = boxes[(boxes["w_px"] < min_box_px) | (boxes["h_px"] < min_box_px)]
    findings.extend(
        Finding.of(
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

    report = _empty_report(data_yaml, imgsz, phash_threshold, check_images, findings)
    report.dataset_root = config.root
    report.class_names = config.names
    report.splits = split_stats(images, files)
    report.classes = class_stats(images, boxes, config.names)
    report.duplicate_groups = duplicate_groups
    report.native_sizes = sizes
    largest = report.largest_native_side()
    if largest is not None:
        _size_advice(report, largest)
    if minority_class is not None and "val" in images:
        report.minority = minority_stats(boxes, config.names, minority_class, minority_val_target)
        if report.minority and report.minority.shortfall:
            report.findings.append(
                Finding.of(
                    "MINORITY_VAL_SHORTFALL",
                    data_yaml,
                    f"val has {report.minority.val_instances} {minority_class} instances, target {minority_val_target}",
                )
            )
    report._files = files
    if memo_key and cache_dir is not None:
        rows = files.astype(object).where(files.notna(), None).values.tolist()
        ResultMemo(cache_dir).put(memo_key, {"report": report.model_dump(mode="json"), "files": rows})
    return report


def _memo_key(config: DatasetConfig, params: Sequence[object], images: list[str], labels: list[str]) -> str | None:
    """Every input of a report: data.yaml as resolved, the parameters, this package's code, and the
    stat of each image, label and label folder (a new orphan label changes its folder's mtime)."""
    resolved = {
        "yaml": str(config.data_yaml),
        "names": config.names,
        "root": str(config.root),
        "splits": config.splits,
        "refused": sorted(config.refused),
        "findings": [f.model_dump(mode="json") for f in config.findings],
    }
    folders = sorted({os.path.dirname(label) for label in labels})
    extra = {"config": resolved, "params": params, "code": code_version(os.path.dirname(__file__))}
    return stat_fingerprint([str(config.data_yaml), *images, *labels, *folders], extra)


def _memoised_report(cache_dir: Path, key: str) -> ValidationReport | None:
    """The report memoised under `key`, or None (absent, or malformed: the memo is untrusted)."""
    memo = ResultMemo(cache_dir).get(key)
    try:
        report = ValidationReport.model_validate(memo["report"])  # type: ignore[index]
        report._files = pd.DataFrame(memo["files"], columns=list(FILE_COLUMNS))  # type: ignore[index]
    except (TypeError, KeyError, ValueError, ValidationError):
        return None
    return report


def _empty_report(
    data_yaml: Path, imgsz: int | None, phash_threshold: int, check_images: bool, findings: list[Finding]
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


def _label_arrays(
    results: Iterable[ParsedLabel],
) -> tuple[list[str], list[list[Finding]], np.ndarray, np.ndarray]:
    """Per label: state, findings, box count; and all boxes as one (N, 6) array
    (line, class, cx, cy, w, h), which becomes the box table without per-row objects."""
    states: list[str] = []
    findings: list[list[Finding]] = []
    counts: list[int] = []
    rows: list[tuple[int, int, float, float, float, float]] = []
    for result in results:
        states.append(result.state)
        findings.append(result.findings)
        counts.append(len(result.boxes))
        rows += result.boxes
    return states, findings, np.asarray(counts, np.int64), np.asarray(rows, np.float64).reshape(-1, 6)


def _orphan_labels(expected: set[str]) -> list[Finding]:
    label_dirs = {label.rpartition(os.sep)[0] for label in expected}
    found = []
    for folder in sorted(label_dirs):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        found += [
            Finding.of("LBL_ORPHAN", e.path, "label has no image in any split")
            for e in entries
            if e.name.endswith(".txt") and e.path not in expected
        ]
    return found


def _duplicate_finding(group: DuplicateGroup) -> Finding:
    listing = ", ".join(f"{m.split}:{m.image}" for m in group.members)
    if group.cross_split:
        splits = sorted({m.split for m in group.members}, key=split_order)
        return Finding.of(
            "DUP_CROSS_SPLIT",
            group.members[0].image,
            f"{group.kind} duplicates across {'/'.join(splits)} (leakage): {listing}",
        )
    code = "DUP_EXACT_WITHIN" if group.kind == "exact" else "DUP_NEAR_WITHIN"
    return Finding.of(
        code,
        group.members[0].image,
        f"{len(group.members)} {group.kind} duplicates in {group.members[0].split}: {listing}",
    )


def _size_advice(report: ValidationReport, largest: int) -> None:
    recommended = recommended_imgsz(largest)
    report.recommended_imgsz = recommended
    trains_at = report.imgsz or recommended
    report.compute_saved_fraction = saved = round(max(0.0, 1 - (recommended / trains_at) ** 2), 4)
    if recommended < trains_at:
        report.findings.append(
            Finding.of(
                "IMGSZ_ABOVE_NATIVE",
                report.data_yaml,
                f"largest native side is {largest} px but the recipe trains at {report.imgsz}: imgsz {recommended} "
                f"covers it with {100 * saved:.0f}% less compute",
                fix=f"set imgsz: {recommended} in the recipe",
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


def validate_for_recipe(data: Path, recipe: Recipe, cache_dir: Path | None = None) -> ValidationReport:
    """The dataset validated as ``recipe`` will train on it: its classes, its minority target, and
    its image size, where ``native`` is the dataset's recommended size (``report.imgsz``)."""
    return validate_dataset(
        data,
        imgsz=recipe.train.imgsz if isinstance(recipe.train.imgsz, int) else None,  # None: native
        phash_threshold=recipe.validation.phash_threshold,
        expected_names=recipe.classes,
        minority_class=recipe.minority_class,
        minority_val_target=recipe.rebalance.targets.get(recipe.minority_class, 18),
        cache_dir=cache_dir,
    )
