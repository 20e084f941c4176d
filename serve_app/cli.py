"""`triposr-serve`: start the service locally, submit videos or photos with progress bars, fetch results.

    triposr-serve start --data-dir data --model-source stabilityai/TripoSR      # Ray + Serve on this machine
    triposr-serve submit tyre.mp4 -o tyre.glb                                   # upload, follow, download
    triposr-serve submit a.jpg b.jpg c.jpg --num-frames 3 --no-wait
    triposr-serve status JOB_ID | download JOB_ID -o x.glb | cancel JOB_ID | list --state succeeded
    triposr-serve run tyre.mp4 -o tyre.glb                                      # no Ray, no HTTP: in-process
    triposr-serve compare REF CAND -o diff.glb --report diff.json --chart diff.png  # job ids or mesh files

User mistakes (a missing file, a service that is not running, an API error) print one line and exit 1; only
bugs show a traceback. The only module that prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.atomic import write_with
from serve_app.settings import CliSettings

TERMINAL = {"succeeded", "failed", "cancelled"}


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


# -- HTTP client side ---------------------------------------------------------------------------------------


class _ProgressReader:
    """File wrapper that advances a tqdm bar as httpx streams the upload."""

    def __init__(self, f: BinaryIO, bar: Any) -> None:
        self._f, self._bar = f, bar

    def read(self, size: int = -1) -> bytes:
        chunk = self._f.read(size)
        self._bar.update(len(chunk))
        return chunk


def _client(args: argparse.Namespace) -> Any:
    import httpx

    token = args.token or CliSettings.from_env().api_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=httpx.Timeout(60.0, read=None))


# What Serve's proxy answers by itself, in plain text, before or instead of the app (Ray 2.60).
PROXY_ANSWERS = {
    408: "the request took longer than the service's request timeout (request_timeout_s)",
    499: "the request was cancelled",
    503: "the service is overloaded or has no running replica",
}


def _check(response: Any) -> Any:
    if response.status_code < 400:
        return response
    retry = response.headers.get("retry-after")
    hint = f"; retry in {retry} s" if retry else ""
    try:
        error = response.json()["error"]
        raise CLIError(f"{error['code']}: {error['message']} (HTTP {response.status_code}{hint})")
    except (ValueError, KeyError, TypeError):
        what = PROXY_ANSWERS.get(response.status_code, response.text[:200].strip())
        raise CLIError(f"HTTP {response.status_code}: {what}{hint}") from None


def _params(args: argparse.Namespace) -> dict[str, str]:
    names = (
        "num_frames",
        "mc_resolution",
        "foreground_ratio",
        "merge",
        "format",
        "object_size_m",
        "target_faces",
    )
    out = {n: str(getattr(args, n)) for n in names if getattr(args, n, None) is not None}
    if getattr(args, "keep_background", False):
        out["remove_background"] = "false"
    if getattr(args, "strict", False):
        out["strict"] = "true"
    return out


def cmd_submit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    paths = [Path(p) for p in args.inputs]
    for path in paths:
        if not path.is_file():
            raise CLIError(f"{path}: no such file")
    field = "images" if len(paths) > 1 else "file"
    total = sum(p.stat().st_size for p in paths)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with _client(args) as client, tqdm(total=total, unit="B", unit_scale=True, desc="upload") as bar:
        handles = [p.open("rb") for p in paths]
        try:
            files = [(field, (p.name, _ProgressReader(f, bar))) for p, f in zip(paths, handles, strict=True)]
            response = _check(client.post("/reconstruct", files=files, data=_params(args), headers=headers))
        finally:
            for f in handles:
                f.close()
    job = response.json()
    print(f"job {job['job_id']} {job['state']}")
    if args.no_wait:
        return 0
    with _client(args) as client:
        state = _follow(client, job["job_id"])
        if state != "succeeded":
            doc = _check(client.get(f"/reconstruct/status/{job['job_id']}")).json()
            error = doc.get("error") or {}
            raise CLIError(f"job {job['job_id']} {state}: {error.get('code')}: {error.get('message')}")
        out = Path(args.output) if args.output else Path(f"{job['job_id']}.{args.format or 'glb'}")
        _download(client, job["job_id"], out)
    return 0


SSE_RECONNECTS = 100  # Serve's proxy ends a stream after request_timeout_s; each reconnect resumes it


def _follow(client: Any, job_id: str) -> str:
    """Follow the job's SSE stream with a 0-100 % bar; returns the final state.

    A stream that ends before a terminal state (the proxy's request timeout, a dropped connection) is
    reopened with `Last-Event-ID`, so no event is seen twice or lost.
    """
    import httpx
    from tqdm import tqdm

    state, last_id = "queued", None
    fmt = "{desc:<16}{percentage:3.0f}%|{bar}| {elapsed}"
    with tqdm(total=100, desc="queued", bar_format=fmt) as bar:
        for _ in range(SSE_RECONNECTS):
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with client.stream("GET", f"/reconstruct/events/{job_id}", headers=headers) as events:
                    if events.status_code >= 400:
                        events.read()
                        _check(events)
                    for event_id, event in _sse(events.iter_lines()):
                        last_id = event_id or last_id
                        state = event["state"]
                        bar.set_description_str(state)
                        bar.update(round(event["progress"] * 100) - bar.n)
                        if state in TERMINAL:
                            return state
            except httpx.RemoteProtocolError:  # the proxy closed the stream mid-chunk
                pass
            time.sleep(1.0)
    return state


def _sse(lines: Iterator[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(event id, data) per SSE event."""
    event_id = None
    for line in lines:
        if line.startswith("id: "):
            event_id = line[4:].strip()
        elif line.startswith("data: "):
            yield event_id, json.loads(line[6:])


def _download(client: Any, job_id: str, out: Path) -> None:
    from tqdm import tqdm

    with client.stream("GET", f"/reconstruct/result/{job_id}") as response:
        if response.status_code >= 400:
            response.read()
            _check(response)
        total = int(response.headers.get("content-length", 0)) or None
        out.parent.mkdir(parents=True, exist_ok=True)
        with tqdm(total=total, unit="B", unit_scale=True, desc="download") as bar:

            def fill(f: BinaryIO) -> None:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    bar.update(len(chunk))

            write_with(out, fill)
    print(f"saved {out}")


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        doc = _check(client.get(f"/reconstruct/status/{args.job_id}")).json()
    print(json.dumps(doc, indent=2))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _download(client, args.job_id, Path(args.output or f"{args.job_id}.glb"))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        doc = _check(client.delete(f"/jobs/{args.job_id}")).json()
    print(
        f"job {doc['job_id']} {doc['state']}{' (cancel requested)' if doc['state'] not in TERMINAL else ''}"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    params = {"limit": str(args.limit)}
    if args.state:
        params["state"] = args.state
    with _client(args) as client:
        page = _check(client.get("/jobs", params=params)).json()
    print(f"{'job_id':<24} {'state':<15} {'progress':>8}  created_at")
    for job in page["jobs"]:
        print(f"{job['job_id']:<24} {job['state']:<15} {job['progress']:>8.0%}  {job['created_at']}")
    print(f"{len(page['jobs'])} of {page['total']} job(s)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Two mesh files: compared in this process. Two job ids: a compare job on the running service."""
    out = Path(args.output)
    files = [Path(p) for p in (args.reference, args.candidate)]
    if all(p.is_file() for p in files):
        from pipeline.compare_export import compare_payload

        payload = compare_payload(
            files[0].read_bytes(), files[1].read_bytes(), object_size_m=args.object_size_m,
            threshold_mm=args.threshold_mm,
        )  # fmt: skip
        _write(out, payload["glb"])
        if args.report:
            _write(Path(args.report), json.dumps(payload["report"], indent=1).encode())
        if args.chart:
            _write(Path(args.chart), payload["chart"])
        _print_compare(payload["report"])
        return 0
    if any(p.is_file() for p in files) or any("/" in str(p) or "." in p.name for p in files):
        missing = [str(p) for p in files if not p.is_file()]
        raise CLIError(f"give two mesh files or two job ids; not a file: {', '.join(missing)}")
    body = {"reference": args.reference, "candidate": args.candidate, "object_size_m": args.object_size_m,
            "threshold_mm": args.threshold_mm}  # fmt: skip
    with _client(args) as client:
        job = _check(client.post("/compare", json=body)).json()
        print(f"job {job['job_id']} {job['state']}")
        state = _follow(client, job["job_id"])
        if state != "succeeded":
            doc = _check(client.get(f"/reconstruct/status/{job['job_id']}")).json()
            error = doc.get("error") or {}
            raise CLIError(f"job {job['job_id']} {state}: {error.get('code')}: {error.get('message')}")
        _download(client, job["job_id"], out)
        report = _check(client.get(f"/reconstruct/result/{job['job_id']}", params={"part": "report"})).json()
        if args.report:
            _write(Path(args.report), json.dumps(report, indent=1).encode())
        if args.chart:
            chart = _check(client.get(f"/reconstruct/result/{job['job_id']}", params={"part": "chart"}))
            _write(Path(args.chart), chart.content)
    _print_compare(report)
    return 0


def _write(path: Path, data: bytes) -> None:
    from pipeline.atomic import write_atomic

    write_atomic(path, data)
    print(f"saved {path}")


def _print_compare(report: dict[str, Any]) -> None:
    u, floor = report["units"], report["noise_floor"]
    a, loss = report["alignment"], report["loss"]
    print(f"noise floor {floor:.3g} {u}; scale {a['scale']:.4f}; turn {a['turn_deg']} deg "
          f"(determined: {a['turn_determined']})")  # fmt: skip
    print(f"loss max {loss['max']:.3g} {u}, over threshold on {loss['area_fraction']:.1%} of the surface")
    for name, band in (report.get("bands") or {}).items():
        print(f"  {name:<9} mean loss {band['mean_loss']:.3g} {u}  max {band['max_loss']:.3g} {u}")


# -- local service and in-process run -----------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Any:
    from serve_app.settings import Settings

    overrides = {
        k: v
        for k, v in {
            "data_dir": args.data_dir, "model_source": args.model_source, "model_device": args.device,
            "rembg_model": args.rembg_model, "rembg_dir": args.rembg_dir,
        }.items()
        if v is not None
    }  # fmt: skip
    return Settings.from_env().merged(overrides)


def _guard_start(host: str, settings: Any) -> None:
    """Refuse an exposed bind without a token; have the Serve proxy drop timeout-changing headers."""
    from serve_app.exposure import PROXY_CALLBACK, PROXY_CALLBACK_ENV, check_exposure

    check_exposure(host, settings)
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)  # read by the proxy that ray.init starts


def cmd_start(args: argparse.Namespace) -> int:
    """Ray + Serve on this machine (no `ray start` needed), sized to it, until Ctrl-C or SIGTERM."""
    from serve_app.launcher import StartError, run_local_service

    settings = _settings(args)
    _guard_start(args.host, settings)
    try:
        return run_local_service(
            settings, host=args.host, port=args.port or CliSettings.from_env().port, num_cpus=args.num_cpus,
            dashboard=args.dashboard, verbose=args.verbose,
        )  # fmt: skip
    except StartError as exc:
        raise CLIError(str(exc)) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a Serve config file and check that its replicas fit a cluster, before `serve deploy`."""
    from serve_app.config_check import check_serve_config

    problems, summary = check_serve_config(
        Path(args.config), address=args.address, cluster_config=args.cluster,
        num_cpus=args.num_cpus, num_gpus=args.num_gpus,
    )  # fmt: skip
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"ok: {summary}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole pipeline in this process: no Ray, no HTTP (pipeline.runner)."""
    from pipeline.errors import InvalidParameter
    from pipeline.matting import BackgroundRemover
    from pipeline.params import JobParams
    from pipeline.runner import run_pipeline
    from triposr import TripoSRError, load_model

    settings = _settings(args)
    try:
        params = JobParams.from_mapping({**settings.defaults.to_dict(), **_params(args)})
    except InvalidParameter as exc:
        raise CLIError(str(exc)) from None
    source = Path(args.input)
    if not source.exists():
        raise CLIError(f"{source}: no such file or folder")
    out = Path(args.output or source.with_suffix(f".{params.format.value}").name)
    print(f"loading {settings.model_source} ...")
    try:
        model = load_model(
            settings.model_source, device=settings.model_device, chunk_size=settings.chunk_size
        )
    except TripoSRError as exc:
        raise CLIError(str(exc)) from None
    remover = (
        BackgroundRemover(settings.rembg_model, settings.rembg_dir) if params.remove_background else None
    )
    report = run_pipeline(source, out, params, model=model, remover=remover)
    chosen = sum(1 for f in report["frames"] if f["chosen"])
    print(f"saved {report['result_path']} ({chosen} frames, {report['timings']['total']:.1f}s)")
    return 0


# -- argument parsing ---------------------------------------------------------------------------------------


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-frames", type=int, help="frames used (1-32, default 8)")
    p.add_argument("--mc-resolution", type=int, help="marching-cubes grid (32-512, default 256)")
    p.add_argument("--foreground-ratio", type=float, help="object share of the frame (0.5-1.0)")
    p.add_argument("--merge", choices=["fused", "best", "all"])
    p.add_argument("--format", choices=["glb", "obj", "ply"])
    p.add_argument("--object-size-m", type=float, help="scale the largest dimension to this many metres")
    p.add_argument("--target-faces", type=int, help="decimate the result to about this many faces")
    p.add_argument("--keep-background", action="store_true", help="skip background removal")
    p.add_argument(
        "--strict", action="store_true",
        help="refuse input whose frames all fail the framing checks (default: best effort, with a warning)",
    )  # fmt: skip


def _local_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="job store and job folders (default: ./data or TRIPOSR_SERVE_DATA_DIR)")
    p.add_argument("--model-source", help="HF repo id or folder with config.yaml + model.ckpt")
    p.add_argument("--device", help="cuda, cpu, mps (default: best available)")
    p.add_argument("--rembg-model", help="u2net (default) or u2netp (small, fast)")
    p.add_argument("--rembg-dir", help="folder holding <rembg-model>.onnx")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="triposr-serve", description=__doc__.split("\n")[0])
    root.add_argument("-v", "--verbose", action="store_true", help="log details (and tracebacks)")
    sub = root.add_subparsers(dest="command", required=True)

    def client_cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", default=CliSettings.from_env().url, help="default: $TRIPOSR_SERVE_URL")
        p.add_argument("--token", help="bearer token (default: $TRIPOSR_SERVE_API_TOKEN)")
        return p

    p = sub.add_parser("start", help="run Ray Serve with the app on this machine until Ctrl-C")
    _local_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="HTTP port (default: $TRIPOSR_SERVE_PORT or 8000)")
    p.add_argument("--num-cpus", type=int, help="CPUs Ray may use (default: all)")
    p.add_argument("--dashboard", action="store_true", help="also start the Ray dashboard")
    p.set_defaults(func=cmd_start)

    p = sub.add_parser(
        "check-config", help="validate a Serve config file and check its replicas fit the cluster"
    )
    p.add_argument("config", help="serve_config.yaml (the `serve run` / `serve deploy` format)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--address", help="a running Ray cluster (e.g. auto, or HEAD:6379): its live nodes")
    where.add_argument("--cluster", help="a Ray cluster-launcher YAML: the largest cluster it can grow to")
    p.add_argument("--num-cpus", type=float, help="this machine's CPUs for the check (default: all)")
    p.add_argument("--num-gpus", type=float, help="this machine's GPUs for the check (default: CUDA's)")
    p.set_defaults(func=cmd_check_config)

    p = client_cmd("submit", "upload a video, images or a zip; follow progress; download the result")
    p.add_argument("inputs", nargs="+", help="one video / zip, or several images")
    p.add_argument("-o", "--output", help="where to save the result (default: <job_id>.glb)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    _job_args(p)
    p.set_defaults(func=cmd_submit)

    p = client_cmd("status", "print a job's status document")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_status)

    p = client_cmd("download", "download a finished job's result")
    p.add_argument("job_id")
    p.add_argument("-o", "--output")
    p.set_defaults(func=cmd_download)

    p = client_cmd("cancel", "cancel a queued or running job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    p = client_cmd("list", "list jobs, newest first")
    p.add_argument("--state", help="comma-separated states, e.g. queued,failed")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_list)

    p = client_cmd("compare", "compare two reconstructions (job ids, or GLB/OBJ/PLY files in-process)")
    p.add_argument("reference", help="job id or mesh file of the reference (before)")
    p.add_argument("candidate", help="job id or mesh file of the candidate (after)")
    p.add_argument("-o", "--output", default="diff.glb", help="heat-map GLB (default: diff.glb)")
    p.add_argument("--report", help="also save the report JSON here")
    p.add_argument("--chart", help="also save the sector chart PNG here")
    p.add_argument("--object-size-m", type=float, help="the reference's largest dimension: figures in mm")
    p.add_argument("--threshold-mm", type=float, default=1.0, help="loss/gain counted above this (1.0)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("run", help="reconstruct in this process (no Ray, no HTTP)")
    p.add_argument("input", help="video, image, zip or folder of images")
    p.add_argument("-o", "--output")
    _local_args(p)
    _job_args(p)
    p.set_defaults(func=cmd_run)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    import httpx

    from pipeline.errors import PipelineError
    from serve_app.settings import SettingsError

    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except (PipelineError, SettingsError) as exc:
        print(f"error: {getattr(exc, 'code', 'settings')}: {exc}", file=sys.stderr)
    except httpx.ConnectError:
        print(
            f"error: cannot reach {args.url}; is the service running? (triposr-serve start)", file=sys.stderr
        )
    except httpx.HTTPError as exc:
        print(f"error: HTTP failure talking to the service: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
