"""Validation speed against anchors measured in the same run.

1. Real dataset: `validate_dataset` (decode of all image data + sha256 + perceptual hash +
   duplicate search) versus Ultralytics' own scan of the same data: `check_det_dataset` +
   building the label cache of every split (`YOLODataset(...)`, which runs `cache_labels` and
   writes `labels.cache`). Both run on one temp copy of the dataset (Ultralytics writes its cache
   there, never in the real dataset). Two pairs: first run (Ultralytics' caches deleted, our
   cache off) and re-run (Ultralytics reuses labels.cache; our warm validation cache: per-file
   stat index, decode facts, report memo). Ultralytics is measured at its default scan threads
   and with NUM_THREADS = all cores; each ratio is against the faster of the two. Target <= 1.0.
   Also: a re-run after one label file's mtime changed (the per-file index answers), and the
   scheduled "no new data" decision (plan_run's function, real SeaweedFS registry): target <= 1 s.
2. Label-only path (`check_images=False`) on a generated 100,000-label dataset (images are
   hard links to a few tiny JPEGs), versus the anchor of merely reading the same label files.
   Target: >= 20,000 label files/s on 2 cores.

Run: .venv/bin/python benchmarks/bench_validation.py [--repeats 5] [--labels 100000] [--only real|no-new-data|labels]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phase2.infra.settings import configure_environment, real_dataset_dir

configure_environment()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from phase2.dataset.validation import validate_dataset  # noqa: E402


def ultralytics_scan(data_yaml: Path, fresh: bool, threads: int | None = None) -> int:
    """Ultralytics' dataset check and label-cache build for every split; returns images scanned.

    fresh=True deletes its labels.cache files first (a full scan); False reuses them (a re-run).
    threads: its scan pool's size (ultralytics.data.dataset.NUM_THREADS); None: its default,
    min(8, cpu_count - 1).
    """
    import ultralytics.data.dataset as yolo_dataset
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import NUM_THREADS

    if fresh:
        for cache in data_yaml.parent.rglob("*.cache"):
            cache.unlink()
    yolo_dataset.NUM_THREADS = threads or NUM_THREADS
    try:
        data = check_det_dataset(str(data_yaml))
        scanned = 0
        for split in ("train", "val", "test"):
            if data.get(split):
                dataset = YOLODataset(img_path=data[split], data=data, augment=False, imgsz=640)
                scanned += len(dataset.labels)
    finally:
        yolo_dataset.NUM_THREADS = NUM_THREADS
    return scanned


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def touch_one_label(data_yaml: Path) -> None:
    """A new mtime on one label file (content unchanged): the per-file index, not the report memo, answers."""
    label = sorted((data_yaml.parent / "val" / "labels").glob("*.txt"))[0]
    st = label.stat()
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9 if st.st_mtime_ns % 2 else st.st_mtime_ns + 10**9))


def bench_real(repeats: int) -> dict[str, float]:
    from ultralytics.utils import LOGGER, NUM_THREADS

    LOGGER.disabled = True  # its per-split progress output is not what we time
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "site-inspection"
        shutil.copytree(real_dataset_dir(), copy)  # copy2: the real files' mtimes (not "racily" new)
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)  # the source is read-only; the cache must be writable
        data_yaml, cache_dir = copy / "data.yaml", Path(tmp) / "validation-cache"
        ultralytics_scan(data_yaml, fresh=True)  # warm-up: imports, page cache
        report = validate_dataset(data_yaml, cache_dir=cache_dir)  # fills the warm cache

        def one_file_changed() -> None:
            touch_one_label(data_yaml)
            validate_dataset(data_yaml, cache_dir=cache_dir)

        runs = {
            f"ultralytics first run, {NUM_THREADS} thread(s) (default)": lambda: ultralytics_scan(data_yaml, True),
            f"ultralytics first run, {cores} threads (all cores)": lambda: ultralytics_scan(data_yaml, True, cores),
            "validate_dataset, no cache": lambda: validate_dataset(data_yaml),
            f"ultralytics re-run, {NUM_THREADS} thread(s) (default)": lambda: ultralytics_scan(data_yaml, False),
            f"ultralytics re-run, {cores} threads (all cores)": lambda: ultralytics_scan(data_yaml, False, cores),
            "validate_dataset, warm cache": lambda: validate_dataset(data_yaml, cache_dir=cache_dir),
            "validate_dataset, warm cache, 1 label touched": one_file_changed,
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):  # interleaved so machine noise hits every variant alike
            for name, run in runs.items():
                times[name] += timed(run, 1)
    median = {name: statistics.median(t) for name, t in times.items()}
    groups = report.duplicate_groups
    print(
        f"real dataset: {sum(s.images for s in report.splits)} images, {len(groups)} duplicate groups "
        f"({sum(g.cross_split for g in groups)} cross-split), phash threshold {report.phash_threshold}, "
        f"{cores} cores, load average {os.getloadavg()[0]:.1f}, {repeats} interleaved repeats"
    )
    for name, t in times.items():
        print(f"  {name:52s} median {median[name]:.4f} s  min-max {min(t):.4f}-{max(t):.4f} s  {fmt(t)}")
    names = list(runs)
    first_anchor = min(median[names[0]], median[names[1]])
    rerun_anchor = min(median[names[3]], median[names[4]])
    cold = median[names[2]] / first_anchor
    warm = median[names[5]] / rerun_anchor
    print(f"  ratio first run vs the faster Ultralytics first run:  {cold:.2f}  (target <= 1.0)")
    print(f"  ratio warm re-run vs the faster Ultralytics re-run:   {warm:.2f}  (target <= 1.0)")
    print(f"  ratio 1-label-touched re-run vs the faster Ultralytics re-run: {median[names[6]] / rerun_anchor:.2f}")
    return {"ratio_first_run": cold, "ratio_rerun": warm, **median}


def bench_no_new_data(repeats: int) -> list[float]:
    """plan_run's body (the task function: dataset version through the warm index, then the
    production version's lineage from a real SeaweedFS registry) on the real dataset."""
    from phase2.dataset.rebalance import dataset_version_id
    from phase2.infra.seaweedfs import SeaweedFS, SeaweedPorts, resolve_s3_settings
    from phase2.registry.registry import Registry
    from phase2.registry.storage import ObjectStore
    from tasks.plan import plan_run

    data_yaml = real_dataset_dir() / "data.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        server = SeaweedFS(Path(tmp) / "s3", ports=SeaweedPorts.free())
        server.start()
        saved = dict(os.environ)
        try:
            os.environ.update({**server.env(), "PHASE2_S3_BUCKET": "bench-plan", "PHASE2_STATE_DIR": f"{tmp}/state"})
            store = ObjectStore(resolve_s3_settings())  # the bucket plan_run reads (from the env above)
            store.ensure_bucket()
            weights = Path(tmp) / "best.pt"
            weights.write_bytes(b"stand-in: never loaded when the run is skipped")
            registry = Registry(store, "bench-model")
            version = registry.register(
                {"weights/best.pt": weights}, {"dataset": {"source_version_id": dataset_version_id(data_yaml)}}
            )
            registry.set_alias("production", version.version)
            args = (str(data_yaml), "bench-model:production", "phase2-seed", None, "bench-model", None, True, None)
            times = []
            for _ in range(repeats + 1):  # the first: the index is cold (every file hashed once)
                start = time.perf_counter()
                ctx = plan_run.fn(*args)
                times.append(time.perf_counter() - start)
                assert ctx.skip_reason and "no new data" in ctx.skip_reason, ctx.skip_reason
        finally:
            os.environ.clear()
            os.environ.update(saved)
            server.stop()
    print(f"no-new-data decision (plan_run task function, real dataset, real SeaweedFS): cold index {times[0]:.3f} s")
    warm = times[1:]
    print(
        f"  warm index: median {statistics.median(warm):.3f} s  min-max {min(warm):.3f}-{max(warm):.3f} s"
        "  (target <= 1 s)"
    )
    return times


