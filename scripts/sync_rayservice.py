"""Copy serve_config.yaml into deploy/rayservice.yaml's `serveConfigV2` (Kubernetes runs the same config).

    python scripts/sync_rayservice.py            # rewrite the block in place
    python scripts/sync_rayservice.py --check    # exit 1 if the two differ (tests/ops/test_cluster_config.py)

serve_config.yaml stays the one place where capacity is tuned (its comments explain every knob); the manifest
carries a comment-free copy of it between the `serveConfigV2: |` line and the `rayClusterConfig:` line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIG = ROOT / "serve_config.yaml"
RAYSERVICE = ROOT / "deploy" / "rayservice.yaml"
INDENT = "    "  # serveConfigV2 is a block scalar under `spec:`


def serve_config_block(serve_config: Path = SERVE_CONFIG) -> str:
    """serve_config.yaml, parsed and dumped without comments, indented as the manifest's block scalar."""
    data = yaml.safe_load(serve_config.read_text())
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)
    return "".join(f"{INDENT}{line}\n" if line else "\n" for line in text.splitlines())


def synced(manifest_text: str, block: str) -> str:
    lines = manifest_text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == "serveConfigV2: |")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "rayClusterConfig:")
    return "".join(lines[: start + 1]) + block + "".join(lines[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when out of date")
    args = parser.parse_args(argv)
    current = RAYSERVICE.read_text()
    wanted = synced(current, serve_config_block())
    if args.check:
        if wanted != current:
            print(f"{RAYSERVICE} is out of date: run python scripts/sync_rayservice.py", file=sys.stderr)
            return 1
        return 0
    RAYSERVICE.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
