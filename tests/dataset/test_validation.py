"""Dataset validation on the real dataset, split resolution against Ultralytics itself, outputs, CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from phase2.dataset.duplicates import find_duplicate_groups
from phase2.dataset.images import PHASH_SIDE, decode_image, phash_batch, plain_jpeg_size
from phase2.dataset.layout import SPLITS, DatasetConfigError, image_formats, label_path_for, resolve_split_images
from phase2.dataset.validation import DatasetInvalid, ValidationReport, ensure_valid, validate_dataset
from tests.dataset.builders import CLASS_NAMES, MINORITY_CLASS, make_dataset, noise_jpeg


def dataset_state(root: Path) -> dict[str, str]:
    """Every file (and folder) under root with its sha256: catches edits, additions, caches."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def real_report(real_dataset, tmp_path_factory) -> tuple[ValidationReport, dict, dict]:
    before = dataset_state(real_dataset)
    report = validate_dataset(real_dataset / "data.yaml", expected_names=CLASS_NAMES, minority_class=MINORITY_CLASS)
    written = report.write(tmp_path_factory.mktemp("validation-out"))
    after = dataset_state(real_dataset)
    return report, written, {"before": before, "after": after}


def ultralytics_split_images(data_yaml: Path) -> dict[str, list[Path]]:
    """What Ultralytics itself would train on: check_det_dataset + BaseDataset.get_img_files."""
    from ultralytics.data.base import BaseDataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(data_yaml))
    reader = SimpleNamespace(prefix="", fraction=1.0)
    return {s: [Path(p) for p in BaseDataset.get_img_files(reader, data[s])] for s in SPLITS if data.get(s)}


# ------------------------------------------------------------------------------ real dataset


def test_real_dataset_untouched(real_report):
    _, _, state = real_report
    assert state["after"] == state["before"]
    assert not any(name.endswith(".cache") for name in state["after"])


def test_real_dataset_every_exact_duplicate_group_is_listed(real_report, real_dataset):
    report, _, _ = real_report
    by_hash = defaultdict(set)
    for split in SPLITS:
        for image in (real_dataset / split / "images").iterdir():
            by_hash[hashlib.sha256(image.read_bytes()).hexdigest()].add((split, image))
    copies = [members for members in by_hash.values() if len(members) > 1]
    cross = {frozenset(m) for m in copies if len({s for s, _ in m}) > 1}
    in_train = [{m for m in members if m[0] == "train"} for members in copies]
    in_train = [m for m in in_train if len(m) > 1]
    assert cross and in_train, "the real dataset is known to hold both kinds of copies"

    exact = [frozenset((m.split, m.image) for m in g.members) for g in report.duplicate_groups if g.kind == "exact"]
    assert set(exact) == {frozenset(m) for m in copies}
    assert {g for g in exact if len({s for s, _ in g}) > 1} == cross
    for train_copies in in_train:
        assert any(train_copies <= group for group in exact)
    leak_messages = [f.message for f in report.errors() if f.code == "DUP_CROSS_SPLIT"]
    for group in cross:  # each leakage error names every member
        assert any(all(f"{s}:{p}" in msg for s, p in group) for msg in leak_messages)
    assert {f.code for f in report.warnings()} >= {"DUP_EXACT_WITHIN", "IMGSZ_ABOVE_NATIVE"}


def test_real_dataset_sizes_and_recommendation(real_report):
    report, _, _ = real_report
    assert {(s.width, s.height) for s in report.native_sizes} == {(224, 224), (312, 312)}
    assert sum(s.images for s in report.native_sizes) == 375
    assert report.recommended_imgsz == 320
    assert report.compute_saved_fraction == pytest.approx(0.75)


def test_real_dataset_statistics_match_label_files(real_report, real_dataset):
    report, _, _ = real_report
    counts = defaultdict(int)
    for split in SPLITS:
        for label in (real_dataset / split / "labels").glob("*.txt"):
            for line in label.read_text().splitlines():
                if line.split():
                    counts[split, int(line.split()[0])] += 1
    assert {(c.split, c.class_id): c.instances for c in report.classes if c.instances} == dict(counts)
    assert report.minority.class_name == "toe_drain"
    assert report.minority.val_instances == counts["val", 2]
    assert [s.images for s in report.splits] == [305, 45, 25]


