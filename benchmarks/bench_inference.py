"""Inference speed on the CPU: the ONNX export through ONNX Runtime vs the .pt through PyTorch.

Both paths run through Ultralytics' ``predict`` (the same letterbox, the same NMS, boxes mapped
back to the original image): only the backend differs, which is what ``phase2 predict --format
onnx|pt`` chooses between. Same run, same real test images (decoded once, in memory), the
model's native imgsz, the same number of threads for both (torch.set_num_threads and ONNX
Runtime's intra-op threads), batch 1, interleaved repeats (pt, onnx, pt, onnx, ...) after a
warm-up, median and spread of ms/image over the repeats. Target: ONNX <= 0.8x PyTorch.

Run: .venv/bin/python benchmarks/bench_inference.py --weights best.pt [--imgsz 320] [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phase2.infra.settings import configure_environment, real_dataset_dir

configure_environment()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _onnx_model(path: Path, threads: int) -> Any:
    """YOLO(onnx) whose ONNX Runtime session uses ``threads`` intra-op threads (Ultralytics' own
    session takes ORT's default, all physical cores)."""
    import onnxruntime as ort
    from ultralytics import YOLO

    model = YOLO(str(path), task="detect")
    model.predict(next(iter(_IMAGES)), verbose=False)  # builds the predictor and its backend
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    backend = model.predictor.model.backend
    backend.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return model


_IMAGES: list[Any] = []


def _ms_per_image(model: Any, imgsz: int) -> float:
    start = time.perf_counter()
    for image in _IMAGES:
        model.predict(image, imgsz=imgsz, conf=0.25, verbose=False)
    return (time.perf_counter() - start) * 1000 / len(_IMAGES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, required=True, help="a .pt (exported to ONNX here)")
    parser.add_argument("--data", type=Path, default=real_dataset_dir() / "data.yaml")
    parser.add_argument("--split", default="test")
    parser.add_argument("--imgsz", type=int, default=320, help="the model's native imgsz (320 for this dataset)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    import cv2
    import onnxruntime
    import torch
    import ultralytics
    from ultralytics import YOLO

    from phase2.dataset.layout import resolve_split_images
    from phase2.deploy.export import export_weights
    from phase2.training.checkpoints import verify_checkpoint

    torch.set_num_threads(args.threads)
    _IMAGES.extend(cv2.imread(str(p)) for p in sorted(resolve_split_images(args.data)[args.split]))
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as work:
        exported = export_weights(args.weights, "onnx", imgsz=args.imgsz, out_dir=Path(work))
        pt_model = YOLO(str(verify_checkpoint(args.weights)))
        onnx_model = _onnx_model(exported.path, args.threads)
        for model in (pt_model, onnx_model):  # warm-up: first calls allocate and tune
            _ms_per_image(model, args.imgsz)
        times: dict[str, list[float]] = {"pt": [], "onnx": []}
        for _ in range(args.repeats):
            times["pt"].append(_ms_per_image(pt_model, args.imgsz))
            times["onnx"].append(_ms_per_image(onnx_model, args.imgsz))
    summary = {
        path: {"median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v), "runs_ms": v}
        for path, v in times.items()
    }
    ratios = [o / p for o, p in zip(times["onnx"], times["pt"], strict=True)]
    result = {
        "images": len(_IMAGES),
        "split": args.split,
        "imgsz": args.imgsz,
        "threads": args.threads,
        "repeats": args.repeats,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "versions": {
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "ultralytics": ultralytics.__version__,
        },
        "ms_per_image": summary,
        "ratio_onnx_over_pt": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "target": "onnx <= 0.8x pt",
        "met": statistics.median(ratios) <= 0.8,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
