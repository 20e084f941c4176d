"""Metrics plumbing shared by every layer that reports to Ray's metrics agent (no-ops without a running Ray).

`serve_app.metrics` builds the ingress's metrics on top of this; the reconstruct deployment uses
`batch_size_histogram` directly.
"""

from __future__ import annotations

from typing import Any

BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64]


class Noop:
    """Stands in for a Counter / Gauge / Histogram when Ray is not running (unit tests, the CLI)."""

    def inc(self, *args: Any, **kwargs: Any) -> None: ...
    def set(self, *args: Any, **kwargs: Any) -> None: ...
    def observe(self, *args: Any, **kwargs: Any) -> None: ...


def ray_running() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return ray.is_initialized()


def batch_size_histogram() -> Any:
    """The reconstruct deployment's frames-per-forward histogram (no-op without Ray)."""
    if not ray_running():
        return Noop()
    from ray.serve import metrics as m

    return m.Histogram(
        "triposr_reconstruct_batch_size",
        description="Frames per batched forward pass in the reconstruct deployment.",
        boundaries=BATCH_BOUNDARIES,
    )
