"""Time fuse_meshes on 8 synthetic tyre frames of ~100k faces each (the size TripoSR gives at resolution 256).

Prints the per-stage breakdown (cleaning, alignment, field, marching cubes, colours) as wall seconds, the
process CPU seconds (honest on a shared machine), and the export time. Seeds are fixed; one warm-up run on
small frames loads the libraries first. Usage: python benchmarks/bench_fusion.py [--frames 8] [--resolution
160] [--repeat 3] [--baseline DIR]

`--baseline DIR` (a checkout of the code before a change) times that checkout's fuse_meshes and this one's on
the same frames at the first resolution, each in its own subprocess, alternated, and prints the CPU and wall
ratios and the Chamfer distance (voxels) between the two fused surfaces.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if "--source" in sys.argv:  # a --baseline worker: that checkout's pipeline/ and tests/ come first
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--source") + 1]).resolve()))
sys.path.insert(1 if "--source" in sys.argv else 0, str(ROOT))

from benchmarks.machine import cpu_name  # noqa: E402 (after the path set-up)
from pipeline.export import export_result  # noqa: E402 (after the path set-up)
from pipeline.fusion import fuse_meshes  # noqa: E402 (after the path set-up)
from tests import shapes  # noqa: E402 (after the path set-up)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--resolution", type=int, nargs="+", default=[128, 160])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="checkout to compare against (one resolution)")
    parser.add_argument("--rounds", type=int, default=2, help="baseline/candidate alternations")
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.source:
        worker(args)
        return
    if args.baseline:
        compare(args)
        return

    # 720 x 70 grid -> 100,800 faces per frame
    truth = shapes.tyre(n_theta=720, n_profile=70)
    turns = np.linspace(0.0, 360.0, args.frames, endpoint=False)
    meshes, _ = shapes.make_frames(truth, turns, seed=0)
    meshes[-1] = shapes.corrupted(meshes[-1], np.random.default_rng(1))
    print(f"machine: {cpu_name()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}")
    print(f"input: {len(meshes)} frames x {len(meshes[0].faces):,} faces (1 corrupted)")

    small, _ = shapes.make_frames(shapes.tyre(n_theta=60, n_profile=16), [0, 90], seed=0)
    fuse_meshes(small, resolution=32)  # warm-up: imports, caches

    for resolution in args.resolution:
        walls, cpus, stages = [], [], []
        for _ in range(args.repeat):
            w0, c0 = time.perf_counter(), time.process_time()
            result = fuse_meshes(meshes, resolution=resolution)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
            stages.append((result.report["timings_s"], result.report["cpu_s"]))
        with tempfile.TemporaryDirectory() as tmp:
            e0 = time.perf_counter()
            export_result(result, Path(tmp) / "out.glb")
            export_s = time.perf_counter() - e0
        med = {k: statistics.median(s[0][k] for s in stages) for k in stages[0][0]}
        med_cpu = {k: statistics.median(s[1][k] for s in stages) for k in stages[0][1]}
        print(
            f"\nresolution {resolution}: median of {args.repeat}: wall {statistics.median(walls):.2f} s, "
            f"cpu {statistics.median(cpus):.2f} s; output {result.report['faces']:,} faces, "
            f"rejected {[f['index'] for f in result.report['frames_rejected']]}"
        )
        for key in ("clean", "align", "field", "marching_cubes", "colours"):
            print(
                f"  {key:15s} wall {med[key]:6.2f} s  cpu {med_cpu[key]:6.2f} s"
                f"  ({med_cpu[key] / med_cpu['total']:5.1%} of cpu)"
            )
        print(f"  {'export (glb)':15s} {export_s:6.2f} s")


def frames() -> list:
    # 720 x 70 grid -> 100,800 faces per frame
    truth = shapes.tyre(n_theta=720, n_profile=70)
    meshes, _ = shapes.make_frames(truth, np.linspace(0.0, 360.0, 8, endpoint=False), seed=0)
    meshes[-1] = shapes.corrupted(meshes[-1], np.random.default_rng(1))
    return meshes


def worker(args: argparse.Namespace) -> None:
    """One side of --baseline: time fuse_meshes from the checkout at --source, save the fused mesh."""
    import pipeline.fusion

    assert Path(pipeline.fusion.__file__).resolve().is_relative_to(Path(args.source).resolve())
    meshes = frames()
    small, _ = shapes.make_frames(shapes.tyre(n_theta=60, n_profile=16), [0, 90], seed=0)
    fuse_meshes(small, resolution=32)  # warm-up
    walls, cpus = [], []
    for _ in range(args.repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fuse_meshes(meshes, resolution=args.resolution[0])
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    np.savez(args.out, vertices=result.mesh.vertices, faces=result.mesh.faces)
    stages = result.report["cpu_s"]
    print("RESULT " + json.dumps({"wall": walls, "cpu": cpus, "stages_cpu": stages}), flush=True)


def compare(args: argparse.Namespace) -> None:
    from scipy.spatial import cKDTree

    sides = {"baseline": args.baseline.resolve(), "candidate": ROOT}
    print(f"machine: {cpu_name()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f} (shared: read CPU s)")
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for name in sorted(sides, reverse=rnd % 2 == 1):
                cmd = [sys.executable, __file__, "--source", str(sides[name]), "--out", f"{tmp}/{name}.npz",
                       "--repeat", str(args.repeat), "--resolution", str(args.resolution[0])]  # fmt: skip
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not line:
                    raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
                r = json.loads(line[-1][7:])
                runs[name].append(r)
                cpu, wall = statistics.median(r["cpu"]), statistics.median(r["wall"])
                print(f"  round {rnd + 1} {name:9s}: {cpu:.2f} s CPU, {wall:.2f} s wall; "
                      f"stages CPU {r['stages_cpu']}", flush=True)  # fmt: skip
        meshes = {k: np.load(f"{tmp}/{k}.npz") for k in sides}
    med = {
        k: {m: statistics.median(x for r in v for x in r[m]) for m in ("cpu", "wall")}
        for k, v in runs.items()
    }
    b, c = med["baseline"], med["candidate"]
    print(f"baseline {b['cpu']:.2f} s CPU / {b['wall']:.2f} s wall; candidate {c['cpu']:.2f} s CPU / "
          f"{c['wall']:.2f} s wall; candidate/baseline = {c['cpu'] / b['cpu']:.3f}x CPU, "
          f"{c['wall'] / b['wall']:.3f}x wall")  # fmt: skip
    vb, vc = meshes["baseline"]["vertices"], meshes["candidate"]["vertices"]
    lo, hi = vb.min(axis=0), vb.max(axis=0)
    voxel = float((hi - lo).max()) / (args.resolution[0] - 1)
    d1, d2 = cKDTree(vb).query(vc)[0], cKDTree(vc).query(vb)[0]
    same = vb.shape == vc.shape and np.array_equal(vb, vc)
    mean, worst = (d1.mean() + d2.mean()) / 2 / voxel, max(d1.max(), d2.max()) / voxel
    print(
        f"fused surface vs baseline: identical {same}; Chamfer mean {mean:.2e} voxel, max {worst:.2e} voxel"
    )


if __name__ == "__main__":
    main()
