"""Raise minority-class instances in val without splitting copies of one photograph across splits.

A *group* is a connected component of images linked by exact/near duplicates (from the dataset
validation) or by a shared source stem (Roboflow ``<name>_jpg.rf.<hash>`` exports, ``_dupN``
copies). Groups always move as a unit:

1. Leak repair: a group found in several splits goes wholly to the first of those splits in
   ``leak_priority`` (default train > val > test).
2. Selection: groups are moved from train (and test only when ``move_test``) into val, greedily,
   until every per-class val target is met, preferring single photographs over groups of copies,
   then the groups that keep the other classes' train/val shares closest to the input's; ties
   are broken by a seeded shuffle. A move is only
   taken if it leaves every target still reachable and no class empty in its source split.
3. Gate split (optional ``test_targets``): the same greedy group moves, from train into test, so
   that the promotion gate's split holds enough instances of a rare class to decide on it.

The new version is a data.yaml plus image lists pointing into the original tree (Ultralytics
derives label paths from image paths, so nothing is copied and nothing in the source is
touched), a manifest, and a before/after class-balance table and plot. Same input and seed give
byte-identical outputs; rebalancing an output changes nothing.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import yaml
from pydantic import BaseModel

from phase2.dataset.duplicates import find_duplicate_groups
from phase2.dataset.index_cache import FileIndex
from phase2.dataset.labels import parse_label
from phase2.dataset.layout import SPLITS, label_path_for, load_class_names, load_data_yaml, resolve_split_images
from phase2.infra.files import atomic_path, atomic_write_json, atomic_write_text, sha256_bytes, sha256_file

VERSION_ID_LENGTH = 16
_DUP_SUFFIX = re.compile(r"_dup\d+$")
_ROBOFLOW_MARK = ".rf."


class RebalanceImpossible(ValueError):
    """A val target can't be met; ``reachable`` maps each failing class to its maximum."""

    def __init__(self, message: str, reachable: dict[str, int]):
        super().__init__(message)
        self.reachable = reachable


class DatasetError(ValueError):
    """Unusable dataset input; the message names the file (and line) and the fix."""


# ---------------------------------------------------------------- result models


class CountsTable(BaseModel):
    """Instances per split per class, and images per split."""

    instances: dict[str, dict[str, int]]
    images: dict[str, int]


class MovedGroup(BaseModel):
    group_id: str
    from_split: str
    to_split: str
    images: list[str]
    instances: dict[str, int]


class LeakMember(BaseModel):
    split: str
    image: str


class RepairedLeak(BaseModel):
    group_id: str
    kept_split: str
    members: list[LeakMember]


class RebalanceResult(BaseModel):
    data_yaml: Path
    manifest_path: Path
    balance_csv: Path
    balance_png: Path
    version_id: str
    source_version_id: str
    counts_before: CountsTable
    counts_after: CountsTable
    moved_groups: list[MovedGroup]
    repaired_leaks: list[RepairedLeak]


class RebalancePlan(BaseModel):
    """The pure outcome of planning: which split every image ends in, and why."""

    splits_after: dict[str, list[Path]]
    counts_before: CountsTable
    counts_after: CountsTable
    moved_groups: list[MovedGroup]
    repaired_leaks: list[RepairedLeak]


# ---------------------------------------------------------------- dataset reading


def read_instance_counts(images: Iterable[Path], nc: int) -> dict[Path, tuple[int, ...]]:
    """Instances per class of every image's label file; a missing label is a background image.

    Raises DatasetError at the first label error (Ultralytics would drop the whole image's labels).
    """
    counts = {}
    for image in sorted(set(images)):
        parsed = parse_label(label_path_for(image), nc)
        if errors := parsed.errors():
            error = errors[0]
            raise DatasetError(f"{error.location()}: {error.message}; {error.fix}")
        per_class = [0] * nc
        for _, cls, *_box in parsed.boxes:
            per_class[cls] += 1
        counts[image] = tuple(per_class)
    return counts


def content_hash(splits: dict[str, list[Path]], names: Sequence[str], _cache: dict[Path, str] | None = None) -> str:
    """Hash of what Ultralytics reads: per split the multiset of (image bytes, label bytes), names.

    Independent of where the files live and of list order, so a dataset and an image-list
    version with the same membership share one id.
    """
    cache: dict[Path, str] = {} if _cache is None else _cache

    def digest(path: Path) -> str:
        if path not in cache:
            cache[path] = sha256_file(path) if path.is_file() else sha256_bytes(b"")
        return cache[path]

    digests = {
        split: sorted([digest(i), digest(label_path_for(i))] for i in images)
        for split, images in sorted(splits.items())
    }
    canonical = {"names": list(names), "splits": digests}
    payload = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return sha256_bytes(payload)[:VERSION_ID_LENGTH]


