"""GPU readiness on one CUDA device, all within about 8 minutes: full-size checkpoint, fp32 and half encode at
batch 1/4/8 (s/frame, batch speed-up, peak GPU memory), adaptive mesh@256 (8 frames batched vs one at a
time), the half-vs-fp32 mesh deviation, and a whole 8-frame job through a local Serve app with the
Reconstruct replica on the GPU (peak GPU memory of that replica from its own process).

    python benchmarks/bench_gpu.py                      # builds /tmp/fullckpt first if it is missing
    python benchmarks/bench_gpu.py --model DIR --skip-serve

On a machine without CUDA it prints one line saying so and exits with status 2. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MANIFEST = ROOT / "tests" / "fixtures" / "state_dict_full.tsv"
CKPT_TOOLS = [ROOT / "shared" / "tools" / "make_full_ckpt.py", Path("/work/shared/tools/make_full_ckpt.py")]


def ensure_checkpoint(folder: Path) -> None:
    if (folder / "model.ckpt").is_file():
        return
    tool = next((t for t in CKPT_TOOLS if t.is_file()), None)
    if tool is None:
        raise SystemExit(f"bench_gpu: no checkpoint in {folder} and no make_full_ckpt.py at {CKPT_TOOLS}")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(tool), str(MANIFEST), str(folder)], check=True)
    print(f"checkpoint built in {time.perf_counter() - t0:.0f} s: {folder}")


def cuda_timed(torch, fn, repeats: int) -> tuple[object, float]:
    """Median seconds of `fn` over `repeats` calls after one warm-up, CUDA synchronised around each."""
    out = fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def chamfer_voxels(a: np.ndarray, b: np.ndarray, voxel: float) -> tuple[float, float]:
    from scipy.spatial import cKDTree

    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    da, db = cKDTree(b).query(a)[0], cKDTree(a).query(b)[0]
    return float((da.mean() + db.mean()) / 2 / voxel), float(max(da.max(), db.max()) / voxel)


def model_figures(torch, folder: Path, repeats: int, resolution: int) -> None:
    import triposr
    from benchmarks.bench_model import ring_image

    base = ring_image()
    images = [np.roll(base, 8 * i, axis=1) for i in range(8)]
    codes = {}
    for half in (False, True):
        name = "half" if half else "fp32"
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = triposr.load_model(folder, "cuda", half=half)
        weights = torch.cuda.memory_allocated() / 2**30
        per_frame = {}
        for batch in (1, 4, 8):
            torch.cuda.reset_peak_memory_stats()
            out, secs = cuda_timed(torch, lambda b=batch, m=model: m.encode(images[:b]), repeats)
            per_frame[batch] = secs / batch
            peak = torch.cuda.max_memory_allocated() / 2**30
            print(f"  {name} encode B={batch}: {secs:.3f} s, {per_frame[batch]:.4f} s/frame, "
                  f"speed-up vs B=1 {per_frame[1] / per_frame[batch]:.2f}x, peak GPU memory {peak:.2f} GiB "
                  f"(weights {weights:.2f} GiB)", flush=True)  # fmt: skip
        codes[name] = out
        if not half:
            one = [model.extract_mesh(c, resolution) for c in out[:1]]  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            one = [model.extract_mesh(c, resolution) for c in out]
            torch.cuda.synchronize()
            alone = time.perf_counter() - t0
            t0 = time.perf_counter()
            together = model.extract_meshes(list(out), [resolution] * len(out))
            torch.cuda.synchronize()
            batched = time.perf_counter() - t0
            same = all(
                np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
                for a, b in zip(one, together, strict=True)
            )
            print(f"  adaptive mesh@{resolution} x8: one at a time {alone / 8:.3f} s/frame, batched "
                  f"{batched / 8:.3f} s/frame ({alone / batched:.2f}x), identical meshes: {same}; "
                  f"{len(together[0].faces):,} faces", flush=True)  # fmt: skip
            fp32_meshes = together
        else:
            half_meshes = model.extract_meshes(list(out), [resolution] * len(out))
        del model
    diff = (codes["half"] - codes["fp32"]).abs().max().item()
    voxel = 2 * 0.87 / (resolution - 1)
    devs = [chamfer_voxels(np.asarray(a.vertices), np.asarray(b.vertices), voxel)
            for a, b in zip(fp32_meshes, half_meshes, strict=True)]  # fmt: skip
    print(
        f"  half vs fp32: scene codes max |diff| {diff:.2e}; mesh Chamfer mean "
        f"{max(d[0] for d in devs):.3f} voxel, max {max(d[1] for d in devs):.3f} voxel (worst of 8 frames)"
    )


def serve_figures(folder: Path) -> None:
    """One warm-up + one timed 8-frame job over HTTP, Reconstruct on the GPU."""
    from benchmarks.bench_serve import over_http
    from pipeline.params import JobParams
    from serve_app.settings import Settings
    from tests.media import make_ring_video

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        video = make_ring_video(tmp_path / "ring.mp4", width=320, height=240, fps=24, duration_s=4.0).path
        settings = Settings().merged({
            "data_dir": str(tmp_path / "data"), "model_source": str(folder), "model_device": "cuda",
            "rembg_model": "u2netp", "rembg_dir": str(ROOT / "models" / "rembg"),
        })  # fmt: skip
        params = JobParams(num_frames=8, mc_resolution=256)
        times = over_http(video, params, settings, repeats=1, warmup=1)  # `start` gives Reconstruct the GPU
        print(f"  whole 8-frame job over HTTP (Serve, Reconstruct on the GPU): {times[0]:.2f} s, "
              f"{times[0] / 8:.3f} s/frame end to end")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("/tmp/fullckpt"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--skip-serve", action="store_true")
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"bench_gpu: no CUDA device visible (torch {torch.__version__}, CUDA build "
              f"{torch.version.cuda or 'none'}); nothing measured")  # fmt: skip
        raise SystemExit(2)
    start = time.perf_counter()
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    ensure_checkpoint(args.model)
    model_figures(torch, args.model, args.repeats, args.resolution)
    if not args.skip_serve:
        serve_figures(args.model)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
