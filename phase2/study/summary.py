"""The numbers of a recipe study: per recipe, mean and spread across seeds; per pair of recipes,
the paired bootstrap difference.

Method (stated in the output as ``method``): every run's best weights are evaluated once on the
same split (one :class:`~phase2.evaluation.matches.MatchTable` each) and all runs are resampled
with the *same* image resamples (``resample_counts``, as ``compare_tables`` does), so differences
are paired over images.

- ``per_seed``: for a training seed both recipes ran, Δ = B − A of the two runs on the shared
  image resamples (interval and P(B > A) as ``phase2 compare``).
- ``pooled``: Δ of the recipes' seed means, with a two-level bootstrap: each resample draws the
  images (shared by both recipes) and, independently per recipe, S of its S seeds with
  replacement, so the interval holds both the image sampling and the seed-to-seed noise.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from phase2.evaluation.matches import MatchTable
from phase2.evaluation.uncertainty import bootstrap_replicates, point_metrics, resample_counts

METHOD = (
    "each run's best.pt evaluated once on the same split; percentile bootstrap over images with the "
    "same image resamples for every run (paired); per_seed: Δ of the runs with the same training seed; "
    "pooled: Δ of the seed means, each resample also redrawing every recipe's seeds with replacement"
)
MINORITY_KEY = "minority AP50"


class StudyRun(BaseModel):
    """One fine-tune of the study and where its evaluation is."""

    recipe: str
    seed: int
    run_key: str
    imgsz: int
    eval_imgsz: int
    epochs: int
    s_per_epoch: float | None
    wall_time_s: float
    weights: Path
    weights_sha256: str
    matches: Path
    wandb_run: str | None = None


def _metric_arrays(table: MatchTable, replicates: Any, minority: str | None) -> dict[str, np.ndarray]:
    values = {"mAP50": replicates.overall["mAP50"], "mAP50-95": replicates.overall["mAP50-95"]}
    if minority is not None:
        values[MINORITY_KEY] = replicates.per_class["AP50"][:, table.names.index(minority)]
    return values


def _number(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)


def _spread(values: list[float | None]) -> dict[str, Any]:
    finite = [v for v in values if v is not None]
    return {
        "values": values,
        "mean": statistics.fmean(finite) if finite else None,
        "sd": statistics.stdev(finite) if len(finite) > 1 else None,  # sample sd (n - 1)
        "min": min(finite, default=None),
        "max": max(finite, default=None),
    }


def _delta(diff: np.ndarray, point: float | None) -> dict[str, Any]:
    finite = diff[~np.isnan(diff)]
    if point is None or finite.size == 0:
        return {"value": point, "ci95": None, "p_b_better": None}
    low, high = np.percentile(finite, [2.5, 97.5])
    return {"value": point, "ci95": [float(low), float(high)], "p_b_better": float(np.mean(finite > 0))}


def summarize_study(
    runs: list[StudyRun], tables: list[MatchTable], *, minority: str | None, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per-recipe rows, per-run values and recipe-vs-recipe comparisons (see the module doc)."""
    if not runs or len(runs) != len(tables):
        raise ValueError("a study summary needs one evaluation per run")
    images = tables[0].images
    tables = [t.reordered(images) for t in tables]
    if any(not np.array_equal(t.gt, tables[0].gt) or t.names != tables[0].names for t in tables):
        raise ValueError("the study's runs were evaluated on different labels or classes; evaluate all on one split")
    if minority is not None and minority not in tables[0].names:
        raise ValueError(f"minority class {minority!r} is not one of the dataset's classes {tables[0].names}")
    counts = resample_counts(len(images), resamples, seed)
    points = [{k: _number(v[0]) for k, v in _metric_arrays(t, point_metrics(t), minority).items()} for t in tables]
    reps = [_metric_arrays(t, bootstrap_replicates(t, counts), minority) for t in tables]
    metrics = list(points[0])
    recipes = list(dict.fromkeys(r.recipe for r in runs))
    members = {name: [i for i, r in enumerate(runs) if r.recipe == name] for name in recipes}
    rows = []
    for name in recipes:
        idx = members[name]
        first = runs[idx[0]]
        per_epoch = [s for i in idx if (s := runs[i].s_per_epoch) is not None]
        rows.append(
            {
                "recipe": name,
                "imgsz": first.imgsz,
                "eval_imgsz": first.eval_imgsz,
                "epochs": first.epochs,
                "seeds": [runs[i].seed for i in idx],
                "metrics": {k: _spread([points[i][k] for i in idx]) for k in metrics},
                "s_per_epoch": statistics.fmean(per_epoch) if per_epoch else None,
                "compute_s": sum(runs[i].wall_time_s for i in idx),
            }
        )
    rng = np.random.default_rng(seed)
    comparisons = []
    for a_pos, a_name in enumerate(recipes):
        for b_name in recipes[a_pos + 1 :]:
            comparisons.append(_compare((a_name, b_name), members, runs, points, reps, rng))
    return {
        "split": tables[0].protocol.split,
        "n_images": len(images),
        "instances": tables[0].instances(),
        "minority_class": minority,
        "bootstrap": {"resamples": resamples, "seed": seed, "unit": "image", "level": 0.95, "method": METHOD},
        "runs": [{**r.model_dump(mode="json"), "metrics": p} for r, p in zip(runs, points, strict=True)],
        "recipes": rows,
        "comparisons": comparisons,
    }


