"""Training history, the fixed evaluation protocol and checkpoint selection by an explicit policy.

- :func:`summarize_history` reads any Ultralytics ``results.csv`` (best/worst/mean/last per
  metric, why training stopped).
- :func:`evaluate_checkpoint` is the one evaluation protocol every model is measured with.
- :func:`select_checkpoint` re-evaluates every checkpoint of a run and picks one by a
  :class:`SelectionPolicy`, explaining any gap to the numbers seen during training.

Ultralytics is imported inside functions: call ``phase2.infra.settings.configure_environment()`` first.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from pydantic import BaseModel, Field, model_validator

from phase2.infra.files import sha256_file

# results.csv column -> our metric name; higher is better for all of them.
METRIC_COLUMNS = {
    "precision": "metrics/precision(B)",
    "recall": "metrics/recall(B)",
    "mAP50": "metrics/mAP50(B)",
    "mAP50-95": "metrics/mAP50-95(B)",
}


# --------------------------------------------------------------------------- fitness


def ultralytics_fitness_weights() -> dict[str, float]:
    """Weights the installed Ultralytics gives P, R, mAP50, mAP50-95 in its detection fitness.

    Measured by evaluating ``Metric.fitness`` on unit inputs, so it follows the installed version.
    """
    from ultralytics.utils.metrics import Metric

    weights = {}
    names = list(METRIC_COLUMNS)
    for i, name in enumerate(names):
        probe = Metric()
        unit = [0.0] * len(names)
        unit[i] = 1.0
        probe.mean_results = lambda unit=unit: unit  # fitness() is a weighted sum of mean_results()
        weights[name] = float(probe.fitness())
    return weights


def ultralytics_fitness_formula() -> str:
    """The installed Ultralytics' detection fitness, e.g. ``"mAP50-95"`` or ``"0.1*mAP50 + 0.9*mAP50-95"``."""
    import ultralytics

    terms = [
        name if math.isclose(w, 1.0) else f"{w:g}*{name}"
        for name, w in ultralytics_fitness_weights().items()
        if not math.isclose(w, 0.0, abs_tol=1e-12)
    ]
    return (" + ".join(terms) or "0") + f" (ultralytics {ultralytics.__version__})"


# --------------------------------------------------------------------------- history


class MetricStats(BaseModel):
    """One metric over the epochs of a run. Epochs are 1-based, as in results.csv."""

    best: float
    best_epoch: int
    worst: float
    worst_epoch: int
    mean: float
    last: float
    higher_is_better: bool = True


class HistorySummary(BaseModel):
    source: Path
    epochs_run: int
    planned_epochs: int | None
    patience: int | None
    fitness_formula: str
    best_epoch: int = Field(description="best epoch by fitness: what best.pt and early stopping follow")
    stop_reason: str
    metrics: dict[str, MetricStats]

    def to_markdown(self) -> str:
        lines = [
            f"### Training history: `{self.source}`",
            "",
            f"- epochs run: {self.epochs_run}" + (f" of {self.planned_epochs} planned" if self.planned_epochs else ""),
            f"- stop reason: {self.stop_reason}",
            f"- best epoch by fitness ({self.fitness_formula}): {self.best_epoch}",
            "",
            "| metric | best (epoch) | worst (epoch) | mean | last |",
            "|---|---|---|---|---|",
        ]
        for name, s in self.metrics.items():
            lines.append(
                f"| {name} | {s.best:.4f} ({s.best_epoch}) | {s.worst:.4f} ({s.worst_epoch}) "
                f"| {s.mean:.4f} | {s.last:.4f} |"
            )
        return "\n".join(lines) + "\n"


