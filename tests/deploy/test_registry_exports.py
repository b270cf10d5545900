"""Exports and the model card in a registered version, against a real SeaweedFS bucket."""

from __future__ import annotations

import json

import pytest

from phase2.infra.files import sha256_file
from phase2.registry.registry import IntegrityError, Registry, RegistryError
from tests.deploy.conftest import IMGSZ

NAME = "deploy-test-detector"


def register(store, deployables):
    deploy = deployables["deploy"]
    return Registry(store, NAME).register(
        deployables["files"] | deploy.files, deployables["metadata"] | {"exports": deploy.exports}
    )


def test_registered_version_carries_onnx_with_parity_and_card(object_store, deployables, tmp_path):
    version = register(object_store, deployables)
    manifest = json.loads(object_store.get_bytes(f"models/{NAME}/versions/v1/manifest.json")[0])
    onnx = manifest["exports"]["onnx"]
    assert onnx["usable"] is True and onnx["imgsz"] == IMGSZ and onnx["path"] in manifest["files"]
    assert set(onnx["parity"]) >= {"delta_map50", "delta_map50_95", "box_agreement", "map50_pt", "map50_export"}
    assert {"MODEL_CARD.md", "model_card.json"} <= set(manifest["files"])
    card = json.loads(Registry(object_store, NAME).read_text(version, "model_card.json"))
    assert card["exports"]["onnx"]["parity"] == onnx["parity"]
    assert card["files"]["weights/best.pt"] == sha256_file(deployables["weights"])
    assert card["training_data"]["class_counts"]["test"] == {
        "rock_toe": 46,
        "slope_drain": 39,
        "toe_drain": 19,
        "vegetation": 24,
    }  # the dataset README's table
    assert "CC BY 4.0" in card["training_data"]["licence"]

    folder = Registry(object_store, NAME).download(f"{NAME}:v1", tmp_path / "dl", "onnx")
    got = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert got == sorted([onnx["path"], "MODEL_CARD.md", "model_card.json", "manifest.json"])  # no pickle
    assert sha256_file(folder / onnx["path"]) == manifest["files"][onnx["path"]]["sha256"]


def test_tampered_onnx_is_refused_on_download(object_store, deployables, tmp_path):
    from typer.testing import CliRunner

    from phase2.cli import app

    version = register(object_store, deployables)
    key = f"models/{NAME}/versions/v1/{version.exports['onnx'].path}"
    data, _ = object_store.get_bytes(key)
    object_store.put_bytes(key, data[:-64] + bytes(64))  # same size, last bytes changed
    out = tmp_path / "out"
    refused = CliRunner().invoke(app, ["models", "download", f"{NAME}:v1", "--out", str(out), "--format", "onnx"])
    assert refused.exit_code == 1, refused.output
    assert "exports/best.onnx" in refused.output and "tampered" in refused.output
    assert list(out.iterdir()) == []
    with pytest.raises(IntegrityError, match="tampered"):
        Registry(object_store, NAME).resolve_export(f"{NAME}:v1", "onnx", cache_dir=tmp_path / "cache")


def test_unusable_export_is_registered_but_refused_for_use(object_store, deployables, tmp_path):
    deploy = deployables["deploy"]
    failed = deploy.exports["onnx"].model_copy(update={"usable": False, "reason": "|Δ mAP50| = 0.0300 exceeds 0.005"})
    Registry(object_store, NAME).register(
        deployables["files"] | deploy.files, deployables["metadata"] | {"exports": {"onnx": failed}}
    )
    registry = Registry(object_store, NAME)
    with pytest.raises(RegistryError, match=r"not usable: \|Δ mAP50\| = 0.0300"):
        registry.download(f"{NAME}:v1", tmp_path / "dl", "onnx")
    with pytest.raises(RegistryError, match="not usable"):
        registry.resolve_export(f"{NAME}:v1", "onnx", cache_dir=tmp_path / "cache")
    assert (registry.download(f"{NAME}:v1", tmp_path / "dl", "pt") / "weights/best.pt").is_file()


def test_manifest_export_outside_the_version_is_refused_on_read(object_store, deployables):
    version = register(object_store, deployables)
    key = f"models/{NAME}/versions/v1/manifest.json"
    manifest = json.loads(object_store.get_bytes(key)[0])
    manifest["exports"]["onnx"]["path"] = "../../evil.onnx"
    object_store.put_bytes(key, json.dumps(manifest).encode())
    with pytest.raises(IntegrityError, match="bad file name '../../evil.onnx'"):
        Registry(object_store, NAME).get(version.ref)


def test_models_show_prints_the_card(object_store, deployables):
    from typer.testing import CliRunner

    from phase2.cli import app

    register(object_store, deployables)
    shown = CliRunner().invoke(app, ["models", "show", f"{NAME}:v1"])
    assert shown.exit_code == 0, shown.output
    assert "# Model card: deploy-test-detector" in shown.output and "**onnx** `exports/best.onnx`" in shown.output
    as_json = CliRunner().invoke(app, ["models", "show", f"{NAME}:v1", "--json"])
    assert json.loads(as_json.output)["exports"]["onnx"]["usable"] is True
