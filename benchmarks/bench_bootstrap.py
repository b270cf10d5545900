"""Bootstrap cost as a ratio of the validation pass it summarises.

On the real val split: one validation pass (`collect_matches`: Ultralytics' model.val() under
the protocol, per-image statistics kept) against 1000 bootstrap resamples of its table
(`evaluate_table`: point values + 95% intervals of every metric, vectorised numpy, no
re-inference). Both are timed in the same process with the same threads, interleaved
(pass, bootstrap, pass, bootstrap, ...) so shared load hits both alike; the medians and the
spread are reported. Target: bootstrap <= 25% of the pass.

The model: WEIGHTS if given, else yolo11n trained here for a few epochs on a few real images
(no pretrained weights are needed offline). The bootstrap's cost grows with the number of
predictions kept (conf 0.001, up to 300 per image), which is printed.

Run: .venv/bin/python benchmarks/bench_bootstrap.py [--weights W] [--imgsz 320] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phase2.infra.settings import configure_environment, real_dataset_dir

configure_environment()


def train_small_model(work: Path, epochs: int) -> Path:
    """yolo11n trained from scratch on 8 real val images (copied, the dataset is not written)."""
    from ultralytics import YOLO

    from phase2.evaluation.matches import output_to_stderr

    src = real_dataset_dir()
    for split in ("train", "val"):
        for kind in ("images", "labels"):
            (work / "data" / split / kind).mkdir(parents=True, exist_ok=True)
    for image in sorted((src / "val" / "images").iterdir())[:8]:
        label = src / "val" / "labels" / f"{image.stem}.txt"
        for split in ("train", "val"):
            shutil.copy2(image, work / "data" / split / "images" / image.name)
            if label.is_file():
                shutil.copy2(label, work / "data" / split / "labels" / label.name)
    names = (src / "data.yaml").read_text().split("names:", 1)[1]
    data = work / "data" / "data.yaml"
    data.write_text(f"path: {work / 'data'}\ntrain: train/images\nval: val/images\nnames:{names}")
    with output_to_stderr():
        YOLO("yolo11n.yaml").train(
            data=str(data), imgsz=96, epochs=epochs, batch=4, nbs=4, optimizer="SGD", lr0=0.05, workers=0,
            plots=False, val=False, mosaic=0.0, warmup_epochs=0, amp=False, device="cpu",
            project=str(work / "runs"), name="t", exist_ok=True, verbose=False,
        )  # fmt: skip
    return work / "runs" / "t" / "weights" / "last.pt"


def main() -> None:
    import torch

    from phase2.evaluation.evaluate import EvalProtocol
    from phase2.evaluation.matches import collect_matches
    from phase2.evaluation.uncertainty import evaluate_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--train-epochs", type=int, default=60)
    args = parser.parse_args()

    data = real_dataset_dir() / "data.yaml"
    protocol = EvalProtocol(split="val", imgsz=args.imgsz)
    with tempfile.TemporaryDirectory(prefix="bench-bootstrap-") as work:
        weights = args.weights or train_small_model(Path(work), args.train_epochs)
        collect_matches(weights, data, protocol, "cpu")  # warm-up: imports, caches
        passes, boots, spread, table = [], [], [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            table = collect_matches(weights, data, protocol, "cpu")
            passes.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = evaluate_table(table, resamples=args.resamples, seed=0)
            boots.append(time.perf_counter() - start)
            # Stress: the same predictions with confidences spread over (0, 1), as a stronger model's
            # are; then every point of the 1000-point confidence grid has its own neighbours.
            stressed = replace(table, conf=np.random.default_rng(0).uniform(0.001, 1, len(table.conf)))
            start = time.perf_counter()
            evaluate_table(stressed, resamples=args.resamples, seed=0)
            spread.append(time.perf_counter() - start)
    assert table is not None
    ratio = [b / p for b, p in zip(boots, passes, strict=True)]
    ratio_spread = [b / p for b, p in zip(spread, passes, strict=True)]
    print(f"real val split: {table.n_images} images, {len(table.conf)} predictions kept, imgsz {args.imgsz}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats")  # fmt: skip
    for label, times in (
        ("validation pass", passes),
        (f"bootstrap x{args.resamples}", boots),
        ("stress bootstrap", spread),
    ):
        print(f"{label:<16}: median {statistics.median(times):.2f} s  (min {min(times):.2f}, max {max(times):.2f})")
    print(f"ratio           : median {statistics.median(ratio):.1%}  (min {min(ratio):.1%}, max {max(ratio):.1%}); "
          f"target <= 25%")  # fmt: skip
    print(f"stress ratio    : median {statistics.median(ratio_spread):.1%}  "
          f"(min {min(ratio_spread):.1%}, max {max(ratio_spread):.1%})")  # fmt: skip
    print(f"mAP50 {result['metrics']['mAP50']}")


if __name__ == "__main__":
    main()