def read_results_csv(results_csv: Path) -> pd.DataFrame:
    """results.csv with stripped column names (some Ultralytics versions pad them with spaces)."""
    results_csv = Path(results_csv)
    if not results_csv.is_file():
        raise FileNotFoundError(f"{results_csv}: no such file (expected an Ultralytics results.csv)")
    table = pd.read_csv(results_csv, skipinitialspace=True)
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in ["epoch", *METRIC_COLUMNS.values()] if c not in table.columns]
    if missing:
        raise ValueError(
            f"{results_csv}: line 1 (header) lacks column(s) {missing}; found {list(table.columns)}. "
            "Pass the results.csv written by an Ultralytics detection training."
        )
    if table.empty:
        raise ValueError(f"{results_csv}: header only, no epoch rows (did training run a full epoch?)")
    for column in table.columns:
        numeric = pd.to_numeric(table[column], errors="coerce")
        bad = table[column].notna() & numeric.isna()
        if bad.any():
            row = int(bad.idxmax())
            raise ValueError(
                f"{results_csv}: line {row + 2}, column {column!r}: {table[column][row]!r} is not a number"
            )
        table[column] = numeric
    table["epoch"] = table["epoch"].astype(int)
    return table


def _loss_columns(table: pd.DataFrame, prefix: str) -> list[str]:
    return [c for c in table.columns if c.startswith(prefix) and c.endswith("_loss")]


def _stats(epochs: pd.Series, values: pd.Series, higher_is_better: bool) -> MetricStats:
    # Ties go to the later epoch, as Ultralytics' best.pt and EarlyStopping do (>=).
    order = values[::-1]
    best_i = order.idxmax() if higher_is_better else order.idxmin()
    worst_i = values.idxmin() if higher_is_better else values.idxmax()
    return MetricStats(
        best=float(values[best_i]),
        best_epoch=int(epochs[best_i]),
        worst=float(values[worst_i]),
        worst_epoch=int(epochs[worst_i]),
        mean=float(values.mean()),
        last=float(values.iloc[-1]),
        higher_is_better=higher_is_better,
    )


def summarize_history(results_csv: Path, *, patience: int | None = None, epochs: int | None = None) -> HistorySummary:
    """Best/worst/mean/last of each metric and why training stopped.

    ``patience``/``epochs`` default to the ``args.yaml`` next to results.csv when present.
    """
    results_csv = Path(results_csv)
    table = read_results_csv(results_csv)
    args_yaml = results_csv.parent / "args.yaml"
    if args_yaml.is_file() and (patience is None or epochs is None):
        args = yaml.safe_load(args_yaml.read_text()) or {}
        patience = args.get("patience") if patience is None else patience
        epochs = args.get("epochs") if epochs is None else epochs

    weights = ultralytics_fitness_weights()
    series = {name: table[column] for name, column in METRIC_COLUMNS.items()}
    series["fitness"] = sum(weights[name] * table[col].fillna(0) for name, col in METRIC_COLUMNS.items())
    metrics = {name: _stats(table["epoch"], values, True) for name, values in series.items()}
    for prefix, name in (("train/", "train_loss"), ("val/", "val_loss")):
        if columns := _loss_columns(table, prefix):
            metrics[name] = _stats(table["epoch"], table[columns].sum(axis=1), False)

    epochs_run = int(table["epoch"].iloc[-1])
    best_epoch = metrics["fitness"].best_epoch
    stop_reason = _stop_reason(epochs_run, best_epoch, patience, epochs)
    return HistorySummary(
        source=results_csv,
        epochs_run=epochs_run,
        planned_epochs=epochs,
        patience=patience,
        fitness_formula=ultralytics_fitness_formula(),
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        metrics=metrics,
    )


def _stop_reason(epochs_run: int, best_epoch: int, patience: int | None, planned: int | None) -> str:
    early = patience is not None and epochs_run == best_epoch + patience
    if early and (planned is None or epochs_run < planned):
        return f"patience {patience} after epoch {best_epoch}"
    if planned is None or epochs_run >= planned:
        return f"epochs reached ({epochs_run})"
    # Neither rule explains it: a time limit, an interruption, or a run still in progress.
    return (
        f"stopped at epoch {epochs_run} of {planned} without reaching patience "
        f"(best epoch {best_epoch}, patience {patience}): time limit, interruption or still running"
    )


# --------------------------------------------------------------------------- evaluation


class EvalProtocol(BaseModel):
    split: str = "val"
    imgsz: int
    conf: float = 0.001
    iou: float = 0.7
    batch: int = 16


