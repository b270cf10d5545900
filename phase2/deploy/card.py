"""The model card every registered version carries: ``MODEL_CARD.md`` for people and
``model_card.json`` (the same facts) for tools. ``phase2 models show`` prints it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phase2.infra.files import atomic_write_json, atomic_write_text, sha256_file
from phase2.registry.manifest import ExportRecord

SMALL_CLASS = 30  # fewer evaluation instances than this: its AP moves by points per image

LOAD_PT = """from ultralytics import YOLO  # a .pt is a pickle: load only files whose sha256 matches manifest.json
model = YOLO("weights/best.pt")
for r in model.predict("photo.jpg", imgsz={imgsz}, conf=0.25):
    print(r.boxes.cls, r.boxes.conf, r.boxes.xyxy)  # pixels of the original image"""

LOAD_ONNX = """import numpy as np, onnxruntime as ort
from PIL import Image  # no torch, no Ultralytics, no pickle
session = ort.InferenceSession("{onnx}", providers=["CPUExecutionProvider"])
image = Image.open("photo.jpg").convert("RGB").resize(({imgsz}, {imgsz}))  # or letterbox to keep the aspect
x = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
(out,) = session.run(None, {{session.get_inputs()[0].name: x}})  # (1, 4 + {nc}, anchors): cx, cy, w, h, class scores
scores = out[0, 4:]  # (classes, anchors)
keep = scores.max(0) >= 0.25
boxes = out[0][:4, keep].T  # cx, cy, w, h in input pixels; then non-maximum suppression (cv2.dnn.NMSBoxes)
classes, confidences = scores[:, keep].argmax(0), scores[:, keep].max(0)
# or simply: `phase2 predict MODEL IMAGES --format onnx` (letterbox + NMS, boxes in original pixels)"""


def class_counts(data_yaml: Path, names: list[str]) -> dict[str, dict[str, int]]:
    """{split: {class: boxes}} from the labels (the project's one label parser)."""
    from phase2.dataset.labels import read_boxes
    from phase2.dataset.layout import label_path_for, resolve_split_images

    counts: dict[str, dict[str, int]] = {}
    for split, images in resolve_split_images(Path(data_yaml)).items():
        per_class = dict.fromkeys(names, 0)
        for image in images:
            for box in read_boxes(label_path_for(image)):
                if 0 <= box[0] < len(names):
                    per_class[names[box[0]]] += 1
        counts[split] = per_class
    return counts


def dataset_licence(data_yaml: Path) -> str | None:
    """The dataset's source and licence as its publisher wrote it: data.yaml's ``license``/
    ``roboflow`` keys, else the README paragraph next to it that names the licence."""
    import yaml

    meta = yaml.safe_load(Path(data_yaml).read_text()) or {}
    for key in ("license", "licence"):
        if meta.get(key):
            return str(meta[key])
    if isinstance(meta.get("roboflow"), dict) and meta["roboflow"].get("license"):
        return f"{meta['roboflow']['license']} ({meta['roboflow'].get('url', 'Roboflow')})"
    from phase2.dataset.layout import resolve_split_images

    # A rebalanced version's data.yaml lives in the state dir and lists images of the source tree:
    # its README is the source's, found above the images (split/images/x.jpg -> the dataset root).
    folders = [Path(data_yaml).parent]
    for images in resolve_split_images(Path(data_yaml)).values():
        folders += list(Path(images[0]).resolve().parents)[:3] if images else []
    for folder in dict.fromkeys(folders):
        readme = folder / "README.md"
        if readme.is_file():
            for paragraph in readme.read_text().split("\n\n"):
                if "licen" in paragraph.lower():
                    return " ".join(paragraph.split())
    return None


def build_card(
    *,
    model_name: str,
    names: list[str],
    data_yaml: Path,
    dataset: dict[str, Any],
    baseline: dict[str, Any],
    recipe: dict[str, Any],
    metrics: dict[str, Any],
    gate: dict[str, Any] | None,
    imgsz: int,
    exports: dict[str, ExportRecord],
    files: dict[str, Path],
) -> dict[str, Any]:
    """The card's facts. ``metrics``: {split: evaluate_checkpoint metrics}; ``gate``: the
    ``phase2 evaluate`` JSON (with 95% intervals) on the gate split, when measured."""
    counts = class_counts(data_yaml, names)
    evaluated = [s for s in ("val", "test") if metrics.get(s)]
    limitations = [
        f"{name}: {counts.get(split, {}).get(name, 0)} {split} instances; its AP moves by points per image"
        for split in evaluated
        for name in names
        if counts.get(split, {}).get(name, 0) < SMALL_CLASS
    ]
    limitations.append(
        f"Evaluated only at {imgsz} px (the protocol's image size; exports record it and were checked at it); "
        "other input sizes, cameras, sites and seasons were never tested."
    )
    limitations += [f"{fmt} export not usable: {e.reason}" for fmt, e in exports.items() if not e.usable]
    onnx = exports.get("onnx")
    return {
        "model": model_name,
        "task": "object detection (Ultralytics YOLO)",
        "intended_use": recipe.get("description")
        or f"Detecting {', '.join(names)} in site-inspection drone photographs, for review by an inspector.",
        "classes": names,
        "training_data": {
            **{k: dataset.get(k) for k in ("version_id", "source_version_id", "uri", "manifest_sha256")},
            "licence": dataset_licence(data_yaml),
            "class_counts": counts,
        },
        "baseline": baseline,
        "recipe": {"name": recipe.get("name"), "train": recipe.get("train", {})},
        "metrics": metrics,
        "gate_split": gate,
        "limitations": limitations,
        "exports": {fmt: e.model_dump(mode="json") for fmt, e in exports.items()},
        "files": {rel: sha256_file(path) for rel, path in sorted(files.items())},
        "how_to_load": {
            "pt": LOAD_PT.format(imgsz=imgsz),
            **({"onnx": LOAD_ONNX.format(onnx=onnx.path, imgsz=onnx.imgsz, nc=len(names))} if onnx is not None else {}),
        },
    }


