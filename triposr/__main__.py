"""Command line for the simplest path, like upstream's run.py: `python -m triposr IMAGE... -o DIR`.

Each image becomes DIR/<image name>.glb (or .obj). Images with alpha are composited onto 50% grey; anything
else is used as it is, so give it a centred object on a plain grey background (background removal and framing
are the job of `pipeline/`, not of this tool). Meshes are turned to glTF's Y-up frame by default
(`--native-frame` keeps TripoSR's Z-up frame, as upstream's run.py writes it).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .mesh import GLTF_FROM_NATIVE


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m triposr", description="Single image -> 3D mesh with TripoSR.")
    p.add_argument("images", nargs="+", type=Path, help="input images (RGB, or RGBA composited onto grey)")
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for the meshes (created)")
    p.add_argument(
        "--model",
        default="stabilityai/TripoSR",
        help="Hugging Face repo id or local folder (config.yaml + model.ckpt)",
    )
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: best available)")
    p.add_argument("--half", action="store_true", help="float16 image encoder and backbone (CUDA only)")
    p.add_argument("--format", choices=("glb", "obj"), default="glb")
    p.add_argument("--mc-resolution", type=int, default=256, help="marching-cubes grid size per axis")
    p.add_argument("--threshold", type=float, default=25.0, help="density iso-level")
    p.add_argument("--method", choices=("adaptive", "dense"), default="adaptive", help="mesh extraction")
    p.add_argument("--chunk-size", type=int, default=8192, help="points per decoder call (memory bound)")
    p.add_argument("--native-frame", action="store_true", help="keep TripoSR's Z-up frame instead of Y-up")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")
    return p


def _output_paths(images: list[Path], out_dir: Path, suffix: str) -> list[Path]:
    paths, seen = [], set()
    for image in images:
        path = out_dir / f"{image.stem}.{suffix}"
        n = 1
        while path in seen:
            n += 1
            path = out_dir / f"{image.stem}_{n}.{suffix}"
        seen.add(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    from . import load_model  # after argument parsing, so --help stays fast
    from .errors import TripoSRError
    from .images import composite_on_grey

    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"error: no such image: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        model = load_model(args.model, args.device, half=args.half, chunk_size=args.chunk_size)
    except TripoSRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.output_dir.mkdir(parents=True, exist_ok=True)
    outputs = _output_paths(args.images, args.output_dir, args.format)
    bar = tqdm(total=2 * len(args.images), unit="step", desc="reconstruct", file=sys.stderr)
    for image_path, out_path in zip(args.images, outputs, strict=True):
        t0 = time.perf_counter()
        bar.set_postfix_str(f"{image_path.name}: encode")
        with Image.open(image_path) as im:
            image = composite_on_grey(im)
        codes = model.encode([image])
        bar.update()
        bar.set_postfix_str(f"{image_path.name}: mesh")
        mesh = model.extract_mesh(
            codes[0], resolution=args.mc_resolution, threshold=args.threshold, method=args.method
        )
        bar.update()
        if len(mesh.faces) == 0:
            tqdm.write(
                f"{image_path}: no surface above threshold {args.threshold}; writing an empty mesh",
                file=sys.stderr,
            )
        elif not args.native_frame:
            mesh.apply_transform(GLTF_FROM_NATIVE)
        mesh.export(out_path)
        tqdm.write(
            f"{image_path} -> {out_path} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
            f"{time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
        )
    bar.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
