"""Fixtures for the TripoSR model tests: the tiny parity model loaded once, and its reference arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

import triposr

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> triposr.TripoSR:
    """The tiny upstream-made model on CPU (treat as read-only)."""
    return triposr.load_model(tiny_model_dir, "cpu")


@pytest.fixture(scope="session")
def tiny_codes(tiny_model: triposr.TripoSR, tiny_model_dir: Path):
    """Scene code (3, C, H, W) of the fixture's input.png, computed by our encoder."""
    from PIL import Image

    with Image.open(tiny_model_dir / "input.png") as im:
        return tiny_model.encode([im])[0]


def chamfer(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean, max) of the symmetric nearest-vertex distances between two vertex sets."""
    da = cKDTree(b).query(a)[0]
    db = cKDTree(a).query(b)[0]
    return float((da.mean() + db.mean()) / 2), float(max(da.max(), db.max()))
