"""Fixtures for the preprocessing tests: one real u2netp BackgroundRemover per session (never mocked)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def remover(rembg_dir: Path):
    """The real rembg u2netp model from the provisioned models folder, loaded once."""
    from pipeline.matting import BackgroundRemover

    return BackgroundRemover("u2netp", rembg_dir, download=False)
