"""Isosurface extraction from a scalar field on TripoSR's cube: mirrors upstream `TSR.extract_mesh` and
`tsr/models/isosurface.py`, with PyMCubes (PyPI wheels) instead of torchmcubes and an adaptive variant.

Grid (as upstream): `resolution` samples per axis, both cube faces included, spacing 2 * radius / (resolution
- 1); sample (i, j, k) is the point (x_i, y_j, z_k). Marching cubes runs on `value - level`; a sample is
inside when value > level (PyMCubes puts value == level with the outside), triangles are wound
counter-clockwise seen from outside (positive signed volume).

`extract_dense` evaluates every grid sample, like upstream. `extract_adaptive` evaluates a coarse grid (every
`stride`-th sample), refines only the blocks of `stride`^3 cells that can hold surface, and then follows the
surface from block to block until no refined block's boundary shows a crossing into an unrefined block.
Marching cubes then runs on a volume whose unrefined samples carry their block's (uniform) side, so every cell
it meshes was evaluated in full and the adaptive surface is the dense one wherever both found it. Why the
refinement is safe:

* seeds: a block is refined when its 8 corners are not all on one side, or when a corner is within `margin *
  slope * half_diagonal` of the level, where `slope` is the largest coarse finite difference (per fine voxel)
  in the 3x3x3 blocks around it. If the field's local Lipschitz constant is below `margin * slope`, every
  point of an unrefined block is farther from the level than it can travel from its nearest corner, so the
  block holds no surface. Thin sheets and tubes thinner than the coarse spacing are caught this way: the
  coarse samples next to them are close to the level relative to the field's slope (see the tests on analytic
  fields).
* closure: marching-cubes surfaces are connected through cell faces and edges, and a surface that leaves a
  refined block crosses the block's boundary, where both sides are now known. Every unrefined block whose
  known samples (corners + boundaries shared with refined blocks) are on both sides is refined, repeatedly. So
  once any part of a connected surface piece is seeded, the whole piece is found, however it bends between
  coarse samples.

`log_domain=True` runs the seed test on log(value) (for positive, exponential-type fields such as TripoSR's
density, whose log is the smooth network output); marching cubes always interpolates `value - level` as
upstream.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import mcubes
import numpy as np
import torch
from scipy import ndimage

logger = logging.getLogger(__name__)

Field = Callable[[torch.Tensor], torch.Tensor]
"""World points (N, 3) float32 -> values (N,). Called once per chunk of at most `chunk_size` points."""

# (x, y, z) native -> (y, z, x): Z up becomes glTF's +Y up and the camera side (+X) becomes glTF's front (+Z);
# a proper rotation (det +1), so triangle winding is kept.
# Upstream's gradio app uses (x, y, z) -> (-y, z, -x) instead: also Y-up, but the object faces -Z.
GLTF_FROM_NATIVE = np.array(
    [
        [0.0, 1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

# Smallest value taken before log in the log-domain seed test (float32 exp(x) underflows to 0 below x ~ -104).
_LOG_FLOOR = 1e-38


@dataclass(frozen=True)
class Surface:
    """A triangle mesh in world units plus how many field samples it cost."""

    vertices: np.ndarray  # (V, 3) float32, world coordinates, axes (x, y, z) of the field
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside
    queries: int  # field samples evaluated
    resolution: int


def grid_axis(resolution: int, radius: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The `resolution` sample coordinates along one axis, float32 (R,), computed in upstream's order of
    operations."""
    unit = torch.linspace(0.0, 1.0, resolution, dtype=torch.float32, device=device)
    return unit * (2 * radius) + (-radius)


def _check(resolution: int, chunk_size: int) -> None:
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")


def grid_points(flat: np.ndarray, resolution: int, radius: float, device: torch.device | str) -> torch.Tensor:
    """World points (n, 3) float32 on `device` of flat grid indices (n,) int64 (i * r^2 + j * r + k)."""
    r = resolution
    axis = grid_axis(r, radius, device)
    flat_t = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.int64)).to(device)
    i, j, k = flat_t // (r * r), (flat_t // r) % r, flat_t % r
    return torch.stack((axis[i], axis[j], axis[k]), dim=-1)


