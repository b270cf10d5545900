"""A study's runs: one recipe per (recipe, seed), each with its own run key, all in one W&B group."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError

from phase2.infra.files import sha256_bytes
from phase2.runs import RunContext, RunLayout
from phase2.training.recipe import Recipe, RecipeError, load_recipe


def study_recipes(
    names: list[str], seeds: list[int], *, epochs: int | None = None, train_overrides: dict[str, Any] | None = None
) -> list[Recipe]:
    """Every (recipe, seed) as a validated recipe: ``train.seed`` set, and ``epochs`` and the
    overrides applied to all (validated like a recipe file: a typo is refused, naming the key)."""
    if not names or not seeds:
        raise RecipeError("a study needs at least one recipe and one seed (recipes=[...], seeds=[...])")
    if len(set(seeds)) != len(seeds):
        raise RecipeError(f"seeds {seeds}: each seed once")
    overrides = {**(train_overrides or {}), **({"epochs": epochs} if epochs is not None else {})}
    recipes = [load_recipe(name) for name in names]
    if len({r.name for r in recipes}) != len(recipes):
        raise RecipeError(f"recipes {names}: two have the same name; a study compares recipes by name")
    if len({r.rebalance.model_dump_json() for r in recipes}) > 1 or len({str(r.classes) for r in recipes}) > 1:
        raise RecipeError(
            f"recipes {names} differ in rebalance settings or classes: a study trains every run on one "
            "dataset version; give them the same `rebalance` and `classes`"
        )
    out = []
    for recipe in recipes:
        for seed in seeds:
            data = recipe.model_dump(mode="json")
            data["train"] = {**data["train"], **overrides, "seed": seed}
            try:
                out.append(Recipe.model_validate(data))
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise RecipeError(
                    f"study overrides {overrides} for recipe {recipe.name}: {problems} (fix the key or value)"
                ) from None
    return out


def study_key(*, data: str, baseline: str, recipes: list[Recipe]) -> str:
    """The same inputs give the same key, so a re-run study resumes its finished runs (a changed
    dataset under the same key is refused by fine-tuning's identity check, which says to rename)."""
    identity = {
        "data": data,
        "baseline": baseline,
        "recipes": [r.model_dump(mode="json") for r in recipes],
    }
    return "study-" + sha256_bytes(json.dumps(identity, sort_keys=True).encode())[:12]


def run_contexts(study: RunContext, recipes: list[Recipe]) -> list[RunContext]:
    """One context per (recipe, seed), run key ``<study>-<recipe>-s<seed>``, W&B group = the study."""
    return [
        study.model_copy(
            update={
                "layout": RunLayout.for_run(
                    f"{study.run_key}-{re.sub(r'[^A-Za-z0-9._-]', '_', r.name)}-s{r.train.seed}", study.layout.state
                ),
                "recipe": r,
                "wandb_group": study.run_key,
            }
        )
        for r in recipes
    ]
