"""What dataset checks report: a :class:`Finding` with a stable code, a severity, the file and
line, and a one-line fix. The codes are the vocabulary shared by data.yaml loading, label
parsing, image inspection and the duplicate search."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel


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
    # The three path codes are errors under the worker setting PHASE2_DATA_ROOTS (paths outside its roots
    # are refused, not read) and warnings without it (a user's own machine: outside the yaml's folder).
    "YAML_PATH_ESCAPES_ROOT": (
        Severity.error,
        "put the dataset under one of the worker's PHASE2_DATA_ROOTS, or add its folder to that setting",
    ),
    "SPLIT_MISSING": (Severity.error, "create the folder/list or fix the split path in data.yaml"),
    # The finding itself lists the formats (Ultralytics' IMG_FORMATS, known only once it is imported).
    "SPLIT_EMPTY": (Severity.error, "put images in the split (a format Ultralytics reads)"),
    "SPLIT_LIST_UNREADABLE": (Severity.error, "a split .txt list must be UTF-8 text, one image path per line"),
    "SPLIT_LIST_ENTRY_IGNORED": (
        Severity.warning,
        "list only image paths with an allowed extension, no trailing spaces",
    ),
    "SPLIT_LIST_CWD_RELATIVE": (
        Severity.warning,
        "start relative entries with './' (relative to the list) or use absolute paths",
    ),
    "IMG_OUTSIDE_ROOT": (
        Severity.error,
        "put the images under one of the worker's PHASE2_DATA_ROOTS, or add their folder to that setting",
    ),
    "IMG_SYMLINK_ESCAPES": (
        Severity.error,
        "replace the symlink by a copy under PHASE2_DATA_ROOTS, or add its target's folder to that setting",
    ),
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
        "write a copy with box labels: phase2 convert-segments DATA_YAML --out NEW_DIR, then use NEW_DIR/data.yaml",
    ),
    "LBL_MIXED_FORMATS": (Severity.error, "use one format per file: all boxes or all polygons"),
    "LBL_DUPLICATE_ROW": (Severity.warning, "delete the repeated row (Ultralytics drops it silently)"),
    "LBL_BOX_TINY": (Severity.warning, "train at a larger imgsz, or drop boxes too small to learn"),
    "DUP_CROSS_SPLIT": (
        Severity.error,
        "keep each photograph in one split: phase2 rebalance DATA_YAML --target CLASS=N --out NEW_DIR does it",
    ),
    "DUP_EXACT_WITHIN": (Severity.warning, "delete the extra copies: they over-weight one photograph"),
    "DUP_NEAR_WITHIN": (Severity.info, "check whether these near-identical images should all stay"),
    "IMGSZ_ABOVE_NATIVE": (Severity.warning, "train at the recommended imgsz: larger only upsamples the images"),
    "MINORITY_VAL_SHORTFALL": (
        Severity.warning,
        "move minority-class images into val: phase2 rebalance DATA_YAML --target CLASS=N --out NEW_DIR",
    ),
}


class Finding(BaseModel):
    code: str
    severity: Severity
    file: str | None = None
    line: int | None = None
    message: str
    fix: str

    @classmethod
    def of(
        cls,
        code: str,
        file: Path | str | None,
        message: str,
        line: int | None = None,
        fix: str | None = None,
        severity: Severity | None = None,
    ) -> Finding:
        """A finding of a known code: its severity and fix come from CODES unless given."""
        default_severity, default_fix = CODES[code]
        return cls(
            code=code,
            severity=severity or default_severity,
            file=None if file is None else str(file),
            line=line,
            message=message,
            fix=fix or default_fix,
        )

    def location(self) -> str:
        return f"{self.file}:{self.line}" if self.line else (self.file or "-")
