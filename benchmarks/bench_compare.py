"""Time one comparison of two ~200k-face tyre reconstructions, and print the accuracy figures of the issue.

Speed: `compare_meshes` on two TripoSR-like runs of a 0.72 m tyre (~200k faces each), median of --repeat runs,
wall and process CPU seconds (CPU is the honest figure on a shared machine), plus the whole payload (heat-map
GLB + report + chart PNG) once.

Accuracy (fixed seeds; candidates randomly rotated, moved, scaled 0.85-1.15, with floaters; +-0.5 voxel noise
on both meshes at the given marching-cubes resolutions): 3 mm off a 60-degree tread sector, the whole tread
worn 2 mm, an identical tyre, and the smallest sector wear that stands out of the noise at mc 256 vs 512.

Usage: python benchmarks/bench_compare.py [--repeat 3] [--resolutions 256 512] [--depths-mm 0.5 1 1.5 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import cpu_name
from pipeline.compare import compare_meshes
from pipeline.compare_export import heatmap_glb, sector_chart_png
from pipeline.errors import CompareError
from tests import tyres

SIZE_M = 0.72
WORN = range(6, 12)  # sectors inside the 60..120 degree cut
FAR = [*range(0, 5), *range(13, 36)]  # sectors at least one sector away from the cut's edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--depths-mm", type=float, nargs="+", default=[0.5, 1.0, 1.5, 2.0])
    args = parser.parse_args()
    print(f"machine: {cpu_name()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")

    spacing = 0.0047  # -> ~200k faces
    base = tyres.racing_tyre(spacing_m=spacing)
    reference, _ = tyres.triposr_like(base, seed=1, move=False)
    candidate, _ = tyres.triposr_like(base, seed=2)
    print(f"input: reference {len(reference.faces):,} faces, candidate {len(candidate.faces):,} faces")
    small = tyres.racing_tyre(spacing_m=0.012)
    compare_meshes(tyres.triposr_like(small, seed=3, move=False)[0], tyres.triposr_like(small, seed=4)[0])

    walls, cpus = [], []
    for _ in range(args.repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        result = compare_meshes(reference, candidate, object_size_m=SIZE_M)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    w0 = time.perf_counter()
    glb, png = heatmap_glb(result, SIZE_M), sector_chart_png(result.report)
    export_s = time.perf_counter() - w0
    print(
        f"compare: median of {args.repeat}: wall {statistics.median(walls):.2f} s, "
        f"cpu {statistics.median(cpus):.2f} s (target < 5 s on 2 cores); "
        f"heat-map GLB {len(glb) / 1e6:.1f} MB + chart {len(png) / 1e3:.0f} kB in {export_s:.2f} s"
    )

    base = tyres.racing_tyre()
    for resolution in args.resolutions:
        reference, _ = tyres.triposr_like(base, seed=1, move=False, mc_resolution=resolution)

        def run(seed: int, reference=reference, resolution=resolution, **wear):
            shape = tyres.racing_tyre(**wear) if wear else base
            cand, matrix = tyres.triposr_like(shape, seed=seed, mc_resolution=resolution)
            return compare_meshes(reference, cand, object_size_m=SIZE_M).report, matrix

        voxel_mm = tyres.GRID_SPAN / resolution / tyres.UNITS_PER_M * 1000
        print(f"\nmc {resolution} (voxel {voxel_mm:.1f} mm on a 0.72 m tyre; noise +-{voxel_mm / 2:.1f} mm):")
        same, _ = run(4)
        floor = same["noise_floor"]
        print(
            f"  identical:   noise floor {floor:.2f} mm, loss max {same['loss']['max']:.2f} mm "
            f"({same['loss']['max'] / floor:.2f}x floor), "
            f"area over 1 mm {same['loss']['area_fraction']:.2%}, "
            f"turn determined {same['alignment']['turn_determined']}"
        )
        sector, _ = run(2, wear=tyres.sector_wear(0.003, 60.0, 120.0))
        worn = [sector["sectors"][i]["mean_loss"] for i in WORN]
        far = [sector["sectors"][i]["mean_loss"] for i in FAR]
        print(
            f"  3 mm sector: covering sectors mean loss {min(worn):.2f}-{max(worn):.2f} mm, others max "
            f"{max(far):.2f} mm (noise floor {sector['noise_floor']:.2f})"
        )
        tread, matrix = run(3, wear=tyres.tread_wear(0.002))
        true_scale = 1.0 / np.cbrt(np.linalg.det(matrix[:3, :3])) * tyres.UNITS_PER_M
        bands = tread["bands"]
        print(
            f"  2 mm tread:  tread band {bands['tread']['mean_loss']:.2f} mm, shoulder "
            f"{bands['shoulder']['mean_loss']:.2f}, sidewall {bands['sidewall']['mean_loss']:.2f} mm; scale "
            f"error {tread['alignment']['scale'] / true_scale - 1:+.3%} "
            f"(noise floor {tread['noise_floor']:.2f})"
        )
        for depth in args.depths_mm:
            report, _ = run(5, wear=tyres.sector_wear(depth / 1000, 60.0, 120.0))
            worn = [report["sectors"][i]["mean_loss"] for i in WORN]
            far = [report["sectors"][i]["mean_loss"] for i in FAR]
            seen = min(worn) > 2 * max(far)
            print(
                f"  {depth:.1f} mm sector: covering {min(worn):.2f}-{max(worn):.2f} mm, others max "
                f"{max(far):.2f} mm -> {'detected' if seen else 'not separable'}"
            )

    reference, _ = tyres.triposr_like(base, seed=1, move=False)
    for name, shape in (("box", tyres.box()), ("sphere", tyres.sphere()), ("mirrored", None)):
        shape = tyres.racing_tyre(mirrored=True) if shape is None else shape
        try:
            compare_meshes(reference, tyres.triposr_like(shape, seed=8)[0], object_size_m=SIZE_M)
            print(f"  {name}: compared (expected not_comparable)")
        except CompareError as exc:
            print(f"  {name}: {exc.code}")


if __name__ == "__main__":
    main()
