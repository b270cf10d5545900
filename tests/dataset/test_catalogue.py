"""A catalogue of generated malformed datasets: each defect yields its own code, file and line.

Every case starts from a small valid dataset (distinct random JPEGs, so no accidental near
duplicates), applies one defect, validates, and looks for the specific finding. Together the
cases cover every code the validator can emit.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from phase2.dataset.findings import CODES
from phase2.dataset.labels import convert_segment_labels, parse_label
from phase2.dataset.validation import validate_dataset
from tests.dataset.builders import CLASS_NAMES, MINORITY_CLASS, edit_yaml, make_dataset, noise_jpeg, set_yaml, yaml_line

IMGSZ = 64  # the generated images are 64 px: no IMGSZ_ABOVE_NATIVE noise unless a case asks for it


def write_label(root: Path, rows: str, name: str = "train0") -> tuple[Path, None]:
    label = root / "train" / "labels" / f"{name}.txt"
    label.write_bytes(rows.encode() if isinstance(rows, str) else rows)
    return label, None


def label_case(rows: str, line: int) -> Callable[[Path], tuple[Path, int]]:
    def apply(root: Path) -> tuple[Path, int]:
        return write_label(root, rows)[0], line

    return apply


# ---------------------------------------------------------------- defects (each returns file, line)


def yaml_parse(root):
    set_yaml(root, "train: ./train/images\nval: ./val/images\nnames: [rock_toe, slope_drain\nnc: 4\n")
    return root / "data.yaml", 4


def yaml_not_mapping(root):
    set_yaml(root, "- ./train/images\n- ./val/images\n")
    return root / "data.yaml", None


def yaml_unreadable(root):
    os.rename(root / "data.yaml", root / "data.json")
    return root / "data.json", None


def yaml_key_type(root):
    edit_yaml(root, train=5)
    return root / "data.yaml", yaml_line(root, "train")


def yaml_split_key_missing(root):
    edit_yaml(root, val=None)
    return root / "data.yaml", None


def yaml_validation_key(root):
    set_yaml(root, (root / "data.yaml").read_text().replace("val:", "validation:"))
    return root / "data.yaml", yaml_line(root, "validation")


def yaml_names_missing(root):
    edit_yaml(root, names=None)
    return root / "data.yaml", None


def yaml_nc_not_int(root):
    edit_yaml(root, nc="four")
    return root / "data.yaml", yaml_line(root, "nc")


def yaml_nc_mismatch(root):
    edit_yaml(root, nc=5)
    return root / "data.yaml", yaml_line(root, "nc")


def yaml_names_invalid(root):
    edit_yaml(root, names={0: "rock_toe", 2: "toe_drain"})
    return root / "data.yaml", yaml_line(root, "names")


def yaml_names_duplicate(root):
    edit_yaml(root, names=["rock_toe", "rock_toe", "toe_drain", "vegetation"])
    return root / "data.yaml", yaml_line(root, "names")


def yaml_names_expected(root):
    edit_yaml(root, names=["slope_drain", "rock_toe", "toe_drain", "vegetation"])
    return root / "data.yaml", yaml_line(root, "names")


def yaml_path_relative(root):
    edit_yaml(root, path="site-relative")
    return root / "data.yaml", yaml_line(root, "path")


def yaml_path_escapes_root(root):
    outside = root.parent / f"{root.name}-outside" / "images"
    noise_jpeg(outside / "x.jpg", 99)
    edit_yaml(root, test=str(Path("..") / outside.parent.name / "images"))
    return root / "data.yaml", yaml_line(root, "test")


def split_missing(root):
    edit_yaml(root, test="./nowhere/images")
    return root / "data.yaml", yaml_line(root, "test")


def split_empty(root):
    shutil.rmtree(root / "test")
    (root / "test" / "images").mkdir(parents=True)
    return root / "data.yaml", yaml_line(root, "test")


def split_list_unreadable(root):
    (root / "test.txt").write_bytes(b"\xff\xfe\x00bad")
    edit_yaml(root, test="test.txt")
    return root / "test.txt", None


def split_list_entry_ignored(root):
    (root / "test.txt").write_text("./test/images/test0.jpg\n./test/images/notes.gif \n")
    edit_yaml(root, test="test.txt")
    return root / "test.txt", 2


def split_list_cwd_relative(root):
    (root / "test.txt").write_text("./test/images/test0.jpg\ntest/images/test0.jpg\n")
    edit_yaml(root, test="test.txt")
    return root / "test.txt", 2


def img_outside_root(root):
    outside = noise_jpeg(root.parent / f"{root.name}-elsewhere" / "images" / "far.jpg", 77)
    (root / "test.txt").write_text(f"./test/images/test0.jpg\n{outside}\n")
    edit_yaml(root, test="test.txt")
    return outside, None


def img_listed_outside_folder(root):
    img_outside_root(root)
    return root / "test.txt", None


def img_symlink_escapes(root):
    outside = noise_jpeg(root.parent / f"{root.name}-linked" / "linked.jpg", 78)
    link = root / "train" / "images" / "linked.jpg"
    link.symlink_to(outside)
    return link, None


def img_missing(root):
    (root / "test.txt").write_text("./test/images/test0.jpg\n./test/images/ghost.jpg\n")
    edit_yaml(root, test="test.txt")
    return root / "test" / "images" / "ghost.jpg", None


def img_unreadable(root):
    """A folder named like an image: the split glob lists it, reading it fails (works as root too)."""
    image = root / "train" / "images" / "folder.jpg"
    image.mkdir()
    return image, None


def img_empty(root):
    image = root / "train" / "images" / "train1.jpg"
    image.write_bytes(b"")
    return image, None


def img_not_image(root):
    image = root / "train" / "images" / "train1.jpg"
    image.write_text("this is not a picture")
    return image, None


def img_format(root):
    image = root / "train" / "images" / "train1.png"
    (root / "train" / "images" / "train1.jpg").unlink()
    Image.new("RGB", (64, 64), "red").save(image, format="GIF")
    return image, None


def img_ext_mismatch(root):
    image = root / "train" / "images" / "train1.jpg"
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image, format="PNG")
    return image, None


def img_decompression_bomb(root):
    """A tiny PNG whose header claims 20000 x 20000 px: caught before anything is decoded."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", 20000, 20000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    image = root / "train" / "images" / "train1.png"
    (root / "train" / "images" / "train1.jpg").unlink()
    image.write_bytes(bytes(data))
    return image, None