def test_real_dataset_fails_only_on_leakage(real_report):
    report, _, _ = real_report
    with pytest.raises(DatasetInvalid) as raised:
        ensure_valid(report)
    message = str(raised.value)
    assert "DUP_CROSS_SPLIT" in message and "fix:" in message and "/val/images/" in message
    ensure_valid(report, allow=["DUP_CROSS_SPLIT"])  # what the flow does when rebalancing is on


def test_report_outputs(real_report):
    report, written, _ = real_report
    assert set(written) == {"report.json", "files.csv", "summary.md", "class_counts.png"}
    again = ValidationReport.model_validate_json(written["report.json"].read_text())
    assert again.findings == report.findings and again.recommended_imgsz == 320
    import pandas as pd

    table = pd.read_csv(written["files.csv"])
    assert len(table) == 375 and table["sha256"].notna().all()
    assert set(table["split"]) == set(SPLITS)
    assert "DUP_CROSS_SPLIT" in written["summary.md"].read_text()
    with Image.open(written["class_counts.png"]) as im:
        assert im.format == "PNG" and im.width > 300


def test_real_splits_resolve_like_ultralytics(real_dataset):
    assert resolve_split_images(real_dataset / "data.yaml") == ultralytics_split_images(real_dataset / "data.yaml")


# ------------------------------------------------------------------------------ resolution


