"""Batch runs: a folder (or CSV manifest) of videos / image sets -> one mesh each, as a Ray Data stream.

    python -m serve_app.batch --input DIR|manifest.csv --output DIR [job params] [capacity options]
    ray job submit --working-dir . -- python -m serve_app.batch --input /shared/in --output /shared/out ...

Stages, streaming (one item per block, so Ray Data's backpressure bounds how many items are in memory):
  1. preprocess   CPU tasks: decode, pick and matte frames (`pipeline.runner.preprocess_stage`);
                  frames travel as raw uint8 bytes (N x 512 x 512 x 3) through the object store.
  2. reconstruct  an actor pool (`ActorPoolStrategy`): TripoSR loaded once per actor on a fractional GPU;
                  the frames of a batch's items share forward passes (`pipeline.runner.reconstruct_frames`).
  3. merge        CPU tasks: fuse + export (`pipeline.runner.merge_stage`), written atomically to the output.
Every stage catches an item's own failure and passes the row on marked failed, so a corrupt video is reported
in the summary and never stops the run. Items whose output file already exists are skipped, so an interrupted
run is resumed by running the same command again. `summary.json` and `summary.csv` in the output folder list
every item (status, frames used, timings, output path, error); `ray_data_stats.txt` has Ray Data's own stats.

Left out: cloud-storage URIs (inputs and outputs are paths every node can see, e.g. an NFS/EFS mount) and
per-stage Prometheus metrics (the triposr_* metrics describe the HTTP service; batch capacity is read from
Ray Data's dashboard panels and `ray_data_stats.txt`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.atomic import write_atomic
from pipeline.errors import InvalidParameter, PipelineError
from pipeline.meshcodec import decode_mesh, encode_mesh, meshes_from_bytes, meshes_to_bytes
from pipeline.params import JobParams
from pipeline.runner import job_report
from serve_app.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

FRAME_SIZE = 512  # preprocess_input's default square frame side, in pixels
SUMMARY_FIELDS = (
    "item_id", "status", "input", "output", "frames_used", "frames_rejected", "preprocess_s", "reconstruct_s",
    "merge_s", "batch_items", "batch_frames", "error_code", "error", "failed_stage",
)  # fmt: skip
# Columns every row carries through all stages (Ray Data needs one schema per column across blocks).
_EMPTY_ROW: dict[str, Any] = {
    "status": "running",
    "error_code": "",
    "error": "",
    "failed_stage": "",
    "frames": b"",
    "frames_used": 0,
    "frames_rejected": 0,
    "scores": "[]",
    "frame_reports": "[]",
    "warnings": "[]",
    "meshes": b"",
    "preprocess_s": 0.0,
    "reconstruct_s": 0.0,
    "merge_s": 0.0,
    "batch_items": 0,
    "batch_frames": 0,
}
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class BatchInputError(ValueError):
    """The batch's input (folder or manifest) cannot be read at all; the message names the file and fault."""


@dataclass(frozen=True)
class BatchItem:
    """One video / image / zip / image folder to reconstruct, and where its mesh goes."""

    item_id: str
    input: Path
    output: Path
    params: JobParams | None  # None when the manifest row's parameters are invalid (see `error`)
    error: str = ""

    def row(self) -> dict[str, Any]:
        params = json.dumps(self.params.to_dict()) if self.params is not None else "{}"
        return {"item_id": self.item_id, "input": str(self.input), "output": str(self.output),
                "params": params, "param_error": self.error}  # fmt: skip


