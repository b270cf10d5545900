"""What changed between two versions of a dataset: images, labels, class counts, new leakage.

A dataset's *listing* records its content: per split every image (path relative to the dataset
root, sha256, perceptual hash) with its boxes. Listings are kept in the warm validation cache
(by dataset version id) and registered with each model version (``dataset/listing.json``), so
"the data production was trained on" can be compared with today's data without its files.

Images are matched by content: a renamed or re-split file is *moved*, not removed + added; a
path whose content changed is *modified*. Boxes of an image are matched first exactly, then by
IoU (optimal assignment, IoU >= :data:`BOX_MATCH_IOU`): a match with another class is a class
change, with other coordinates a move; the rest were added or removed.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ValidationError

from phase2.dataset.duplicates import find_duplicate_groups
from phase2.dataset.images import FactsCache, inspect_images
from phase2.dataset.index_cache import FileIndex
from phase2.dataset.layout import check_names, data_roots, label_path_str, load_data_yaml, resolve_splits, split_order
from phase2.dataset.rebalance import dataset_version_id
from phase2.infra.files import atomic_write_text, sha256_bytes

if TYPE_CHECKING:  # the registry is only passed in: the dataset package does not depend on it
    from phase2.registry.registry import ModelVersion, Registry

LISTING_FILE = "listing.json"  # in a run's dataset stage dir
REGISTRY_LISTING = "dataset/listing.json"  # the same file in a registered model version
BOX_MATCH_IOU = 0.5
_VERSION_ID = re.compile(r"^[0-9a-f]{16}$")

Box = tuple[int, float, float, float, float]  # class, cx, cy, w, h (normalised, as in the label file)


class DiffError(ValueError):
    """A diff input that can't be read; the message names it and the fix."""


class ListedImage(BaseModel):
    image: str  # relative to the dataset root
    sha256: str | None
    phash: str | None  # 16 hex digits
    boxes: list[Box]


class DatasetListing(BaseModel):
    format: Literal[1] = 1
    version_id: str
    data_yaml: str
    names: list[str]
    splits: dict[str, list[ListedImage]]


def dataset_listing(data_yaml: Path, cache_dir: Path | None = None) -> DatasetListing:
    """The content of the dataset `data_yaml` (read-only); with `cache_dir` (the warm validation
    cache) unchanged files are not re-read, and the listing is kept there under its version id."""
    data_yaml = Path(data_yaml).resolve()
    config = load_data_yaml(data_yaml, data_roots())
    check_names(config)
    resolve_splits(config, config.roots)
    root = str(config.root or data_yaml.parent)
    paths = sorted({p for ps in config.splits.values() for p in ps if p not in config.refused})
    facts = FactsCache(cache_dir) if cache_dir is not None else None
    index = FileIndex.load(cache_dir)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results, labels = inspect_images(
            paths, pool, facts.facts if facts else None, [label_path_str(p) for p in paths], len(config.names), index
        )()
    by_path = {
        p: ListedImage(
            image=os.path.relpath(p, root),
            sha256=r.sha256,
            phash=None if r.phash is None else f"{r.phash:016x}",
            boxes=[box[1:] for box in parsed.boxes],
        )
        for p, r, parsed in zip(paths, results, labels, strict=True)
    }
    listing = DatasetListing(
        version_id=dataset_version_id(data_yaml, index),
        data_yaml=str(data_yaml),
        names=config.names,
        splits={s: [by_path[p] for p in ps if p in by_path] for s, ps in config.splits.items()},
    )
    if cache_dir is not None and facts is not None:
        facts.save(results)
        index.save()
        save_listing(listing, cache_dir)
    return listing


def save_listing(listing: DatasetListing, cache_dir: Path) -> Path:
    return atomic_write_text(Path(cache_dir) / "listings" / f"{listing.version_id}.json", listing.model_dump_json())


def parse_listing(data: bytes, where: str) -> DatasetListing:
    try:
        return DatasetListing.model_validate_json(data)
    except ValidationError as exc:
        raise DiffError(f"{where}: not a dataset listing ({exc.errors()[0]['msg']})") from None


