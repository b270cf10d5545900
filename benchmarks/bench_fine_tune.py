"""Fine-tuning speed against anchors measured in the same run.

--compare-bare: the fine_tune Prefect task (tasks/fine_tune.py, run in a Prefect flow against a real
  Prefect server, W&B tracking on (offline), checkpoints to a real SeaweedFS) versus bare `yolo
  train` (Ultralytics' CLI entry point) with identical arguments AND the same torch thread count
  (the task's child uses all cores; Ultralytics' default is cpu_count-1, which would flatter or
  penalize either side), on the same copy of the real dataset, --repeats interleaved pairs, after an
  untimed warm-up task (1 epoch, 8 images: the process's one-time costs, paid in the flow by earlier tasks).
  Prints the paired wall-time ratio task/bare (median, min, max; target <= 1.03), s/epoch of each,
  and the task's fixed cost in seconds (its time outside Ultralytics' epoch loop less bare
  Ultralytics' own: child start, W&B init, S3 uploads, summary), and the CPU seconds per epoch of
  each process and thread (bench process, training child, wandb-core, SeaweedFS, Prefect server),
  over whole runs and over epochs 2..N only. --services-nice 19 runs the local SeaweedFS and
  Prefect server (stand-ins for remote ones) below training's priority.
--seed-vs-native: the seed recipe (configs/phase2-seed.yaml, 640 px) versus the native recipe
  (phase2-native.yaml, 320 px) through fine_tune, from the same start weights for the same epochs, on
  the pipeline's rebalanced (leak-free) copy of the real dataset: s/epoch ratio, each recipe's own
  per-epoch val mAP50 (at its conf 0.25) and its best.pt re-evaluated under the selection step's
  fixed protocol at 320 and at 640 px. The start weights are a phase-1 baseline trained here first
  (yolo11n.yaml, 320 px, --baseline-epochs) unless --start-weights is given; --work keeps it for re-runs.

Run: .venv/bin/python benchmarks/bench_fine_tune.py --compare-bare --epochs 3 --repeats 5 [--train-images 32]
       [--services-nice 19] [--checkpoint-interval 0]   # 0: the task uploads every save (default: the recipe's)
     .venv/bin/python benchmarks/bench_fine_tune.py --seed-vs-native --epochs 10 --work /tmp/bench-svn
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
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


def yolo_train_command(threads: int, data_yaml: Path, args: dict, project: Path, name: str) -> list[str]:
    """Bare `yolo train` (Ultralytics' own CLI entry point) with torch on `threads` threads, the
    number the task's training child uses (Ultralytics' default is cpu_count - 1)."""
    set_threads = f"import ultralytics.utils.torch_utils as t; t.NUM_THREADS = {threads}; "
    return [
        sys.executable,
        "-c",
        set_threads + "from ultralytics.cfg import entrypoint; entrypoint()",
        "train",
        f"model={args['model']}",
        f"data={data_yaml}",
        *(f"{k}={v}" for k, v in args.items() if k != "model"),
        f"project={project}",
        f"name={name}",
        "exist_ok=True",
    ]


def task_context(run_key: str, recipe, data_yaml: Path, imgsz: int):
    """The three inputs of the real fine_tune task, as the flow's earlier tasks would pass them."""
    from phase2.runs import RunContext, RunLayout
    from tasks.rebalance import DatasetVersion
    from tasks.validate import ValidationOutput

    ctx = RunContext(
        layout=RunLayout.for_run(run_key),
        model_name="bench-fine-tune",
        source_dataset_version="bench",
        recipe=recipe,
        baseline="yolo11n.yaml",
    )
    dataset = DatasetVersion(data_yaml=data_yaml, version_id="bench", manifest_path=None, s3_uri=None)
    validation = ValidationOutput(
        report_json=data_yaml.parent / "report.json",
        summary_md=data_yaml.parent / "summary.md",
        imgsz=imgsz,
        recommended_imgsz=imgsz,
        native_side=imgsz,
        errors=0,
        warnings=0,
        duplicate_groups=[],
        s3_uri=None,
    )
    return dataset, validation, ctx