def img_corrupt(root):
    image = root / "train" / "images" / "train1.jpg"
    image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
    return image, None


def img_truncated_with_eoi(root):
    """A cut-off photo 'repaired' by appending an end marker (what Ultralytics' own fix does to JPEGs
    without one): PIL, and so Ultralytics, load it with the lost part grey; libjpeg warns."""
    image = root / "train" / "images" / "train1.jpg"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) * 3 // 4] + b"\xff\xd9")
    with Image.open(image) as im:
        im.load()  # the point of the case: PIL sees nothing wrong
    return image, None


def img_jpeg_no_eoi(root):
    image = root / "train" / "images" / "train1.jpg"
    image.write_bytes(image.read_bytes() + b"\x00\x00")
    return image, None


def img_too_small(root):
    image = noise_jpeg(root / "train" / "images" / "train1.jpg", 2, size=(8, 8))
    return image, None


def img_exif_orientation(root):
    image = root / "train" / "images" / "train1.jpg"
    exif = Image.Exif()
    exif[274] = 6
    noise_jpeg(image, 2, exif=exif.tobytes())
    return image, None


def img_no_label(root):
    (root / "train" / "labels" / "train1.txt").unlink()
    return root / "train" / "labels", None


def lbl_split_unlabelled(root):
    shutil.rmtree(root / "test" / "labels")
    return root / "test" / "labels", None


def lbl_orphan(root):
    orphan = root / "train" / "labels" / "gone.txt"
    orphan.write_text("0 0.5 0.5 0.2 0.2\n")
    return orphan, None


def lbl_unreadable(root):
    return write_label(root, b"0 0.5 0.5 0.2 0.2\n\xff\xfe garbage\n")


def lbl_box_tiny(root):
    label, _ = write_label(root, "0 0.5 0.5 0.3 0.2\n1 0.5 0.5 0.01 0.01\n")
    return label, 2


