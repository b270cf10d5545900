"""Recipes: every config loads, the seed is the guide's recipe value for value, lint and errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from phase2.training.recipe import CONFIG_DIR, Recipe, RecipeError, lint_recipe, load_recipe, resolve_imgsz

NATIVE_SIDE = 312  # the real dataset's largest image side (224 or 312 px)

# The list: the guide's command plus its saved training config.
SEED_VALUES = {
    "model": "baseline",
    "epochs": 80,
    "imgsz": 640,
    "batch": 8,
    "optimizer": "AdamW",
    "lr0": 0.0001,
    "lrf": 0.01,
    "cos_lr": True,
    "warmup_epochs": 3,
    "momentum": 0.937,
    "weight_decay": 0.001,
    "box": 10.0,
    "cls": 0.6,
    "dfl": 1.7,
    "mosaic": 0.2,
    "mixup": 0.0,
    "copy_paste": 0.0,
    "degrees": 5.0,
    "translate": 0.1,
    "scale": 0.6,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "close_mosaic": 20,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "patience": 15,
    "save_period": 5,
    "seed": 0,
    "deterministic": True,
}


# configs/demo/ holds the demo baseline settings (not a recipe, read by tasks/synthetic.py).
@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("phase2-*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem == load_recipe(path.stem).name


def test_seed_recipe_is_the_guides_recipe():
    train = load_recipe("phase2-seed").train
    assert {key: getattr(train, key) for key in SEED_VALUES} == SEED_VALUES


@pytest.fixture
def guide_command(seed_guide) -> dict[str, str]:
    """key=value pairs of the guide's "Direct YOLO Command" block."""
    block = seed_guide.read_text().split("### Direct YOLO Command", 1)[1].split("```", 2)[1]
    return dict(re.findall(r"^\s*(\w+)=(\S+?)\s*\\?$", block, flags=re.M))


def test_seed_recipe_matches_every_value_of_the_guides_command(guide_command):
    train = load_recipe("phase2-seed").train.model_dump()
    # Not training values (paths, logging) or deliberately generalized (device: mps -> auto).
    different_on_purpose = {"model", "data", "device", "save", "verbose"}
    command = guide_command
    assert len(command) > 30
    for key, text in command.items():
        if key in different_on_purpose:
            continue
        value = yaml.safe_load(text)
        if key == "cache":  # Ultralytics reads cache=True as "ram"
            value = "ram" if value is True else value
        assert train[key] == value, f"{key}: recipe {train[key]!r} != guide {value!r}"


def test_seed_lints_with_the_guides_traps():
    codes = {w.code for w in lint_recipe(load_recipe("phase2-seed"), native_imgsz=NATIVE_SIDE)}
    assert codes == {"TRAIN_CONF", "TRAIN_IOU", "WARMUP_BIAS_LR", "IMGSZ_ABOVE_NATIVE"}
    assert "IMGSZ_ABOVE_NATIVE" not in {w.code for w in lint_recipe(load_recipe("phase2-seed"))}


def test_native_differs_from_seed_only_in_imgsz():
    seed, native = load_recipe("phase2-seed"), load_recipe("phase2-native")
    seed_dump, native_dump = (
        seed.model_dump(exclude={"name", "description"}),
        native.model_dump(exclude={"name", "description"}),
    )
    assert native_dump["train"].pop("imgsz") == "native"
    assert seed_dump["train"].pop("imgsz") == 640
    assert native_dump == seed_dump
    assert resolve_imgsz(native, 320) == 320
    with pytest.raises(RecipeError, match="phase2-native.*native"):
        resolve_imgsz(native, None)
    assert "IMGSZ_ABOVE_NATIVE" not in {w.code for w in lint_recipe(native, native_imgsz=NATIVE_SIDE)}


def write_recipe(tmp_path: Path, train: dict, **top) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "train": train, **top}))
    return path


