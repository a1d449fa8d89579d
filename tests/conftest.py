"""Shared test set-up: import path, quiet offline tracking, and the repository root."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """The built-in synthetic set at 4²..32², prepared once for the whole test session."""
    from data_prep import prepare

    out = tmp_path_factory.mktemp("synthetic") / "data"
    prepare("synthetic:256", out, max_res=32, shard_size=64, workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def labelled_data(tmp_path_factory) -> Path:
    """The built-in set with its shape classes (disc, square, triangle) at 4²..32²."""
    from data_prep import prepare

    out = tmp_path_factory.mktemp("shapes") / "data"
    prepare("synthetic:256", out, max_res=32, shard_size=64, workers=1, progress=False, labels="shapes")
    return out
