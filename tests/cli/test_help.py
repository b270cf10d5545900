"""Item 10: examples in every command's help, --version, a directory argument means DIR/data.yaml."""

from __future__ import annotations

import pytest

from tests.cli.helpers import run_cli
from tests.dataset.builders import make_dataset

COMMANDS = [
    ("validate",),
    ("rebalance",),
    ("history",),
    ("lint",),
    ("up",),
    ("down",),
    ("status",),
    ("deploy",),
    ("run",),
    ("recover",),
    ("report",),
    ("models", "list"),
    ("models", "show"),
    ("models", "download"),
    ("models", "promote"),
    ("wandb", "publish"),
    ("convert-segments",),
    ("evaluate",),
    ("compare",),
    ("export",),
    ("predict",),
    ("study",),
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_help_has_examples(tmp_path, command):
    result = run_cli(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "Examples:" in result.stdout and f"phase2 {' '.join(command)}" in result.stdout.split("Examples:")[1]


def test_version(tmp_path):
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("phase2 ")


def test_directory_argument_is_its_data_yaml(tmp_path):
    make_dataset(tmp_path / "ds")
    result = run_cli("validate", "ds", "--imgsz", "64", "--recipe", "phase2-demo", "--json", cwd=tmp_path)
    assert result.json()["data_yaml"].endswith("ds/data.yaml")
    empty = run_cli("validate", ".", cwd=tmp_path)
    assert empty.returncode == 1 and "a directory without data.yaml" in empty.error_line()
