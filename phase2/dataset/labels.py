"""The one reader of YOLO detection label files (``class cx cy w h`` per row, normalised).

It accepts what Ultralytics' ``verify_image_label`` accepts for a class id (any number with no
fractional part: ``2``, ``2.0``, ``2e0``) and is stricter where Ultralytics silently repairs or
drops data: every such row becomes a finding with its line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from phase2.dataset.findings import Finding, Severity
from phase2.infra.files import atomic_write_text

COORD_TOLERANCE = 0.01  # Ultralytics accepts normalised coordinates up to 1.01

LabelState = Literal["missing", "empty", "ok", "invalid"]
Box = tuple[int, float, float, float, float]  # class id, cx, cy, w, h (normalised)


@dataclass
class ParsedLabel:
    """One label file: its state, its valid boxes with their line numbers, and one finding per bad row."""

    state: LabelState
    boxes: list[tuple[int, int, float, float, float, float]] = field(default_factory=list)  # line, cls, cx, cy, w, h
    findings: list[Finding] = field(default_factory=list)

    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == Severity.error]


def parse_label(path: str | os.PathLike[str], nc: int | None = None) -> ParsedLabel:
    """Parse one YOLO detection label; tolerant of BOM, CRLF and blank lines; one finding per bad row.

    `nc` is the number of classes (None: class ids are not range-checked). A missing file is
    state "missing" (a background image); a repeated row is kept once, as Ultralytics does.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return ParsedLabel("missing")
    except OSError as e:
        return ParsedLabel("invalid", findings=[Finding.of("LBL_UNREADABLE", path, f"cannot read: {e.strerror or e}")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return ParsedLabel("invalid", findings=[Finding.of("LBL_UNREADABLE", path, f"not UTF-8 text: {e}")])
    result = ParsedLabel("empty")
    boxes, findings = result.boxes, result.findings

    def add(code: str, message: str, line: int) -> None:
        findings.append(Finding.of(code, path, message, line))

    limit = math.inf if nc is None else nc
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
                add("LBL_FIELD_COUNT", f"{n} fields, expected 5", lineno)
            continue
        first_box = first_box or lineno
        try:
            c, x, y, w, h = map(float, parts)
        except ValueError:
            bad = next(p for p in parts if not _is_float(p))
            add("LBL_NOT_NUMERIC", f"field {bad!r} is not a number", lineno)
            continue
        if (
            0 <= c < limit
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
                add("LBL_DUPLICATE_ROW", f"same box as line {seen[key]}", lineno)
            else:
                seen[key] = lineno
                boxes.append((lineno, int(c), x, y, w, h))
            continue
        if not math.isfinite(c + x + y + w + h):  # one check: nan/inf anywhere makes the sum non-finite
            add("LBL_NOT_FINITE", f"non-finite value in {line.strip()!r}", lineno)
        elif c % 1:
            add("LBL_CLASS_NOT_INT", f"class id {parts[0]!r} is not an integer", lineno)
        elif not 0 <= c < limit:
            add("LBL_CLASS_RANGE", f"class id {parts[0]!r} is not an integer in 0..{limit - 1}", lineno)
        elif w <= 0 or h <= 0:
            add("LBL_BOX_NONPOSITIVE", f"width {w} / height {h} not > 0", lineno)
        elif not (lo <= x <= hi and lo <= y <= hi and w <= hi and h <= hi):
            add("LBL_COORD_RANGE", f"coordinates {x} {y} {w} {h} not normalised to [0, 1]", lineno)
        else:  # the only failure left once the fast path rejected the row: the box crosses an image edge
            add(
                "LBL_BOX_OUTSIDE",
                f"box [{x - w / 2:.3f}, {y - h / 2:.3f}, {x + w / 2:.3f}, {y + h / 2:.3f}] extends outside the image",
                lineno,
            )
    if first_segment:
        if first_box:
            add(
                "LBL_MIXED_FORMATS",
                "file mixes polygon and box rows (Ultralytics drops the whole image)",
                first_segment,
            )
        else:
            add(
                "LBL_SEGMENT",
                "polygon (segment) rows: Ultralytics would silently convert them to boxes",
                first_segment,
            )
    if result.errors():
        result.state = "invalid"
    elif boxes:
        result.state = "ok"
    return result


def read_boxes(label_file: Path) -> list[Box]:
    """The valid boxes of a label file, in file order (a missing file has none; rows the
    validator rejects are left out)."""
    return [box[1:] for box in parse_label(label_file).boxes]


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
    atomic_write_text(out_file, "\n".join(rows) + ("\n" if rows else ""))
    return converted