def _num(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def _ci(entry: dict[str, Any] | None) -> str:
    if not entry or entry.get("value") is None:
        return "-"
    lo, hi = entry.get("ci95") or (None, None)
    return f"{entry['value']:.4f} [{_num(lo)}, {_num(hi)}]"


def render_markdown(card: dict[str, Any]) -> str:
    """MODEL_CARD.md from the card's facts."""
    data = card["training_data"]
    lines = [
        f"# Model card: {card['model']}",
        "",
        f"**Task**: {card['task']}. **Classes**: {', '.join(card['classes'])}.",
        "",
        f"**Intended use**: {card['intended_use']}",
        "",
        "## Training data",
        "",
        f"- dataset version `{data['version_id']}` (source `{data['source_version_id']}`), {data['uri'] or 'local'}",
        f"- licence and attribution: {data['licence'] or 'not stated by the dataset; ask its owner'}",
        "",
        "| split | " + " | ".join(card["classes"]) + " |",
        "|---|" + "---:|" * len(card["classes"]),
    ]
    lines += [
        f"| {s} | " + " | ".join(str(c[n]) for n in card["classes"]) + " |" for s, c in data["class_counts"].items()
    ]
    lines += ["", "## Lineage and recipe", "", f"- baseline: `{json.dumps(card['baseline'])}`"]
    lines += [f"- recipe `{card['recipe']['name']}`: `{json.dumps(card['recipe']['train'], sort_keys=True)}`", ""]
    lines += ["## Metrics", "", "| split | mAP50 | mAP50-95 | precision | recall |", "|---|---:|---:|---:|---:|"]
    for split, m in card["metrics"].items():
        o = (m or {}).get("overall", {})
        lines.append(
            f"| {split} | {_num(o.get('mAP50'))} | {_num(o.get('mAP50-95'))} | {_num(o.get('precision'))} | "
            f"{_num(o.get('recall'))} |"
        )
    if gate := card["gate_split"]:
        lines += [
            "",
            f"On the gate split `{gate['split']}` ({gate['n_images']} images) with 95% bootstrap intervals:",
            "",
        ]
        lines += ["| | value [95% interval] |", "|---|---|"]
        lines += [f"| {k} | {_ci(v)} |" for k, v in gate["metrics"].items()]
        lines += [
            f"| {c} {k} (n={gate['instances'].get(c, 0)}) | {_ci(v)} |"
            for c, e in gate["per_class"].items()
            for k, v in e.items()
        ]
    lines += ["", "## Known limitations", ""] + [f"- {item}" for item in card["limitations"]]
    lines += ["", "## Exports and their parity with the .pt", ""]
    if not card["exports"]:
        lines.append("No exports.")
    for fmt, e in card["exports"].items():
        p = e.get("parity") or {}
        state = "usable" if e["usable"] else f"NOT USABLE: {e['reason']}"
        lines.append(f"- **{fmt}** `{e['path']}` ({e['imgsz']} px{', fp16' if e['half'] else ''}): {state}")
        if p:
            agreement = "-" if p["box_agreement"] is None else f"{p['box_agreement']:.1%}"
            lines.append(
                f"  - on `{p['split']}`: |Δ mAP50| {p['delta_map50']:.4f}, |Δ mAP50-95| {p['delta_map50_95']:.4f}, "
                f"boxes reproduced {p['boxes_matched']}/{p['boxes_pt']} ({agreement}) at conf >= {p['box_conf']:g}"
            )
    lines += ["", "## Files (sha256)", "", "manifest.json lists these and the card's own hashes.", ""]
    lines += [f"- `{rel}` {sha}" for rel, sha in card["files"].items()]
    lines += ["", "## How to load it", ""]
    for fmt, code in card["how_to_load"].items():
        lines += [f"{fmt}:", "", "```python", code, "```", ""]
    return "\n".join(lines)


def write_card(card: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write MODEL_CARD.md and model_card.json into ``out_dir``; {relpath: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "MODEL_CARD.md": atomic_write_text(out_dir / "MODEL_CARD.md", render_markdown(card)),
        "model_card.json": atomic_write_json(out_dir / "model_card.json", card),
    }