def resolve_listing(spec: str, cache_dir: Path, open_registry: Callable[[str], tuple[Registry, str]]) -> DatasetListing:
    """A data.yaml path (or its folder), a dataset version id (16 hex digits, from the cache), or a
    registry reference NAME:VERSION|ALIAS (the dataset that model version was trained on);
    `open_registry(ref)` gives (the registry of the ref's model name, the rest of the ref)."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "data.yaml").is_file():
        path = path / "data.yaml"
    if path.is_file():
        return dataset_listing(path, cache_dir)
    if _VERSION_ID.match(spec):
        return _cached_listing(spec, cache_dir, spec)
    if ":" in spec and not spec.endswith((".yaml", ".yml")):
        registry, rest = open_registry(spec)
        return registry_listing(registry.get(rest), registry, cache_dir)
    raise DiffError(
        f"{spec}: no such data.yaml; give a data.yaml path, a dataset version id (16 hex digits) "
        "or a registry reference such as site-inspection-detector:production"
    )


def _cached_listing(version_id: str, cache_dir: Path, what: str) -> DatasetListing:
    file = Path(cache_dir) / "listings" / f"{version_id}.json"
    if not file.is_file():
        raise DiffError(
            f"{what}: no listing of dataset version {version_id} in {file.parent}; diff against its data.yaml "
            "instead (a listing is kept for every dataset `phase2 diff` or a pipeline run has read here)"
        )
    return parse_listing(file.read_bytes(), str(file))


def registry_listing(version: ModelVersion, registry: Registry, cache_dir: Path) -> DatasetListing:
    """The listing of the dataset `version` was trained on: registered with it, else the cached
    listing of its recorded source version."""
    entry = version.files.get(REGISTRY_LISTING)
    if entry is None:  # registered before listings were: the local cache may know its source version
        source = version.dataset.get("source_version_id")
        if not source:
            raise DiffError(f"{version.ref} records no dataset version (registered without lineage)")
        return _cached_listing(str(source), cache_dir, f"{version.ref} (registered without {REGISTRY_LISTING})")
    data, _ = registry.store.get_bytes(registry.version_prefix(version.version) + REGISTRY_LISTING)
    if sha256_bytes(data) != entry.sha256:
        from phase2.registry.storage import IntegrityError

        raise IntegrityError(f"{version.ref}: {REGISTRY_LISTING} does not match the sha256 in its manifest")
    return parse_listing(data, f"{version.ref} {REGISTRY_LISTING}")


# ---------------------------------------------------------------- comparing


def _box_json(box: Box, names: Sequence[str]) -> dict[str, Any]:
    cls = names[box[0]] if 0 <= box[0] < len(names) else str(box[0])
    return {"class": cls, "box": [round(v, 6) for v in box[1:]]}


def _xyxy(boxes: list[Box]) -> np.ndarray:
    b = np.asarray([box[1:] for box in boxes], dtype=np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], axis=1)


def compare_boxes(
    old: list[Box], new: list[Box], old_names: Sequence[str], new_names: Sequence[str]
) -> dict[str, list[dict[str, Any]]]:
    """Boxes added, removed, class changed and moved (same class, other coordinates) in one image."""

    def key(box: Box, names: Sequence[str]) -> tuple[Any, ...]:
        return (_box_json(box, names)["class"], *(round(v, 6) for v in box[1:]))

    same = Counter(key(b, old_names) for b in old) & Counter(key(b, new_names) for b in new)
    left_old: list[Box] = []
    left_new: list[Box] = []
    for boxes, names, left in ((old, old_names, left_old), (new, new_names, left_new)):
        unmatched = same.copy()
        for box in boxes:
            if unmatched[key(box, names)] > 0:
                unmatched[key(box, names)] -= 1
            else:
                left.append(box)
    change: dict[str, list[dict[str, Any]]] = {"added": [], "removed": [], "class_changed": [], "moved": []}
    paired: set[tuple[int, int]] = set()
    if left_old and left_new:
        from scipy.optimize import linear_sum_assignment
        from ultralytics.utils.metrics import bbox_ioa

        iou = bbox_ioa(_xyxy(left_old), _xyxy(left_new), iou=True)
        rows, cols = linear_sum_assignment(-iou)
        paired = {(r, c) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= BOX_MATCH_IOU}
        for r, c in sorted(paired):
            a, b = left_old[r], left_new[c]
            old_cls, new_cls = _box_json(a, old_names)["class"], _box_json(b, new_names)["class"]
            if old_cls != new_cls:
                change["class_changed"].append({"from": old_cls, "to": new_cls, "box": _box_json(b, new_names)["box"]})
            else:
                moved = {"from": _box_json(a, old_names)["box"], "to": _box_json(b, new_names)["box"]}
                change["moved"].append({"class": new_cls, **moved, "iou": round(float(iou[r, c]), 4)})
    change["removed"] = [_box_json(b, old_names) for i, b in enumerate(left_old) if i not in {r for r, _ in paired}]
    change["added"] = [_box_json(b, new_names) for i, b in enumerate(left_new) if i not in {c for _, c in paired}]
    return change


def _by_path(listing: DatasetListing) -> dict[str, tuple[str, ListedImage]]:
    found: dict[str, tuple[str, ListedImage]] = {}
    for split, items in listing.splits.items():
        for item in items:
            found.setdefault(item.image, (split, item))
    return found


def _leak_groups(listing: DatasetListing, phash_threshold: int) -> list[dict[str, Any]]:
    images = {s: [i.image for i in items] for s, items in listing.splits.items()}
    hashes = {
        i.image: (i.sha256, None if i.phash is None else int(i.phash, 16))
        for items in listing.splits.values()
        for i in items
    }
    groups = find_duplicate_groups(images, phash_threshold, hashes=hashes)
    return [
        {"kind": g.kind, "members": [{"split": m.split, "image": str(m.image)} for m in g.members]}
        for g in groups
        if g.cross_split
    ]


def _leak_key(group: dict[str, Any], images: dict[str, tuple[str, ListedImage]]) -> set[tuple[str, str | None]]:
    return {(m["split"], images[m["image"]][1].sha256) for m in group["members"]}


def _per_class(old: DatasetListing, new: DatasetListing) -> dict[str, dict[str, dict[str, int]]]:
    def counts(listing: DatasetListing) -> dict[str, Counter[str]]:
        return {
            s: Counter(listing.names[b[0]] for i in items for b in i.boxes if 0 <= b[0] < len(listing.names))
            for s, items in listing.splits.items()
        }

    before, after = counts(old), counts(new)
    names = list(dict.fromkeys([*old.names, *new.names]))
    splits = sorted(set(before) | set(after), key=split_order)
    return {
        s: {n: {"old": before.get(s, Counter())[n], "new": after.get(s, Counter())[n]} for n in names} for s in splits
    }


def diff_listings(old: DatasetListing, new: DatasetListing, phash_threshold: int = 4) -> dict[str, Any]:
    """The change from `old` to `new` (see the module doc); paths are relative to each dataset root."""
    before, after = _by_path(old), _by_path(new)
    common = sorted(before.keys() & after.keys())
    modified = [p for p in common if before[p][1].sha256 != after[p][1].sha256]
    new_by_content: dict[str | None, list[str]] = defaultdict(list)
    for p in sorted(after.keys() - before.keys()):
        new_by_content[after[p][1].sha256].append(p)
    moved, removed = [], []
    for p in sorted(before.keys() - after.keys()):
        sha = before[p][1].sha256
        if sha is not None and new_by_content.get(sha):
            moved.append([p, new_by_content[sha].pop(0)])
        else:
            removed.append(p)
    arrived = {n for _, n in moved}
    added = [p for p in sorted(after.keys() - before.keys()) if p not in arrived]
    changed = []
    for old_path, new_path in [(p, p) for p in common] + [(a, b) for a, b in moved]:
        change = compare_boxes(before[old_path][1].boxes, after[new_path][1].boxes, old.names, new.names)
        if any(change.values()):
            changed.append({"image": new_path, **change})
    old_leaks = [
        {(m["split"], before[m["image"]][1].sha256) for m in g["members"]} for g in _leak_groups(old, phash_threshold)
    ]
    new_leaks = [
        g
        for g in _leak_groups(new, phash_threshold)
        if not any({(m["split"], after[m["image"]][1].sha256) for m in g["members"]} <= known for known in old_leaks)
    ]
    return {
        "old": old.version_id,
        "new": new.version_id,
        "images": {"added": added, "removed": removed, "modified": modified, "moved": moved},
        "labels": {"changed": changed},
        "per_class": _per_class(old, new),
        "new_leaks": new_leaks,
    }


def summary_line(diff: dict[str, Any]) -> str:
    """One line: what changed (for logs and webhook messages)."""
    images, labels = diff["images"], diff["labels"]["changed"]
    if not (any(images.values()) or labels or diff["new_leaks"]):
        return f"no change from dataset {diff['old']} to {diff['new']}"
    boxes = Counter(k for change in labels for k in ("added", "removed", "class_changed", "moved") for _ in change[k])
    parts = [f"{len(images[k])} images {k}" for k in ("added", "removed", "modified", "moved") if images[k]]
    if labels:
        detail = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in boxes.items() if n)
        parts.append(f"labels of {len(labels)} images changed (boxes: {detail})")
    if diff["new_leaks"]:
        parts.append(f"{len(diff['new_leaks'])} new cross-split duplicate groups")
    return f"dataset {diff['old']} -> {diff['new']}: " + "; ".join(parts)


def diff_markdown(diff: dict[str, Any], limit: int = 20) -> str:
    """The "What changed" section: a summary, the image and label changes, class counts per split."""
    lines = [summary_line(diff), ""]
    for kind, paths in diff["images"].items():
        shown = [" -> ".join(p) if isinstance(p, list) else p for p in paths[:limit]]
        if shown:
            more = f" (+{len(paths) - limit} more)" if len(paths) > limit else ""
            lines.append(f"- images {kind}: " + ", ".join(f"`{s}`" for s in shown) + more)
    for change in diff["labels"]["changed"][:limit]:
        counts = ", ".join(f"{len(v)} {k.replace('_', ' ')}" for k, v in change.items() if k != "image" and v)
        lines.append(f"- labels of `{change['image']}`: {counts}")
    lines += ["", "| split | class | old | new |", "|---|---|---:|---:|"]
    for split, per_class in diff["per_class"].items():
        lines += [f"| {split} | {name} | {n['old']} | {n['new']} |" for name, n in per_class.items()]
    return "\n".join(lines) + "\n"
