"""Fine-tuning speed against anchors measured in the same run.

--compare-bare: `phase2.training.fine_tune.fine_tune` (child process, results.csv follower, checkpoint
  uploads to a real SeaweedFS in the background) versus bare `yolo train` (.venv/bin/yolo) with
  identical arguments on the same copy of the real dataset. Prints the wall-time ratio
  (target <= 1.03). On CPU the task trains on all cores while bare Ultralytics uses
  cpu_count-1 threads, so the ratio can fall below 1: that is the thread setting, not less work.
  A second anchor, the same CLI with torch on all cores, separates the thread effect from the
  task's own overhead (child start, results.csv follower, S3 uploads, summary).
--seed-vs-native: the seed recipe (configs/phase2-seed.yaml, 640 px) versus the native recipe
  (phase2-native.yaml, 320 px) through fine_tune, from the same start weights for the same epochs, on
  the pipeline's rebalanced (leak-free) copy of the real dataset: s/epoch ratio, each recipe's own
  per-epoch val mAP50 (at its conf 0.25) and its best.pt re-evaluated under the selection step's
  fixed protocol at 320 and at 640 px. The start weights are a phase-1 baseline trained here first
  (yolo11n.yaml, 320 px, --baseline-epochs) unless --start-weights is given; --work keeps it for re-runs.

Run: .venv/bin/python benchmarks/bench_fine_tune.py --compare-bare [--train-images 32] [--epochs 2]
     .venv/bin/python benchmarks/bench_fine_tune.py --seed-vs-native --epochs 10 --work /tmp/bench-svn
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phase2.infra.settings import configure_environment, real_dataset_dir

configure_environment()

from phase2.training.fine_tune import fine_tune, read_results  # noqa: E402
from phase2.training.recipe import load_recipe  # noqa: E402


def machine() -> str:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return f"nproc={os.cpu_count()}  uptime: {load}"


def copy_dataset(dst: Path, train_images: int | None = None) -> Path:
    """A writable copy of the real dataset (Ultralytics writes labels.cache next to labels),
    optionally only the first `train_images` training images (all of val)."""
    if train_images:
        from tests.plugins.data import copy_subset

        return copy_subset(real_dataset_dir(), dst, {"train": train_images, "val": 10**6, "test": 1}, prefer_class=None)
    shutil.copytree(real_dataset_dir(), dst, ignore=shutil.ignore_patterns("*.cache"))
    return dst / "data.yaml"


def seconds_per_epoch(results_csv: Path) -> float:
    """Training + per-epoch validation time per epoch, from Ultralytics' cumulative `time`."""
    rows = read_results(results_csv)
    return float(rows[-1]["time"]) / len(rows)