class EvalResult(BaseModel):
    weights: Path
    weights_sha256: str
    data_yaml: Path
    protocol: EvalProtocol
    metrics: dict[str, dict[str, Any]] = Field(
        description='{"overall": {precision, recall, mAP50, mAP50-95, fitness}, '
        '"per_class": {name: {precision, recall, AP50, AP50-95, instances}}}; a class without '
        "instances in the split has None for its rates"
    )
    save_dir: Path
    metrics_json: Path
    per_class_csv: Path
    pr_curve_png: Path | None
    confusion_matrix_png: Path | None
    confusion_matrix_normalized_png: Path | None

    def per_class_table(self) -> pd.DataFrame:
        return pd.read_csv(self.per_class_csv)


def _dataset_view(data_yaml: Path, split: str, view: Path) -> Path:
    """A throw-away view of one split: image symlinks and label copies under ``view``.

    Ultralytics writes ``labels.cache`` next to the label files; evaluating through this view
    keeps the user's dataset untouched (and works when it is read-only). Splits given as
    directories or as image-list .txt files (the rebalanced versions) are both resolved the
    way Ultralytics resolves them.
    """
    from ultralytics.data.utils import img2label_paths

    from phase2.dataset.validation import resolve_split_images

    names = yaml.safe_load(Path(data_yaml).read_text()).get("names")
    images = resolve_split_images(data_yaml).get(split)
    if not images:
        raise ValueError(f"{data_yaml}: no '{split}' split; add `{split}: path/to/{split}/images`")
    target = view / split / "images"
    target.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(sorted(images)):
        link = target / f"{i:06d}_{image.name}"  # prefix: lists may hold equal names from two folders
        link.symlink_to(Path(image).resolve())
        label = Path(img2label_paths([str(image)])[0])
        if label.is_file():
            view_label = Path(img2label_paths([str(link)])[0])
            view_label.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(label, view_label)
    view_yaml = view / "data.yaml"
    # Ultralytics requires train and val keys; they point at the evaluated split (unused).
    entries = str(target)
    view_yaml.write_text(
        yaml.safe_dump(
            {"path": str(view), "train": entries, "val": entries, split: entries, "names": names},
            sort_keys=False,
        )
    )
    return view_yaml