def make_label_dataset(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    images, labels = root / "train" / "images", root / "train" / "labels"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rows = rng.integers(1, 7, n)
    boxes = rng.uniform(0.3, 0.7, (int(rows.sum()), 2))
    sizes = rng.uniform(0.05, 0.4, (int(rows.sum()), 2))
    classes = rng.integers(0, 4, int(rows.sum()))
    k = 0
    for i in range(n):
        if i % 50_000 == 0:  # a new source file before ext4's 65,000 hard-link limit
            source = root / f"source{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(source)
        os.link(source, images / f"{i:06d}.jpg")
        lines = []
        for _ in range(rows[i]):
            lines.append(f"{classes[k]} {boxes[k, 0]:.6f} {boxes[k, 1]:.6f} {sizes[k, 0]:.6f} {sizes[k, 1]:.6f}")
            k += 1
        (labels / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    (root / "val" / "images").mkdir(parents=True)
    (root / "val" / "labels").mkdir(parents=True)
    os.link(source, root / "val" / "images" / "v.jpg")
    (root / "val" / "labels" / "v.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(
        "train: ./train/images\nval: ./val/images\nnc: 4\nnames: [rock_toe, slope_drain, toe_drain, vegetation]\n"
    )
    return root / "data.yaml"


def read_all(folder: Path) -> int:
    count = 0
    for entry in os.scandir(folder):
        with open(entry.path, "rb") as fh:
            fh.read()
        count += 1
    return count


def bench_labels(n: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data_yaml = make_label_dataset(Path(tmp), n)
        labels = Path(tmp) / "train" / "labels"
        read_all(labels)  # warm the page cache
        anchor = timed(lambda: read_all(labels), repeats)
        ours = timed(lambda: validate_dataset(data_yaml, check_images=False, minority_val_target=0), repeats)
    files = n + 1  # train + the one val label
    ours_s, anchor_s = statistics.median(ours), statistics.median(anchor)
    print(f"label-only: {files} label files, {os.cpu_count()} cores")
    print(
        f"  anchor (open+read every label once): median {anchor_s:.3f} s  {fmt(anchor)} = {n / anchor_s:,.0f} files/s"
    )
    print(
        f"  validate_dataset(check_images=False): median {ours_s:.3f} s  {fmt(ours)} "
        f"= {files / ours_s:,.0f} files/s (target >= 20,000)"
    )
    print(f"  ratio ours per file / anchor per file: {(ours_s / files) / (anchor_s / n):.2f}")
    return {"files_per_s": files / ours_s, "anchor_files_per_s": n / anchor_s}


def fmt(times: list[float]) -> str:
    return "[" + ", ".join(f"{t:.3f}" for t in times) + "]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument("--only", choices=["real", "no-new-data", "labels"], help="One part (default: all).")
    args = parser.parse_args()
    if args.only in (None, "real"):
        bench_real(args.repeats)
    if args.only in (None, "no-new-data"):
        bench_no_new_data(args.repeats)
    if args.only in (None, "labels"):
        bench_labels(args.labels, max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
