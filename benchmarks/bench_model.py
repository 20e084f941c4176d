"""Full-size TripoSR on CPU: encode time, and mesh extraction at 256 dense (upstream's algorithm: every grid
sample) vs adaptive (this package's default), measured side by side in one run on the same scene code.

    python /work/shared/tools/make_full_ckpt.py state_dict_full.tsv /work/fullckpt   # once, 1.7 GB
    python benchmarks/bench_model.py --model /work/fullckpt

Prints wall-clock and process CPU seconds (CPU time is steadier on a shared machine), the number of density
queries, the distance between the two surfaces in voxels, and the ratios. Upstream's reference on the same
checkpoint on a 2-core machine: 14.7 s forward + 11.8 s mesh@256 = 26.5 s per image (from the issue; a
different, quieter machine, so compare ratios, not seconds).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

UPSTREAM_FORWARD_S = 14.7
UPSTREAM_MESH_S = 11.8


def ring_image(size: int = 512) -> np.ndarray:
    """A deterministic test picture: a hue ring on 50% grey, HxWx3 uint8."""
    y, x = np.mgrid[:size, :size] / size - 0.5
    r, angle = np.hypot(x, y), np.arctan2(y, x)
    img = np.full((size, size, 3), 127, np.uint8)
    ring = (r > 0.2) & (r < 0.35)
    hue = (angle[ring] + np.pi) / (2 * np.pi)
    img[ring] = (255 * np.stack([hue, 1 - hue, 0.5 + 0.5 * np.sin(6 * hue)], -1)).astype(np.uint8)
    return img


def timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="/work/fullckpt", help="folder with config.yaml + model.ckpt")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="timed encodes and adaptive meshes")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up encode (slow CPUs)")
    ap.add_argument("--chunk-size", type=int, default=8192, help="points per decoder call (API default 8192)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--skip-dense", action="store_true", help="adaptive only (dense takes minutes on CPU)")
    args = ap.parse_args()

    import triposr

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device: cpu ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; model {Path(args.model).resolve()}")
    model, wall, _ = timed(lambda: triposr.load_model(args.model, "cpu", chunk_size=args.chunk_size))
    print(f"load_model: {wall:.1f} s")
    image = ring_image()

    if not args.no_warmup:
        model.encode([image])
    enc = [timed(lambda: model.encode([image])) for _ in range(args.repeats)]
    codes = enc[0][0]
    enc_wall, enc_cpu = statistics.median(e[1] for e in enc), statistics.median(e[2] for e in enc)
    print(f"encode (512 px, B=1): median {enc_wall:.2f} s wall, {enc_cpu:.2f} s CPU over {args.repeats}")

    res, code = args.resolution, codes[0]
    model.extract_surface(code, 64, method="adaptive")  # warm-up
    runs: dict[str, list[tuple[object, float, float]]] = {"adaptive": [], "dense": []}
    order = ["adaptive"] + ([] if args.skip_dense else ["dense"]) + ["adaptive"] * (args.repeats - 1)
    for method in order:  # dense between adaptive runs, so both see the same machine load
        runs[method].append(timed(lambda m=method: model.extract_surface(code, res, method=m)))
        surface, wall, cpu = runs[method][-1]
        print(f"  {method:8s} mesh@{res}: {wall:7.2f} s wall, {cpu:7.2f} s CPU, {surface.queries:,} queries, "
              f"{len(surface.vertices):,} vertices, {len(surface.faces):,} faces")

    ada = runs["adaptive"]
    ada_wall, ada_cpu = statistics.median(r[1] for r in ada), statistics.median(r[2] for r in ada)
    ada_surface = ada[0][0]
    print(f"adaptive mesh@{res}: median {ada_wall:.2f} s wall, {ada_cpu:.2f} s CPU")
    print(f"encode + adaptive mesh: {enc_wall + ada_wall:.2f} s wall, {enc_cpu + ada_cpu:.2f} s CPU")
    if runs["dense"]:
        dense_surface, dense_wall, dense_cpu = runs["dense"][0]
        voxel = 2 * model.config.radius / (res - 1)
        d1 = cKDTree(dense_surface.vertices).query(ada_surface.vertices)[0]
        d2 = cKDTree(ada_surface.vertices).query(dense_surface.vertices)[0]
        print(f"dense mesh@{res}: {dense_wall:.2f} s wall, {dense_cpu:.2f} s CPU")
        print(f"adaptive vs dense surface: max {max(d1.max(), d2.max()) / voxel:.2e} voxel, "
              f"mean {(d1.mean() + d2.mean()) / 2 / voxel:.2e} voxel")
        print(f"queries adaptive/dense = {ada_surface.queries / dense_surface.queries:.3f}x")
        print(f"time adaptive/dense = {ada_wall / dense_wall:.3f}x wall, {ada_cpu / dense_cpu:.3f}x CPU")
        base_wall, base_cpu = enc_wall + dense_wall, enc_cpu + dense_cpu
        print(f"(encode + adaptive)/(encode + dense) = {(enc_wall + ada_wall) / base_wall:.3f}x wall, "
              f"{(enc_cpu + ada_cpu) / base_cpu:.3f}x CPU   [encode + dense = upstream's algorithm]")
        # scale upstream's published split by what this run measured for the mesh step
        mesh_ratio = ada_cpu / dense_cpu
        projected = UPSTREAM_FORWARD_S + UPSTREAM_MESH_S * mesh_ratio
        print(f"projected on upstream's machine (same encode cost, mesh x{mesh_ratio:.3f}): "
              f"{projected:.1f} s vs {UPSTREAM_FORWARD_S + UPSTREAM_MESH_S:.1f} s = "
              f"{projected / (UPSTREAM_FORWARD_S + UPSTREAM_MESH_S):.3f}x")
    print(f"upstream reference (issue, other machine): {UPSTREAM_FORWARD_S} s forward + {UPSTREAM_MESH_S} s "
          f"mesh@256 = {UPSTREAM_FORWARD_S + UPSTREAM_MESH_S} s")


if __name__ == "__main__":
    main()