def _none_if_nan(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def evaluate_checkpoint(
    weights: Path,
    data_yaml: Path,
    *,
    split: str = "val",
    imgsz: int,
    conf: float = 0.001,
    iou: float = 0.7,
    batch: int = 16,
    device: str | None = None,
    out_dir: Path,
) -> EvalResult:
    """Evaluate ``weights`` on one split under the fixed protocol; artifacts go to ``out_dir``.

    Writes ``metrics.json``, ``per_class.csv`` and Ultralytics' plots (PR curve, confusion
    matrix) into ``out_dir``; nothing is written into the dataset.
    """
    from ultralytics import YOLO

    weights, data_yaml, out_dir = Path(weights).resolve(), Path(data_yaml).resolve(), Path(out_dir).resolve()
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no such checkpoint")
    if not data_yaml.is_file():
        raise FileNotFoundError(f"{data_yaml}: no such dataset yaml")
    protocol = EvalProtocol(split=split, imgsz=imgsz, conf=conf, iou=iou, batch=batch)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = YOLO(str(weights))
    with tempfile.TemporaryDirectory(prefix="eval-view-", dir=out_dir) as view:
        view_yaml = _dataset_view(data_yaml, split, Path(view))
        names = yaml.safe_load(view_yaml.read_text())["names"]
        names = list(names.values()) if isinstance(names, dict) else list(names)
        model_names = [model.names[i] for i in sorted(model.names)]
        if model_names != names:
            raise ValueError(
                f"{weights}: model classes {model_names} differ from {data_yaml} names {names}; "
                "evaluate with the dataset the model was trained for"
            )
        extra = {"device": device} if device is not None else {}
        result = model.val(
            data=str(view_yaml),
            split=split,
            imgsz=imgsz,
            conf=conf,
            iou=iou,
            batch=batch,
            plots=True,
            save_json=False,
            project=str(out_dir.parent),
            name=out_dir.name,
            exist_ok=True,
            verbose=False,
            **extra,
        )
    save_dir = Path(result.save_dir)
    box = result.box
    overall = {
        "precision": float(box.mp),
        "recall": float(box.mr),
        "mAP50": float(box.map50),
        "mAP50-95": float(box.map),
        "fitness": float(result.fitness),
    }
    per_class: dict[str, dict[str, Any]] = {}
    measured = {int(c): i for i, c in enumerate(box.ap_class_index)}
    for class_id, name in enumerate(names):
        instances = int(result.nt_per_class[class_id])
        if class_id in measured:
            p, r, ap50, ap = box.class_result(measured[class_id])
        else:
            p = r = ap50 = ap = float("nan")
        per_class[name] = {
            "precision": _none_if_nan(p),
            "recall": _none_if_nan(r),
            "AP50": _none_if_nan(ap50),
            "AP50-95": _none_if_nan(ap),
            "instances": instances,
        }
    metrics = {"overall": overall, "per_class": per_class}
    per_class_csv = save_dir / "per_class.csv"
    pd.DataFrame.from_dict(per_class, orient="index").rename_axis("class").reset_index().to_csv(
        per_class_csv, index=False
    )
    metrics_json = save_dir / "metrics.json"
    sha = sha256_file(weights)
    metrics_json.write_text(
        json.dumps({"weights": str(weights), "sha256": sha, "protocol": protocol.model_dump(), **metrics}, indent=2)
    )

    def existing(name: str) -> Path | None:
        return save_dir / name if (save_dir / name).is_file() else None

    return EvalResult(
        weights=weights,
        weights_sha256=sha,
        data_yaml=data_yaml,
        protocol=protocol,
        metrics=metrics,
        save_dir=save_dir,
        metrics_json=metrics_json,
        per_class_csv=per_class_csv,
        pr_curve_png=existing("BoxPR_curve.png"),
        confusion_matrix_png=existing("confusion_matrix.png"),
        confusion_matrix_normalized_png=existing("confusion_matrix_normalized.png"),
    )


# --------------------------------------------------------------------------- selection

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
    explanation: list[str]
    summary_md: Path


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
    import torch

    # A pickle: only checkpoints of the run being selected are loaded here.
    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
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
    train_conf = args.get("conf") if args.get("conf") is not None else 0.001
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
) -> SelectionResult:
    """Re-evaluate every checkpoint of ``run_dir`` on val and pick one by ``policy``.

    Writes into ``out_dir``: ``val/<candidate>/`` and ``test/<winner>/`` evaluations,
    ``candidates.csv`` and ``selection.md``. The winner is also evaluated on test when the
    dataset has a test split.
    """
    run_dir, data_yaml, out_dir = Path(run_dir), Path(data_yaml).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    protocol = EvalProtocol(split="val", imgsz=imgsz, conf=conf, iou=iou, batch=batch)
    evaluate = dict(imgsz=imgsz, conf=conf, iou=iou, batch=batch, device=device)

    candidates = []
    for path, digest, dupes in find_candidates(run_dir):
        val = evaluate_checkpoint(path, data_yaml, split="val", out_dir=out_dir / "val" / path.stem, **evaluate)
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
    table["meets_floors"] = table["candidate"].map(dict(zip(ranked["candidate"], ranked["meets_floors"])))
    candidates_csv = out_dir / "candidates.csv"
    table.drop(columns="order").to_csv(candidates_csv, index=False)

    test = None
    data = yaml.safe_load(data_yaml.read_text()) or {}
    if data.get("test"):
        test = evaluate_checkpoint(
            winner.path, data_yaml, split="test", out_dir=out_dir / "test" / winner.path.stem, **evaluate
        )

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
        explanation=explanation,
        summary_md=out_dir / "selection.md",
    )
    result.summary_md.write_text(selection_markdown(result, ranked))
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
    lines += ["### Training-time vs re-evaluation", "", *(f"- {line}" for line in result.explanation)]
    return "\n".join(lines) + "\n"