@dataclass(frozen=True)
class Capacity:
    """How much of the cluster the run may use; the README's "Capacity tuning" explains each knob."""

    gpus_per_actor: float = 0.0  # fraction of a GPU per TripoSR actor; 0 = CPU inference
    cpus_per_actor: float = 1.0
    min_actors: int = 1
    max_actors: int = 1
    batch_size: int = 2  # items per actor call: their frames share forward passes
    max_frames_per_forward: int = 16  # caps one encode call (GPU memory), whatever the batch holds
    preprocess_cpus: float = 1.0  # per preprocess task (rembg uses this many threads)
    # Decoded video + rembg + 8 frames at 512x512 stay well under 1 GiB. The request also keeps Ray Data from
    # fusing preprocessing into a CPU-only actor pool (same num_cpus/num_gpus), which would make it serial.
    preprocess_memory_bytes: int = 1024**3
    max_preprocess_tasks: int | None = None  # None = as many as free CPUs allow
    merge_cpus: float = 1.0
    max_merge_tasks: int | None = None

    def __post_init__(self) -> None:
        if self.gpus_per_actor < 0 or (
            self.gpus_per_actor > 1 and not float(self.gpus_per_actor).is_integer()
        ):
            raise ValueError(
                f"gpus_per_actor must be a fraction in [0, 1] or a whole number, got {self.gpus_per_actor}"
            )
        if not 1 <= self.min_actors <= self.max_actors:
            raise ValueError(f"actors must satisfy 1 <= min <= max, got {self.min_actors}:{self.max_actors}")
        if self.batch_size < 1 or self.max_frames_per_forward < 1:
            raise ValueError("batch_size and max_frames_per_forward must be >= 1")


# -------------------------------------------------------------------------------------------------- discovery


def _safe_id(name: str) -> str:
    return _ID_UNSAFE.sub("_", name).strip("._") or "item"