def dataset_version_id(data_yaml: Path, index: FileIndex | None = None) -> str:
    """Content hash of a dataset as Ultralytics would read it (image lists, labels, names); with
    `index` (the warm validation cache) unchanged files are not re-read."""
    splits = resolve_split_images(Path(data_yaml))
    files = {f for images in splits.values() for i in images for f in (i, label_path_for(i))}
    hashes = {f: index.sha256(f) for f in files} if index is not None else None
    return content_hash(splits, load_class_names(Path(data_yaml)), hashes)


# ---------------------------------------------------------------- grouping


def source_stem(image: Path) -> str:
    """The photograph an export/copy came from: drops ``_dupN`` and Roboflow's ``.rf.<hash>``."""
    stem = _DUP_SUFFIX.sub("", image.stem)
    return stem.split(_ROBOFLOW_MARK, 1)[0]


def group_images(
    images: dict[str, list[Path]], duplicate_groups: Sequence[Sequence[Path]]
) -> list[list[tuple[str, Path]]]:
    """Connected components of (split, image) linked by duplicates, source stem or equal path.

    Sorted, so the output is deterministic.
    """
    graph = nx.Graph()
    for split, paths in images.items():
        for path in paths:
            node = (split, Path(path))
            graph.add_node(node)
            graph.add_edge(node, ("stem", source_stem(Path(path))))
            graph.add_edge(node, ("path", Path(path)))  # one file listed in two splits
    known = {p for paths in images.values() for p in map(Path, paths)}
    for group in duplicate_groups:
        members = [Path(p) for p in group if Path(p) in known]
        for a, b in itertools.pairwise(members):
            graph.add_edge(("path", a), ("path", b))
    components = []
    for component in nx.connected_components(graph):
        nodes = sorted((n for n in component if n[0] in images), key=lambda n: (n[0], str(n[1])))
        if nodes:
            components.append(nodes)
    return sorted(components, key=lambda m: str(m[0][1]))


# ---------------------------------------------------------------- planning


@dataclass
class _Group:
    group_id: str
    images: list[Path]
    counts: np.ndarray
    split: str


def _counts_table(groups: list[_Group], names: Sequence[str], splits: Sequence[str]) -> CountsTable:
    instances = {s: np.zeros(len(names), dtype=int) for s in splits}
    n_images = dict.fromkeys(splits, 0)
    for g in groups:
        instances[g.split] += g.counts
        n_images[g.split] += len(g.images)
    return CountsTable(
        instances={s: {n: int(v) for n, v in zip(names, instances[s], strict=True)} for s in splits},
        images=n_images,
    )


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros_like(counts, dtype=float)


class _State:
    """Per-split instance totals during selection."""

    def __init__(self, groups: list[_Group], splits: Sequence[str], nc: int):
        self.totals = {s: np.zeros(nc, dtype=int) for s in splits}
        for g in groups:
            self.totals[g.split] += g.counts

    def allows(self, group: _Group) -> bool:
        """Moving it must not empty any class that its source split holds."""
        source = self.totals[group.split]
        return not np.any((source > 0) & (source - group.counts <= 0))

    def move(self, group: _Group, to: str) -> None:
        self.totals[group.split] -= group.counts
        self.totals[to] += group.counts
        group.split = to


def _reachable(state: _State, movable: list[_Group], cls: int, dest: str = "val") -> int:
    """``dest`` instances of ``cls`` reachable by moving its groups, biggest first, within the rules."""
    totals = {s: t.copy() for s, t in state.totals.items()}
    reached = int(totals[dest][cls])
    for g in sorted(movable, key=lambda g: (-g.counts[cls], g.group_id)):
        if g.counts[cls] == 0 or g.split == dest:
            continue
        source = totals[g.split]
        if np.any((source > 0) & (source - g.counts <= 0)):
            continue
        source -= g.counts
        totals[dest] += g.counts
        reached += int(g.counts[cls])
    return reached


