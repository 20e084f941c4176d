"""`triposr-serve start`: a private Ray + Serve on this machine, sized to it, stopped cleanly at any moment.

- Private: `ray.init(address="local")` with its own temp dir, so it never joins (or stops) another Ray on the
  machine, and every process it started can be found again by that dir.
- Sized: `capacity.local_options` fits the four deployments on this machine; `capacity.fit` checks the plan
  against the Ray node before deploying, so a plan that cannot schedule fails at once with the fix.
- Watched: the deploy runs in a thread while the main thread reads `serve.status()`; a worker deployment that
  cannot start (missing weights, missing rembg model, bad setting) ends the start with its own one-line
  message, not after Serve's retries, and never as a silent wait.
- Stoppable: SIGINT and SIGTERM end it within `STOP_BUDGET_S` at any moment, start-up included: Serve is shut
  down (the ingress re-queues its running jobs), then Ray, then whatever process of this Ray is left is killed
  by pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve_app.capacity import WORKER_DEPLOYMENTS, demand_of, fit, local_options, nodes_from_ray
from serve_app.health import deployment_problems
from serve_app.settings import Settings

logger = logging.getLogger(__name__)

APP_NAME = "triposr"
STOP_BUDGET_S = 8.0  # SIGINT/SIGTERM -> process gone, with margin under the promised 10 s
POLL_S = 0.5


class StartError(Exception):
    """The service cannot start here; the message is one line with the cause and the fix."""


class Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM (a BaseException so no `except Exception` swallows it)."""


def run_local_service(
    settings: Settings,
    *,
    host: str,
    port: int,
    num_cpus: int | None = None,
    dashboard: bool = False,
    verbose: bool = False,
    say: Callable[[str], None] | None = None,
) -> int:
    """Start, report readiness, serve until SIGINT/SIGTERM; 0 after a requested stop. Raises StartError."""
    say = say or _say
    temp_dir = Path(tempfile.mkdtemp(prefix="triposr-ray-", dir="/tmp"))  # short: Ray's socket paths
    previous = _catch_stop_signals()
    failed = False
    try:
        import ray
        from ray import serve

        from serve_app.application import build

        if not verbose:  # our own lines say what happens; Serve's INFO lines stay in the Ray logs
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
        # Token auth is Ray's default for a new local cluster; saying so explicitly keeps it on and quiet.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        cpus = int(num_cpus or os.cpu_count() or 1)
        has_gpu = _has_cuda()
        options = local_options(cpus, has_gpu)
        if not has_gpu and settings.torch_threads is None:
            # On a CPU-only machine the forward pass is the work: torch gets every core, whatever the
            # replica's logical CPU share (the other stages mostly wait for it).
            settings = settings.merged({"torch_threads": cpus})
        say(f"starting Ray on this machine ({cpus} CPU(s), GPU: {has_gpu}; Ray logs: {temp_dir}) ...")
        root = str(Path(__file__).resolve().parent.parent)
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=dashboard,
            _temp_dir=str(temp_dir),
            runtime_env={"env_vars": {"PYTHONPATH": root}},
            logging_level=logging.WARNING,
            log_to_driver=verbose,
        )
        _catch_stop_signals()  # ray.init may install its own handlers
        demands = [demand_of(name, opts, _fix_hint(name, has_gpu)) for name, opts in options.items()]
        problems = fit(demands, nodes_from_ray(ray.nodes()))
        if problems:
            raise StartError(problems[0])
        serve.start(http_options={"host": host, "port": port})
        say(f"deploying (model {settings.model_source}, data {settings.data_dir}) ...")
        deploy = _Deploy(lambda: serve.run(build(settings, options), name=APP_NAME, route_prefix="/"))
        _wait_until_running(serve, deploy)
        say(f"ready at http://{host}:{port}  (Ctrl-C to stop)")
        while True:
            time.sleep(3600)
    except Stop:
        say("stopping ...")
        return 0
    except BaseException:
        failed = True
        raise
    finally:
        with _ignoring_stop_signals():
            _shutdown(temp_dir, keep_logs=failed)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Deploy:
    """`serve.run` in a thread: it blocks until the app runs, or raises once Serve gives up."""

    def __init__(self, run: Callable[[], Any]) -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._main, args=(run,), name="serve-deploy", daemon=True)
        self._thread.start()

    def _main(self, run: Callable[[], Any]) -> None:
        try:
            run()
        except BaseException as exc:  # reported by the watcher in the main thread
            self.error = exc
        finally:
            self.done.set()


