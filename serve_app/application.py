"""The Serve application: the ingress deployment and the typed app builder behind `serve run serve_app:app`.

    serve run serve_app:app model_source=/models/triposr data_dir=/var/lib/triposr rembg_model=u2netp
    serve run serve_config.yaml          # the same builder, every deployment knob in YAML

Arguments are validated by `AppArgs` (pydantic, as Serve requires for typed builders) and layered over the
environment: `Settings.from_env().merged(args)`. This module deliberately avoids `from __future__ import
annotations`: Serve inspects the builder's annotation as a class.
"""

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve import Application

from deployments.export import Export
from deployments.options import PreprocessOptions, ReconstructOptions
from deployments.preprocess import Preprocess
from deployments.reconstruct import Reconstruct
from serve_app.exposure import check_exposure, serve_http_host
from serve_app.ingress import build_app
from serve_app.settings import Settings
from serve_app.workers import ServeWorkers

logger = logging.getLogger(__name__)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
    # Every SSE stream, WebSocket and upload holds a slot while it lasts; all I/O-bound (serve_config.yaml).
    max_ongoing_requests=1000,
    max_queued_requests=500,
)
@serve.ingress()
class Ingress:
    """HTTP API replica: owns the job store connection and the orchestrator of the jobs it claims."""

    def __init__(self, settings: Settings, preprocess: Any, reconstruct: Any, export: Any) -> None:
        self.settings = settings
        self.workers = ServeWorkers(preprocess, reconstruct, export)

    def __serve_build_asgi_app__(self) -> Any:
        return build_app(self.settings, self.workers)


class AppArgs(BaseModel):
    """Builder arguments (`serve run serve_app:app key=value`, or `args:` in serve_config.yaml)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    data_dir: str | None = None
    model_source: str | None = None
    model_device: str | None = None
    model_half: bool | None = None
    chunk_size: int | None = None
    rembg_model: str | None = None
    rembg_dir: str | None = None
    upload_limit_bytes: int | None = None
    input_roots: list[str] | str | None = None
    output_roots: list[str] | str | None = None
    api_token: str | None = None
    max_running_jobs: int | None = None
    max_queued_jobs: int | None = None
    job_timeout_s: float | None = None
    retention_s: float | None = None
    sweep_interval_s: float | None = None
    orphan_after_s: float | None = None
    max_attempts: int | None = None
    stage_attempts: int | None = None
    max_upload_files: int | None = None
    torch_threads: int | None = None
    rembg_threads: int | None = None
    allow_anonymous: bool | None = None
    max_video_pixels: int | None = None
    max_video_duration_s: float | None = None
    max_video_frames: int | None = None
    max_archive_members: int | None = None
    max_queued_jobs_per_client: int | None = None
    client_address_header: str | None = None
    min_free_disk_bytes: int | None = None
    orphan_upload_after_s: float | None = None
    default_num_frames: int | None = None
    default_mc_resolution: int | None = None
    default_foreground_ratio: float | None = None
    default_remove_background: bool | None = None
    default_merge: str | None = None
    default_format: str | None = None


def preprocess_options(settings: Settings) -> PreprocessOptions:
    return PreprocessOptions(
        rembg_model=settings.rembg_model, rembg_dir=settings.rembg_dir, rembg_threads=settings.rembg_threads
    )


def reconstruct_options(settings: Settings) -> ReconstructOptions:
    return ReconstructOptions(
        model_source=settings.model_source, model_device=settings.model_device,
        model_half=settings.model_half, chunk_size=settings.chunk_size, torch_threads=settings.torch_threads,
    )  # fmt: skip


def build(settings: Settings, options: dict[str, dict[str, Any]] | None = None) -> Application:
    """Wire the graph: ingress -> (preprocess, reconstruct, export). Only the ingress gets the settings (and
    the data dir); workers get the few options they need and never a path into the ingress's disk.

    `options` maps a deployment name to `.options(...)` overrides (tests, the CLI, benchmarks); clusters use
    serve_config.yaml instead.
    """
    opts = options or {}
    unknown = set(opts) - {"Ingress", "Preprocess", "Reconstruct", "Export"}
    if unknown:
        raise ValueError(f"unknown deployment(s) in options: {sorted(unknown)}")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Ingress.options(**opts.get("Ingress", {})).bind(
        settings,
        Preprocess.options(**opts.get("Preprocess", {})).bind(preprocess_options(settings)),
        Reconstruct.options(**opts.get("Reconstruct", {})).bind(reconstruct_options(settings)),
        Export.options(**opts.get("Export", {})).bind(),
    )


def settings_from_args(args: AppArgs, base: Settings) -> Settings:
    """`base` (the environment) overridden by builder arguments: what `app` deploys, check-config checks."""
    overrides = args.model_dump(exclude_none=True)
    if isinstance(overrides.get("input_roots"), str):
        overrides["input_roots"] = overrides["input_roots"].split(",")
    if isinstance(overrides.get("output_roots"), str):
        overrides["output_roots"] = overrides["output_roots"].split(",")
    settings = base.merged(overrides)
    return settings.merged({"data_dir": str(Path(settings.data_dir).resolve())})


def app(args: AppArgs) -> Application:
    """Serve app builder: environment (TRIPOSR_SERVE_*) overridden by the given arguments."""
    settings = settings_from_args(args, Settings.from_env())
    host = serve_http_host()
    if host is not None:
        check_exposure(host, settings)
    logger.info("building app: data_dir=%s model_source=%s", settings.data_dir, settings.model_source)
    return build(settings)
