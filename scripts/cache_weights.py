"""Fetch and verify the model weights a node needs, so no request or batch item waits for a download.

Run once per machine or image (cluster.yaml setup commands, the Dockerfile, deploy/rayservice.yaml users):

    python scripts/cache_weights.py [--model-source stabilityai/TripoSR] [--rembg-model u2net] \
        [--rembg-dir DIR]

TripoSR goes to the Hugging Face cache (HF_HOME) through `triposr.load_model`, which also strict-loads the
checkpoint, so a truncated download fails here and not in the first replica. The rembg model goes to
`--rembg-dir` (or rembg's default, ~/.u2net) through `pipeline.matting.BackgroundRemover`. Exits non-zero
with the loader's message when something cannot be fetched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-source", default="stabilityai/TripoSR", help="HF repo id or local folder")
    parser.add_argument("--rembg-model", default="u2net", help="rembg model name (u2net, u2netp, ...)")
    parser.add_argument("--rembg-dir", type=Path, default=None, help="folder for <rembg-model>.onnx")
    parser.add_argument("--skip-triposr", action="store_true", help="only fetch the rembg model")
    parser.add_argument("--skip-rembg", action="store_true", help="only fetch TripoSR")
    args = parser.parse_args(argv)

    # Imported here so `--help` works before the project's heavy dependencies are installed.
    from pipeline.errors import PipelineError
    from pipeline.matting import BackgroundRemover
    from triposr import ModelNotFoundError, load_model

    try:
        if not args.skip_triposr:
            start = time.perf_counter()
            load_model(args.model_source, device="cpu")
            print(f"TripoSR weights ready: {args.model_source} ({time.perf_counter() - start:.1f} s)")
        if not args.skip_rembg:
            start = time.perf_counter()
            BackgroundRemover(model_name=args.rembg_model, model_dir=args.rembg_dir)
            print(f"rembg model ready: {args.rembg_model} ({time.perf_counter() - start:.1f} s)")
    except (ModelNotFoundError, PipelineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
