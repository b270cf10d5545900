"""The study's numbers on synthetic per-image match tables (no training): per-recipe mean and sd
are those of the per-run values, the per-seed Δ is exactly ``phase2 compare``'s, and the pooled
Δ separates a clearly better recipe from noise."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest

from phase2.evaluation.uncertainty import compare_tables, evaluate_table
from phase2.study.summary import StudyRun, recipe_table_rows, summarize_study
from tests.evaluation.test_uncertainty_calibration import synthetic_table

RESAMPLES = 300


def _run(recipe: str, seed: int) -> StudyRun:
    return StudyRun(
        recipe=recipe,
        seed=seed,
        run_key=f"k-{recipe}-{seed}",
        imgsz=64,
        eval_imgsz=64,
        epochs=1,
        s_per_epoch=2.0 + seed,
        wall_time_s=10.0 + seed,
        weights=Path("best.pt"),
        weights_sha256="0" * 64,
        matches=Path("m.npz"),
    )


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(7)
    gt = rng.poisson(1.0, size=(40, 3))
    detect = {"weak": 0.35, "strong": 0.9}
    runs = [_run(recipe, seed) for recipe in detect for seed in (0, 1, 2)]
    tables = [synthetic_table(rng, gt, detect[run.recipe]) for run in runs]
    summary = summarize_study(runs, tables, minority="class2", resamples=RESAMPLES, seed=0)
    return runs, tables, summary


def test_mean_and_sd_across_seeds_are_those_of_the_per_run_values(study):
    runs, tables, summary = study
    for row in summary["recipes"]:
        members = [t for r, t in zip(runs, tables, strict=True) if r.recipe == row["recipe"]]
        values = [evaluate_table(t, resamples=10)["metrics"]["mAP50"]["value"] for t in members]
        minority = [evaluate_table(t, resamples=10)["per_class"]["class2"]["AP50"]["value"] for t in members]
        assert row["metrics"]["mAP50"]["mean"] == pytest.approx(statistics.fmean(values))
        assert row["metrics"]["mAP50"]["sd"] == pytest.approx(statistics.stdev(values))
        assert row["metrics"]["minority AP50"]["values"] == pytest.approx(minority)
        assert row["compute_s"] == 10 + 11 + 12 and row["s_per_epoch"] == pytest.approx(3.0)
    assert [r["recipe"] for r in recipe_table_rows(summary)] == ["weak", "strong"]


def test_per_seed_delta_is_phase2_compare_and_pooled_sees_the_better_recipe(study):
    runs, tables, summary = study
    (comparison,) = summary["comparisons"]
    assert (comparison["a"], comparison["b"]) == ("weak", "strong")
    for entry in comparison["per_seed"]:
        a = tables[[i for i, r in enumerate(runs) if (r.recipe, r.seed) == ("weak", entry["seed"])][0]]
        b = tables[[i for i, r in enumerate(runs) if (r.recipe, r.seed) == ("strong", entry["seed"])][0]]
        expected = compare_tables(a, b, resamples=RESAMPLES, seed=0)["delta"]["mAP50"]
        assert entry["delta"]["mAP50"]["value"] == pytest.approx(expected["value"])
        assert entry["delta"]["mAP50"]["ci95"] == pytest.approx(expected["ci95"])
        assert entry["delta"]["mAP50"]["p_b_better"] == pytest.approx(expected["p_b_better"])
    pooled = comparison["pooled"]["mAP50"]
    means = {r["recipe"]: r["metrics"]["mAP50"]["mean"] for r in summary["recipes"]}
    assert pooled["value"] == pytest.approx(means["strong"] - means["weak"])
    assert pooled["ci95"][0] > 0 and pooled["p_b_better"] == 1.0


def test_runs_on_different_images_are_refused(study):
    runs, tables, _ = study
    other = synthetic_table(np.random.default_rng(1), np.ones((5, 3), int), 0.5)
    with pytest.raises(ValueError, match="same images"):
        summarize_study(runs[:2], [tables[0], other], minority=None, resamples=10)
