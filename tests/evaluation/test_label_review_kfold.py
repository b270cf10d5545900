"""Label review of train through k-fold models: real Ultralytics fold trainings on real images.

14 real train images (a photograph with 3 exact copies, one with 2, two near-duplicate pairs under
different names, 5 single photographs) and 3 val images; 2 folds, each fine-tuned for 1 epoch from
the session's learned model (tests/plugins/learned_model.py) at 128 px. Which model predicted an
image is found here by re-predicting it with every fold model (Ultralytics directly) and matching;
which images a model trained on is read from its own checkpoint's train args.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError

from phase2.dataset.duplicates import find_duplicate_groups
from phase2.evaluation.kfold_review import assign_folds, kfold_predictions
from phase2.evaluation.label_review import QUEUE_CSV, SUMMARY_JSON, LabelReviewSettings, OutOfFold, review_labels
from phase2.training.checkpoints import load_checkpoint
from phase2.training.recipe import TrainArgs
from tests.plugins.data import TINY_RECIPE

IMGSZ = 128
CONF = 0.001
K = 2
N_SINGLES = 5
N_VAL = 3
FOLD_TRAIN_ARGS = TrainArgs.model_validate({**TINY_RECIPE["train"], "epochs": 1}).ultralytics_kwargs(IMGSZ)


def _subset(real_dataset: Path, dst: Path) -> Path:
    """data.yaml of the subset described above (its groups picked from the whole real train split)."""
    train = sorted((real_dataset / "train" / "images").iterdir())
    groups = find_duplicate_groups({"train": train})
    exact = [g for g in groups if g.kind == "exact"]
    near = [g for g in groups if g.kind == "near"]
    picked = [next(g for g in exact if len(g.members) == 3), next(g for g in exact if len(g.members) == 2), *near[:2]]
    grouped = {m.image.name for g in groups for m in g.members}
    singles = [p for p in train if p.name not in grouped][:N_SINGLES]
    names = [[m.image.name for m in g.members] for g in picked] + [[p.name] for p in singles]
    val = sorted((real_dataset / "val" / "images").iterdir())[:N_VAL]
    for split, images in {
        "train": [real_dataset / "train" / "images" / n for g in names for n in g],
        "val": val,
    }.items():
        for sub in ("images", "labels"):
            (dst / split / sub).mkdir(parents=True, exist_ok=True)
        for image in images:
            shutil.copy2(image, dst / split / "images" / image.name)
            label = real_dataset / split / "labels" / f"{image.stem}.txt"
            if label.exists():
                shutil.copy2(label, dst / split / "labels" / label.name)
    meta = yaml.safe_load((real_dataset / "data.yaml").read_text())
    config = {"train": "./train/images", "val": "./val/images", "nc": meta["nc"], "names": meta["names"]}
    (dst / "data.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dst / "data.yaml"


def _photograph_groups(images: list[Path]) -> list[set[Path]]:
    """Images that must share a fold, derived here: same bytes (sha256), same Roboflow source
    (``<name>_jpg.rf.<hash>``), or near duplicates (the duplicates function)."""
    links: dict[str, set[Path]] = defaultdict(set)
    for image in images:
        links["sha:" + hashlib.sha256(image.read_bytes()).hexdigest()].add(image)
        links["src:" + re.sub(r"\.rf\.[0-9a-f]+$", "", image.stem)].add(image)
    for group in find_duplicate_groups({"train": images}):
        links[f"dup:{group.members[0].image}"] |= {m.image for m in group.members}
    return [members for members in links.values() if len(members) > 1]


def _rows(per_class: list[np.ndarray]) -> np.ndarray:
    """[x1, y1, x2, y2, conf, class] rows, in a canonical order."""
    rows = np.concatenate([np.column_stack([p, np.full(len(p), k)]) for k, p in enumerate(per_class)])
    return rows[np.lexsort(rows.T[::-1])]


def _predicted_by(models: dict[str, object], image: Path, stored: list[np.ndarray]) -> list[str]:
    """The fold models whose own Ultralytics predictions of ``image`` are the stored ones."""
    ours = _rows(stored)
    matches = []
    for name, model in models.items():
        boxes = model.predict(str(image), imgsz=IMGSZ, conf=CONF, verbose=False)[0].boxes.cpu().numpy()  # type: ignore[attr-defined]
        theirs = np.column_stack([boxes.xyxy, boxes.conf, boxes.cls])
        theirs = theirs[np.lexsort(theirs.T[::-1])]
        if theirs.shape == ours.shape and np.allclose(theirs, ours, atol=1e-4):
            matches.append(name)
    return matches


def _kfold(data_yaml: Path, out_dir: Path, baseline: Path, duplicate_groups: list[list[Path]]) -> OutOfFold:
    return kfold_predictions(
        data_yaml,
        out_dir,
        start_weights=baseline,
        train_args=FOLD_TRAIN_ARGS,
        duplicate_groups=duplicate_groups,
        k=K,
        imgsz=IMGSZ,
        conf=CONF,
    )


def _trained_on(weights: Path) -> set[Path]:
    """The train images the checkpoint's own train args point at (Ultralytics' data yaml -> list)."""
    data = Path(load_checkpoint(weights)["train_args"]["data"])
    listed = yaml.safe_load(data.read_text())["train"]
    return {Path(line).resolve() for line in (data.parent / listed).read_text().split()}


def test_every_train_image_is_scored_once_by_the_fold_model_that_did_not_train_on_it(
    learned_model, real_dataset, tmp_path
):
    from ultralytics import YOLO

    baseline, _ = learned_model
    data_yaml = _subset(real_dataset, tmp_path / "data")
    train = sorted((tmp_path / "data" / "train" / "images").resolve().iterdir())
    assert len(train) == 3 + 2 + 2 + 2 + N_SINGLES == 14
    duplicate_groups = [[m.image for m in g.members] for g in find_duplicate_groups({"train": train})]

    oof = _kfold(data_yaml, tmp_path / "kfold", baseline, duplicate_groups)

    # Exactly one score per train image.
    scored = [im.path.resolve() for im in oof.images]
    assert sorted(scored) == train and len(oof.predictions) == len(train)
    folds = {f"fold {f['fold']}/{K}": f for f in oof.summary["folds"]}
    assert len(folds) == K and {im.scored_by for im in oof.images} == set(folds)
    models = {name: YOLO(str(fold["weights"])) for name, fold in folds.items()}
    trained_on = {name: _trained_on(Path(fold["weights"])) for name, fold in folds.items()}
    for name, fold in folds.items():
        ckpt_args = load_checkpoint(Path(fold["weights"]))["train_args"]
        assert (Path(ckpt_args["model"]), ckpt_args["epochs"], ckpt_args["imgsz"]) == (baseline, 1, IMGSZ)
        assert trained_on[name] | {p for p, im in zip(scored, oof.images, strict=True) if im.scored_by == name} == set(
            train
        )
    # Each prediction is the own prediction of a fold model that never trained on the image.
    for path, image, stored in zip(scored, oof.images, oof.predictions, strict=True):
        predicted_by = _predicted_by(models, path, stored)
        assert predicted_by, f"{path.name}: no fold model predicts what was scored"
        for name in predicted_by:
            assert path not in trained_on[name], f"{path.name} scored with {name}'s predictions; {name} trained on it"
        assert predicted_by == [image.scored_by], (path.name, predicted_by, image.scored_by)
    # No photograph split across folds (groups derived here from the raw files).
    fold_of = dict(zip(scored, (im.scored_by for im in oof.images), strict=True))
    photographs = _photograph_groups(train)
    assert len(set().union(*photographs)) == 3 + 2 + 2 + 2  # every copied group is seen here
    for group in photographs:
        assert len({fold_of[p] for p in group}) == 1, {p.name: fold_of[p] for p in group}

    # The train rows join val's in one review queue, split=train.
    settings = LabelReviewSettings(splits=["val"], kfold_train=True, folds=K, top_n=4)
    winner = Path(folds[f"fold 1/{K}"]["weights"])  # a stand-in for the selected model: it never saw val
    result = review_labels(winner, data_yaml, tmp_path / "review", imgsz=IMGSZ, settings=settings, out_of_fold=oof)
    queue = pd.read_csv(result.queue_csv)
    assert result.splits == ["val", "train"] and len(queue) == len(train) + N_VAL
    rows = queue[queue["split"] == "train"]
    assert sorted(Path(p).resolve() for p in rows["image"]) == train
    assert {Path(r.image).resolve(): r.scored_by for r in rows.itertuples()} == fold_of
    assert set(queue.loc[queue["split"] == "val", "scored_by"]) == {"selected model"}
    assert queue["score"].between(0, 1 + 1e-9).all() and queue["score"].is_monotonic_increasing
    assert len(pd.read_json(result.queue_json)) == len(queue) and (tmp_path / "review" / QUEUE_CSV).is_file()
    assert json.loads((tmp_path / "review" / SUMMARY_JSON).read_text())["kfold"]["k"] == K

    # A rerun reuses the finished fold models: nothing retrained, the same weights and folds.
    written = [Path(f["weights"]).stat().st_mtime_ns for f in oof.summary["folds"]]
    again = _kfold(data_yaml, tmp_path / "kfold", baseline, duplicate_groups)
    assert [f["reused"] for f in oof.summary["folds"]] == [False] * K
    assert [f["reused"] for f in again.summary["folds"]] == [True] * K
    assert [Path(f["weights"]).stat().st_mtime_ns for f in again.summary["folds"]] == written
    assert [f["weights_sha256"] for f in again.summary["folds"]] == [f["weights_sha256"] for f in folds.values()]
    assert [im.scored_by for im in again.images] == [im.scored_by for im in oof.images]


def test_folds_are_whole_groups_balanced_and_seeded():
    images = [Path(f"/d/train/images/{name}.jpg") for name in "abcdefghij"]
    groups = [[images[0], images[1], images[2]], [images[3], images[4]]]
    folds = assign_folds(images, groups, k=3, seed=7)
    assert folds == assign_folds(images, groups, k=3, seed=7)
    assert sorted(p for f in folds for p in f.holdout) == sorted(images)
    for f in folds:
        assert set(f.train) | set(f.holdout) == set(images) and not set(f.train) & set(f.holdout)
    for group in groups:
        assert sum(bool(set(group) & set(f.holdout)) for f in folds) == 1
    assert sorted(len(f.holdout) for f in folds) == [3, 3, 4]
    partitions = {frozenset(tuple(f.holdout) for f in assign_folds(images, groups, k=3, seed=s)) for s in range(6)}
    assert len(partitions) > 1  # the seed shuffles which groups share a fold
    with pytest.raises(ValueError, match=r"2 leak-free group\(s\).*folds=3"):
        assign_folds(images[:3], [images[:2]], k=3, seed=0)


def test_kfold_settings():
    assert LabelReviewSettings().model_dump()["kfold_train"] is False
    assert LabelReviewSettings(kfold_train=True).folds == 3
    with pytest.raises(ValidationError, match="folds"):
        LabelReviewSettings(kfold_train=True, folds=1)


def test_the_flow_hands_the_validation_to_the_kfold_review(tmp_path):
    """kfold_train needs the validation's duplicate groups: the flow passes them, the task refuses without."""
    import flows.train
    from phase2.runs import RunContext, RunLayout
    from phase2.training.recipe import Recipe
    from tasks.label_review import out_of_fold_train

    calls = [n for n in ast.walk(ast.parse(inspect.getsource(flows.train))) if isinstance(n, ast.Call)]
    review = next(c for c in calls if isinstance(c.func, ast.Name) and c.func.id == "label_review")
    assert [ast.unparse(kw.value) for kw in review.keywords if kw.arg == "validation"] == ["validation"]
    recipe = Recipe.model_validate({**TINY_RECIPE, "label_review": {"kfold_train": True, "folds": 2}})
    ctx = RunContext(
        layout=RunLayout.for_run("kfold-test", tmp_path),
        model_name="m",
        source_dataset_version="v",
        recipe=recipe,
        baseline="b",
    )
    with pytest.raises(ValueError, match="kfold_train needs the validation output"):
        out_of_fold_train(tmp_path / "data.yaml", None, IMGSZ, ctx)
