"""Where a YOLO dataset's files are: data.yaml, its splits, the image formats, the label beside each image.

Splits are resolved the way Ultralytics 8.4 resolves them (``check_det_dataset`` +
``BaseDataset.get_img_files``), so what the stages read is exactly what training would read.
Problems that do not stop resolution become findings on the :class:`DatasetConfig`.
"""

from __future__ import annotations

import ast
import functools
import glob
import importlib.util
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from phase2.dataset.findings import CODES, Finding, Severity
from phase2.infra.settings import state_dir

SPLITS = ("train", "val", "test")
# A worker setting: the folders (os.pathsep-separated) a flow run may read datasets from. Set, every
# resolved list, image and label path must lie inside one of them (symlinks followed, whatever
# `path:` says) or it is refused unread; unset (a user's own machine), anything that exists is read.
DATA_ROOTS_ENV = "PHASE2_DATA_ROOTS"
_OUTSIDE_CODES = ("YAML_PATH_ESCAPES_ROOT", "IMG_OUTSIDE_ROOT", "IMG_SYMLINK_ESCAPES")
_LOCAL_FIX = f"nothing to do on this machine; a shared worker reads it only if it lies under its {DATA_ROOTS_ENV}"

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~10x faster where available
_IMAGES_DIR, _LABELS_DIR = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"


@functools.cache
def image_formats() -> frozenset[str]:
    """Ultralytics' IMG_FORMATS: the extensions (no dot) that training reads.

    Read from the set literal in Ultralytics' own source rather than imported: the import costs
    ~1.3 s (torch) and prints Ultralytics' banners, more than doubling a `phase2 validate` run.
    Should the source stop holding a literal, it is imported after all."""
    package = importlib.util.find_spec("ultralytics")
    if package and package.submodule_search_locations:
        try:
            source = Path(package.submodule_search_locations[0], "data", "utils.py").read_text()
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["IMG_FORMATS"]:
                    return frozenset(ast.literal_eval(node.value))
        except (OSError, SyntaxError, ValueError):
            pass
    from ultralytics.data.utils import IMG_FORMATS

    return frozenset(IMG_FORMATS)


def split_order(split: str) -> int:
    """Sort key of a split name: train, val, test, then anything else."""
    return SPLITS.index(split) if split in SPLITS else len(SPLITS)


class DatasetConfigError(ValueError):
    """data.yaml or a split cannot be resolved; the message names the file and the fix."""

    def __init__(self, code: str, file: Path | str, message: str, line: int | None = None, fix: str | None = None):
        self.code, self.file, self.line = code, str(file), line
        self.fix = fix or CODES[code][1]
        self.detail = message
        where = f"{file}:{line}" if line else str(file)
        super().__init__(f"{where}: {message} [{code}]. Fix: {self.fix}")

    @classmethod
    def from_finding(cls, finding: Finding) -> DatasetConfigError:
        return cls(finding.code, finding.file or "-", finding.message, finding.line, finding.fix)

    def finding(self) -> Finding:
        return Finding.of(self.code, self.file, self.detail, self.line, self.fix)


@dataclass
class DatasetConfig:
    """A loaded data.yaml: its mapping, the line of each top-level key, and what resolving it found."""

    data_yaml: Path
    meta: dict[str, Any]
    key_lines: dict[str, int]
    names: list[str] = field(default_factory=list)
    root: Path | None = None
    splits: dict[str, list[str]] = field(default_factory=dict)  # str, not Path: 100k Paths cost ~1 s
    findings: list[Finding] = field(default_factory=list)
    roots: tuple[str, ...] = ()  # PHASE2_DATA_ROOTS (real paths) it was resolved under; () = unrestricted
    refused: set[str] = field(default_factory=set)  # images (or their labels) outside the roots: never read

    def add(
        self,
        code: str,
        message: str,
        key: str | None = None,
        *,
        file: Path | str | None = None,
        line: int | None = None,
        fix: str | None = None,
        severity: Severity | None = None,
    ) -> None:
        """A finding in data.yaml at the line of `key`, or in another `file` at `line`."""
        if file is None:
            file, line = self.data_yaml, self.key_lines.get(key) if key else None
        self.findings.append(Finding.of(code, file, message, line, fix, severity))


