"""Checkpoint selection by an explicit policy.

:func:`select_checkpoint` re-evaluates every checkpoint of a run under the evaluation protocol
(:func:`phase2.evaluation.evaluate.evaluate_checkpoint`) and picks one by a
:class:`SelectionPolicy`, explaining any gap to the numbers seen during training. It writes
``selection.json`` (the :class:`SelectionResult`, what later stages read) and ``selection.md``.

Ultralytics is imported inside functions: call ``phase2.infra.settings.configure_environment()`` first.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, Field, model_validator

from phase2.evaluation.evaluate import EvalProtocol, EvalResult, evaluate_checkpoint
from phase2.evaluation.matches import _recording_validator, save_match_table, table_from_records
from phase2.evaluation.uncertainty import evaluate_table
from phase2.infra.files import atomic_write_text, sha256_file
from phase2.training.checkpoints import load_checkpoint
from phase2.training.history import METRIC_COLUMNS, read_results_csv, ultralytics_fitness_formula

RATE_KEYS = ("precision", "recall", "AP50", "AP50-95")
PROTOCOL_ARGS = ("conf", "iou", "imgsz", "batch", "split", "data")


class SelectionPolicy(BaseModel):
    """How the winner is chosen among re-evaluated checkpoints (all on the val split).

    - ``fitness``: Ultralytics' own fitness (see :func:`ultralytics_fitness_formula`).
    - ``mAP50``: overall mAP50.
    - ``class_aware``: best mAP50-95 among candidates meeting every per-class floor, e.g.
      ``{"toe_drain": {"AP50": 0.60}}``; if none does, best mAP50-95 overall (and it says so).

    Ties go to the next key (mAP50-95, then mAP50), then to the order best, last, epochN.
    """

    kind: Literal["fitness", "mAP50", "class_aware"] = "fitness"
    class_floors: dict[str, dict[Literal["precision", "recall", "AP50", "AP50-95"], float]] = {}

    @model_validator(mode="after")
    def _floors_match_kind(self) -> SelectionPolicy:
        if self.kind == "class_aware" and not self.class_floors:
            raise ValueError('class_aware needs class_floors, e.g. {"toe_drain": {"AP50": 0.60}}')
        if self.kind != "class_aware" and self.class_floors:
            raise ValueError(f"class_floors only apply to kind 'class_aware', not {self.kind!r}")
        return self

    def sort_keys(self) -> list[str]:
        return {
            "fitness": ["fitness", "mAP50-95", "mAP50"],
            "mAP50": ["mAP50", "mAP50-95"],
            "class_aware": ["mAP50-95", "mAP50"],
        }[self.kind]

    def describe(self) -> str:
        if self.kind == "fitness":
            return f"Ultralytics fitness = {ultralytics_fitness_formula()}"
        if self.kind == "mAP50":
            return "overall mAP50"
        floors = ", ".join(f"{c} {m} >= {v:g}" for c, f in self.class_floors.items() for m, v in f.items())
        return f"best mAP50-95 subject to {floors}"


class TrainingRecord(BaseModel):
    """What training itself said about a checkpoint."""

    epoch: int | None = Field(description="1-based epoch (results.csv row); None if unknown")
    metrics: dict[str, float] = Field(description="train_metrics stored in the checkpoint")
    results_row: dict[str, float] | None = Field(None, description="results.csv row of that epoch")
    args: dict[str, Any] = Field(description="protocol-relevant training args (args.yaml)")
    weights_dtype: str
    stripped: bool = Field(description="final best/last.pt: optimizer dropped, EMA stored as model")


class Candidate(BaseModel):
    name: str
    path: Path
    sha256: str
    duplicates: list[str] = Field(default_factory=list, description="identical files, not re-evaluated")
    training: TrainingRecord
    val: EvalResult


class SelectionResult(BaseModel):
    winner: Path
    winner_name: str
    winner_sha256: str
    policy: SelectionPolicy
    policy_description: str
    fell_back: bool = Field(description="class_aware: no candidate met the floors")
    candidates: list[Candidate]
    candidates_csv: Path
    val: EvalResult
    test: EvalResult | None
    gate_split: str | None = Field(None, description="the promotion gate's split (test unless the recipe says val)")
    gate_matches: Path | None = Field(None, description="the winner's per-image match table on the gate split")
    gate: dict[str, Any] | None = Field(None, description="the winner on the gate split with 95% intervals")
    explanation: list[str]
    summary_md: Path
    selection_json: Path = Field(description="this result as JSON (what the register step and the report read)")


def find_candidates(run_dir: Path) -> list[tuple[Path, str, list[str]]]:
    """(path, sha256, duplicate names) of best.pt, last.pt and epochN.pt, identical files merged.

    Order: best, last, then epochs ascending; a duplicate is listed under the first of them.
    """
    weights_dir = Path(run_dir) / "weights"
    epoch_files = sorted(
        (p for p in weights_dir.glob("epoch*.pt") if re.fullmatch(r"epoch\d+\.pt", p.name)),
        key=lambda p: int(p.stem[5:]),
    )
    files = [p for p in (weights_dir / "best.pt", weights_dir / "last.pt") if p.is_file()] + epoch_files
    if not files:
        raise FileNotFoundError(
            f"{weights_dir}: no best.pt, last.pt or epochN.pt; pass the Ultralytics run directory "
            "(the one holding weights/ and results.csv)"
        )
    unique: dict[str, tuple[Path, list[str]]] = {}
    for path in files:
        digest = sha256_file(path)
        if digest in unique:
            unique[digest][1].append(path.name)
        else:
            unique[digest] = (path, [])
    return [(path, digest, dupes) for digest, (path, dupes) in unique.items()]


def _training_record(weights: Path, run_dir: Path) -> TrainingRecord:
    ckpt = load_checkpoint(weights)  # weights-only: a pickle that is not a YOLO checkpoint is refused
    model = ckpt.get("ema") or ckpt.get("model")
    dtype = str(next(model.parameters()).dtype).replace("torch.", "") if model is not None else "unknown"
    train_metrics = {k: float(v) for k, v in (ckpt.get("train_metrics") or {}).items()}
    metrics = {name: train_metrics[col] for name, col in METRIC_COLUMNS.items() if col in train_metrics}
    if "fitness" in train_metrics:
        metrics["fitness"] = train_metrics["fitness"]

    args_yaml = run_dir / "args.yaml"
    args = yaml.safe_load(args_yaml.read_text()) if args_yaml.is_file() else (ckpt.get("train_args") or {})
    results_csv = run_dir / "results.csv"
    history = read_results_csv(results_csv) if results_csv.is_file() else pd.DataFrame(ckpt.get("train_results") or {})

    stripped = ckpt.get("epoch", -1) < 0
    epoch = None if stripped else int(ckpt["epoch"]) + 1  # the trainer counts from 0, results.csv from 1
    if stripped and not history.empty:
        # Final best/last.pt lost their epoch: find the (last) row holding their metrics.
        matches = pd.Series(True, index=history.index)
        for name, column in METRIC_COLUMNS.items():
            if name in metrics and column in history:
                matches &= (history[column] - metrics[name]).abs() <= 1e-5  # results.csv keeps 5 decimals
        if matches.any():
            epoch = int(history.loc[matches[::-1].idxmax(), "epoch"])
    row = None
    if epoch is not None and not history.empty and (history["epoch"] == epoch).any():
        row = {k: float(v) for k, v in history[history["epoch"] == epoch].iloc[0].items()}
    return TrainingRecord(
        epoch=epoch,
        metrics=metrics,
        results_row=row,
        args={k: args.get(k) for k in PROTOCOL_ARGS},
        weights_dtype=dtype,
        stripped=stripped,
    )


def candidates_table(candidates: list[Candidate]) -> pd.DataFrame:
    """One row per candidate: re-evaluated val numbers (overall and per class) and training-time ones."""
    rows = []
    for order, c in enumerate(candidates):
        row: dict[str, Any] = {
            "candidate": c.name,
            "order": order,
            "epoch": c.training.epoch,
            "sha256": c.sha256,
            "duplicates": " ".join(c.duplicates),
            **c.val.metrics["overall"],
        }
        for class_name, values in c.val.metrics["per_class"].items():
            for key in RATE_KEYS:
                row[f"{class_name}/{key}"] = values[key]
        for name, value in c.training.metrics.items():
            row[f"train/{name}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def rank_candidates(table: pd.DataFrame, policy: SelectionPolicy) -> tuple[pd.DataFrame, bool]:
    """Sort candidates best-first by the policy; returns (table with ``meets_floors``, fell_back).

    ``table`` needs ``order`` and the policy's metric columns (per-class ones as ``class/AP50``).
    A class absent from the split (no value) does not meet its floor.
    """
    table = table.copy()
    meets = pd.Series(True, index=table.index)
    for class_name, floors in policy.class_floors.items():
        for key, floor in floors.items():
            column = f"{class_name}/{key}"
            if column not in table:
                raise ValueError(f"policy floor on {column!r}, but the evaluation has no such class")
            meets &= pd.to_numeric(table[column], errors="coerce").fillna(-1.0) >= floor
    table["meets_floors"] = meets
    fell_back = policy.kind == "class_aware" and not meets.any()
    keys = policy.sort_keys()
    if policy.kind == "class_aware" and not fell_back:
        keys = ["meets_floors", *keys]
    table = table.sort_values([*keys, "order"], ascending=[*([False] * len(keys)), True], kind="stable")
    return table.reset_index(drop=True), fell_back


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def explain_gap(candidate: Candidate, protocol: EvalProtocol, data_yaml: Path) -> list[str]:
    """Why the re-evaluated numbers of ``candidate`` may differ from what training reported."""
    training, reeval = candidate.training, candidate.val.metrics["overall"]
    where = f"epoch {training.epoch}" if training.epoch else "an unknown epoch"
    lines = []
    compared = [k for k in ("mAP50", "mAP50-95", "precision", "recall") if k in training.metrics]
    if compared:
        gaps = ", ".join(
            f"{k} {training.metrics[k]:.4f} -> {reeval[k]:.4f} ({reeval[k] - training.metrics[k]:+.4f})"
            for k in compared
        )
        lines.append(f"{candidate.name} ({where}): training-time vs re-evaluated on {protocol.split}: {gaps}.")
    args = training.args
    # Ultralytics validates at conf 0.001 when none was given to train.
    train_conf = float(args["conf"]) if args.get("conf") is not None else 0.001
    if not math.isclose(train_conf, protocol.conf):
        lines.append(
            f"Training-time validation ran at conf={train_conf:g} (args.yaml); the protocol uses "
            f"conf={protocol.conf:g}. A higher conf drops low-confidence detections and truncates the "
            "PR curve, usually lowering mAP; best.pt was also chosen by the numbers at that conf."
        )
    if args.get("iou") is not None and not math.isclose(args["iou"], protocol.iou):
        lines.append(f"NMS IoU differs: training {args['iou']:g}, protocol {protocol.iou:g}.")
    if args.get("imgsz") is not None and int(args["imgsz"]) != protocol.imgsz:
        lines.append(f"Image size differs: training {args['imgsz']}, protocol {protocol.imgsz}.")
    train_split = args.get("split") or "val"
    if train_split != protocol.split:
        lines.append(f"Different split: training validated on '{train_split}', re-evaluated on '{protocol.split}'.")
    if args.get("data") and Path(str(args["data"])).resolve() != Path(data_yaml).resolve():
        lines.append(
            f"Different dataset file: training used {args['data']}, re-evaluation {data_yaml} "
            "(e.g. a rebalanced split): the images measured are not the same."
        )
    # batch -1 or a fraction means AutoBatch: the validation batch is then unknown.
    if isinstance(args.get("batch"), int) and args["batch"] > 0 and args["batch"] * 2 != protocol.batch:
        lines.append(
            f"Batch differs: training validated with batch {args['batch'] * 2} (2x train batch), "
            f"protocol {protocol.batch}; rectangular batches pad per batch, a small effect."
        )
    if training.weights_dtype != "float32":
        lines.append(
            f"{candidate.name} stores the EMA weights in {training.weights_dtype} (Ultralytics halves them "
            "when saving; training validated the live fp32 EMA): rounding gives small differences."
        )
    if training.stripped:
        lines.append(f"{candidate.name} is a final checkpoint: optimizer stripped, its epoch found from results.csv.")
    if compared and all(abs(reeval[k] - training.metrics[k]) <= 1e-3 for k in compared):
        lines.append("The re-evaluation reproduces the training-time numbers within 0.001.")
    return lines


def select_checkpoint(
    run_dir: Path,
    data_yaml: Path,
    policy: SelectionPolicy,
    *,
    imgsz: int,
    out_dir: Path,
    device: str | None = None,
    conf: float = 0.001,
    iou: float = 0.7,
    batch: int = 16,
    gate_split: str = "test",
) -> SelectionResult:
    """Re-evaluate every checkpoint of ``run_dir`` on val and pick one by ``policy``.

    Writes into ``out_dir``: ``val/<candidate>/`` and ``test/<winner>/`` evaluations,
    ``candidates.csv``, ``selection.md`` and, last, ``selection.json`` (the returned result).
    The winner is also evaluated on test when the dataset has a test split. The same pass on
    ``gate_split`` (the promotion gate's) keeps the winner's per-image match table
    (``<split>/<winner>/matches.npz``) and its 95% intervals, so promotion does not run it again.
    """
    run_dir, data_yaml, out_dir = Path(run_dir), Path(data_yaml).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = EvalProtocol(split="val", imgsz=imgsz, conf=conf, iou=iou, batch=batch)
    evaluate = partial(evaluate_checkpoint, imgsz=imgsz, conf=conf, iou=iou, batch=batch, device=device)

    recorded: dict[str, Any] = {}

    def evaluate_split(path: Path, split: str) -> EvalResult:
        if split != gate_split:
            return evaluate(path, data_yaml, split=split, out_dir=out_dir / split / path.stem)
        result = evaluate(
            path,
            data_yaml,
            split=split,
            out_dir=out_dir / split / path.stem,
            validator=_recording_validator(),
            on_result=lambda metrics: recorded.__setitem__(path.name, metrics.per_image),
        )
        return result

    candidates = []
    for path, digest, dupes in find_candidates(run_dir):
        val = evaluate_split(path, "val")
        candidates.append(
            Candidate(
                name=path.name,
                path=path.resolve(),
                sha256=digest,
                duplicates=dupes,
                training=_training_record(path, run_dir),
                val=val,
            )
        )
    table = candidates_table(candidates)
    ranked, fell_back = rank_candidates(table, policy)
    winner = next(c for c in candidates if c.name == ranked.loc[0, "candidate"])
    table["selected"] = table["candidate"] == winner.name
    table["meets_floors"] = table["candidate"].map(dict(zip(ranked["candidate"], ranked["meets_floors"], strict=True)))
    candidates_csv = out_dir / "candidates.csv"
    table.drop(columns="order").to_csv(candidates_csv, index=False)

    test = None
    data = yaml.safe_load(data_yaml.read_text()) or {}
    if data.get("test"):
        test = evaluate_split(winner.path, "test")
    gate_matches, gate = None, None
    gate_eval = {"val": winner.val, "test": test}.get(gate_split)
    if gate_eval is not None and winner.name in recorded:
        table = table_from_records(recorded[winner.name], list(gate_eval.metrics["per_class"]), gate_eval.protocol)
        table = replace(table, weights=str(winner.path), weights_sha256=winner.sha256)
        gate_matches = save_match_table(table, gate_eval.save_dir / "matches.npz")
        gate = evaluate_table(table)

    explanation = []
    if fell_back:
        explanation.append(f"No candidate met the floors ({policy.describe()}); fell back to the best mAP50-95.")
    explanation += explain_gap(winner, protocol, data_yaml)
    result = SelectionResult(
        winner=winner.path,
        winner_name=winner.name,
        winner_sha256=winner.sha256,
        policy=policy,
        policy_description=policy.describe(),
        fell_back=fell_back,
        candidates=candidates,
        candidates_csv=candidates_csv,
        val=winner.val,
        test=test,
        gate_split=gate_split,
        gate_matches=gate_matches,
        gate=gate,
        explanation=explanation,
        summary_md=out_dir / "selection.md",
        selection_json=out_dir / "selection.json",
    )
    atomic_write_text(result.summary_md, selection_markdown(result, ranked))
    atomic_write_text(result.selection_json, result.model_dump_json(indent=2))
    return result


def selection_markdown(result: SelectionResult, ranked: pd.DataFrame) -> str:
    protocol = result.val.protocol
    shown = ["candidate", "epoch", "precision", "recall", "mAP50", "mAP50-95", "fitness", "meets_floors"]
    lines = [
        f"## Checkpoint selection: `{result.winner_name}`",
        "",
        f"- policy: {result.policy.kind} ({result.policy_description})",
        f"- winner: `{result.winner}` sha256 `{result.winner_sha256}`",
        f"- protocol: conf {protocol.conf:g}, iou {protocol.iou:g}, imgsz {protocol.imgsz}, batch {protocol.batch}",
        "",
        "### Candidates (re-evaluated on val, ranked)",
        "",
        markdown_table(ranked[shown]),
        "",
        "### Winner per class",
        "",
    ]
    for split, evaluation in (("val", result.val), ("test", result.test)):
        if evaluation is None:
            continue
        per_class = evaluation.per_class_table()
        overall = evaluation.metrics["overall"]
        lines += [
            f"**{split}**: mAP50 {overall['mAP50']:.4f}, mAP50-95 {overall['mAP50-95']:.4f}",
            "",
            markdown_table(per_class),
            "",
        ]
    if result.gate:
        boot, gate = result.gate["bootstrap"], result.gate
        lines += [
            f"**{result.gate_split}, the promotion gate's split** ({gate['n_images']} images; 95% intervals: "
            f"{boot['method']} bootstrap over images, {boot['resamples']} resamples, seed {boot['seed']}): "
            + ", ".join(
                f"{name} {entry['value']:.4f} [{entry['ci95'][0]:.4f}, {entry['ci95'][1]:.4f}]"
                for name, entry in gate["metrics"].items()
                if entry["ci95"]
            ),
            "",
        ]
    lines += ["### Training-time vs re-evaluation", "", *(f"- {line}" for line in result.explanation)]
    return "\n".join(lines) + "\n"