def _fill(
    state: _State,
    groups: list[_Group],
    names: list[str],
    targets: dict[str, int],
    dest: str,
    sources: tuple[str, ...],
    counts_before: dict[str, np.ndarray],
    rng: random.Random,
) -> list[MovedGroup]:
    """Move whole groups from ``sources`` into ``dest`` until every per-class target is met; ties
    are broken by ``rng``'s shuffle."""
    target_idx = {names.index(c): t for c, t in targets.items()}
    movable = [g for g in groups if g.split in sources]
    order = list(range(len(movable)))
    rng.shuffle(order)
    tiebreak = {g.group_id: order[i] for i, g in enumerate(movable)}

    unreachable = {names[c]: r for c, t in target_idx.items() if (r := _reachable(state, movable, c, dest)) < t}
    if unreachable:
        detail = "; ".join(
            f"{c}: target {targets[c]}, {dest} holds {int(state.totals[dest][names.index(c)])} after leak "
            f"repair{' and the val moves' if dest != 'val' else ''}, at most {r} reachable"
            for c, r in unreachable.items()
        )
        hint = " or allow moving test groups (move_test)" if dest == "val" and "test" not in sources else ""
        raise RebalanceImpossible(
            f"{dest} target out of reach without splitting duplicate groups or emptying a class in "
            f"{'/'.join(sources)} ({detail}); lower the target{hint}",
            unreachable,
        )

    # Other classes' shares of the input, which the selection keeps as close as it can.
    others = np.array([i not in target_idx for i in range(len(names))])
    share_goal = {s: _shares(counts_before[s])[others] for s in ("train", dest)}

    def distortion() -> float:
        return float(sum(np.abs(_shares(state.totals[s])[others] - share_goal[s]).sum() for s in share_goal))

    moved: list[MovedGroup] = []
    while deficits := {c: t - int(state.totals[dest][c]) for c, t in target_idx.items() if state.totals[dest][c] < t}:
        scored = []
        for g in movable:
            useful = sum(min(int(g.counts[c]), d) for c, d in deficits.items())
            if g.split == dest or useful == 0 or not state.allows(g):
                continue
            origin = g.split
            state.move(g, dest)
            # Copies of one photo last: in val they would count one photograph several times.
            scored.append((len(g.images) > 1, distortion(), -useful, tiebreak[g.group_id], g))
            state.move(g, origin)
        scored.sort(key=lambda s: s[:4])
        for *_, g in scored:
            origin = g.split
            state.move(g, dest)
            if all(_reachable(state, movable, c, dest) >= t for c, t in target_idx.items()):
                moved.append(
                    MovedGroup(
                        group_id=g.group_id,
                        from_split=origin,
                        to_split=dest,
                        images=[str(p) for p in g.images],
                        instances={n: int(v) for n, v in zip(names, g.counts, strict=True) if v},
                    )
                )
                break
            state.move(g, origin)
        else:
            reached = {names[c]: int(state.totals[dest][c]) for c in deficits}
            raise RebalanceImpossible(
                f"{dest} targets {targets} can't all be met together without splitting duplicate groups or "
                f"emptying a class in {'/'.join(sources)}; reached {reached}; lower a target",
                reached,
            )
    return moved