def _key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key, for findings that point into data.yaml."""
    try:
        node = yaml.compose(text, Loader=_YAML_LOADER)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def load_data_yaml(data_yaml: Path, roots: Sequence[str] | None = None) -> DatasetConfig:
    """Read data.yaml and check its keys' types; raises DatasetConfigError when it can't be used at all
    (or lies outside `roots`, None: the PHASE2_DATA_ROOTS setting)."""
    data_yaml = Path(data_yaml)
    roots = data_roots() if roots is None else roots
    if not inside_roots(data_yaml, roots):
        raise DatasetConfigError("YAML_PATH_ESCAPES_ROOT", data_yaml, f"outside {_roots_text(roots)}; not read")
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
    config = DatasetConfig(data_yaml=data_yaml, meta=meta, key_lines=_key_lines(text))
    lines = config.key_lines
    key_types: dict[str, tuple[type, ...]] = {
        "path": (str,),
        "train": (str, list),
        "val": (str, list),
        "test": (str, list),
        "names": (list, dict),
    }
    for key, types in key_types.items():
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
        config.add("YAML_VALIDATION_KEY", "'validation:' used instead of 'val:'", "validation")
    for key in ("train", "val"):
        if not meta.get(key):
            raise DatasetConfigError(
                "YAML_SPLIT_KEY_MISSING", data_yaml, f"'{key}:' key missing or empty", line=lines.get(key)
            )
    return config


def check_names(config: DatasetConfig, expected_names: Sequence[str] | None = None) -> None:
    """Set config.names from 'names:' (list or {id: name}); check nc, repeats and, when given, the
    expected names in order."""
    meta, add = config.meta, config.add
    names = meta.get("names")
    if names is None:
        add("YAML_NAMES_MISSING", "'names:' missing", "names")
        return
    if isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError):
            by_id = {}
        if not by_id or sorted(by_id) != list(range(len(by_id))):
            add("YAML_NAMES_INVALID", f"names keys {list(names)} are not 0..{len(names) - 1}", "names")
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
            add("YAML_NC_NOT_INT", f"'nc: {nc}' is not an integer", "nc")
        elif nc_int != len(names):
            add("YAML_NC_MISMATCH", f"nc is {nc_int} but names has {len(names)} entries", "nc")
    repeated = sorted(n for n, c in Counter(names).items() if c > 1)
    if repeated:
        add("YAML_NAMES_DUPLICATE", f"class names repeated: {repeated}", "names")
    if expected_names and list(names) != list(expected_names):
        add("YAML_NAMES_EXPECTED", f"names are {names}, the recipe expects {list(expected_names)}", "names")


def load_class_names(data_yaml: Path) -> list[str]:
    """Class names in id order from a data.yaml (list or {id: name} form); raises DatasetConfigError
    when data.yaml or its names can't be used."""
    config = load_data_yaml(Path(data_yaml))
    check_names(config)
    if not config.names:
        problem = next((f for f in config.findings if f.code in {"YAML_NAMES_MISSING", "YAML_NAMES_INVALID"}), None)
        raise DatasetConfigError.from_finding(
            problem or Finding.of("YAML_NAMES_MISSING", data_yaml, "'names:' is empty", config.key_lines.get("names"))
        )
    return config.names


def _datasets_dir() -> Path:
    from ultralytics.utils import DATASETS_DIR  # only needed for the relative-`path:` trap

    return Path(DATASETS_DIR)


def is_within(path: str | Path, root: str | Path) -> bool:
    """Whether `path` is `root` or below it (lexically, after normalising '..')."""
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def data_roots(setting: str | None = None) -> tuple[str, ...]:
    """The PHASE2_DATA_ROOTS setting (or `setting`) as real absolute paths; () when unset or empty.
    When set, the state dir is one of them: a run reads the dataset version it wrote there."""
    raw = os.environ.get(DATA_ROOTS_ENV, "") if setting is None else setting
    roots = [p.strip() for p in raw.split(os.pathsep) if p.strip()]
    return tuple(os.path.realpath(p) for p in roots + [str(state_dir())]) if roots else ()


@functools.lru_cache(maxsize=4096)
def _realdir(directory: str) -> str:
    return os.path.realpath(directory)


def real_path(path: str | Path) -> str:
    """os.path.realpath with the directory part cached: one lstat per file instead of one per path
    component (the images of a split share a handful of directories)."""
    path = os.fspath(path)
    if os.path.islink(path):
        return os.path.realpath(path)
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(_realdir(directory), name)


def inside_roots(path: str | Path, roots: Sequence[str]) -> bool:
    """Whether `path`, symlinks followed, lies inside one of `roots` (always True without roots)."""
    if not roots:
        return True
    real = real_path(path)
    return any(is_within(real, root) for root in roots)


def _roots_text(roots: Sequence[str]) -> str:
    return f"{DATA_ROOTS_ENV}={os.pathsep.join(roots)}"


def _has_image_extension(path: str) -> bool:
    return path.rpartition(".")[-1].lower() in image_formats()


def _check_images_within(config: DatasetConfig, split: str, images: list[str], source: Path) -> None:
    """Under PHASE2_DATA_ROOTS: refuse (one error each) images, or their labels, outside the roots.
    Without it: one warning for the images that `source` (inside the yaml's folder) lists outside it."""
    if config.roots:
        for image in images:
            label = label_path_str(image)
            if not inside_roots(image, config.roots):
                lexical = any(is_within(os.path.abspath(image), r) for r in config.roots)
                code = "IMG_SYMLINK_ESCAPES" if lexical else "IMG_OUTSIDE_ROOT"
                what = f"symlink to {real_path(image)}" if lexical else "image"
                config.add(code, f"{what} is outside {_roots_text(config.roots)}; not read", file=image)
                config.refused.add(image)
            elif not inside_roots(label, config.roots):
                config.add("IMG_OUTSIDE_ROOT", f"label is outside {_roots_text(config.roots)}; not read", file=label)
                config.refused.add(image)
        return
    folder = str(config.data_yaml.resolve().parent)
    outside = [image for image in images if not is_within(os.path.abspath(image), folder)]
    if outside:
        config.add(
            "IMG_OUTSIDE_ROOT",
            f"{len(outside)} of the {len(images)} {split} images lie outside the yaml's folder {folder} "
            f"(first: {outside[0]})",
            file=source,
            fix=_LOCAL_FIX,
            severity=Severity.warning,
        )


