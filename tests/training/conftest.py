"""A small copy of the real data for the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plugins.data import copy_subset


@pytest.fixture
def data_yaml(real_dataset, tmp_path) -> Path:
    return copy_subset(real_dataset, tmp_path / "data", {"train": 8, "val": 4, "test": 1})