Plan = Generator[np.ndarray, np.ndarray, "Volume"]
"""One extraction as a coroutine: it yields the flat grid indices (n,) int64 it needs next, is sent their
values (n,) float32, and returns its `Volume`. Plans hold no field, so a driver can run the plans of many
scene codes in lockstep and evaluate all their requests in one batch (`run_plans`)."""


@dataclass(frozen=True)
class Volume:
    """What marching cubes needs once the field work is done: `values` - level on a box of the grid."""

    values: np.ndarray | None  # (X, Y, Z) float32 value - level; None: no sample can hold surface
    offset: tuple[int, int, int]  # grid index of values[0, 0, 0]
    resolution: int
    radius: float
    queries: int  # field samples evaluated

    def surface(self) -> Surface:
        """Marching cubes (CPU only, no field access: can run off the device thread)."""
        r = self.resolution
        if self.values is None:
            return Surface(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), self.queries, r)
        verts, faces = _marching_cubes(self.values, self.offset)
        return Surface(_to_world(verts, r, self.radius), faces, self.queries, r)


def run_plans(
    plans: Sequence[Plan], evaluate: Callable[[list[tuple[int, np.ndarray]]], list[np.ndarray]]
) -> list[Volume]:
    """Drive plans in lockstep: each round, `evaluate([(plan position, flat indices), ...])` gets the requests
    of every plan still running and returns their values in the same order."""
    volumes: list[Volume | None] = [None] * len(plans)
    pending: dict[int, np.ndarray] = {}

    def advance(pos: int, values: np.ndarray | None) -> None:
        try:
            pending[pos] = next(plans[pos]) if values is None else plans[pos].send(values)
        except StopIteration as done:
            volumes[pos] = done.value
            pending.pop(pos, None)

    for pos in range(len(plans)):
        advance(pos, None)
    while pending:
        requests = list(pending.items())
        for (pos, _), values in zip(requests, evaluate(requests), strict=True):
            advance(pos, values)
    return [v for v in volumes if v is not None]


