"""Validation rebalancing: grouping, leak repair, selection, outputs, real dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from phase2.dataset.rebalance import (
    DatasetError,
    RebalanceImpossible,
    group_images,
    parse_targets,
    plan_rebalance,
    read_instance_counts,
    source_stem,
)

NAMES = ["rock_toe", "slope_drain", "toe_drain", "vegetation"]
TOE = NAMES.index("toe_drain")


def img(split: str, name: str) -> Path:
    return Path(f"/data/{split}/images/{name}.jpg")


def counts(*per_class: int) -> tuple[int, ...]:
    return tuple(per_class) + (0,) * (len(NAMES) - len(per_class))


# ---------------------------------------------------------------- grouping


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("DJI_0010_W_JPG.rf.c40cee622f28d61f9e72cefd38df1e00_dup6.jpg", "DJI_0010_W_JPG"),
        ("DJI_0010_W_JPG.rf.c40cee622f28d61f9e72cefd38df1e00.jpg", "DJI_0010_W_JPG"),
        ("DJI_0010_W_JPG.rf.0000aaaa.jpg", "DJI_0010_W_JPG"),  # another Roboflow export, same photo
        ("Lagoon1_B1_119_V_jpg.rf.873f9bcd9cdb384b50f8fa42cabfd074.jpg", "Lagoon1_B1_119_V_jpg"),
        ("plain_photo_dup12.png", "plain_photo"),
        ("plain_photo.png", "plain_photo"),
        ("dup3.jpg", "dup3"),
    ],
)
def test_source_stem(name, stem):
    assert source_stem(Path(name)) == stem


def test_groups_join_stems_duplicates_and_same_path_transitively():
    images = {
        "train": [img("train", "a.rf.1"), img("train", "b"), img("train", "lonely")],
        "val": [img("val", "a.rf.2_dup3"), img("val", "c")],
        "test": [img("train", "b")],  # the same file listed in two splits
    }
    # b ~ c (near duplicate) links c to b; a's exports link by stem.
    groups = group_images(images, [[img("train", "b"), img("val", "c")]])
    as_sets = sorted(sorted(f"{s}:{p.stem}" for s, p in g) for g in groups)
    assert as_sets == [
        ["test:b", "train:b", "val:c"],
        ["train:a.rf.1", "val:a.rf.2_dup3"],
        ["train:lonely"],
    ]


# ---------------------------------------------------------------- planning on explicit inputs


def small_dataset():
    """train: two toe photos (one with a dup copy leaked into val) + others; val: a few."""
    images = {
        "train": [img("train", n) for n in ("t1", "t1_dup1", "t2", "t3", "r1", "r2", "s1", "v1")],
        "val": [img("val", n) for n in ("t1_dup2", "r3", "s2", "v2")],
        "test": [img("test", n) for n in ("t8", "t9", "r9")],
    }
    per_image = {
        "t1": counts(0, 0, 1),
        "t1_dup1": counts(0, 0, 1),
        "t1_dup2": counts(0, 0, 1),
        "t2": counts(0, 0, 2),
        "t3": counts(1, 0, 1),
        "r1": counts(2),
        "r2": counts(1),
        "r3": counts(1),
        "s1": counts(0, 3),
        "s2": counts(0, 1),
        "v1": counts(0, 0, 0, 2),
        "v2": counts(0, 0, 0, 1),
        "t8": counts(0, 0, 1),
        "t9": counts(0, 0, 4),
        "r9": counts(1),
    }
    instance_counts = {p: per_image[p.stem] for paths in images.values() for p in paths}
    return images, instance_counts


def test_leak_is_repaired_to_train_by_default_and_reported():
    images, instance_counts = small_dataset()
    plan = plan_rebalance(images, instance_counts, NAMES, {}, [])
    assert [leak.kept_split for leak in plan.repaired_leaks] == ["train"]
    assert {m.image for m in plan.repaired_leaks[0].members} == {
        str(img("train", "t1")),
        str(img("train", "t1_dup1")),
        str(img("val", "t1_dup2")),
    }
    assert img("val", "t1_dup2") in plan.splits_after["train"]
    assert plan.counts_after.instances["val"]["toe_drain"] == 0
    assert plan.moved_groups == []


def test_leak_priority_can_keep_val():
    images, instance_counts = small_dataset()
    plan = plan_rebalance(images, instance_counts, NAMES, {}, [], leak_priority=("val", "train", "test"))
    assert {img("train", "t1"), img("train", "t1_dup1"), img("val", "t1_dup2")} <= set(plan.splits_after["val"])


def test_target_met_by_whole_groups_and_test_untouched():
    images, instance_counts = small_dataset()
    plan = plan_rebalance(images, instance_counts, NAMES, {"toe_drain": 3}, [])
    assert plan.counts_after.instances["val"]["toe_drain"] >= 3
    assert sorted(plan.splits_after["test"]) == sorted(images["test"])
    # t1's three copies travel together, whichever way.
    sides = {s for s, paths in plan.splits_after.items() for p in paths if p.stem.startswith("t1")}
    assert len(sides) == 1
    # a toe_drain instance stays in train
    assert plan.counts_after.instances["train"]["toe_drain"] >= 1


def test_refusal_names_class_target_and_maximum():
    images, instance_counts = small_dataset()
    # train holds toe groups of 3 (t1 x3), 2 (t2), 1 (t3): one must stay -> max 5 of the 6 = 3+2
    with pytest.raises(RebalanceImpossible, match=r"toe_drain: target 6, .* at most 5 reachable") as err:
        plan_rebalance(images, instance_counts, NAMES, {"toe_drain": 6}, [])
    assert err.value.reachable == {"toe_drain": 5}
    assert (
        plan_rebalance(images, instance_counts, NAMES, {"toe_drain": 5}, []).counts_after.instances["val"]["toe_drain"]
        == 5
    )
    # moving test groups is allowed when asked: t9 holds 4 more, t8 keeps toe_drain in test
    plan = plan_rebalance(images, instance_counts, NAMES, {"toe_drain": 9}, [], move_test=True)
    assert plan.counts_after.instances["val"]["toe_drain"] >= 9


def test_selection_prefers_groups_that_keep_other_shares():
    # Only toe_drain is targeted: a pure toe image beats one that drags 5 rock_toe into val.
    images = {
        "train": [img("train", "pure"), img("train", "mixed"), img("train", "keep"), img("train", "rock")],
        "val": [img("val", "r"), img("val", "s")],
    }
    instance_counts = {
        img("train", "pure"): counts(0, 0, 1),
        img("train", "mixed"): counts(5, 0, 1),
        img("train", "keep"): counts(0, 0, 1),
        img("train", "rock"): counts(3, 2),
        img("val", "r"): counts(1),
        img("val", "s"): counts(0, 1),
    }
    for seed in range(5):
        plan = plan_rebalance(images, instance_counts, NAMES, {"toe_drain": 1}, [], seed=seed)
        assert [g.images for g in plan.moved_groups] in ([[str(img("train", "pure"))]], [[str(img("train", "keep"))]])


def test_selection_moves_copies_of_one_photo_last():
    images = {
        "train": [img("train", n) for n in ("copy", "copy_dup1", "single", "rest")],
        "val": [img("val", "r")],
    }
    instance_counts = {
        img("train", "copy"): counts(0, 0, 1),
        img("train", "copy_dup1"): counts(0, 0, 1),
        img("train", "single"): counts(2, 0, 1),
        img("train", "rest"): counts(3, 2, 1),
        img("val", "r"): counts(1),
    }
    plan = plan_rebalance(images, instance_counts, NAMES, {"toe_drain": 1}, [])
    assert [g.images for g in plan.moved_groups] == [[str(img("train", "single"))]]


def test_bad_target_and_label_errors_are_clear(tmp_path):
    images, instance_counts = small_dataset()
    with pytest.raises(ValueError, match=r"unknown class\(es\) in targets: \['toe'\]"):
        plan_rebalance(images, instance_counts, NAMES, {"toe": 1}, [])
    with pytest.raises(ValueError, match="use CLASS=INSTANCES"):
        parse_targets(["toe_drain:18"])
    assert parse_targets(["toe_drain=18", "rock_toe=2"]) == {"toe_drain": 18, "rock_toe": 2}
    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "labels").mkdir(parents=True)
    image = tmp_path / "train" / "images" / "x.jpg"
    image.write_bytes(b"")
    (tmp_path / "train" / "labels" / "x.txt").write_text("2 0.5 0.5 0.1 0.1\n\n7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=r"x\.txt:3: class id '7' is not an integer in 0\.\.3"):
        read_instance_counts([image], 4)


# ---------------------------------------------------------------- properties on generated datasets


@st.composite
def planted_datasets(draw):
    """Groups of 1-3 copies of one photo, planted by `_dupN` names or as explicit duplicates;
    copies occasionally leak into another split."""
    images: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    instance_counts: dict[Path, tuple[int, ...]] = {}
    duplicates, planted = [], []
    per_image = st.tuples(*[st.integers(0, 2)] * len(NAMES))
    for g in range(draw(st.integers(1, 14))):
        home = draw(st.sampled_from(["train"] * 4 + ["val"] * 2 + ["test"]))
        by_name = draw(st.booleans())
        members = []
        for k in range(draw(st.integers(1, 3))):
            split = draw(st.sampled_from([home] * 5 + ["train", "val", "test"]))
            path = img(split, f"photo{g}_dup{k}" if by_name else f"img{g}x{k}")
            images[split].append(path)
            instance_counts[path] = draw(per_image)
            members.append(path)
        planted.append(members)
        if not by_name:
            duplicates.append(members)
    targets = draw(st.dictionaries(st.sampled_from(NAMES), st.integers(0, 10), max_size=2))
    return images, instance_counts, duplicates, planted, targets


def _split_of(plan) -> dict[Path, str]:
    return {p: s for s, paths in plan.splits_after.items() for p in paths}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted_datasets(), st.integers(0, 3))
def test_plan_properties(data, seed):
    images, instance_counts, duplicates, planted, targets = data
    try:
        plan = plan_rebalance(images, instance_counts, NAMES, targets, duplicates, seed=seed)
    except RebalanceImpossible as refusal:
        failing = refusal.reachable
        assert failing and all(reached < targets[c] for c, reached in failing.items())
        assert all(f"{c}" in str(refusal) for c in failing)
        if len(targets) == 1:
            # the reported maximum is honest: asking for exactly it succeeds
            ((cls, reached),) = failing.items()
            plan = plan_rebalance(images, instance_counts, NAMES, {cls: reached}, duplicates, seed=seed)
            assert plan.counts_after.instances["val"][cls] >= reached
        return

    split_of = _split_of(plan)
    assert sorted(split_of, key=str) == sorted(instance_counts, key=str)  # nothing lost or doubled
    for members in planted:
        assert len({split_of[p] for p in members}) == 1, "a planted group was split"
    for cls, target in targets.items():
        assert plan.counts_after.instances["val"][cls] >= target
    for cls in NAMES:
        if plan.counts_before.instances["train"][cls] and plan.moved_groups:
            # selection never empties a class in train (leak repair only adds to train)
            assert plan.counts_after.instances["train"][cls] >= 1
    assert {p for g in plan.moved_groups for p in g.images} <= {
        str(p) for p in images["train"] + images["val"] + images["test"]
    }
    assert all(g.from_split == "train" for g in plan.moved_groups)  # test left alone
    assert plan == plan_rebalance(images, instance_counts, NAMES, targets, duplicates, seed=seed)

    again = plan_rebalance(plan.splits_after, instance_counts, NAMES, targets, duplicates, seed=seed + 1)
    assert again.moved_groups == [] and again.repaired_leaks == []
    assert again.splits_after == plan.splits_after


@settings(max_examples=40, deadline=None)
@given(planted_datasets())
def test_plan_never_splits_groups_whatever_the_priority(data):
    images, instance_counts, duplicates, planted, _ = data
    assume(images["train"] or images["val"])
    plan = plan_rebalance(images, instance_counts, NAMES, {}, duplicates, leak_priority=("test", "val", "train"))
    split_of = _split_of(plan)
    for members in planted:
        homes = {split_of[p] for p in members}
        assert len(homes) == 1
        original = {s for s, paths in images.items() for p in paths if p in members}
        assert homes <= original and (("test" in original) <= (homes == {"test"}))


# ---------------------------------------------------------------- rebalance_validation on files


def write_dataset(root: Path, images: dict[str, list[Path]], instance_counts: dict[Path, tuple[int, ...]]) -> Path:
    """Label-only dataset under root mirroring /data/<split>/images/<name>.jpg; image bytes are
    distinct placeholders (duplicates are passed explicitly, so no pixels are needed)."""
    for paths in images.values():
        for path in paths:
            image = root / path.relative_to("/data")
            label = image.parent.parent / "labels" / f"{image.stem}.txt"
            image.parent.mkdir(parents=True, exist_ok=True)
            label.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(f"placeholder {path}".encode())
            label.write_text(
                "".join(
                    f"{cls} {0.1 + 0.05 * k:.2f} 0.5 0.1 0.1\n"  # distinct rows: Ultralytics drops repeated ones
                    for cls, n in enumerate(instance_counts[path])
                    for k in range(n)
                )
            )
    data_yaml = root / "data.yaml"
    splits = "".join(f"{s}: ./{s}/images\n" for s in ("train", "val", "test") if images.get(s))
    data_yaml.write_text(f"{splits}nc: 4\nnames: {NAMES}\n")
    return data_yaml


def tree_digest(root: Path) -> dict[str, str]:
    from phase2.infra.files import sha256_file

    return {str(p.relative_to(root)): sha256_file(p) if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def read_lists(out: Path) -> dict[str, list[str]]:
    return {
        s: (out / f"{s}.txt").read_text().splitlines() for s in ("train", "val", "test") if (out / f"{s}.txt").exists()
    }


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(planted_datasets(), st.integers(0, 3))
def test_rebalance_outputs_deterministic_idempotent_and_source_untouched(data, seed):
    import tempfile

    from phase2.dataset.rebalance import dataset_version_id, rebalance_validation

    images, instance_counts, duplicates, planted, targets = data
    assume(images["train"] and images["val"])  # a split Ultralytics can't resolve is the validator's error
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_yaml = write_dataset(tmp / "src", images, instance_counts)
        on_disk = lambda p: (tmp / "src" / p.relative_to("/data")).resolve()  # noqa: E731
        groups = [[on_disk(p) for p in members] for members in duplicates]
        source = tree_digest(tmp / "src")
        try:
            first = rebalance_validation(data_yaml, tmp / "a", targets, seed=seed, duplicate_groups=groups)
        except (RebalanceImpossible, DatasetError) as refusal:
            if isinstance(refusal, DatasetError):
                assert "would be empty after moving leaked duplicate groups" in str(refusal)
            assert not (tmp / "a").exists()  # refused before writing anything
            assert tree_digest(tmp / "src") == source
            return
        second = rebalance_validation(data_yaml, tmp / "b", targets, seed=seed, duplicate_groups=groups)
        assert tree_digest(tmp / "a") == tree_digest(tmp / "b")
        assert tree_digest(tmp / "src") == source

        lists = read_lists(tmp / "a")
        split_of = {line: s for s, lines in lists.items() for line in lines}
        for members in planted:
            assert len({split_of[str(on_disk(p))] for p in members}) == 1
        for cls, target in targets.items():
            assert first.counts_after.instances["val"][cls] >= target
        assert dataset_version_id(first.data_yaml) == first.version_id == second.version_id
        assert dataset_version_id(data_yaml) == first.source_version_id

        again = rebalance_validation(first.data_yaml, tmp / "c", targets, seed=seed + 1, duplicate_groups=groups)
        assert again.version_id == first.version_id == again.source_version_id
        assert again.moved_groups == [] and again.repaired_leaks == []
        assert read_lists(tmp / "c") == lists


def test_ultralytics_reads_the_rebalanced_lists_and_their_labels(small_real_dataset, tmp_path):
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset

    from phase2.dataset.rebalance import rebalance_validation

    source = small_real_dataset.parent
    before = tree_digest(source)
    val_toe = sum(
        line.startswith("2 ") for f in (source / "val" / "labels").glob("*.txt") for line in f.read_text().splitlines()
    )
    result = rebalance_validation(small_real_dataset, tmp_path / "out", {"toe_drain": val_toe + 1})
    assert result.moved_groups and tree_digest(source) == before

    data = check_det_dataset(str(result.data_yaml))
    assert data["names"] == dict(enumerate(NAMES))
    lists = read_lists(tmp_path / "out")
    for split in ("train", "val"):
        dataset = YOLODataset(img_path=data[split], data=data, imgsz=64, augment=False, task="detect")
        assert dataset.im_files == lists[split]  # the original files, not copies
        assert all(str(source) in f for f in dataset.im_files)
        instances = [0] * len(NAMES)
        for label in dataset.labels:
            for cls in label["cls"].ravel():
                instances[int(cls)] += 1
        assert dict(zip(NAMES, instances, strict=True)) == result.counts_after.instances[split]


def test_real_dataset_rebalance_is_leak_free_balanced_deterministic_and_read_only(real_dataset, tmp_path):
    from phase2.dataset.duplicates import find_duplicate_groups
    from phase2.dataset.layout import resolve_split_images
    from phase2.dataset.rebalance import dataset_version_id, rebalance_validation

    source = tree_digest(real_dataset)
    before_groups = find_duplicate_groups(resolve_split_images(real_dataset / "data.yaml"))
    assert sum(g.cross_split for g in before_groups) == 4  # the _dupN copies and one resized copy

    # 18: the guide's val target, met once the leaked copies go back to train;
    # 25: forces the selection to move whole groups out of train.
    for target in (18, 25):
        first = rebalance_validation(real_dataset / "data.yaml", tmp_path / f"a{target}", {"toe_drain": target})
        rebalance_validation(real_dataset / "data.yaml", tmp_path / f"b{target}", {"toe_drain": target})
        assert tree_digest(tmp_path / f"a{target}") == tree_digest(tmp_path / f"b{target}")
        assert len(first.repaired_leaks) == 4

        after_groups = find_duplicate_groups(resolve_split_images(first.data_yaml))
        assert sum(g.cross_split for g in after_groups) == 0
        val_before, val_after = first.counts_before.instances["val"], first.counts_after.instances["val"]
        assert val_after["toe_drain"] >= target
        for cls in NAMES:
            if cls != "toe_drain":
                share_after = 100 * val_after[cls] / sum(val_after.values())
                share_before = 100 * val_before[cls] / sum(val_before.values())
                assert abs(share_after - share_before) <= 5, cls
        assert all(n >= 1 for n in first.counts_after.instances["train"].values())
        assert dataset_version_id(first.data_yaml) == first.version_id
        if target == 25:
            assert {g.from_split for g in first.moved_groups} == {"train"}
            again = rebalance_validation(first.data_yaml, tmp_path / "again", {"toe_drain": target})
            assert again.version_id == first.version_id and not again.moved_groups and not again.repaired_leaks

    assert tree_digest(real_dataset) == source


def test_cli_rebalance_writes_version_and_refuses_clearly(tmp_path):
    from typer.testing import CliRunner

    from phase2.cli import app

    images, instance_counts = small_dataset()
    data_yaml = write_dataset(tmp_path / "src", images, instance_counts)
    runner = CliRunner()
    ok = runner.invoke(
        app,
        [
            "rebalance",
            str(data_yaml),
            "--target",
            "toe_drain=3",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "out"),
            "--phash-threshold",
            "-1",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "repaired leaks: 1, moved groups: " in ok.output
    assert (tmp_path / "out" / "manifest.json").is_file()
    refused = runner.invoke(
        app,
        [
            "rebalance",
            str(data_yaml),
            "--target",
            "toe_drain=6",
            "--out",
            str(tmp_path / "no"),
            "--phash-threshold",
            "-1",
        ],
    )
    assert refused.exit_code == 1
    assert "at most 5 reachable" in refused.output and not (tmp_path / "no").exists()

    # --test-target: whole train groups move into test until it holds the gate's instances.
    args = ["rebalance", str(data_yaml), "--target", "toe_drain=3", "--test-target", "rock_toe=3"]
    gated = runner.invoke(app, [*args, "--phash-threshold", "-1", "--out", str(tmp_path / "gate"), "--json"])
    assert gated.exit_code == 0, gated.output
    test_images = [Path(line) for line in (tmp_path / "gate" / "test.txt").read_text().split()]
    labels = [Path(str(p).replace("/images/", "/labels/")).with_suffix(".txt") for p in test_images]
    rock_toe = sum(line.split()[0] == "0" for label in labels for line in label.read_text().splitlines())
    assert rock_toe >= 3 > sum(instance_counts[p][0] for p in images["test"])  # raw counts: 1 before
    moved = {p.name for p in test_images} - {p.name for p in images["test"]}
    assert moved and moved <= {p.name for p in images["train"]}, moved
    assert json.loads(gated.output)["moved_groups"] >= len(moved) > 0


# ---------------------------------------------------------------- the promotion gate's split (test)


def test_test_targets_move_whole_train_groups_into_test_and_leave_val_alone():
    images, instance_counts = small_dataset()
    val_only = plan_rebalance(images, instance_counts, NAMES, {"toe_drain": 3}, [])
    plan = plan_rebalance(images, instance_counts, NAMES, {"toe_drain": 3}, [], test_targets={"rock_toe": 3})
    assert plan.splits_after["val"] == val_only.splits_after["val"]  # the val moves do not change
    assert plan.counts_after.instances["test"]["rock_toe"] >= 3 > val_only.counts_after.instances["test"]["rock_toe"]
    test_moves = [g for g in plan.moved_groups if g.to_split == "test"]
    assert test_moves and all(g.from_split == "train" for g in test_moves)
    assert all(n >= 1 for n in plan.counts_after.instances["train"].values() if n is not None)
    assert plan.counts_after.instances["train"]["rock_toe"] >= 1  # never emptied in its source
    with pytest.raises(RebalanceImpossible, match=r"test target out of reach .*rock_toe: target 9"):
        plan_rebalance(images, instance_counts, NAMES, {}, [], test_targets={"rock_toe": 9})
    without_test = {s: paths for s, paths in images.items() if s != "test"}
    with pytest.raises(DatasetError, match="no 'test' split"):
        plan_rebalance(without_test, instance_counts, NAMES, {}, [], test_targets={"rock_toe": 1})


def test_real_dataset_test_targets_for_the_gate_split(real_dataset, tmp_path):
    """The recipe's test targets on the real data: test reaches them by whole train groups, no
    copy of a photograph ends in two splits, val is the one the val target alone gives, and the
    seed recipes leave test as it is."""
    from phase2.dataset.duplicates import find_duplicate_groups
    from phase2.dataset.layout import resolve_split_images
    from phase2.dataset.rebalance import rebalance_validation
    from phase2.training.recipe import load_recipe

    data_yaml = real_dataset / "data.yaml"
    groups = [[m.image for m in g.members] for g in find_duplicate_groups(resolve_split_images(data_yaml))]
    recipe = load_recipe("phase2-seed").rebalance.model_copy(update={"test_targets": {"toe_drain": 25}})
    for name in ("phase2-seed", "phase2-native", "phase2-demo"):
        assert load_recipe(name).rebalance.test_targets == {}, name

    def run(folder: str, test_targets: dict[str, int]):
        return rebalance_validation(
            data_yaml, tmp_path / folder, recipe.targets, duplicate_groups=groups, test_targets=test_targets
        )

    val_only, first, again = run("val-only", {}), run("a", recipe.test_targets), run("b", recipe.test_targets)
    assert (tmp_path / "a" / "test.txt").read_bytes() == (tmp_path / "b" / "test.txt").read_bytes()
    assert first.version_id == again.version_id != val_only.version_id
    assert (tmp_path / "a" / "val.txt").read_bytes() == (tmp_path / "val-only" / "val.txt").read_bytes()
    test_before = val_only.counts_after.instances["test"]["toe_drain"]
    assert test_before < 25 <= first.counts_after.instances["test"]["toe_drain"]
    moved = [g for g in first.moved_groups if g.to_split == "test"]
    assert moved and {g.from_split for g in moved} == {"train"}
    assert sum(g.instances.get("toe_drain", 0) for g in moved) == (
        first.counts_after.instances["test"]["toe_drain"] - test_before
    )
    after = find_duplicate_groups(resolve_split_images(first.data_yaml))
    assert sum(g.cross_split for g in after) == 0
    manifest = first.manifest_path.read_text()
    assert '"test_targets": {\n      "toe_drain": 25\n    }' in manifest