def _wait_until_running(serve: Any, deploy: _Deploy) -> None:
    """Return when the app runs; StartError as soon as a worker deployment cannot start."""
    while True:
        app = serve.status().applications.get(APP_NAME)
        if deploy.done.is_set() and deploy.error is None and app is not None and app.status == "RUNNING":
            return
        problems = deployment_problems(app, WORKER_DEPLOYMENTS) if app is not None else []
        for problem in problems:
            if problem.failed or "cannot be scheduled" in problem.cause:
                raise StartError(problem.cause)
        if deploy.done.is_set() and deploy.error is not None:
            raise StartError(f"deploying the app failed: {_first_line(deploy.error)}")
        time.sleep(POLL_S)


def _say(text: str) -> None:
    print(text, flush=True)  # often redirected to a log file that someone is tailing


def _fix_hint(name: str, has_gpu: bool) -> str:
    if name == "Reconstruct" and has_gpu:
        return "free the GPU, or set TRIPOSR_SERVE_MODEL_DEVICE=cpu and start on a machine without CUDA"
    return "give Ray more CPUs with --num-cpus N (logical CPUs may exceed the cores), or use a larger machine"


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


# -- signals and shutdown -----------------------------------------------------------------------------------
def _raise_stop(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # one stop at a time; the shutdown is bounded anyway
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


def _catch_stop_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM raise Stop in the main thread. Also undoes a shell's SIG_IGN of SIGINT for
    background jobs (`cmd &`), which would otherwise make `kill -INT` do nothing."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, _raise_stop)
    return previous


@contextlib.contextmanager
def _ignoring_stop_signals():
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _shutdown(temp_dir: Path, *, keep_logs: bool) -> None:
    """Serve, then Ray, each within the stop budget; then kill what is left of this Ray by pid."""
    deadline = time.monotonic() + STOP_BUDGET_S

    def serve_shutdown() -> None:
        import ray
        from ray import serve

        if ray.is_initialized():
            serve.shutdown()

    def ray_shutdown() -> None:
        import ray

        ray.shutdown()

    t0 = time.monotonic()
    _within(serve_shutdown, deadline - 3.0)  # the ingress re-queues its running jobs here
    t1 = time.monotonic()
    _within(ray_shutdown, deadline - 1.0)
    t2 = time.monotonic()
    left = pids_using(temp_dir)
    kill_processes(left, grace_s=max(0.0, min(0.5, deadline - time.monotonic())))
    logger.info(
        "shutdown: serve %.1f s, ray %.1f s, %d leftover process(es) killed", t1 - t0, t2 - t1, len(left)
    )
    if keep_logs:
        logger.warning("Ray logs of the failed start are kept in %s", temp_dir)
    else:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _within(fn: Callable[[], None], deadline: float) -> None:
    thread = threading.Thread(target=_quietly, args=(fn,), daemon=True)
    thread.start()
    thread.join(timeout=max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        logger.warning("%s did not finish in time; its processes are stopped by pid", fn.__name__)


def _quietly(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        logger.debug("%s failed", fn.__name__, exc_info=True)


def pids_using(marker: Path) -> list[int]:
    """This user's processes (not this one) whose command line names `marker`: a private Ray's temp dir
    appears in the command line of each of its processes (GCS, raylet, agents, workers)."""
    needle = str(marker).encode()
    me, uid = os.getpid(), os.getuid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if entry.stat().st_uid == uid and needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_processes(pids: list[int], grace_s: float = 0.5) -> None:
    """SIGTERM, a short grace, then SIGKILL for whichever of `pids` is still there."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace_s
    while time.monotonic() < end and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # A zombie child of ours counts as gone.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    return False