def _process_kind(proc) -> str:
    """Which part of the benchmark a process of its tree is (for CPU accounting)."""
    command = " ".join(proc.cmdline())
    for marker, kind in (
        ("wandb-core", "W&B service (wandb-core)"),
        ("weed", "SeaweedFS"),
        ("phase2.training.fine_tune", "training child"),
        ("entrypoint()", "training child"),
        ("prefect", "Prefect server"),
    ):
        if marker in command or marker in proc.name():
            return kind
    return proc.name()


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this process, each of its threads, the children
    it already reaped (a finished training child) and each live descendant, by kind. CPU time is
    what the task's helpers take from training on a full machine, and it can be measured on a
    loaded one, unlike wall time."""
    import threading

    import psutil

    me = psutil.Process()
    times = os.times()
    out = {
        "bench process (all threads)": times.user + times.system,
        "reaped children": times.children_user + times.children_system,
    }
    names = {t.native_id: t.name for t in threading.enumerate()}
    for thread in me.threads():
        out[f"thread {thread.id} {names.get(thread.id, '?')}"] = thread.user_time + thread.system_time
    for child in me.children(recursive=True):
        try:
            kind, used = _process_kind(child), child.cpu_times()
        except psutil.Error:
            continue
        out[kind] = out.get(kind, 0.0) + used.user + used.system
    return out


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds used between two `cpu_seconds()` snapshots, by part; threads that ended in
    between (e.g. the checkpoint uploader's) are the rest of the bench process's total."""
    used = {key: value - before.get(key, 0.0) for key, value in after.items()}
    threads = {key: value for key, value in used.items() if key.startswith("thread ")}
    used["threads that ended"] = used["bench process (all threads)"] - sum(threads.values())
    # The training child ran and was reaped in between: its CPU shows in "reaped children".
    used["training child"] = used.pop("reaped children") + used.get("training child", 0.0)
    by_part: dict[str, float] = {}
    for key, value in used.items():
        part = "thread " + key.split(" ", 2)[2] if key.startswith("thread ") else key
        by_part[part] = by_part.get(part, 0.0) + value
    return by_part


class EpochWindowCPU:
    """`cpu_seconds()` when the run's results.csv gets its first row and when it gets its last:
    the CPU each part used over epochs 2..N (training, validation and the saves and uploads of
    epochs 1..N-1), without either side's start-up and final validation. Watched by a thread
    that stats the file four times a second (the same in bare and task runs)."""

    def __init__(self, results_csv: Path, epochs: int):
        import threading

        self.results_csv, self.epochs = results_csv, epochs
        self.snapshots: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-cpu-window", daemon=True)

    def _rows(self) -> int:
        try:
            return max(0, len(self.results_csv.read_text().splitlines()) - 1)
        except OSError:
            return 0

    def _watch(self) -> None:
        size = -1
        while not self._stop.wait(0.25) and len(self.snapshots) < 2:
            try:
                now = self.results_csv.stat().st_size
            except OSError:
                continue
            if now != size:
                size, rows = now, self._rows()
                if rows >= (1 if not self.snapshots else self.epochs):
                    self.snapshots.append(cpu_seconds())

    def __enter__(self) -> EpochWindowCPU:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def per_epoch(self) -> dict[str, float]:
        if len(self.snapshots) < 2 or self.epochs < 2:
            return {}
        return {part: value / (self.epochs - 1) for part, value in cpu_used(*self.snapshots).items()}


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.3f}, min {min(values):.3f}, max {max(values):.3f}"


def median_interval(values: list[float]) -> str:
    """Percentile bootstrap 95% interval of the median (scipy; 10,000 resamples, seed 0): how far the
    headline could move on this machine's run-to-run noise."""
    from scipy.stats import bootstrap

    result = bootstrap((values,), statistics.median, n_resamples=10_000, method="percentile", random_state=0)
    return f"[{result.confidence_interval.low:.3f}, {result.confidence_interval.high:.3f}]"


