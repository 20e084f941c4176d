"""One typed settings object for the service, the CLI and batch runs.

Every environment variable carries the `TRIPOSR_SERVE_` prefix and is cast and validated here, once; nothing
else reads `os.environ`. App-builder arguments override the environment
(`Settings.from_env(env).merged(args)`).

The prefix is shared with the `triposr-serve` command line: `CLI_VARIABLES` are its own (read by
`CliSettings`: where the client connects, which port `start` binds) and the service ignores them, so one
shell can hold both. Any other `TRIPOSR_SERVE_*` name the service does not know is a typo and fails at
start, with the closest known name suggested. `API_TOKEN` is both: the service's required token and the
client's default one.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import InvalidParameter
from pipeline.params import JobParams

ENV_PREFIX = "TRIPOSR_SERVE_"
# `TRIPOSR_SERVE_<NAME>` variables of the command line only (name -> meaning), never service settings.
CLI_VARIABLES = {
    "URL": "the service the client commands talk to (default http://127.0.0.1:8000)",
    "PORT": "the port `triposr-serve start` serves HTTP on (default 8000)",
}
DEFAULT_PORT = 8000
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"


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
    # Active job with a silent runner this long: re-queued (resumes from its checkpoints) or failed.
    # Heartbeats go every orphan_after_s / 4 (one UPDATE per replica), so a dead ingress's jobs run again
    # within ~1.25x this: 10 s keeps that under 15 s, and a live runner must miss 4 beats to lose a job.
    orphan_after_s: float = 10.0
    max_attempts: int = 2  # runs of one job (first + re-runs after restarts) before "interrupted"
    stage_attempts: int = 3  # tries of one stage call lost to a dead replica before "worker_crashed"
    max_upload_files: int = 64  # files in one multipart upload (images)
    torch_threads: int | None = None  # torch CPU threads in a reconstruct replica; None = its num_cpus
    rembg_threads: int | None = None  # onnxruntime threads in a preprocess replica; None = its num_cpus
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
            if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :] not in CLI_VARIABLES
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
                raise SettingsError(f"{label}: unknown setting{_suggestion(key, fields, source)}")
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
        if self.max_attempts < 1 or self.max_upload_files < 1 or self.stage_attempts < 1:
            raise SettingsError("max_attempts, stage_attempts and max_upload_files must be >= 1")
        for name in ("max_video_pixels", "max_video_frames", "max_archive_members",
                     "max_queued_jobs_per_client"):  # fmt: skip
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_video_duration_s <= 0 or self.orphan_upload_after_s <= 0:
            raise SettingsError("max_video_duration_s and orphan_upload_after_s must be > 0")
        if self.min_free_disk_bytes < 0:
            raise SettingsError(f"min_free_disk_bytes must be >= 0, got {self.min_free_disk_bytes}")
        for name in ("torch_threads", "rembg_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"{name} must be >= 1, got {value}")

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"


def _suggestion(key: str, fields: Mapping[str, Any], source: str) -> str:
    known = [name for name in fields if name != "defaults"]
    known += [f"default_{name}" for name in JobParams().to_dict()]
    if source == "env":
        known += [name.lower() for name in CLI_VARIABLES]
    close = difflib.get_close_matches(key, known, n=1)
    if not close:
        return ""
    name = f"{ENV_PREFIX}{close[0].upper()}" if source == "env" else close[0]
    return f" (did you mean {name}?)"


@dataclass(frozen=True)
class CliSettings:
    """What the command line reads from the environment: where the client connects, which token it sends,
    which port `start` binds."""

    url: str = DEFAULT_URL
    api_token: str | None = None
    port: int = DEFAULT_PORT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CliSettings:
        env = os.environ if environ is None else environ
        port = env.get(f"{ENV_PREFIX}PORT") or str(DEFAULT_PORT)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(f"{ENV_PREFIX}PORT: {port!r} is not a TCP port")
        return cls(
            url=env.get(f"{ENV_PREFIX}URL") or DEFAULT_URL,
            api_token=env.get(f"{ENV_PREFIX}API_TOKEN") or None,
            port=int(port),
        )


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