def plan_rebalance(
    images: dict[str, list[Path]],
    instance_counts: dict[Path, tuple[int, ...]],
    names: Sequence[str],
    targets: dict[str, int],
    duplicate_groups: Sequence[Sequence[Path]],
    *,
    seed: int = 0,
    leak_priority: Sequence[str] = SPLITS,
    move_test: bool = False,
    test_targets: dict[str, int] | None = None,
) -> RebalancePlan:
    """Repair cross-split leaks, then move whole groups into val until every target is met, then
    (``test_targets``) whole train groups into test the same way, for the promotion gate's split.

    Raises RebalanceImpossible (before anything is decided) when a target is out of reach.
    """
    test_targets = dict(test_targets or {})
    names = list(names)
    unknown = sorted((set(targets) | set(test_targets)) - set(names))
    if unknown:
        raise ValueError(f"unknown class(es) in targets: {unknown}; classes are {names}")
    if "train" not in images or "val" not in images:
        raise DatasetError("the dataset needs 'train' and 'val' splits to rebalance")
    if test_targets and "test" not in images:
        raise DatasetError("test targets given, but the dataset has no 'test' split; add one or drop test_targets")
    splits = [s for s in SPLITS if s in images] + sorted(set(images) - set(SPLITS))
    missing_priority = [s for s in splits if s not in leak_priority]
    if missing_priority:
        raise ValueError(f"leak_priority {list(leak_priority)} must name every split; missing {missing_priority}")
    rank = {s: i for i, s in enumerate(leak_priority)}

    groups: list[_Group] = []
    leaks: list[RepairedLeak] = []
    counts_before = {s: np.zeros(len(names), dtype=int) for s in splits}
    images_before = dict.fromkeys(splits, 0)
    for members in group_images(images, duplicate_groups):
        for split, path in members:
            counts_before[split] += instance_counts[path]
            images_before[split] += 1
        member_splits = sorted({s for s, _ in members}, key=rank.__getitem__)
        kept = member_splits[0]
        paths = sorted({p for _, p in members}, key=str)
        group_id = paths[0].name
        if len(member_splits) > 1:
            leaks.append(
                RepairedLeak(
                    group_id=group_id,
                    kept_split=kept,
                    members=[LeakMember(split=s, image=str(p)) for s, p in members],
                )
            )
        counts = np.sum([instance_counts[p] for p in paths], axis=0).astype(int)
        groups.append(_Group(group_id, paths, counts, kept))
    before = CountsTable(
        instances={s: {n: int(v) for n, v in zip(names, counts_before[s], strict=True)} for s in splits},
        images=images_before,
    )

    state = _State(groups, splits, len(names))
    sources = ("train", "test") if move_test and "test" in splits else ("train",)
    moved = _fill(state, groups, names, targets, "val", sources, counts_before, random.Random(seed))
    if test_targets:
        test_random = random.Random(f"{seed}/test")
        moved += _fill(state, groups, names, test_targets, "test", ("train",), counts_before, test_random)

    splits_after = {s: sorted((p for g in groups if g.split == s for p in g.images), key=str) for s in splits}
    return RebalancePlan(
        splits_after=splits_after,
        counts_before=before,
        counts_after=_counts_table(groups, names, splits),
        moved_groups=moved,
        repaired_leaks=leaks,
    )


# ---------------------------------------------------------------- outputs


def balance_frame(before: CountsTable, after: CountsTable):
    """Long table: split, class, instances and share of the split before/after."""
    import pandas as pd

    rows = []
    for split, per_class in before.instances.items():
        total_before = sum(per_class.values())
        total_after = sum(after.instances[split].values())
        for cls, n_before in per_class.items():
            n_after = after.instances[split][cls]
            rows.append(
                {
                    "split": split,
                    "class": cls,
                    "instances_before": n_before,
                    "instances_after": n_after,
                    "share_before_pct": round(100 * n_before / total_before, 2) if total_before else 0.0,
                    "share_after_pct": round(100 * n_after / total_after, 2) if total_after else 0.0,
                }
            )
    return pd.DataFrame(rows)