def resolve_splits(config: DatasetConfig, roots: Sequence[str] | None = None) -> None:
    """Fill config.root/splits like check_det_dataset + get_img_files; problems become findings.

    `roots` (None: the PHASE2_DATA_ROOTS setting) are the only folders it may read from; paths
    outside them are errors and are not read. Without roots, paths outside the yaml's folder are
    warnings (Ultralytics reads them)."""
    meta, file, add = config.meta, config.data_yaml, config.add
    config.roots = data_roots() if roots is None else tuple(roots)
    folder = str(file.resolve().parent)
    if meta.get("path"):
        root = Path(meta["path"])
        if not root.is_absolute():
            add(
                "YAML_PATH_RELATIVE",
                f"relative 'path: {meta['path']}' resolves against the "
                "current directory, or else Ultralytics' datasets_dir, not the yaml's folder",
                "path",
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
        missing = False
        for target in targets:
            if not inside_roots(target, config.roots):
                message = f"{split} path {target} is outside {_roots_text(config.roots)}; not read"
                add("YAML_PATH_ESCAPES_ROOT", message, split)
                missing = True
                continue
            outside_folder = not is_within(target, folder)
            if not config.roots and outside_folder:
                message = f"{split} path {target} is outside the yaml's folder {folder}"
                add("YAML_PATH_ESCAPES_ROOT", message, split, fix=_LOCAL_FIX, severity=Severity.warning)
            if target.is_dir():
                found = glob.glob(str(Path(glob.escape(str(target))) / "**" / "*.*"), recursive=True)
            elif target.is_file():
                found = _read_image_list(target, split, config)
            else:
                add("SPLIT_MISSING", f"{split}: {target} does not exist", split)
                missing = True
                continue
            found = [x for x in found if _has_image_extension(x)]
            if config.roots or (target.is_file() and not outside_folder):
                _check_images_within(config, split, found, target)
            images += found
        kept = sorted(x for x in images if _has_image_extension(x))
        if not kept and not missing:
            add(
                "SPLIT_EMPTY",
                f"{split}: no images found in {', '.join(map(str, targets))}",
                split,
                fix=f"put images in the split (allowed formats: {', '.join(sorted(image_formats()))})",
            )
        config.splits[split] = kept


def _read_image_list(list_file: Path, split: str, config: DatasetConfig) -> list[str]:
    try:
        text = list_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        config.add("SPLIT_LIST_UNREADABLE", f"{split} list unreadable: {e}", file=list_file)
        return []
    parent = str(list_file.parent) + os.sep
    entries = []
    for lineno, raw in enumerate(text.strip().splitlines(), 1):
        entry = raw.replace("./", parent, 1) if raw.startswith("./") else raw
        if not raw.strip():
            continue
        if not _has_image_extension(entry):
            config.add(
                "SPLIT_LIST_ENTRY_IGNORED",
                f"Ultralytics ignores {raw!r} (extension not an image format)",
                file=list_file,
                line=lineno,
            )
        elif not os.path.isabs(entry):
            config.add(
                "SPLIT_LIST_CWD_RELATIVE",
                f"{raw!r} resolves against the current directory",
                file=list_file,
                line=lineno,
            )
        entries.append(entry)
    return entries


def resolve_split_images(data_yaml: Path) -> dict[str, list[Path]]:
    """Images of each split ({'train': [...], 'val': [...], 'test': [...]}) as Ultralytics resolves them.

    Raises DatasetConfigError (file, line, fix) when data.yaml or a split cannot be resolved.
    """
    config = load_data_yaml(Path(data_yaml))
    resolve_splits(config)
    fatal = [
        f
        for f in config.findings
        if (f.code.startswith("SPLIT_") or f.code in _OUTSIDE_CODES) and f.severity == Severity.error
    ]
    if fatal:
        raise DatasetConfigError.from_finding(fatal[0])
    return {split: [Path(p) for p in paths] for split, paths in config.splits.items()}


def label_path_str(image: str) -> str:
    """label_path_for on plain strings (the validator maps 100k images; Path objects cost ~1 s there)."""
    return _LABELS_DIR.join(image.rsplit(_IMAGES_DIR, 1)).rsplit(".", 1)[0] + ".txt"


def label_path_for(image: Path | str) -> Path:
    """Ultralytics' img2label_paths rule: last /images/ -> /labels/, extension -> .txt."""
    return Path(label_path_str(os.fspath(image)))
