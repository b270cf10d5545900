"""Duplicate images: exact copies (same bytes) and near copies (close perceptual hashes), within and across splits."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from phase2.dataset.images import inspect_images
from phase2.dataset.layout import split_order


class GroupMember(BaseModel):
    split: str
    image: Path


class DuplicateGroup(BaseModel):
    kind: Literal["exact", "near"]
    members: list[GroupMember]
    cross_split: bool


def _hash_images(paths: list[Path | str]) -> dict[Path | str, tuple[str | None, int | None]]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = inspect_images([os.fspath(p) for p in paths], pool)()[0]
    return {p: (r.sha256, r.phash) for p, r in zip(paths, results, strict=True)}


def find_duplicate_groups(
    images: Mapping[str, Sequence[Path | str]],
    phash_threshold: int = 4,
    hashes: Mapping[Any, tuple[str | None, int | None]] | None = None,
) -> list[DuplicateGroup]:
    """Exact (sha256 of the bytes) and near (perceptual-hash Hamming <= threshold) duplicate groups.

    A near group joins images whose content differs but that look alike (with their exact copies).
    `hashes` ({image: (sha256, phash)}, keyed like `images`) skips re-reading images already hashed.
    """
    if hashes is None:
        hashes = _hash_images(sorted({p for ps in images.values() for p in ps}, key=str))
    members = [(split, path) for split, paths in images.items() for path in paths]
    by_sha: dict[str, list[tuple[str, Path | str]]] = defaultdict(list)
    for split, path in members:
        sha = hashes.get(path, (None, None))[0]
        if sha:
            by_sha[sha].append((split, path))

    def group(kind: Literal["exact", "near"], items: list[tuple[str, Path | str]]) -> DuplicateGroup:
        items = sorted(set(items), key=lambda m: (split_order(m[0]), str(m[1])))
        return DuplicateGroup(
            kind=kind,
            members=[GroupMember(split=s, image=Path(p)) for s, p in items],
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
