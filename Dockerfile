# Cluster image: Ray base image + this project + cached weights, for KubeRay (deploy/rayservice.yaml) or a
# docker-based `ray up`. Docker cannot run on the development machine, so this mirrors the tested steps
# instead of being tested itself: `pip install -e .` (the CI install) and scripts/cache_weights.py (the
# cluster.yaml setup commands). Keep the Ray version equal to cluster.yaml and deploy/rayservice.yaml
# (tests/ops/test_cluster_config.py checks all three against the installed Ray).
#
#   docker build -t <registry>/triposr-serve:0.1.0 .                         # weights baked in (~2 GB more)
#   docker build --build-arg CACHE_WEIGHTS=0 -t <registry>/triposr-serve:0.1.0-slim .
FROM rayproject/ray:2.60.0-py311-gpu

ARG CACHE_WEIGHTS=1
ARG MODEL_SOURCE=stabilityai/TripoSR
ARG REMBG_MODEL=u2net

# Weights live outside the source tree, at paths the settings point to (TRIPOSR_SERVE_* variables).
ENV HF_HOME=/home/ray/.cache/huggingface \
    TRIPOSR_SERVE_MODEL_SOURCE=${MODEL_SOURCE} \
    TRIPOSR_SERVE_REMBG_MODEL=${REMBG_MODEL} \
    TRIPOSR_SERVE_REMBG_DIR=/home/ray/models/rembg \
    TRIPOSR_SERVE_DATA_DIR=/home/ray/data

WORKDIR /home/ray/triposr-serve

# Dependencies first (cached layer while only the code changes): the project's own metadata, no code yet.
COPY --chown=ray:users pyproject.toml README.md ./
RUN mkdir -p triposr pipeline serve_app deployments \
    && touch triposr/__init__.py pipeline/__init__.py serve_app/__init__.py deployments/__init__.py \
    && pip install --no-cache-dir -e . \
    && rm -rf triposr pipeline serve_app deployments

COPY --chown=ray:users triposr ./triposr
COPY --chown=ray:users pipeline ./pipeline
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users scripts ./scripts
COPY --chown=ray:users serve_config.yaml ./

RUN pip install --no-cache-dir --no-deps -e . \
    && mkdir -p /home/ray/models/rembg /home/ray/data \
    && if [ "$CACHE_WEIGHTS" = "1" ]; then \
         python scripts/cache_weights.py --model-source "$MODEL_SOURCE" --rembg-model "$REMBG_MODEL" \
           --rembg-dir /home/ray/models/rembg; \
       fi

# Serve HTTP, dashboard, Prometheus metrics.
EXPOSE 8000 8265 8080