def compare_bare(
    work: Path,
    epochs: int,
    repeats: int,
    train_images: int | None,
    services_nice: int = 0,
    checkpoint_interval_s: float | None = None,
) -> None:
    """Task vs bare `yolo train`, same arguments and the same torch threads, `repeats` interleaved
    pairs (ABBA order). The task is tasks/fine_tune.py's Prefect task run inside a Prefect flow (a
    real Prefect server, W&B offline, checkpoints to a real SeaweedFS), timed around the task call."""
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from phase2.infra.prefect_stack import PrefectServer, free_port
    from phase2.infra.publishing import finish_tracker
    from phase2.infra.seaweedfs import SeaweedFS, SeaweedPorts
    from phase2.runs import RunLayout
    from tasks.fine_tune import train as fine_tune_task

    data_yaml = copy_dataset(work / "data", train_images)
    recipe = load_recipe("phase2-native")
    overrides = {"epochs": epochs, "device": "cpu", "workers": 0, "plots": False}
    recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update=overrides)})
    if checkpoint_interval_s is not None:
        interval = {"upload_interval_s": checkpoint_interval_s}
        recipe = recipe.model_copy(update={"checkpoints": recipe.checkpoints.model_copy(update=interval)})
    imgsz = 320  # what phase2-native resolves to on the real data (native side 312 px)
    args = {"model": "yolo11n.yaml", **recipe.train.ultralytics_kwargs(imgsz)}
    threads = os.cpu_count() or 1
    os.environ["PHASE2_TORCH_THREADS"] = str(threads)  # the task's child: the same count, said explicitly

    @flow(name="bench-fine-tune", persist_result=False)
    def one_task(dataset, validation, ctx) -> dict:
        started = time.monotonic()
        result = fine_tune_task(dataset, validation, ctx)
        wall = time.monotonic() - started
        finish_tracker(ctx)
        return {"wall": wall, "results_csv": str(result.results_csv), "files": len(result.checkpoints)}

    # Warm-up (not timed): dataset label cache and the OS file cache are then the same for every run.
    warm_up = ["val", "model=yolo11n.yaml", f"data={data_yaml}", "imgsz=64", "batch=16", "device=cpu", "plots=False"]
    subprocess.run(
        [str(Path(sys.executable).with_name("yolo")), *warm_up, f"project={work}", "name=warmup"],
        check=True,
        capture_output=True,
    )
    s3 = SeaweedFS(work / "s3", ports=SeaweedPorts.free()).start()
    server = PrefectServer(work / "prefect", port=free_port(), ui=False).start()
    # Stopped at interpreter exit, not before: Prefect's log and event workers flush to the server
    # when the interpreter shuts down, and hang on one already stopped (atexit runs last-in first-out).
    atexit.register(s3.stop)
    if services_nice:
        # Stand-ins for the remote S3 and Prefect API of a deployment, kept off training's cores'
        # share; their CPU is still counted (printed below).
        import psutil

        for proc in psutil.Process().children(recursive=True):
            if _process_kind(proc) in ("SeaweedFS", "Prefect server"):
                proc.nice(services_nice)
    atexit.register(server.stop)
    os.environ.update({**s3.env(), "PHASE2_S3_BUCKET": "bench-fine-tune"})
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        # Warm-up task (not timed; 1 epoch, 8 images): in the flow, the tasks before fine_tune have
        # already paid this process's one-time costs (W&B service start, S3 client, imports); the
        # first timed task would pay them here.
        warm_recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"epochs": 1})})
        warm_data = copy_dataset(work / "warm-data", 8)
        one_task(*task_context("bench-task-warmup", warm_recipe, warm_data, imgsz))
    runs: dict[str, list[dict[str, float]]] = {"bare": [], "task": []}
    cpu: dict[str, list[dict[str, float]]] = {"bare": [], "task": []}
    cpu_in_epochs: dict[str, list[dict[str, float]]] = {"bare": [], "task": []}
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        for i in range(repeats):
            order = ("bare", "task") if i % 2 == 0 else ("task", "bare")
            for kind in order:
                load = os.getloadavg()[0]
                cpu_before = cpu_seconds()
                csv = (
                    work / f"bare-{i}" / "results.csv"
                    if kind == "bare"
                    else RunLayout.for_run(f"bench-task-{i}").stage_dir("train") / "results.csv"
                )
                window = EpochWindowCPU(csv, epochs).__enter__()
                if kind == "bare":
                    started = time.monotonic()
                    subprocess.run(
                        yolo_train_command(threads, data_yaml, args, work, f"bare-{i}"),
                        check=True,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    wall = time.monotonic() - started
                else:
                    out = one_task(*task_context(f"bench-task-{i}", recipe, data_yaml, imgsz))
                    wall = out["wall"]
                    assert Path(out["results_csv"]) == csv, out
                window.__exit__()
                cpu[kind].append(cpu_used(cpu_before, cpu_seconds()))
                cpu_in_epochs[kind].append(window.per_epoch())
                train_s = float(read_results(csv)[-1]["time"])  # Ultralytics' own epoch-loop time
                runs[kind].append({"wall": wall, "train": train_s, "load": load, "load_after": os.getloadavg()[0]})
                print(
                    f"repeat {i} {kind:4s}: {wall:6.1f} s wall, {train_s:6.1f} s in epochs, load {load:.2f}",
                    flush=True,
                )
    log = RunLayout.for_run("bench-task-0").stage_dir("train").parent / "train.log"
    child_threads = [line.strip() for line in log.read_text().splitlines() if "torch threads" in line]
    ratios = [t["wall"] / b["wall"] for t, b in zip(runs["task"], runs["bare"], strict=True)]
    s_epoch = {kind: [r["train"] / epochs for r in runs[kind]] for kind in runs}
    # The task's fixed cost: its time outside Ultralytics' epoch loop, less bare Ultralytics' own
    # (start-up, dataset scan, final validation): child start, W&B init, S3 uploads, summary.
    fixed = [
        (t["wall"] - t["train"]) - (b["wall"] - b["train"]) for t, b in zip(runs["task"], runs["bare"], strict=True)
    ]
    subset = f"first {train_images} train images" if train_images else "the full train split"
    print(
        f"\n== fine_tune Prefect task vs bare `yolo train`: phase2-native recipe ({imgsz} px, batch "
        f"{args['batch']}, {epochs} epochs, workers 0, plots off), yolo11n.yaml, real dataset ({subset}, "
        f"all val), CPU, torch threads {threads} in both, {repeats} interleaved pairs, local SeaweedFS and "
        f"Prefect server at {f'nice {services_nice}' if services_nice else 'the bench process priority'}, "
        f"checkpoint uploads at least {recipe.checkpoints.upload_interval_s:g} s apart =="
    )
    for kind in runs:
        print(f"{kind:4s} wall s   : {spread([r['wall'] for r in runs[kind]])}")
        print(f"{kind:4s} s/epoch  : {spread(s_epoch[kind])}")
    print(f"ratio task/bare (paired): {spread(ratios)}   target <= 1.03")
    within = sum(r <= 1.03 for r in ratios)
    print(f"  95% CI of that median : {median_interval(ratios)}; pairs <= 1.03: {within}/{len(ratios)}")
    print(f"fixed cost of the task  : {spread(fixed)} s")
    loads = [r[at] for k in runs for r in runs[k] for at in ("load", "load_after")]
    print(f"load average (1 min) at each run's start and end: {spread(loads)}")
    print_cpu("whole run, per epoch", {k: [{p: v / epochs for p, v in r.items()} for r in cpu[k]] for k in cpu})
    print_cpu(f"epochs 2..{epochs} only (no start-up or final validation), per epoch", cpu_in_epochs)
    print(f"task child log: {child_threads[:1] or 'no torch threads line found'}")


def print_cpu(title: str, cpu: dict[str, list[dict[str, float]]]) -> None:
    """CPU seconds of each part during each kind of run (median over the repeats)."""
    parts = sorted({part for kind in cpu for run in cpu[kind] for part in run})
    print(f"\nCPU seconds (user + system), {title}, median over runs:")
    print(f"{'part':45s} {'bare':>8s} {'task':>8s}")
    for part in parts:
        per_kind = [statistics.median(run.get(part, 0.0) for run in cpu[kind]) for kind in ("bare", "task")]
        if max(per_kind) >= 0.005:
            print(f"{part:45s} {per_kind[0]:8.3f} {per_kind[1]:8.3f}")


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
    parser.add_argument("--repeats", type=int, default=5, help="--compare-bare: interleaved task/bare pairs")
    parser.add_argument("--train-images", type=int, help="--compare-bare: only the first N train images")
    parser.add_argument(
        "--services-nice",
        type=int,
        default=0,
        help="--compare-bare: nice value for the local SeaweedFS and Prefect server (stand-ins for remote ones); "
        "default 0: they compete with training at its priority",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=float,
        help="--compare-bare: the recipe's checkpoints.upload_interval_s for the task (default: the recipe's; "
        "0: upload every save)",
    )
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
    work = opts.work
    if work is None:
        # Removed at exit after the servers' atexit stops (last in, first out): they find their
        # pid records in it; removing it first left them running.
        work = Path(tempfile.mkdtemp(prefix="bench-fine-tune-"))
        atexit.register(shutil.rmtree, work, ignore_errors=True)
    if opts.compare_bare:
        compare_bare(
            work / "bare", opts.epochs, opts.repeats, opts.train_images, opts.services_nice, opts.checkpoint_interval
        )
    if opts.seed_vs_native:
        seed_vs_native(work / "recipes", opts.epochs, opts.baseline_epochs, opts.start_weights, opts.variant)
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