@pytest.mark.parametrize(
    ("train", "top", "key", "words"),
    [
        ({"epochs": 2, "lr_0": 0.1}, {}, "train.lr_0", "remove it or fix its spelling"),
        ({"epochs": 2}, {"tarin": {}}, "tarin", "remove it or fix its spelling"),
        ({"epochs": "many"}, {}, "train.epochs", "valid integer"),
        ({"cos_lr": "sometimes"}, {}, "train.cos_lr", "valid boolean"),
        ({"epochs": 0}, {}, "train.epochs", "greater than 0"),
        ({"epochs": -5}, {}, "train.epochs", "greater than 0"),
        ({"model": "yolo99z.yaml"}, {}, "train.model", "unknown model yaml"),
        ({"imgsz": "huge"}, {}, "train.imgsz", "native"),
    ],
    ids=[
        "unknown-train-key",
        "unknown-top-key",
        "wrong-type",
        "wrong-bool",
        "zero-epochs",
        "negative-epochs",
        "unknown-model-yaml",
        "bad-imgsz",
    ],
)
def test_bad_recipes_are_rejected_naming_file_and_key(tmp_path, train, top, key, words, reliability_log):
    path = write_recipe(tmp_path, train, **top)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert f"{path}: {key}" in message and words in message  # a union adds its branch: train.imgsz.int
    reliability_log(
        "bad input",
        "malformed recipes (unknown keys, wrong types, zero/negative epochs, unknown model yaml)",
        expected="RecipeError naming the file and the key",
        observed=key + ": " + words,
    )


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ntrain:\n  epochs: [1,\n")
    with pytest.raises(RecipeError, match=rf"{re.escape(str(path))}:\d+: not valid YAML"):
        load_recipe(path)


def test_unknown_recipe_name_lists_the_known_ones():
    with pytest.raises(RecipeError, match="recipe not found. Known recipes: .*phase2-seed"):
        load_recipe("phase2-nope")


def test_close_mosaic_at_or_above_epochs_is_linted():
    def codes(**train) -> set[str]:
        return {w.code for w in lint_recipe(Recipe(name="r", train=train))}

    assert "CLOSE_MOSAIC_GE_EPOCHS" in codes(epochs=10, close_mosaic=10)
    assert "CLOSE_MOSAIC_GE_EPOCHS" in codes(epochs=2, close_mosaic=20)
    assert "CLOSE_MOSAIC_GE_EPOCHS" not in codes(epochs=11, close_mosaic=10)
    assert "CLOSE_MOSAIC_GE_EPOCHS" not in codes(epochs=2, close_mosaic=20, mosaic=0.0)


def test_demo_recipe_avoids_the_seed_traps():
    assert lint_recipe(load_recipe("phase2-demo")) == []


def test_classes_and_minority_class_are_recipe_data():
    shipped = load_recipe("phase2-seed")
    assert shipped.classes == ["rock_toe", "slope_drain", "toe_drain", "vegetation"]
    assert shipped.minority_class == "toe_drain" and shipped.rebalance.targets == {"toe_drain": 18}
    unset = Recipe(name="r")
    assert unset.classes is None and unset.rebalance.targets == {"toe_drain": 18}  # None: data.yaml's names
    culvert = Recipe(name="r", classes=["pipe", "culvert"], minority_class="culvert")
    assert culvert.rebalance.targets == {"culvert": 18}  # the default target follows the minority class
    assert Recipe.model_validate(culvert.model_dump()) == culvert


@pytest.mark.parametrize(
    ("top", "field"),
    [
        ({"minority_class": "culvert"}, "minority_class"),
        ({"rebalance": {"targets": {"culvert": 4}}}, "rebalance.targets"),
        ({"promotion": {"per_class_min": {"culvert": {"AP50": 0.5}}}}, "promotion.per_class_min"),
        (
            {"selection": {"kind": "class_aware", "class_floors": {"culvert": {"AP50": 0.5}}}},
            "selection.class_floors",
        ),
    ],
)
def test_class_names_outside_classes_are_refused(tmp_path, top, field):
    path = write_recipe(tmp_path, {}, classes=["rock_toe", "toe_drain"], **top)
    with pytest.raises(RecipeError, match=rf"{re.escape(field)} names \['culvert'\], not among classes"):
        load_recipe(path)