def _unique(ids: Iterable[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for raw in ids:
        n = seen.get(raw, 0) + 1
        seen[raw] = n
        out.append(raw if n == 1 else f"{raw}-{n}")
    return out


def discover_items(source: Path, output_dir: Path, defaults: JobParams) -> list[BatchItem]:
    """Items of a batch: every non-hidden entry of a folder, or every row of a CSV manifest.

    A folder entry is a video, an image, a zip of images, or a sub-folder of images; its id is its name
    without the suffix. A manifest has a header with an `input` column (paths relative to the manifest's
    folder), an optional `id` column, and optional columns named after job parameters (`num_frames`,
    `mc_resolution`, ...) that override `defaults` for that row; a row with bad values becomes a failed item,
    not a failed run.
    """
    source = Path(source).resolve()
    output_dir = Path(output_dir).resolve()
    if source.is_dir():
        entries = sorted(
            p for p in source.iterdir()
            if not p.name.startswith(".") and p.resolve() != output_dir
        )  # fmt: skip
        ids = _unique(_safe_id(p.stem if p.is_file() else p.name) for p in entries)
        return [_item(i, p, output_dir, defaults, {}) for i, p in zip(ids, entries, strict=True)]
    if source.is_file() and source.suffix.lower() == ".csv":
        return _manifest_items(source, output_dir, defaults)
    raise BatchInputError(f"{source}: expected a folder of inputs or a .csv manifest")


def _manifest_items(manifest: Path, output_dir: Path, defaults: JobParams) -> list[BatchItem]:
    with manifest.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "input" not in columns:
            raise BatchInputError(f"{manifest}: the header needs an `input` column, found {columns}")
        known = {f.name for f in dataclasses.fields(JobParams)} | {"input", "id"}
        unknown = sorted(set(columns) - known)
        if unknown:
            raise BatchInputError(f"{manifest}: unknown column(s) {unknown}; allowed: {sorted(known)}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    rows = [r for r in rows if r.get("input")]
    paths = [(manifest.parent / r["input"]).resolve() for r in rows]
    ids = _unique(_safe_id(r.get("id") or p.stem) for r, p in zip(rows, paths, strict=True))
    return [
        _item(i, p, output_dir, defaults, {k: v for k, v in r.items() if k not in {"input", "id"} and v})
        for i, p, r in zip(ids, paths, rows, strict=True)
    ]


def _item(
    item_id: str, path: Path, output_dir: Path, defaults: JobParams, overrides: Mapping[str, str]
) -> BatchItem:
    try:
        params = JobParams.from_mapping({**defaults.to_dict(), **overrides})
    except InvalidParameter as exc:
        return BatchItem(item_id, path, output_dir / f"{item_id}.{defaults.format.value}", None, str(exc))
    return BatchItem(item_id, path, output_dir / f"{item_id}.{params.format.value}", params)


def split_done(items: Sequence[BatchItem]) -> tuple[list[BatchItem], list[BatchItem]]:
    """(to do, already done): an item is done when its output file exists (outputs are written atomically)."""
    todo = [it for it in items if not it.output.is_file()]
    done = [it for it in items if it.output.is_file()]
    return todo, done


# ------------------------------------------------------------------------------------------- stage functions
# Each takes and returns a numpy batch (dict of column -> array), as Ray Data's map_batches does. Rows that
# failed earlier pass through untouched; a row failing here is marked and passed on.


def _rows(batch: Mapping[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(next(iter(batch.values())))
    return [{k: _plain(v[i]) for k, v in batch.items()} for i in range(n)]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _batch(rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], (str, bytes)):
            out[key] = np.array(values, dtype=object)  # object keeps bytes/str whole (no fixed-width dtype)
        else:
            out[key] = np.array(values)
    return out


def _fail(row: dict[str, Any], stage: str, exc: BaseException) -> dict[str, Any]:
    code = getattr(exc, "code", None) if isinstance(exc, PipelineError) else None
    if code is None:
        # Not a domain error: a bug or an environment fault. Logged with its traceback, still isolated.
        logger.exception("item_id=%s: unexpected error in %s", row["item_id"], stage)
        code = "internal"
        message = f"{type(exc).__name__}: {exc}"
    else:
        logger.warning("item_id=%s: %s failed: %s", row["item_id"], stage, exc)
        message = str(exc)
    row.update(status="failed", error_code=code, error=message, failed_stage=stage, frames=b"", meshes=b"")
    return row


def _remover(settings: Settings) -> Any:
    """The worker's rembg session (BackgroundRemover caches one per process; Ray reuses task workers)."""
    import ray

    from pipeline.matting import BackgroundRemover

    # onnxruntime would otherwise start one thread per core in every concurrent task.
    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    return BackgroundRemover(
        model_name=settings.rembg_model, model_dir=settings.rembg_dir, num_threads=threads
    )


def preprocess_batch(batch: Mapping[str, np.ndarray], settings: Settings) -> dict[str, np.ndarray]:
    """Stage 1 (CPU): input file -> frames (raw uint8 bytes), scores and the per-frame report."""
    from pipeline.runner import preprocess_stage

    out = []
    for row in _rows(batch):
        row = {**row, **_EMPTY_ROW}
        start = time.perf_counter()
        try:
            if row["param_error"]:
                field, _, message = row["param_error"].partition(": ")
                raise InvalidParameter(field, message)
            params = JobParams.from_mapping(json.loads(row["params"]))
            remover = _remover(settings) if params.remove_background else None
            pre = preprocess_stage(Path(row["input"]), params, remover)
            frames = np.ascontiguousarray(pre.frames, dtype=np.uint8)  # (N, 512, 512, 3)
            row.update(
                frames=frames.tobytes(),
                frames_used=int(frames.shape[0]),
                frames_rejected=sum(1 for r in pre.reports if not r.chosen),
                scores=json.dumps([float(s) for s in pre.scores]),
                frame_reports=json.dumps([r.to_dict() for r in pre.reports]),
                warnings=json.dumps(pre.warnings),
            )
        except Exception as exc:  # per-item isolation: anything an item raises stays with that item
            _fail(row, "preprocess", exc)
        row["preprocess_s"] = time.perf_counter() - start
        out.append(row)
    return _batch(out)


def pack_meshes(meshes: Sequence[Any]) -> bytes:
    """Per-frame meshes -> one blob of the project's mesh codec (pipeline.meshcodec), a Ray Data column."""
    return meshes_to_bytes([encode_mesh(m) for m in meshes if m is not None])


def unpack_meshes(blob: bytes) -> list[Any]:
    return [decode_mesh(m) for m in meshes_from_bytes(blob)]


class Reconstructor:
    """Stage 2 (GPU actor): TripoSR loaded once; the frames of every item in a batch share forward passes."""

    def __init__(self, settings: Settings, gpus_per_actor: float, max_frames_per_forward: int) -> None:
        import ray
        import torch

        from triposr import load_model

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(settings.torch_threads or max(1, int(cpus)))
        # An actor without a GPU share stays on CPU even on a GPU node (it would use memory it was not given).
        device = settings.model_device or (None if gpus_per_actor > 0 else "cpu")
        self.model = load_model(
            settings.model_source, device=device, half=settings.model_half, chunk_size=settings.chunk_size
        )
        if self.model.device.type == "cuda" and 0 < gpus_per_actor < 1:
            torch.cuda.set_per_process_memory_fraction(gpus_per_actor, self.model.device)
        self.max_frames = max_frames_per_forward
        logger.info("reconstruct actor ready: device=%s gpu_share=%.2f", self.model.device, gpus_per_actor)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = _rows(batch)
        live = [r for r in rows if r["status"] != "failed"]
        frames = {
            r["item_id"]: np.frombuffer(r["frames"], np.uint8).reshape(
                r["frames_used"], FRAME_SIZE, FRAME_SIZE, 3
            )
            for r in live
        }
        total = sum(len(f) for f in frames.values())
        start = time.perf_counter()
        try:
            meshes = self._reconstruct([(frames[r["item_id"]], self._resolution(r)) for r in live])
            elapsed = time.perf_counter() - start
            for r, item_meshes in zip(live, meshes, strict=True):
                # The forward passes are shared: each item is charged its share of frames.
                self._done(r, item_meshes, elapsed * len(item_meshes) / max(total, 1), len(live), total)
        except Exception:
            # The shared pass failed (e.g. out of memory): retry one item at a time so only a culprit fails.
            logger.warning(
                "batched reconstruct of %d items failed; retrying one by one", len(live), exc_info=True
            )
            for r in live:
                t0 = time.perf_counter()
                try:
                    (item_meshes,) = self._reconstruct([(frames[r["item_id"]], self._resolution(r))])
                    self._done(r, item_meshes, time.perf_counter() - t0, 1, len(item_meshes))
                except Exception as exc:
                    _fail(r, "reconstruct", exc)
                    r["reconstruct_s"] = time.perf_counter() - t0
        for r in rows:
            r["frames"] = b""  # no longer needed downstream; keeps the object store small
        return _batch(rows)

    @staticmethod
    def _resolution(row: Mapping[str, Any]) -> int:
        return int(json.loads(row["params"])["mc_resolution"])

    @staticmethod
    def _done(row: dict[str, Any], meshes: Sequence[Any], seconds: float, items: int, frames: int) -> None:
        row.update(meshes=pack_meshes(meshes), reconstruct_s=seconds, batch_items=items, batch_frames=frames)

    def _reconstruct(self, work: Sequence[tuple[np.ndarray, int]]) -> list[list[Any]]:
        """[(frames uint8 (N, 512, 512, 3), mc_resolution)] -> per item, one mesh per frame (same order)."""
        from pipeline.runner import reconstruct_frames

        flat = [(frame, res, i) for i, (frames, res) in enumerate(work) for frame in frames]
        out: list[list[Any]] = [[] for _ in work]
        for lo in range(0, len(flat), self.max_frames):
            chunk = flat[lo : lo + self.max_frames]
            meshes = reconstruct_frames(self.model, [c[0] for c in chunk], [c[1] for c in chunk])
            for (_, _, owner), mesh in zip(chunk, meshes, strict=True):
                out[owner].append(mesh)
        return out


def merge_batch(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stage 3 (CPU): fuse + export each item's meshes, atomically; returns the summary columns only."""
    from pipeline.runner import merge_stage

    out = []
    for row in _rows(batch):
        start = time.perf_counter()
        if row["status"] != "failed":
            try:
                _merge_one(row, merge_stage)
                row["status"] = "succeeded"
            except Exception as exc:
                _fail(row, "merge", exc)
            row["merge_s"] = time.perf_counter() - start
        out.append({k: row.get(k, "") for k in SUMMARY_FIELDS})
    return _batch(out)


def _merge_one(row: dict[str, Any], merge_stage: Callable[..., tuple[bytes, dict[str, Any]]]) -> None:
    params = JobParams.from_mapping(json.loads(row["params"]))
    final = Path(row["output"])
    warnings = json.loads(row["warnings"])
    metadata = {"item_id": row["item_id"], "source": Path(row["input"]).name, "params": params.to_dict(),
                "warnings": warnings}  # fmt: skip
    data, fusion = merge_stage(unpack_meshes(row["meshes"]), json.loads(row["scores"]), params,
                               metadata=metadata, job_id=row["item_id"])  # fmt: skip
    report = job_report(
        row["item_id"], frames=json.loads(row["frame_reports"]), fusion=fusion, params=params,
        warnings=warnings, timings={"preprocess": row["preprocess_s"], "reconstruct": row["reconstruct_s"]},
        item_id=row["item_id"], input=row["input"],
    )  # fmt: skip
    write_atomic(final.with_name(f"{final.stem}.report.json"), json.dumps(report, indent=1, default=str))
    # Written last, atomically: an output file that exists is always complete (what resume looks for).
    write_atomic(final, data)


# ---------------------------------------------------------------------------------------------------- driver


def build_dataset(items: Sequence[BatchItem], settings: Settings, capacity: Capacity) -> Any:
    """The lazy Ray Data pipeline over `items` (nothing runs until it is iterated)."""
    import ray.data
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False  # finished items stream out as soon as they are done
    ds = ray.data.from_items([it.row() for it in items], override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(
        preprocess_batch,
        batch_size=1,
        fn_kwargs={"settings": settings},
        num_cpus=capacity.preprocess_cpus,
        memory=capacity.preprocess_memory_bytes,
        compute=TaskPoolStrategy(size=capacity.max_preprocess_tasks)
        if capacity.max_preprocess_tasks
        else None,
    )
    ds = ds.map_batches(
        Reconstructor,
        batch_size=capacity.batch_size,
        fn_constructor_kwargs={
            "settings": settings,
            "gpus_per_actor": capacity.gpus_per_actor,
            "max_frames_per_forward": capacity.max_frames_per_forward,
        },
        num_cpus=capacity.cpus_per_actor,
        num_gpus=capacity.gpus_per_actor or None,
        compute=ActorPoolStrategy(min_size=capacity.min_actors, max_size=capacity.max_actors),
    )
    return ds.map_batches(
        merge_batch,
        batch_size=1,
        num_cpus=capacity.merge_cpus,
        compute=TaskPoolStrategy(size=capacity.max_merge_tasks) if capacity.max_merge_tasks else None,
    )


def _skipped_row(item: BatchItem) -> dict[str, Any]:
    return {**{k: "" for k in SUMMARY_FIELDS}, "item_id": item.item_id, "status": "skipped",
            "input": str(item.input), "output": str(item.output)}  # fmt: skip


def _pending_row(item: BatchItem) -> dict[str, Any]:
    return {**_skipped_row(item), "status": "not_run", "error": "the run stopped before this item finished"}


def run_batch(
    items: Sequence[BatchItem],
    output_dir: Path,
    settings: Settings,
    capacity: Capacity,
    *,
    on_item: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run `items` (skipping done ones) on the connected Ray cluster; write and return the summary.

    The summary is written even when the run is interrupted (unfinished items say `not_run`), so a re-run
    with the same arguments resumes where this one stopped.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    todo, done = split_done(items)
    results: dict[str, dict[str, Any]] = {it.item_id: _pending_row(it) for it in todo}
    results.update({it.item_id: _skipped_row(it) for it in done})
    started = time.time()
    logger.info("batch: %d items, %d already done, %d to run", len(items), len(done), len(todo))
    stats = ""
    try:
        if todo:
            ds = build_dataset(todo, settings, capacity)
            for row in ds.iter_rows():
                row = {k: _plain(v) for k, v in row.items()}
                results[row["item_id"]] = row
                if on_item is not None:
                    on_item(row)
            stats = ds.stats()
    finally:
        summary = _summary([results[it.item_id] for it in items], started, capacity)
        write_summary(summary, output_dir, stats)
    return summary


def _summary(rows: list[dict[str, Any]], started: float, capacity: Capacity) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    wall = time.time() - started
    ran = counts.get("succeeded", 0) + counts.get("failed", 0)
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(wall, 3),
        "items_per_min": round(60.0 * ran / wall, 3) if wall > 0 and ran else 0.0,
        "counts": counts,
        "capacity": dataclasses.asdict(capacity),
        "items": rows,
    }


def write_summary(summary: Mapping[str, Any], output_dir: Path, stats: str = "") -> None:
    """summary.json (everything) and summary.csv (one line per item) in `output_dir`, replaced atomically."""
    output_dir = Path(output_dir)
    write_atomic(output_dir / "summary.json", json.dumps(summary, indent=1, default=_json_default))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for row in summary["items"]:
        writer.writerow({k: _csv_value(row.get(k, "")) for k in SUMMARY_FIELDS})
    write_atomic(output_dir / "summary.csv", buf.getvalue())
    if stats:
        write_atomic(output_dir / "ray_data_stats.txt", stats)


def _csv_value(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# ------------------------------------------------------------------------------------------------------- CLI


def _actors(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition(":")
    try:
        return int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or MIN:MAX, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m serve_app.batch",
        description="Reconstruct every video / image set of a folder or CSV manifest into one mesh each.",
    )
    p.add_argument("--input", required=True, type=Path, help="folder of inputs, or a .csv manifest")
    p.add_argument("--output", required=True, type=Path, help="folder for meshes, reports and the summary")
    p.add_argument("--address", default=None,
                   help="Ray address; default: RAY_ADDRESS (set by `ray job submit`), a local `ray start` "
                        "cluster, or a fresh local Ray (`local` forces the latter)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="list items and what would be skipped, run nothing")
    p.add_argument("--fail-on-error", action="store_true", help="exit 2 when any item failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    job = p.add_argument_group("job parameters (defaults: the TRIPOSR_SERVE_DEFAULT_* settings)")
    for f in dataclasses.fields(JobParams):
        job.add_argument(f"--{f.name.replace('_', '-')}", dest=f"param_{f.name}", default=None, metavar="V")

    model = p.add_argument_group("models (defaults: the TRIPOSR_SERVE_* settings)")
    model.add_argument(
        "--model-source", default=None, help="HF repo id or local folder with config.yaml + model.ckpt"
    )
    model.add_argument(
        "--model-device", default=None, help="cuda, cpu, ... (default: GPU if the actor has one)"
    )
    model.add_argument("--rembg-model", default=None, help="u2net (default), u2netp for small machines")
    model.add_argument("--rembg-dir", default=None, help="folder holding <rembg-model>.onnx")

    cap = p.add_argument_group("capacity")
    cap.add_argument("--gpus-per-actor", type=float, default=None,
                     help="GPU share per TripoSR actor (default: 0.5 with GPUs, else 0)")  # fmt: skip
    cap.add_argument("--cpus-per-actor", type=float, default=1.0)
    cap.add_argument("--actors", type=_actors, default=None, metavar="N|MIN:MAX",
                     help="TripoSR actor pool (default: 1:<GPUs / gpus-per-actor>, or 1 on CPU)")  # fmt: skip
    cap.add_argument(
        "--batch-size", type=int, default=2, help="items per actor call (their frames share passes)"
    )
    cap.add_argument("--max-frames-per-forward", type=int, default=16, help="frames in one encode call")
    cap.add_argument("--preprocess-cpus", type=float, default=1.0, help="CPUs per preprocess task")
    cap.add_argument("--preprocess-memory-gb", type=float, default=1.0, help="memory per preprocess task")
    cap.add_argument("--max-preprocess-tasks", type=int, default=None, help="concurrent preprocess tasks cap")
    cap.add_argument("--merge-cpus", type=float, default=1.0, help="CPUs per fuse+export task")
    cap.add_argument("--max-merge-tasks", type=int, default=None, help="concurrent fuse+export tasks cap")
    return p


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        name: getattr(args, name)
        for name in ("model_source", "model_device", "rembg_model", "rembg_dir")
        if getattr(args, name) is not None
    }
    return Settings.from_env().merged(overrides)


def _params(args: argparse.Namespace, settings: Settings) -> JobParams:
    given = {
        f.name: getattr(args, f"param_{f.name}")
        for f in dataclasses.fields(JobParams)
        if getattr(args, f"param_{f.name}") is not None
    }
    return JobParams.from_mapping({**settings.defaults.to_dict(), **given})


def _capacity(args: argparse.Namespace, cluster_gpus: float) -> Capacity:
    gpus = args.gpus_per_actor
    if gpus is None:
        gpus = 0.5 if cluster_gpus > 0 else 0.0
    if args.actors is not None:
        lo, hi = args.actors
    elif gpus > 0:
        lo, hi = 1, max(1, math.floor(cluster_gpus / gpus))
    else:
        lo = hi = 1
    return Capacity(
        gpus_per_actor=gpus,
        cpus_per_actor=args.cpus_per_actor,
        min_actors=lo,
        max_actors=hi,
        batch_size=args.batch_size,
        max_frames_per_forward=args.max_frames_per_forward,
        preprocess_cpus=args.preprocess_cpus,
        preprocess_memory_bytes=int(args.preprocess_memory_gb * 1024**3),
        max_preprocess_tasks=args.max_preprocess_tasks,
        merge_cpus=args.merge_cpus,
        max_merge_tasks=args.max_merge_tasks,
    )


class _Progress:
    """One log line per finished item, plus a tqdm bar on stderr unless disabled."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.count, self.failed = total, 0, 0
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="item", desc="batch", file=sys.stderr, mininterval=1.0)

    def __call__(self, row: Mapping[str, Any]) -> None:
        self.count += 1
        self.failed += row["status"] == "failed"
        detail = row["output"] if row["status"] == "succeeded" else f"{row['error_code']}: {row['error']}"
        logger.info("[%d/%d] %s %s (%s frames) %s", self.count, self.total, row["status"], row["item_id"],
                    row["frames_used"], detail)  # fmt: skip
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = _settings(args)
        params = _params(args, settings)
        items = discover_items(args.input, args.output, params)
    except (SettingsError, InvalidParameter, BatchInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    todo, done = split_done(items)
    if args.dry_run:
        for it in items:
            print(f"{'skip' if it in done else 'run '}  {it.item_id}  {it.input} -> {it.output}")
        return 0

    import ray

    if not ray.is_initialized():
        ray.init(address=args.address, log_to_driver=True)
    try:
        capacity = _capacity(args, float(ray.cluster_resources().get("GPU", 0.0)))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    logger.info("capacity: %s", capacity)
    progress = _Progress(len(todo), enabled=not args.no_progress)
    try:
        summary = run_batch(items, args.output, settings, capacity, on_item=progress)
    finally:
        progress.close()
    counts = summary["counts"]
    print(f"batch finished in {summary['wall_s']:.1f} s: "
          + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
          + f"; summary: {Path(args.output) / 'summary.json'}")  # fmt: skip
    return 2 if args.fail_on_error and counts.get("failed", 0) else 0


if __name__ == "__main__":
    sys.exit(main())