def dup_cross_split(root):
    shutil.copy(root / "train" / "images" / "train0.jpg", root / "val" / "images" / "copy.jpg")
    shutil.copy(root / "train" / "labels" / "train0.txt", root / "val" / "labels" / "copy.txt")
    return root / "train" / "images" / "train0.jpg", None


def dup_exact_within(root):
    shutil.copy(root / "train" / "images" / "train0.jpg", root / "train" / "images" / "train0_dup.jpg")
    shutil.copy(root / "train" / "labels" / "train0.txt", root / "train" / "labels" / "train0_dup.txt")
    return root / "train" / "images" / "train0.jpg", None


def dup_near_within(root):
    with Image.open(root / "train" / "images" / "train0.jpg") as im:
        im.save(root / "train" / "images" / "train0_requal.jpg", quality=60)
    shutil.copy(root / "train" / "labels" / "train0.txt", root / "train" / "labels" / "train0_requal.txt")
    return root / "train" / "images" / "train0.jpg", None


# A shared worker's setting: PHASE2_DATA_ROOTS is the dataset root (resolved per case).
WORKER = {"data_roots": lambda root: [root]}

CASES: dict[str, tuple[str, Callable[[Path], tuple[Path, int | None]], dict]] = {
    "yaml syntax error": ("YAML_PARSE", yaml_parse, {}),
    "yaml is a list": ("YAML_NOT_MAPPING", yaml_not_mapping, {}),
    "not a yaml file": ("YAML_UNREADABLE", yaml_unreadable, {}),
    "train is a number": ("YAML_KEY_TYPE", yaml_key_type, {}),
    "no val key": ("YAML_SPLIT_KEY_MISSING", yaml_split_key_missing, {}),
    "validation instead of val": ("YAML_VALIDATION_KEY", yaml_validation_key, {}),
    "no names": ("YAML_NAMES_MISSING", yaml_names_missing, {}),
    "nc not an integer": ("YAML_NC_NOT_INT", yaml_nc_not_int, {}),
    "nc != len(names)": ("YAML_NC_MISMATCH", yaml_nc_mismatch, {}),
    "names dict with a gap": ("YAML_NAMES_INVALID", yaml_names_invalid, {}),
    "repeated class name": ("YAML_NAMES_DUPLICATE", yaml_names_duplicate, {}),
    "classes in the wrong order": ("YAML_NAMES_EXPECTED", yaml_names_expected, {}),
    "relative path: key": ("YAML_PATH_RELATIVE", yaml_path_relative, {}),
    "split outside PHASE2_DATA_ROOTS": ("YAML_PATH_ESCAPES_ROOT", yaml_path_escapes_root, WORKER),
    "split outside the yaml's folder, no PHASE2_DATA_ROOTS": ("YAML_PATH_ESCAPES_ROOT", yaml_path_escapes_root, {}),
    "split folder missing": ("SPLIT_MISSING", split_missing, {}),
    "split folder empty": ("SPLIT_EMPTY", split_empty, {}),
    "split list not UTF-8": ("SPLIT_LIST_UNREADABLE", split_list_unreadable, {}),
    "split list entry ignored": ("SPLIT_LIST_ENTRY_IGNORED", split_list_entry_ignored, {}),
    "split list cwd-relative entry": ("SPLIT_LIST_CWD_RELATIVE", split_list_cwd_relative, {}),
    "listed image outside PHASE2_DATA_ROOTS": ("IMG_OUTSIDE_ROOT", img_outside_root, WORKER),
    "listed image outside the yaml's folder, no PHASE2_DATA_ROOTS": (
        "IMG_OUTSIDE_ROOT",
        img_listed_outside_folder,
        {},
    ),
    "symlink leaving PHASE2_DATA_ROOTS": ("IMG_SYMLINK_ESCAPES", img_symlink_escapes, WORKER),
    "listed image missing": ("IMG_MISSING", img_missing, {}),
    "image unreadable": ("IMG_UNREADABLE", img_unreadable, {}),
    "zero-byte image": ("IMG_EMPTY", img_empty, {}),
    "text file named .jpg": ("IMG_NOT_IMAGE", img_not_image, {}),
    "GIF named .png": ("IMG_FORMAT", img_format, {}),
    "PNG named .jpg": ("IMG_EXT_MISMATCH", img_ext_mismatch, {}),
    "decompression bomb": ("IMG_DECOMPRESSION_BOMB", img_decompression_bomb, {}),
    "truncated JPEG": ("IMG_CORRUPT", img_corrupt, {}),
    "truncated JPEG with an end marker appended": ("IMG_CORRUPT", img_truncated_with_eoi, {}),
    "JPEG without end marker": ("IMG_JPEG_NO_EOI", img_jpeg_no_eoi, {}),
    "8 px image": ("IMG_TOO_SMALL", img_too_small, {}),
    "EXIF rotated image": ("IMG_EXIF_ORIENTATION", img_exif_orientation, {}),
    "image without label": ("IMG_NO_LABEL", img_no_label, {}),
    "split without any label": ("LBL_SPLIT_UNLABELLED", lbl_split_unlabelled, {}),
    "label without image": ("LBL_ORPHAN", lbl_orphan, {}),
    "label not UTF-8": ("LBL_UNREADABLE", lbl_unreadable, {}),
    "row with 4 fields": ("LBL_FIELD_COUNT", label_case("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.2\n", 2), {}),
    "row with a word": ("LBL_NOT_NUMERIC", label_case("0 0.5 0.5 0.2 0.2\n1 0.5 half 0.2 0.2\n", 2), {}),
    "row with nan": ("LBL_NOT_FINITE", label_case("0 0.5 0.5 0.2 0.2\n1 nan 0.5 0.2 0.2\n", 2), {}),
    "fractional class": ("LBL_CLASS_NOT_INT", label_case("1.5 0.5 0.5 0.2 0.2\n", 1), {}),
    "class id 7 of 4": ("LBL_CLASS_RANGE", label_case("0 0.5 0.5 0.2 0.2\n\n7 0.5 0.5 0.2 0.2\n", 3), {}),
    "negative class": ("LBL_CLASS_RANGE", label_case("-1 0.5 0.5 0.2 0.2\n", 1), {}),
    "zero width": ("LBL_BOX_NONPOSITIVE", label_case("0 0.5 0.5 0 0.2\n", 1), {}),
    "pixel coordinates": ("LBL_COORD_RANGE", label_case("0 0.5 0.5 0.2 0.2\n0 120 80 30 20\n", 2), {}),
    "box past the right edge": ("LBL_BOX_OUTSIDE", label_case("0 0.95 0.5 0.3 0.2\n", 1), {}),
    "polygon rows": ("LBL_SEGMENT", label_case("0 0.1 0.1 0.4 0.1 0.4 0.4 0.1 0.4\n", 1), {}),
    "boxes and polygons mixed": (
        "LBL_MIXED_FORMATS",
        label_case("0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.4 0.1 0.4 0.4\n", 2),
        {},
    ),
    "repeated row": ("LBL_DUPLICATE_ROW", label_case("0 0.5 0.5 0.2 0.2\r\n0 0.5 0.5 0.2 0.2\r\n", 2), {}),
    "box below 2 px at imgsz": ("LBL_BOX_TINY", lbl_box_tiny, {}),
    "same photo in train and val": ("DUP_CROSS_SPLIT", dup_cross_split, {}),
    "copy inside train": ("DUP_EXACT_WITHIN", dup_exact_within, {}),
    "re-encoded copy inside train": ("DUP_NEAR_WITHIN", dup_near_within, {}),
    "recipe imgsz above native": ("IMGSZ_ABOVE_NATIVE", lambda root: (root / "data.yaml", None), {"imgsz": 640}),
    "minority short in val": (
        "MINORITY_VAL_SHORTFALL",
        lambda root: (root / "data.yaml", None),
        {"minority_val_target": 18},
    ),
}