def _field_evaluator(
    field: Field, resolution: int, radius: float, chunk_size: int, device: torch.device | str
) -> Callable[[list[tuple[int, np.ndarray]]], list[np.ndarray]]:
    """`run_plans` evaluator for one field: `field` called on at most `chunk_size` points at a time."""

    def evaluate(requests: list[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        out = []
        for _, flat in requests:
            got = np.empty(len(flat), dtype=np.float32)
            for start in range(0, len(flat), chunk_size):
                points = grid_points(flat[start : start + chunk_size], resolution, radius, device)
                got[start : start + len(points)] = field(points).float().cpu().numpy()
            out.append(got)
        return out

    return evaluate


def _to_world(verts_index: np.ndarray, resolution: int, radius: float) -> np.ndarray:
    """Vertex positions in grid-index units (V, 3) -> world coordinates, float32, in upstream's order of
    operations."""
    v = verts_index.astype(np.float32) / np.float32(resolution - 1)
    return v * np.float32(2 * radius) + np.float32(-radius)


def _marching_cubes(
    volume: np.ndarray, offset: tuple[int, int, int] = (0, 0, 0)
) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes at iso-level 0 on `volume` = value - level; vertices in grid-index units of the full
    grid."""
    verts, faces = mcubes.marching_cubes(volume, 0.0)
    verts = verts + np.asarray(offset, dtype=np.float64)
    return verts.reshape(-1, 3), faces.astype(np.int64).reshape(-1, 3)


def dense_plan(resolution: int, level: float, *, radius: float, piece: int = 1 << 21) -> Plan:
    """Every resolution^3 sample, requested `piece` at a time (like upstream's dense grid)."""
    _check(resolution, 1)
    r = resolution
    values = np.empty(r**3, dtype=np.float32)
    for start in range(0, r**3, piece):
        stop = min(start + piece, r**3)
        values[start:stop] = yield np.arange(start, stop, dtype=np.int64)
    volume = values.reshape(r, r, r)
    volume -= np.float32(level)
    return Volume(volume, (0, 0, 0), r, radius, r**3)


@torch.inference_mode()
def extract_dense(
    field: Field,
    resolution: int,
    level: float,
    *,
    radius: float,
    chunk_size: int = 8192,
    device: torch.device | str = "cpu",
) -> Surface:
    """Evaluate all resolution^3 samples (like upstream) and run marching cubes on them."""
    _check(resolution, chunk_size)
    evaluate = _field_evaluator(field, resolution, radius, chunk_size, device)
    return run_plans([dense_plan(resolution, level, radius=radius)], evaluate)[0].surface()


def _block_points(blocks: np.ndarray, stride: int, resolution: int) -> np.ndarray:
    """Flat grid indices of every sample of the closed blocks `blocks` (K, 3) -> (K, (stride+1)^3) int64.

    Block b along an axis spans samples b*stride .. min((b+1)*stride, resolution-1); the last block may be
    short, so its indices are clipped (repeats are harmless).
    """
    r = resolution
    off = np.arange(stride + 1)
    per_axis = [np.minimum(blocks[:, a, None] * stride + off, r - 1) for a in range(3)]  # 3 x (K, s+1)
    flat = (
        per_axis[0][:, :, None, None] * (r * r)
        + per_axis[1][:, None, :, None] * r
        + per_axis[2][:, None, None, :]
    )  # (K, s+1, s+1, s+1)
    return flat.reshape(len(blocks), -1)


def _seed_blocks(
    coarse: np.ndarray, level: float, spacing: np.ndarray, margin: float, log_domain: bool
) -> np.ndarray:
    """Blocks (n, n, n) bool that may hold surface, from the coarse samples (n+1, n+1, n+1); see module
    docstring."""
    inside = coarse > level
    corners = [
        (slice(a, None if a else -1), slice(b, None if b else -1), slice(c, None if c else -1))
        for a in (0, 1)
        for b in (0, 1)
        for c in (0, 1)
    ]
    n_inside = sum(inside[sl].astype(np.int8) for sl in corners)  # (n, n, n) corners inside, 0..8
    mixed = (n_inside > 0) & (n_inside < 8)

    if log_domain:
        g = np.log(np.maximum(coarse.astype(np.float64), _LOG_FLOOR)) - math.log(level)
    else:
        g = coarse.astype(np.float64) - level
    nearest = np.min(np.stack([np.abs(g[sl]) for sl in corners]), axis=0)  # (n, n, n)

    # largest finite difference per fine voxel along any edge of each block, then over its 3x3x3 neighbourhood
    n = spacing.shape[0]
    slope = np.zeros((n, n, n))
    for ax in range(3):
        shape = [1, 1, 1]
        shape[ax] = n
        diff = np.abs(np.diff(g, axis=ax)) / spacing.reshape(shape)  # n along ax, n+1 on the others
        others = [a for a in range(3) if a != ax]
        for lo0 in (0, 1):
            for lo1 in (0, 1):
                sl = [slice(None)] * 3
                sl[others[0]] = slice(lo0, n + lo0)
                sl[others[1]] = slice(lo1, n + lo1)
                np.maximum(slope, diff[tuple(sl)], out=slope)
    slope = ndimage.maximum_filter(slope, size=3, mode="nearest")
    half_diag = 0.5 * np.sqrt(
        spacing[:, None, None] ** 2 + spacing[None, :, None] ** 2 + spacing[None, None, :] ** 2
    )
    near = nearest <= margin * slope * half_diag
    return mixed | near


@torch.inference_mode()
def extract_adaptive(
    field: Field,
    resolution: int,
    level: float,
    *,
    radius: float,
    chunk_size: int = 8192,
    device: torch.device | str = "cpu",
    stride: int = 4,
    margin: float = 1.5,
    log_domain: bool = False,
) -> Surface:
    """Same surface as `extract_dense` for far fewer field samples (see the module docstring for how and why).

    stride: coarse sample spacing in fine voxels (block size). margin: safety factor on the locally measured
    slope in the seed test (1 trusts the coarse slope estimate exactly; larger refines a wider shell).
    """
    _check(resolution, chunk_size)
    plan = adaptive_plan(
        resolution, level, radius=radius, stride=stride, margin=margin, log_domain=log_domain
    )
    evaluate = _field_evaluator(field, resolution, radius, chunk_size, device)
    return run_plans([plan], evaluate)[0].surface()


def adaptive_plan(
    resolution: int,
    level: float,
    *,
    radius: float,
    stride: int = 4,
    margin: float = 1.5,
    log_domain: bool = False,
) -> Plan:
    """The plan of `extract_adaptive` (arguments as there)."""
    _check(resolution, 1)
    if stride < 2 or margin < 0:
        raise ValueError(f"stride must be >= 2 and margin >= 0, got stride={stride}, margin={margin}")
    if log_domain and level <= 0:
        raise ValueError(f"log_domain needs a positive level, got {level}")
    r = resolution
    n = -(-(r - 1) // stride)  # blocks per axis
    if n < 3:
        return (yield from dense_plan(r, level, radius=radius))
    values = np.full(r**3, np.nan, dtype=np.float32)  # unknown samples stay NaN

    def evaluate(flat: np.ndarray):  # a sub-generator: one request, its values stored
        values[flat] = yield flat
        return len(flat)

    # 1. coarse samples: the corners of all blocks
    cidx = np.minimum(np.arange(n + 1) * stride, r - 1)
    coarse_flat = (cidx[:, None, None] * (r * r) + cidx[None, :, None] * r + cidx[None, None, :]).ravel()
    queries = yield from evaluate(coarse_flat)
    coarse = values[coarse_flat].reshape(n + 1, n + 1, n + 1)

    # 2. seeds, then 3. evaluate and follow the surface across block boundaries
    todo = _seed_blocks(coarse, level, np.diff(cidx).astype(np.float64), margin, log_domain)
    done = np.zeros_like(todo)
    sign = np.zeros(r**3, dtype=np.int8)  # +1 inside, -1 outside, 0 unknown
    sign[coarse_flat] = np.where(coarse > level, 1, -1).ravel()
    rounds = 0
    while todo.any():
        rounds += 1
        new_blocks = np.argwhere(todo)
        pts = np.unique(_block_points(new_blocks, stride, r))
        pts = pts[np.isnan(values[pts])]
        queries += yield from evaluate(pts)
        sign[pts] = np.where(values[pts] > level, 1, -1)
        done |= todo
        # unrefined blocks touching the new ones whose known samples are on both sides hold surface
        candidates = np.argwhere(ndimage.binary_dilation(todo, structure=np.ones((3, 3, 3), bool)) & ~done)
        if len(candidates) == 0:
            break
        s = sign[_block_points(candidates, stride, r)]  # (K, (stride+1)^3)
        crossing = (s.max(axis=1) > 0) & (s.min(axis=1) < 0)
        todo = np.zeros_like(done)
        todo[tuple(candidates[crossing].T)] = True
    logger.debug(
        "adaptive extraction: %d blocks refined in %d rounds, %d queries", done.sum(), rounds, queries
    )

    if not done.any():
        return Volume(None, (0, 0, 0), r, radius, queries)

    # 4. marching cubes on the bounding box of the refined blocks; unknown samples take their block's side
    lo_b, hi_b = np.argwhere(done).min(axis=0), np.argwhere(done).max(axis=0)
    lo = lo_b * stride
    hi = np.minimum((hi_b + 1) * stride, r - 1)
    vol = values.reshape(r, r, r)[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1] - np.float32(level)
    unknown = np.isnan(vol)
    if unknown.any():
        block_inside = coarse[:-1, :-1, :-1] > level  # unrefined blocks have all corners on one side
        block_of = [np.minimum(np.arange(lo[a], hi[a] + 1) // stride, n - 1) for a in range(3)]
        fill = np.where(block_inside[np.ix_(*block_of)], np.float32(1.0), np.float32(-1.0))
        vol[unknown] = fill[unknown]
    return Volume(vol, (int(lo[0]), int(lo[1]), int(lo[2])), r, radius, queries)
