"""Checkpoint selection on a real tiny Ultralytics training of real images (see conftest.trained_run)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from phase2.evaluation.promotion import PromotionRule, decide_promotion
from phase2.evaluation.selection import (
    SelectionPolicy,
    SelectionResult,
    find_candidates,
    rank_candidates,
    select_checkpoint,
)
from phase2.infra.files import sha256_file
from tests.evaluation.conftest import IMGSZ, snapshot

TOE_DRAIN_FLOOR = {"toe_drain": {"AP50": 0.60}}


@pytest.fixture(scope="module")
def fitness_selection(trained_run, tmp_path_factory):
    run_dir, data_yaml = trained_run
    before = snapshot(data_yaml.parent)
    result = select_checkpoint(
        run_dir, data_yaml, SelectionPolicy(), imgsz=IMGSZ, out_dir=tmp_path_factory.mktemp("select-fitness")
    )
    assert snapshot(data_yaml.parent) == before, "selection wrote into the dataset"
    return result


def test_candidates_found_and_deduplicated(trained_run, tmp_path):
    run_dir, _ = trained_run
    names = sorted(p.name for p in (run_dir / "weights").iterdir())
    assert names == ["best.pt", "epoch0.pt", "epoch1.pt", "last.pt"]
    found = find_candidates(run_dir)
    assert [p.name for p, _, _ in found] == ["best.pt", "last.pt", "epoch0.pt", "epoch1.pt"]
    assert all(digest == sha256_file(p) for p, digest, _ in found)

    # An identical file under another name is merged into the first of them.
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.copyfile(copy / "weights" / "best.pt", copy / "weights" / "last.pt")
    shutil.copyfile(copy / "weights" / "epoch0.pt", copy / "weights" / "epoch7.pt")
    merged = find_candidates(copy)
    assert [(p.name, dupes) for p, _, dupes in merged] == [
        ("best.pt", ["last.pt"]),
        ("epoch0.pt", ["epoch7.pt"]),
        ("epoch1.pt", []),
    ]

    with pytest.raises(FileNotFoundError, match="no best.pt, last.pt or epochN.pt"):
        find_candidates(tmp_path / "empty")


def test_fitness_policy_picks_highest_reevaluated_fitness(fitness_selection):
    result = fitness_selection
    table = pd.read_csv(result.candidates_csv)
    assert list(table["candidate"]) == ["best.pt", "last.pt", "epoch0.pt", "epoch1.pt"]
    assert table["sha256"].is_unique
    assert table.loc[table["selected"], "candidate"].tolist() == [result.winner_name]
    winner_row = table[table["selected"]].iloc[0]
    # Highest fitness; ties go to mAP50-95, mAP50, then the candidate order.
    expected = table.sort_values(["fitness", "mAP50-95", "mAP50"], ascending=False, kind="stable").iloc[0]
    assert winner_row["candidate"] == expected["candidate"]
    assert winner_row["fitness"] == pytest.approx(table["fitness"].max())
    assert result.winner_sha256 == sha256_file(result.winner)
    assert result.val.metrics["overall"]["fitness"] == pytest.approx(winner_row["fitness"])
    # Every candidate's row is the number its own evaluation wrote.
    for c in result.candidates:
        row = table[table["candidate"] == c.name].iloc[0]
        assert row["mAP50-95"] == pytest.approx(c.val.metrics["overall"]["mAP50-95"])
        assert row["toe_drain/AP50"] == pytest.approx(c.val.metrics["per_class"]["toe_drain"]["AP50"])
    assert "Ultralytics fitness = " in result.policy_description


def test_winner_evaluated_on_test_and_summary_written(fitness_selection):
    result = fitness_selection
    assert result.test is not None and result.test.protocol.split == "test"
    assert result.test.weights_sha256 == result.winner_sha256
    md = result.summary_md.read_text()
    assert result.winner_name in md and "**test**" in md and "toe_drain" in md
    # selection.json is the whole result: what later stages read instead of parsing selection.md.
    assert result.selection_json == result.summary_md.with_name("selection.json")
    assert SelectionResult.model_validate_json(result.selection_json.read_text()) == result


def test_the_test_pass_keeps_the_gate_table_for_promotion(fitness_selection):
    """The winner's one test pass also gives the promotion gate its per-image table: the same
    numbers as that pass, with intervals (promotion does not evaluate test again)."""
    from phase2.evaluation.matches import load_match_table
    from phase2.evaluation.uncertainty import evaluate_table

    result = fitness_selection
    assert result.gate_split == "test" and result.gate_matches == result.test.save_dir / "matches.npz"
    table = load_match_table(result.gate_matches)
    assert table.weights_sha256 == result.winner_sha256 and table.protocol == result.test.protocol
    assert table.instances() == {c: v["instances"] for c, v in result.test.metrics["per_class"].items()}
    assert result.gate == evaluate_table(table)
    for name in ("precision", "recall", "mAP50", "mAP50-95"):
        assert result.gate["metrics"][name]["value"] == pytest.approx(result.test.metrics["overall"][name], abs=1e-9)
    assert "**test, the promotion gate's split**" in result.summary_md.read_text()


def test_training_time_numbers_and_gap_explanation(fitness_selection):
    result = fitness_selection
    by_name = {c.name: c.training for c in result.candidates}
    assert by_name["epoch0.pt"].epoch == 1 and by_name["epoch1.pt"].epoch == 2  # trainer counts from 0
    assert by_name["last.pt"].epoch == 2
    assert not by_name["epoch0.pt"].stripped and by_name["best.pt"].stripped
    # Ultralytics halves the EMA in every checkpoint it saves.
    assert {t.weights_dtype for t in by_name.values()} == {"float16"}
    assert by_name["epoch1.pt"].results_row["epoch"] == 2
    text = "\n".join(result.explanation)
    assert "training-time vs re-evaluated on val" in text
    assert "conf=0.25" in text and "conf=0.001" in text  # the recipe's training conf
    assert "float16" in text


def test_mAP50_policy_on_the_evaluated_table(fitness_selection):
    table = pd.read_csv(fitness_selection.candidates_csv).reset_index(names="order")
    ranked, fell_back = rank_candidates(table, SelectionPolicy(kind="mAP50"))
    expected = table.sort_values(["mAP50", "mAP50-95", "order"], ascending=[False, False, True]).iloc[0]
    assert ranked.loc[0, "candidate"] == expected["candidate"] and not fell_back


def test_class_aware_falls_back_when_no_candidate_meets_floors(trained_run, fitness_selection, tmp_path):
    run_dir, data_yaml = trained_run
    table = pd.read_csv(fitness_selection.candidates_csv)
    # A missing case fails rather than skips: the tiny model never reaches the floor.
    assert not (table["toe_drain/AP50"] >= 0.60).any(), "a 2-epoch model reached toe_drain AP50 0.60: no fallback"
    result = select_checkpoint(
        run_dir,
        data_yaml,
        SelectionPolicy(kind="class_aware", class_floors=TOE_DRAIN_FLOOR),
        imgsz=IMGSZ,
        out_dir=tmp_path,
    )
    assert result.fell_back
    assert "No candidate met the floors" in result.explanation[0] and "toe_drain AP50 >= 0.6" in result.explanation[0]
    best = pd.read_csv(result.candidates_csv).sort_values("mAP50-95", ascending=False, kind="stable").iloc[0]
    assert result.val.metrics["overall"]["mAP50-95"] == pytest.approx(best["mAP50-95"])
    assert "fell back" in result.summary_md.read_text()


def test_class_aware_floor_on_class_absent_from_split_is_not_met(fitness_selection):
    table = pd.read_csv(fitness_selection.candidates_csv).reset_index(names="order")
    absent = [c for c, v in fitness_selection.val.metrics["per_class"].items() if v["instances"] == 0]
    assert absent, "every class occurs in this val subset: no absent class to show"
    policy = SelectionPolicy(kind="class_aware", class_floors={absent[0]: {"AP50": 0.0}})
    ranked, fell_back = rank_candidates(table, policy)
    assert fell_back and not ranked["meets_floors"].any()
    ranked, fell_back = rank_candidates(
        table, SelectionPolicy(kind="class_aware", class_floors={"toe_drain": {"AP50": 0.0}})
    )
    assert not fell_back and ranked["meets_floors"].all()


def test_policies_disagree_where_they_should():
    """The ranking alone, on numbers chosen so each policy has a different winner."""
    table = pd.DataFrame(
        {
            "candidate": ["best.pt", "last.pt", "epoch4.pt"],
            "order": [0, 1, 2],
            "mAP50": [0.80, 0.90, 0.70],
            "mAP50-95": [0.60, 0.55, 0.58],
            "fitness": [0.60, 0.55, 0.58],
            "toe_drain/AP50": [0.40, 0.50, 0.65],
        }
    )
    pick = lambda policy: rank_candidates(table, policy)[0].loc[0, "candidate"]  # noqa: E731
    assert pick(SelectionPolicy()) == "best.pt"
    assert pick(SelectionPolicy(kind="mAP50")) == "last.pt"
    assert pick(SelectionPolicy(kind="class_aware", class_floors=TOE_DRAIN_FLOOR)) == "epoch4.pt"
    ranked, fell_back = rank_candidates(
        table, SelectionPolicy(kind="class_aware", class_floors={"toe_drain": {"AP50": 0.9}})
    )
    assert fell_back and ranked.loc[0, "candidate"] == "best.pt"
    with pytest.raises(ValueError, match="no such class"):
        rank_candidates(table, SelectionPolicy(kind="class_aware", class_floors={"culvert": {"AP50": 0.5}}))


def test_policy_validation():
    with pytest.raises(ValueError, match="class_aware needs class_floors"):
        SelectionPolicy(kind="class_aware")
    with pytest.raises(ValueError, match="only apply to kind 'class_aware'"):
        SelectionPolicy(kind="mAP50", class_floors=TOE_DRAIN_FLOOR)


def test_promotion_gate_on_real_evaluations(fitness_selection):
    """The gate on the evaluation protocol's own point numbers (no intervals: it says so), with
    the recipe's kind of thresholds (margin 0, toe_drain AP50 >= 0.6, first-model minimum 0.3):
    the winner against the candidate it beat is promoted; the same model against the floor, or
    as a first model below the minimum, is refused; a floor on a class the split does not
    contain is refused as insufficient evidence."""
    candidates = sorted(fitness_selection.candidates, key=lambda c: c.val.metrics["overall"]["mAP50-95"])
    worst, best = candidates[0].val.metrics, candidates[-1].val.metrics
    toe_drain = best["per_class"]["toe_drain"]
    assert toe_drain["instances"] > 0 and toe_drain["AP50"] is not None, "the val split must contain toe_drain"
    assert toe_drain["AP50"] < 0.6, f"a 2-epoch model reached toe_drain AP50 {toe_drain['AP50']}: no floor to show"
    assert best["overall"]["mAP50-95"] < 0.3, "a 2-epoch model reached mAP50-95 0.3: no first-model refusal to show"

    few = {"margin": 0.0, "min_instances": 1}  # 4 val images: every class is below the default 10
    not_worse = PromotionRule(metric="mAP50-95", per_class_min={"toe_drain": {"AP50": 0.0}}, **few)
    promoted = decide_promotion(best, worst, not_worse, production_version=1)
    assert promoted.promote, promoted.reasons
    row = next(r for r in promoted.rows if r.metric == "mAP50-95")
    assert (row.candidate, row.production) == (best["overall"]["mAP50-95"], worst["overall"]["mAP50-95"])
    assert row.requirement == "Δ (no interval) >= -0" and row.passed

    recipe = PromotionRule(
        metric="mAP50-95", per_class_min={"toe_drain": {"AP50": 0.6}}, absolute_min={"mAP50-95": 0.3}, **few
    )
    below_floor = decide_promotion(best, worst, recipe, production_version=1)
    assert not below_floor.promote
    assert [r for r in below_floor.reasons if r.startswith("FAIL")] == [
        f"FAIL toe_drain AP50 = {toe_drain['AP50']:.4f}, n={toe_drain['instances']} (needs value (no interval) >= 0.6)"
    ], below_floor.reasons
    first = decide_promotion(best, None, recipe)
    assert not first.promote
    assert (
        f"FAIL mAP50-95 = {best['overall']['mAP50-95']:.4f}, n=? (needs value (no interval) >= 0.3 (first model))"
        in first.reasons
    )

    absent = [name for name, v in best["per_class"].items() if v["instances"] == 0]
    assert absent, "every class occurs in this val subset: no absent-class floor to show"
    on_absent = PromotionRule(metric="mAP50-95", per_class_min={absent[0]: {"AP50": 0.0}}, **few)
    missing = decide_promotion(best, worst, on_absent, production_version=1)
    assert not missing.promote and missing.insufficient == {absent[0]: 0}
    assert any(r.startswith(f"FAIL insufficient evidence for {absent[0]} (0 instances") for r in missing.reasons)
