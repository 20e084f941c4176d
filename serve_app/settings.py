"""One typed settings object for the service, the CLI and batch runs.

Every environment variable carries the `TRIPOSR_SERVE_` prefix and is cast and validated here, once; nothing
else reads `os.environ`. App-builder arguments override the environment
(`Settings.from_env(env).merged(args)`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InvalidParameter
from pipeline.params import JobParams

ENV_PREFIX = "TRIPOSR_SERVE_"


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable (or argument) and the value."""


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("data")  # SQLite job store + per-job folders live here
    model_source: str = "stabilityai/TripoSR"  # HF repo id or local folder (config.yaml + model.ckpt)
    model_device: str | None = None  # "cuda", "cuda:1", "mps", "cpu"; None picks CUDA > MPS > CPU
    model_half: bool = False  # fp16 on CUDA (deviation documented in README)
    chunk_size: int = 65536  # density-query chunk (points): bounds memory during mesh extraction
    rembg_model: str = "u2net"  # "u2netp" for small machines and tests
    rembg_dir: Path | None = None  # folder holding <rembg_model>.onnx (rembg's U2NET_HOME); None: rembg's
    upload_limit_bytes: int = 512 * 1024 * 1024
    input_roots: tuple[Path, ...] = ()  # JSON `source` must lie under one; empty: refused
    output_roots: tuple[Path, ...] = ()  # `output_glb_path` must lie under one of these; empty = refused
    api_token: str | None = None  # bearer token for every route except health; None = no auth
    max_running_jobs: int = 4  # jobs orchestrated at once; more wait in the queue
    max_queued_jobs: int = 256  # beyond this, submissions get 503 (back-pressure)
    job_timeout_s: float = 3600.0
    retention_s: float = 7 * 24 * 3600.0  # finished jobs' files are removed after this long
    sweep_interval_s: float = 600.0  # how often the retention sweep runs
    orphan_after_s: float = 60.0  # active job with a silent runner this long: re-run or failed
    max_attempts: int = 2  # runs of one job (first + re-runs after restarts) before "interrupted"
    max_upload_files: int = 64  # files in one multipart upload (images)
    torch_threads: int | None = None  # torch CPU threads in a reconstruct replica; None = its num_cpus
    # Exposure and abuse limits (serve_app/exposure.py, README "Security model" and "Limits").
    allow_anonymous: bool = False  # let a non-loopback bind run without api_token (explicit opt-in)
    max_video_pixels: int = 7680 * 4320  # per frame, from the container header (8K UHD)
    max_video_duration_s: float = 600.0  # from the container header
    max_video_frames: int = 36_000  # from the container header (10 min at 60 fps)
    max_archive_members: int = 1000  # zip members, read from the end record before the directory is walked
    max_queued_jobs_per_client: int = 32  # queued jobs of one client address; more get 429
    client_address_header: str | None = None  # e.g. x-forwarded-for, only behind a trusted reverse proxy
    min_free_disk_bytes: int = 2 * 1024**3  # submissions get 507 when the data dir's disk has less free
    orphan_upload_after_s: float = 3600.0  # job folders with no job row this old are removed
    defaults: JobParams = field(default_factory=JobParams)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw = {
            name[len(ENV_PREFIX) :].lower(): value
            for name, value in env.items()
            if name.startswith(ENV_PREFIX)
        }
        return cls().merged(raw, source="env")

    def merged(self, overrides: Mapping[str, Any], *, source: str = "argument") -> Settings:
        """Return a copy with `overrides` applied; values may be strings (env) or typed (builder args)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        default_params = dict(self.defaults.to_dict())
        params_changed = False
        for key, value in overrides.items():
            label = f"{ENV_PREFIX}{key.upper()}" if source == "env" else key
            if key.startswith("default_"):
                default_params[key[len("default_") :]] = value
                params_changed = True
                continue
            if key not in fields or key == "defaults":
                raise SettingsError(f"{label}: unknown setting")
            changes[key] = _cast(key, fields[key].type, value, label)
        if params_changed:
            try:
                changes["defaults"] = JobParams.from_mapping(default_params)
            except InvalidParameter as exc:
                raise SettingsError(f"default job parameter {exc}") from None
        new = dataclasses.replace(self, **changes)
        new._validate()
        return new

    def _validate(self) -> None:
        if self.chunk_size < 1:
            raise SettingsError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.upload_limit_bytes < 1:
            raise SettingsError(f"upload_limit_bytes must be >= 1, got {self.upload_limit_bytes}")
        if self.max_running_jobs < 1 or self.max_queued_jobs < 1:
            raise SettingsError("max_running_jobs and max_queued_jobs must be >= 1")
        if self.job_timeout_s <= 0 or self.retention_s <= 0:
            raise SettingsError("job_timeout_s and retention_s must be > 0")
        if self.sweep_interval_s <= 0 or self.orphan_after_s <= 0:
            raise SettingsError("sweep_interval_s and orphan_after_s must be > 0")
        if self.max_attempts < 1 or self.max_upload_files < 1:
            raise SettingsError("max_attempts and max_upload_files must be >= 1")
        for name in ("max_video_pixels", "max_video_frames", "max_archive_members",
                     "max_queued_jobs_per_client"):  # fmt: skip
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_video_duration_s <= 0 or self.orphan_upload_after_s <= 0:
            raise SettingsError("max_video_duration_s and orphan_upload_after_s must be > 0")
        if self.min_free_disk_bytes < 0:
            raise SettingsError(f"min_free_disk_bytes must be >= 0, got {self.min_free_disk_bytes}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise SettingsError(f"torch_threads must be >= 1, got {self.torch_threads}")

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"


def _cast(key: str, type_text: str, value: Any, label: str) -> Any:
    """Cast a raw value to the field's annotated type (annotations are strings under PEP 563)."""
    optional = "None" in type_text
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in {"", "none"}):
        if optional:
            return None
        raise SettingsError(f"{label}: a value is required")
    base = type_text.replace(" | None", "").strip()
    try:
        if base == "Path":
            return Path(value).expanduser()
        if base == "tuple[Path, ...]":
            items = value.split(os.pathsep) if isinstance(value, str) else list(value)
            return tuple(Path(p).expanduser().resolve() for p in items if str(p).strip())
        if base == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)
        if base == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if base == "float":
            return float(value)
        if base == "str":
            return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{label}: cannot read {value!r} as {base}") from None
    raise SettingsError(f"{label}: unsupported setting type {type_text}")  # pragma: no cover