def compare_bare(work: Path, epochs: int, imgsz: int, batch: int, train_images: int | None) -> None:
    from phase2.infra.seaweedfs import SeaweedFS, SeaweedPorts
    from phase2.registry.storage import ObjectStore

    data_yaml = copy_dataset(work / "data", train_images)
    args = {
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "workers": 0,
        "device": "cpu",
        "plots": False,
        "seed": 0,
        "deterministic": True,
        "save_period": -1,
    }
    # Warm-up: dataset cache and OS file cache are then equal for both runs.
    subprocess.run(
        [
            str(Path(sys.executable).with_name("yolo")),
            "val",
            "model=yolo11n.yaml",
            f"data={data_yaml}",
            "imgsz=64",
            "batch=16",
            "device=cpu",
            "plots=False",
            f"project={work}",
            "name=warmup",
        ],
        check=True,
        capture_output=True,
    )

    train = [
        "train",
        "model=yolo11n.yaml",
        f"data={data_yaml}",
        *(f"{k}={v}" for k, v in args.items()),
        f"project={work}",
        "exist_ok=True",
    ]
    yolo = [str(Path(sys.executable).with_name("yolo"))]
    # The same CLI with the task's one difference, torch on all cores: isolates the task's overhead.
    yolo_all_cores = [
        sys.executable,
        "-c",
        "import os, ultralytics.utils.torch_utils as t; "
        "t.NUM_THREADS = os.cpu_count(); from ultralytics.cfg import entrypoint; entrypoint()",
    ]
    bare: dict[str, float] = {}
    for name, command in (("bare", yolo), ("bare-all-cores", yolo_all_cores)):
        started = time.monotonic()
        subprocess.run(
            [*command, *train, f"name={name}"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        bare[name] = time.monotonic() - started

    s3 = SeaweedFS(work / "s3", ports=SeaweedPorts.free()).start()
    try:
        store = ObjectStore(s3.settings())
        store.ensure_bucket()
        started = time.monotonic()
        result = fine_tune(
            weights="yolo11n.yaml",
            data_yaml=data_yaml,
            train_args=args,
            save_dir=work / "task",
            store=store,
            run_prefix="bench/train",
        )
        task = time.monotonic() - started
    finally:
        s3.stop()
    threads = next(line for line in (work / "task.log").read_text().splitlines() if "torch threads" in line)
    subset = f"first {train_images} train images" if train_images else "all train images"
    print(
        f"\n== fine_tune vs bare `yolo train` (yolo11n.yaml, imgsz {imgsz}, batch {batch}, {epochs} epochs, "
        f"real dataset: {subset}, all val; CPU) =="
    )
    default_threads = max(1, (os.cpu_count() or 1) - 1)
    print(
        f"bare yolo train          : {bare['bare']:7.1f} s wall, "
        f"{seconds_per_epoch(work / 'bare' / 'results.csv'):6.1f} s/epoch (torch threads: {default_threads})"
    )
    print(
        f"bare yolo train all cores: {bare['bare-all-cores']:7.1f} s wall, "
        f"{seconds_per_epoch(work / 'bare-all-cores' / 'results.csv'):6.1f} s/epoch (torch threads: {os.cpu_count()})"
    )
    print(
        f"fine_tune task           : {task:7.1f} s wall, {seconds_per_epoch(result.results_csv):6.1f} s/epoch "
        f"(child log: {threads.strip()}; {len(result.checkpoints)} files to S3)"
    )
    print(f"ratio task/bare           : {task / bare['bare']:.3f}  (target <= 1.03; includes the thread setting)")
    print(f"ratio task/bare-all-cores : {task / bare['bare-all-cores']:.3f}  (the task's own overhead)")


def rebalanced_dataset(work: Path) -> Path:
    """The pipeline's own view of the real data: leak groups repaired, val rebalanced (targets from
    the seed recipe). Lists point at the read-only source; nothing is written inside it."""
    from phase2.dataset.rebalance import rebalance_validation

    out = work / "dataset"
    if not (out / "manifest.json").exists():
        rebalance_validation(real_dataset_dir() / "data.yaml", out, load_recipe("phase2-seed").rebalance.targets)
    return out / "data.yaml"


def phase1_baseline(work: Path, data_yaml: Path, epochs: int) -> Path:
    """A phase-1 baseline trained here (the guide's own baseline .pt is not in shared/): yolo11n.yaml
    from random weights at 320 px with Ultralytics' defaults on the rebalanced train split. Kept in
    `work` so a re-run reuses it (fine_tune returns a finished run as is)."""
    args = {
        "epochs": epochs,
        "imgsz": 320,
        "batch": 16,
        "seed": 0,
        "deterministic": True,
        "device": "cpu",
        "workers": 0,
        "plots": False,
    }
    started = time.monotonic()
    result = fine_tune(
        weights="yolo11n.yaml",
        data_yaml=data_yaml,
        train_args=args,
        save_dir=work / "baseline",
        run_prefix="bench/baseline",
    )
    rows = read_results(result.results_csv)
    print(
        f"phase-1 baseline: yolo11n.yaml, 320 px, {len(rows)} epochs, {seconds_per_epoch(result.results_csv):.1f} "
        f"s/epoch, best val mAP50 {max(float(r['metrics/mAP50(B)']) for r in rows):.4f} "
        f"({time.monotonic() - started:.0f} s this call)"
    )
    return work / "baseline" / "weights" / "best.pt"


def fixed_protocol(weights: Path, data_yaml: Path, imgsz: int, out: Path) -> tuple[float, float | None]:
    """val mAP50 and toe_drain AP50 under the selection step's protocol (conf 0.001, iou 0.7)."""
    from phase2.evaluation.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(weights, data_yaml, imgsz=imgsz, device="cpu", out_dir=out)
    return result.metrics["overall"]["mAP50"], result.metrics["per_class"]["toe_drain"]["AP50"]


def seed_vs_native(
    work: Path, epochs: int, baseline_epochs: int, start_weights: Path | None, variants: list[str]
) -> None:
    data_yaml = rebalanced_dataset(work)
    start = start_weights or phase1_baseline(work, data_yaml, baseline_epochs)
    base = {imgsz: fixed_protocol(start, data_yaml, imgsz, work / f"eval-start-{imgsz}") for imgsz in (320, 640)}
    rows = {}
    imgsz_of = {"phase2-native": 320, "phase2-seed": 640}  # native: the validation report's recommendation
    runs = [(name, {}) for name in imgsz_of]
    for variant in variants:  # e.g. "phase2-native:warmup_bias_lr=0.0001"
        overrides = variant.partition(":")[2]
        runs.append((variant, {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in overrides.split(","))}))
    for name, overrides in runs:
        recipe_name = name.partition(":")[0]
        recipe, imgsz = load_recipe(recipe_name), imgsz_of[recipe_name]
        args = {
            **recipe.train.ultralytics_kwargs(imgsz),
            **overrides,
            "epochs": epochs,
            "device": "cpu",
            "workers": 0,
            "plots": False,
        }
        started = time.monotonic()
        run_dir = work / f"{name.replace(':', '+').replace('=', '-').replace(',', '+')}-{epochs}"
        result = fine_tune(
            weights=start, data_yaml=data_yaml, train_args=args, save_dir=run_dir, run_prefix="bench/svn"
        )
        wall = time.monotonic() - started
        history = read_results(result.results_csv)
        own = max(float(r["metrics/mAP50(B)"]) for r in history)
        fixed = {
            size: fixed_protocol(run_dir / "weights" / "best.pt", data_yaml, size, work / f"eval-{run_dir.name}-{size}")
            for size in (320, 640)
        }
        rows[name] = (imgsz, seconds_per_epoch(result.results_csv), wall, own, fixed)
    print(
        f"\n== seed (640) vs native (320) recipe, {epochs} epochs each from the same start weights "
        f"({start}), rebalanced real dataset ({data_yaml}), CPU =="
    )
    print(
        "fixed protocol: val split, conf 0.001, iou 0.7; mAP50 / toe_drain AP50 with the model evaluated at 320 and 640"
    )
    print(
        f"{'start weights':14s} {'':5s} {'':8s} {'':9s}  {'':6s}  "
        + "  ".join(f"@{size}: {m:.4f} / {t:.4f}" for size, (m, t) in base.items())
    )
    print(f"{'recipe':14s} imgsz  s/epoch  wall       own*")
    for name, (imgsz, s_epoch, wall, own, fixed) in rows.items():
        print(
            f"{name:14s} {imgsz:5d} {s_epoch:8.1f} {wall:7.1f} s  {own:.4f}  "
            + "  ".join(f"@{size}: {m:.4f} / {t:.4f}" for size, (m, t) in fixed.items())
        )
    print("* own: best val mAP50 in the recipe's results.csv (its per-epoch validation, at the recipe's conf 0.25)")
    print(f"s/epoch ratio seed/native: {rows['phase2-seed'][1] / rows['phase2-native'][1]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare-bare", action="store_true")
    parser.add_argument("--seed-vs-native", action="store_true")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--imgsz", type=int, default=320, help="--compare-bare image size")
    parser.add_argument("--batch", type=int, default=16, help="--compare-bare batch size")
    parser.add_argument("--train-images", type=int, help="--compare-bare: only the first N train images")
    parser.add_argument(
        "--baseline-epochs",
        type=int,
        default=60,
        help="--seed-vs-native: epochs of the phase-1 baseline trained first (default 60)",
    )
    parser.add_argument("--start-weights", type=Path, help="--seed-vs-native: use these instead of training one")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="--seed-vs-native: an extra run, RECIPE:KEY=VALUE[,KEY=VALUE] (e.g. phase2-native:warmup_bias_lr=0.0001)",
    )
    parser.add_argument("--work", type=Path, help="keep work (baseline, runs) here to reuse; default: a temp dir")
    opts = parser.parse_args()
    if not (opts.compare_bare or opts.seed_vs_native):
        parser.error("choose --compare-bare and/or --seed-vs-native")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-fine-tune-") as tmp:
        work = opts.work or Path(tmp)
        if opts.compare_bare:
            compare_bare(work / "bare", opts.epochs, opts.imgsz, opts.batch, opts.train_images)
        if opts.seed_vs_native:
            seed_vs_native(work / "recipes", opts.epochs, opts.baseline_epochs, opts.start_weights, opts.variant)
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