def checksums(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def run(data_yaml: Path, **overrides):
    """Validate as the flow does: the recipe's classes and minority class passed in."""
    defaults = {
        "imgsz": IMGSZ,
        "expected_names": CLASS_NAMES,
        "minority_class": MINORITY_CLASS,
        "minority_val_target": 0,
        "data_roots": (),  # a user's own machine, whatever the environment running the tests says
    }
    return validate_dataset(data_yaml, **(defaults | overrides))


def test_base_dataset_is_clean(tmp_path):
    report = run(make_dataset(tmp_path / "ds"))
    assert [f.code for f in report.findings] == []
    assert report.recommended_imgsz == 64 and [s.images for s in report.splits] == [3, 2, 1]


@pytest.mark.parametrize("name", list(CASES))
def test_defect_produces_its_code_with_file_and_line(tmp_path, name, reliability_log):
    code, apply, overrides = CASES[name]
    root = tmp_path / "ds"
    make_dataset(root)
    file, line = apply(root)
    data_yaml = root / "data.yaml" if (root / "data.yaml").exists() else root / "data.json"
    before = checksums(root)
    report = run(data_yaml, **{k: v(root) if callable(v) else v for k, v in overrides.items()})
    assert checksums(root) == before, "the validator must not write inside the dataset"
    hits = [f for f in report.findings if f.code == code]
    assert hits, f"{name}: expected {code}, got {[(f.code, f.file, f.line) for f in report.findings]}"
    assert any(f.file == str(file) and f.line == line for f in hits), (
        f"{name}: {code} at {[(f.file, f.line) for f in hits]}, expected {file}:{line}"
    )
    assert all(f.fix and f.message for f in report.findings)
    if hits[0].severity == "error":
        assert report.errors()
    reliability_log(
        "bad input",
        "malformed datasets (catalogue: one defect each)",
        expected="finding with its code, file and line; dataset untouched",
        observed=f"{code} at {Path(file).name}:{line}",
    )


def test_names_and_minority_are_checked_only_when_the_caller_gives_them(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    edit_yaml(root, names=["a", "b", "c", "d"])
    report = validate_dataset(root / "data.yaml", imgsz=IMGSZ, minority_val_target=18)
    assert report.findings == [] and report.class_names == ["a", "b", "c", "d"] and report.minority is None

    checked = validate_dataset(
        root / "data.yaml", imgsz=IMGSZ, expected_names=CLASS_NAMES, minority_class="c", minority_val_target=18
    )
    assert [f.code for f in checked.findings] == ["YAML_NAMES_EXPECTED", "MINORITY_VAL_SHORTFALL"]
    assert checked.minority.class_name == "c" and checked.minority.val_instances == 2


def test_catalogue_covers_every_code():
    assert len(CASES) >= 30
    assert {code for code, _, _ in CASES.values()} == set(CODES)


def test_crlf_bom_and_blank_lines_are_tolerated(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    write_label(root, "\ufeff0 0.5 0.5 0.2 0.2\r\n\r\n   \r\n1 0.3 0.3 0.1 0.1\r\n".encode())
    report = run(root / "data.yaml")
    assert report.findings == []
    assert report.files_table().set_index("image").loc[str(root / "train/images/train0.jpg"), "instances"] == 2


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(alphabet="0123456789.-+ e\tnaif\r\n\ufeff", max_size=200))
def test_label_parser_never_crashes(tmp_path, content):
    label = tmp_path / "any.txt"
    label.write_bytes(content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content)
    result = parse_label(label, nc=4)
    assert result.state in {"empty", "ok", "invalid"}
    assert all(0 <= c < 4 and w > 0 and h > 0 for _, c, _, _, w, h in result.boxes)
    assert all(f.file == str(label) for f in result.findings)


def test_segment_labels_convert_only_into_a_copy(tmp_path):
    source = tmp_path / "poly.txt"
    source.write_text("2 0.1 0.2 0.5 0.2 0.5 0.6 0.1 0.6\n0 0.5 0.5 0.2 0.2\n")
    before = source.read_bytes()
    out = tmp_path / "converted" / "poly.txt"
    assert convert_segment_labels(source, out) == 1
    assert source.read_bytes() == before
    rows = [list(map(float, line.split())) for line in out.read_text().splitlines()]
    assert rows[0] == pytest.approx([2, 0.3, 0.4, 0.4, 0.4]) and rows[1] == [0, 0.5, 0.5, 0.2, 0.2]
    assert parse_label(str(out), nc=4).findings == []