def _compare(
    pair: tuple[str, str],
    members: dict[str, list[int]],
    runs: list[StudyRun],
    points: list[dict[str, float | None]],
    reps: list[dict[str, np.ndarray]],
    rng: np.random.Generator,
) -> dict[str, Any]:
    a_name, b_name = pair
    a_idx, b_idx = members[a_name], members[b_name]
    metrics = list(points[0])
    b_by_seed = {runs[i].seed: i for i in b_idx}
    per_seed = []
    for i in a_idx:
        j = b_by_seed.get(runs[i].seed)
        if j is None:
            continue
        entry = {}
        for k in metrics:
            pa, pb = points[i][k], points[j][k]
            entry[k] = _delta(reps[j][k] - reps[i][k], None if pa is None or pb is None else pb - pa)
        per_seed.append({"seed": runs[i].seed, "delta": entry})
    resamples = len(reps[a_idx[0]][metrics[0]])
    draw_a = rng.integers(0, len(a_idx), size=(resamples, len(a_idx)))
    draw_b = rng.integers(0, len(b_idx), size=(resamples, len(b_idx)))
    pooled = {}
    for k in metrics:
        a_reps = np.stack([reps[i][k] for i in a_idx], axis=1)  # (resamples, seeds)
        b_reps = np.stack([reps[j][k] for j in b_idx], axis=1)
        rows = np.arange(resamples)[:, None]
        diff = b_reps[rows, draw_b].mean(1) - a_reps[rows, draw_a].mean(1)
        a_mean = _spread([points[i][k] for i in a_idx])["mean"]
        b_mean = _spread([points[j][k] for j in b_idx])["mean"]
        pooled[k] = _delta(diff, None if a_mean is None or b_mean is None else b_mean - a_mean)
    return {"a": a_name, "b": b_name, "per_seed": per_seed, "pooled": pooled}


def recipe_table_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per recipe (the Prefect table artifact, W&B table, CLI): mean and sd across seeds,
    and the pooled Δ against the first recipe."""
    reference = {c["b"]: c["pooled"] for c in summary["comparisons"] if c["a"] == summary["recipes"][0]["recipe"]}
    rows = []
    for row in summary["recipes"]:
        flat: dict[str, Any] = {
            "recipe": row["recipe"],
            "imgsz": row["imgsz"],
            "epochs": row["epochs"],
            "seeds": len(row["seeds"]),
        }
        for k, spread in row["metrics"].items():
            flat[f"{k} mean"] = spread["mean"]
            flat[f"{k} sd"] = spread["sd"]
            delta = reference.get(row["recipe"], {}).get(k)
            flat[f"{k} Δ vs first"] = delta["value"] if delta else None
            flat[f"{k} Δ ci95"] = delta["ci95"] if delta else None
            flat[f"{k} P(better)"] = delta["p_b_better"] if delta else None
        flat["s/epoch"] = row["s_per_epoch"]
        flat["compute s"] = row["compute_s"]
        rows.append(flat)
    return rows