def _plot_balance(frame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(frame["split"]))
    fig, axes = plt.subplots(1, len(splits), figsize=(4.5 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        part = frame[frame["split"] == split]
        x = np.arange(len(part))
        ax.bar(x - 0.2, part["instances_before"], 0.4, label="before")
        ax.bar(x + 0.2, part["instances_after"], 0.4, label="after")
        ax.set_xticks(x, part["class"], rotation=30, ha="right")
        ax.set_title(f"{split} instances")
        ax.legend()
    fig.tight_layout()
    # No software/version stamp: the PNG bytes depend only on the numbers.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)


def _check_out_dir(out_dir: Path, data_yaml: Path, images: dict[str, list[Path]]) -> None:
    split_dirs = {p.parent.parent for paths in images.values() for p in paths}
    source_root = Path(os.path.commonpath([str(d) for d in split_dirs])) if split_dirs else data_yaml.parent
    if (out_dir / "data.yaml") == data_yaml or out_dir == source_root or source_root in out_dir.parents:
        raise DatasetError(
            f"output dir {out_dir} is inside the source dataset {source_root} (or would replace "
            f"{data_yaml}); choose a directory outside it: the source is never modified"
        )


def rebalance_validation(
    data_yaml: Path,
    out_dir: Path,
    targets: dict[str, int],
    *,
    seed: int = 0,
    duplicate_groups: list[list[Path]] | None = None,
    phash_threshold: int = 4,
    leak_priority: Sequence[str] = SPLITS,
    move_test: bool = False,
    test_targets: dict[str, int] | None = None,
) -> RebalanceResult:
    """Write a leakage-free, rebalanced version of ``data_yaml`` to ``out_dir`` (see module doc).

    ``duplicate_groups`` (lists of image paths) replaces the pHash/exact search when given.
    Writes data.yaml, train/val/test.txt, balance.csv, balance.png and, last, manifest.json.
    """
    data_yaml = Path(data_yaml).resolve()
    out_dir = Path(out_dir).resolve()
    names = load_class_names(data_yaml)
    images = {
        s: sorted((Path(p).resolve() for p in paths), key=str) for s, paths in resolve_split_images(data_yaml).items()
    }
    _check_out_dir(out_dir, data_yaml, images)
    duplicates_source = "computed" if duplicate_groups is None else "given"
    if duplicate_groups is None:
        duplicate_groups = [
            [m.image for m in group.members] for group in find_duplicate_groups(images, phash_threshold=phash_threshold)
        ]
    duplicate_groups = [[Path(p).resolve() for p in group] for group in duplicate_groups]
    counts = read_instance_counts((p for paths in images.values() for p in paths), len(names))
    plan = plan_rebalance(
        images,
        counts,
        names,
        targets,
        duplicate_groups,
        seed=seed,
        leak_priority=leak_priority,
        move_test=move_test,
        test_targets=test_targets,
    )

    emptied = [s for s in ("train", "val") if not plan.splits_after[s]]
    if emptied:
        raise DatasetError(
            f"{data_yaml}: {' and '.join(emptied)} would be empty after moving leaked duplicate groups to "
            f"{leak_priority[0]}; change leak_priority or add images to the dataset"
        )
    # An emptied test split is dropped: Ultralytics can't read an empty list.
    splits_after = {s: paths for s, paths in plan.splits_after.items() if paths}

    hashes: dict[Path, str] = {}
    source_version = content_hash(images, names, hashes)
    version_id = content_hash(splits_after, names, hashes)
    meta = load_data_yaml(data_yaml).meta
    # Lists are resolved next to this yaml (Ultralytics: no `path` key), so the yaml holds no
    # absolute location and is byte-identical wherever it is written.
    new_yaml: dict[str, Any] = {s: f"{s}.txt" for s in splits_after}
    new_yaml.update(nc=len(names), names=meta["names"])
    frame = balance_frame(plan.counts_before, plan.counts_after)
    manifest = {
        "version_id": version_id,
        "source": {"data_yaml": str(data_yaml), "content_hash": source_version},
        "seed": seed,
        "settings": {
            "targets": dict(sorted(targets.items())),
            "phash_threshold": phash_threshold,
            "duplicate_groups": duplicates_source,
            "leak_priority": list(leak_priority),
            "move_test": move_test,
            **({"test_targets": dict(sorted(test_targets.items()))} if test_targets else {}),
        },
        "counts_before": plan.counts_before.model_dump(),
        "counts_after": plan.counts_after.model_dump(),
        "repaired_leaks": [leak.model_dump() for leak in plan.repaired_leaks],
        "moved_groups": [group.model_dump() for group in plan.moved_groups],
    }

    out_dir.mkdir(parents=True, exist_ok=True)
    for split in plan.splits_after:
        if split in splits_after:
            atomic_write_text(out_dir / f"{split}.txt", "".join(f"{p}\n" for p in splits_after[split]))
        else:  # a list left by an earlier run into this dir must not look like part of this version
            (out_dir / f"{split}.txt").unlink(missing_ok=True)
    atomic_write_text(out_dir / "data.yaml", yaml.safe_dump(new_yaml, sort_keys=False))
    atomic_write_text(out_dir / "balance.csv", frame.to_csv(index=False, lineterminator="\n"))
    _plot_balance(frame, out_dir / "balance.png")
    manifest_path = atomic_write_json(out_dir / "manifest.json", manifest, sort_keys=True)

    return RebalanceResult(
        data_yaml=out_dir / "data.yaml",
        manifest_path=manifest_path,
        balance_csv=out_dir / "balance.csv",
        balance_png=out_dir / "balance.png",
        version_id=version_id,
        source_version_id=source_version,
        counts_before=plan.counts_before,
        counts_after=plan.counts_after,
        moved_groups=plan.moved_groups,
        repaired_leaks=plan.repaired_leaks,
    )


def parse_targets(specs: Iterable[str]) -> dict[str, int]:
    """``["toe_drain=18"]`` -> ``{"toe_drain": 18}``, with a clear error for bad specs."""
    targets = {}
    for spec in specs:
        cls, sep, value = spec.partition("=")
        if not sep or not cls or not value.strip().isdigit():
            raise ValueError(f"bad target {spec!r}: use CLASS=INSTANCES, e.g. toe_drain=18")
        targets[cls.strip()] = int(value)
    return targets