LAYOUTS = {
    "folders": lambda root: {"train": "./train/images", "val": "./val/images"},
    "roboflow ../ fallback": lambda root: {"train": "../train/images", "val": "../val/images"},
    "txt lists": lambda root: {"train": "train.txt", "val": "val.txt"},
    "list of folders": lambda root: {"train": ["./train/images", "./val/images"], "val": "./val/images"},
    "absolute path:": lambda root: {"path": str(root), "train": "train/images", "val": "val/images"},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_resolution_matches_ultralytics(tmp_path, layout):
    root = tmp_path / "ds"
    make_dataset(root)
    noise_jpeg(root / "train" / "images" / "nested" / "deep.JPG", 50)  # recursive glob, upper-case suffix
    (root / "train" / "images" / "notes.md").write_text("not an image")
    for split in ("train", "val"):
        (root / f"{split}.txt").write_text(
            "\n".join(f"./{split}/images/{p.name}" for p in sorted((root / split / "images").glob("*.jpg")))
        )
    meta = LAYOUTS[layout](root) | {"nc": 4, "names": ["rock_toe", "slope_drain", "toe_drain", "vegetation"]}
    (root / "data.yaml").write_text(yaml.safe_dump(meta))
    assert resolve_split_images(root / "data.yaml") == ultralytics_split_images(root / "data.yaml")


def test_label_path_rule_matches_ultralytics():
    from ultralytics.data.utils import img2label_paths

    images = ["/d/images/a.jpg", "/d/images/sub/images/b.png", "/d/train/images/c.d.jpeg", "/x/pics/d.jpg"]
    assert [str(label_path_for(p)) for p in images] == img2label_paths(images)


def test_image_formats_are_ultralytics_own_without_importing_it():
    import subprocess
    import sys

    from ultralytics.data.utils import IMG_FORMATS

    assert image_formats() == IMG_FORMATS
    probe = "import sys; from phase2.dataset.layout import image_formats as f; print(len(f()), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(len(IMG_FORMATS)), "False"]  # read from Ultralytics' source: no 1 s torch import


def test_unresolvable_split_raises_with_file_and_fix(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    shutil.rmtree(root / "val")
    with pytest.raises(DatasetConfigError) as raised:
        resolve_split_images(root / "data.yaml")
    assert raised.value.code == "SPLIT_MISSING" and raised.value.line == 2
    assert str(root / "data.yaml") in str(raised.value) and "Fix:" in str(raised.value)


# ------------------------------------------------------------------------------ duplicates API


def test_find_duplicate_groups_exact_near_and_threshold(tmp_path):
    a = noise_jpeg(tmp_path / "train" / "images" / "a.jpg", 1)
    b = tmp_path / "val" / "images" / "b.jpg"
    b.parent.mkdir(parents=True)
    shutil.copy(a, b)
    c = tmp_path / "train" / "images" / "c.jpg"
    with Image.open(a) as im:
        im.save(c, quality=50)
    d = noise_jpeg(tmp_path / "train" / "images" / "d.jpg", 2)
    images = {"train": [a, c, d], "val": [b]}

    groups = find_duplicate_groups(images)
    exact = [g for g in groups if g.kind == "exact"]
    near = [g for g in groups if g.kind == "near"]
    assert [[(m.split, m.image) for m in g.members] for g in exact] == [[("train", a), ("val", b)]]
    assert exact[0].cross_split
    assert len(near) == 1 and {m.image for m in near[0].members} == {a, b, c} and near[0].cross_split
    assert [g.kind for g in find_duplicate_groups(images, phash_threshold=-1)] == ["exact"]


# ------------------------------------------------------------------------------ CLI


def test_cli_exit_codes_and_json(tmp_path, real_dataset):
    from phase2.cli import app

    runner = CliRunner()
    clean = make_dataset(tmp_path / "ds")
    ok = runner.invoke(app, ["validate", str(clean), "--imgsz", "64"])
    assert ok.exit_code == 0, ok.output
    assert "0 errors" in ok.output

    bad = runner.invoke(app, ["validate", str(real_dataset / "data.yaml"), "--json", "--out", str(tmp_path / "o")])
    assert bad.exit_code == 1
    payload = json.loads(bad.output)
    assert any(f["code"] == "DUP_CROSS_SPLIT" for f in payload["findings"])
    assert (tmp_path / "o" / "files.csv").is_file()


def test_batched_phash_is_imagehash_phash(real_dataset):
    import imagehash
    import numpy as np

    images = sorted((real_dataset / "train" / "images").iterdir())[:40]
    thumbs, expected = [], []
    for path in images:
        with Image.open(path) as im:
            im.draft("L", (PHASH_SIDE, PHASH_SIDE))
            thumbs.append(np.asarray(im.convert("L").resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS)))
            expected.append(int(str(imagehash.phash(im)), 16))
    assert phash_batch(thumbs) == expected


def test_phash_of_any_size_is_lanczos_then_dct():
    """One (8, n) matrix per side does PIL's LANCZOS resize to 32 and the DCT: equal to doing them apart."""
    import numpy as np
    from scipy.fftpack import dct

    rng = np.random.default_rng(0)
    greys = [rng.integers(0, 255, shape, dtype=np.uint8) for shape in [(56, 56), (39, 41), (56, 56), (32, 32)]]
    expected = []
    for grey in greys:
        thumb = np.asarray(
            Image.fromarray(grey.astype(np.float32), mode="F").resize(
                (PHASH_SIDE, PHASH_SIDE), Image.Resampling.LANCZOS
            ),
            dtype=np.float64,
        )
        low = dct(dct(thumb, axis=0), axis=1)[:8, :8].ravel()
        expected.append(int.from_bytes(np.packbits(low > np.median(low)).tobytes(), "big"))
    assert phash_batch(greys) == expected


def test_perceptual_hash_matches_imagehash_on_real_images(real_dataset):
    """The validator hashes the 1/4-1/8-scale decode (all phash needs); against imagehash.phash of the
    full-size image it may differ in a few of the 64 bits, far below the near-duplicate threshold."""
    import imagehash
    import numpy as np

    images = sorted((real_dataset / "train" / "images").iterdir())[:60]
    codes = phash_batch([decode_image(p.read_bytes())[1] for p in images])
    distance = np.array(
        [
            bin(code ^ int(str(imagehash.phash(Image.open(p))), 16)).count("1")
            for code, p in zip(codes, images, strict=True)
        ]
    )
    assert distance.max() <= 4 and distance.mean() < 1.5, distance


def test_jpeg_fast_header_agrees_with_pil(real_dataset):
    for path in sorted((real_dataset / "val" / "images").iterdir()):
        with Image.open(path) as im:
            assert plain_jpeg_size(path.read_bytes()) == im.size


def test_decode_cache_is_keyed_by_content(tmp_path):
    root = tmp_path / "ds"
    make_dataset(root)
    cache = tmp_path / "cache"
    cold = validate_dataset(root / "data.yaml", imgsz=64, minority_val_target=0, cache_dir=cache)
    warm = validate_dataset(root / "data.yaml", imgsz=64, minority_val_target=0, cache_dir=cache)
    assert len(list(cache.glob("image-facts-*.json"))) == 1
    assert warm.findings == cold.findings == []
    assert warm.files_table().equals(cold.files_table())

    image = root / "train" / "images" / "train1.jpg"
    image.write_bytes(image.read_bytes()[:400])  # new content: decoded afresh, not served from the cache
    changed = validate_dataset(root / "data.yaml", imgsz=64, minority_val_target=0, cache_dir=cache)
    assert [(f.code, f.file) for f in changed.errors()] == [("IMG_CORRUPT", str(image))]
