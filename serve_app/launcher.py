"""`triposr-serve start`: a private Ray + Serve on this machine, sized to it, stopped cleanly at any moment.

- Private: `ray.init(address="local")` with its own temp dir, so it never joins (or stops) another Ray on the
  machine, and every process it started can be found again by that dir.
- Sized: `capacity.local_options` fits the four deployments on this machine; `capacity.fit` checks the plan
  against the Ray node before deploying, so a plan that cannot schedule fails at once with the fix.
- Watched: the deploy runs in a thread while the main thread reads `serve.status()`; a worker deployment that
  cannot start (missing weights, missing rembg model, bad setting) ends the start with its own one-line
  message, not after Serve's retries, and never as a silent wait.
- Stoppable: SIGINT and SIGTERM end it within `STOP_BUDGET_S` at any moment, start-up included: the main
  thread only waits for them while a starter thread does the Ray work; on a stop, Serve is shut down (the
  ingress re-queues its running jobs), then Ray, then whatever process of this Ray is left is killed by pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
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
POLL_S = 0.2
# Serve's controller reconciles every 0.1 s and every replica exports its cached metrics every 0.1 s: idle,
# that is 4 % of a core (and its GCS queries 1 %) taken from the forward pass in small slices, each of
# which stalls torch's lock-step threads on a 2-core machine. Jobs take seconds, so every 0.5 s and every
# second cost nothing a user sees (idle service: 14.3 % -> 9.3 % of a core). Set in `start`'s own Ray only;
# the environment wins. Ray's log monitor lists the log folder on each 0.1 s poll below 1000 files; with the
# threshold at 0 it lists it every 0.5 s (0.8 % -> 0.4 %).
QUIET_RAY_ENV = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


class StartError(Exception):
    """The service cannot start here; the message is one line with the cause and the fix."""


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
    """Start, report readiness, serve until SIGINT/SIGTERM; 0 after a requested stop. Raises StartError.

    Ray is started and watched in a thread while this (main) thread only waits for a stop signal: a signal
    handler that raised inside Ray's C code would surface as an unrelated SystemError, and a blocking
    `ray.init` cannot be interrupted anyway. Stopping never waits for the starter thread.
    """
    say = say or _say
    become_subreaper()
    temp_dir = Path(tempfile.mkdtemp(prefix="triposr-ray-", dir="/tmp"))  # short: Ray's socket paths
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    # Ray's core worker would install a native SIGTERM handler in this process that aborts it (no cleanup);
    # its replicas keep theirs (runtime_env below).
    os.environ["RAY_DISABLE_FAILURE_SIGNAL_HANDLER"] = "1"
    for name, value in QUIET_RAY_ENV.items():  # inherited by the raylet and so by every Ray worker it starts
        os.environ.setdefault(name, value)
    starter = _Starter(settings, host, port, num_cpus, dashboard, verbose, temp_dir, stop, say)
    try:
        starter.start()
        while not stop.is_set() and not starter.failed.is_set():
            stop.wait(POLL_S)  # returns early when a signal handler sets the flag
            for sig in STOP_SIGNALS:  # in case native code replaced the handler behind Python's back
                signal.signal(sig, on_signal)
    finally:
        for sig in previous:  # one stop at a time: the shutdown below is bounded anyway
            signal.signal(sig, signal.SIG_IGN)
        if stop.is_set():
            say("stopping ...")
        _shutdown(
            temp_dir,
            graceful=starter.ready.is_set(),
            keep_logs=starter.error is not None and not stop.is_set(),
        )
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if starter.error is not None and not stop.is_set():
        if isinstance(starter.error, StartError):
            raise starter.error
        raise StartError(f"the service failed to start: {_first_line(starter.error)}") from starter.error
    starter.join(timeout=0.5)
    if starter.is_alive():
        # Stopped inside a Ray call (ray.init, serve.run) whose processes are gone now: it would never return,
        # and the interpreter's exit would wait on Ray's native threads. Everything ours is cleaned up.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


class _Starter(threading.Thread):
    """Ray, the fit check, Serve and the deploy, then idles; sets `failed` (with `error`) if start fails."""

    def __init__(
        self, settings: Settings, host: str, port: int, num_cpus: int | None, dashboard: bool, verbose: bool,
        temp_dir: Path, stop: threading.Event, say: Callable[[str], None],
    ) -> None:  # fmt: skip
        super().__init__(name="triposr-start", daemon=True)
        self.settings, self.host, self.port = settings, host, port
        self.num_cpus, self.dashboard, self.verbose = num_cpus, dashboard, verbose
        self.temp_dir, self.stop, self.say = temp_dir, stop, say
        self.failed = threading.Event()
        self.ready = threading.Event()  # the app ran: a stop shuts Serve down gracefully (jobs re-queued)
        # Ray starts GCS and raylet with PR_SET_PDEATHSIG, tied to the *thread* that forked them: this thread
        # must outlive the service, so it waits for this event once its work is done.
        self.release = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._start()
        except BaseException as exc:
            if not self.stop.is_set():  # errors caused by the shutdown itself are not the user's news
                logger.debug("start failed", exc_info=True)
                self.error = exc
                self.failed.set()
        self.release.wait()

    def _start(self) -> None:
        import ray
        from ray import serve

        from serve_app.application import build

        if not self.verbose:  # our own lines say what happens; Serve's INFO lines stay in the Ray logs
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
            # Ray turns token auth on for a new local cluster by itself (and says so at WARNING level).
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
                logging.ERROR
            )
        cpus = int(self.num_cpus or os.cpu_count() or 1)
        has_gpu = _has_cuda()
        options = local_options(cpus, has_gpu)
        settings = self.settings
        if not has_gpu:
            # On a CPU-only machine torch (the forward pass) and onnxruntime (rembg) get every core, whatever
            # the replica's logical CPU share: a job's stages mostly run one after another.
            threads = {n: cpus for n in ("torch_threads", "rembg_threads") if getattr(settings, n) is None}
            settings = settings.merged(threads)
        self.say(
            f"starting Ray on this machine ({cpus} CPU(s), GPU: {has_gpu}; Ray logs: {self.temp_dir}) ..."
        )
        root = str(Path(__file__).resolve().parent.parent)
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=self.dashboard,
            _temp_dir=str(self.temp_dir),
            runtime_env={"env_vars": {"PYTHONPATH": root, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "0"}},
            logging_level=logging.WARNING,
            log_to_driver=self.verbose,
        )
        demands = [demand_of(name, opts, _fix_hint(name, has_gpu)) for name, opts in options.items()]
        problems = fit(demands, nodes_from_ray(ray.nodes()))
        if problems:
            raise StartError(problems[0])
        serve.start(http_options={"host": self.host, "port": self.port})
        self.say(f"deploying (model {settings.model_source}, data {settings.data_dir}) ...")
        deploy = _Deploy(lambda: serve.run(build(settings, options), name=APP_NAME, route_prefix="/"))
        _wait_until_running(serve, deploy, self.stop)
        self.ready.set()
        self.say(f"ready at http://{self.host}:{self.port}  (Ctrl-C to stop)")


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
        except BaseException as exc:  # reported by the watcher
            self.error = exc
        finally:
            self.done.set()


def _wait_until_running(serve: Any, deploy: _Deploy, stop: threading.Event) -> None:
    """Return when the app runs (or a stop was asked); StartError as soon as a worker deployment cannot
    start."""
    while not stop.is_set():
        app = serve.status().applications.get(APP_NAME)
        if deploy.done.is_set() and deploy.error is None and app is not None and app.status == "RUNNING":
            return
        problems = deployment_problems(app, WORKER_DEPLOYMENTS) if app is not None else []
        for problem in problems:
            if problem.failed or "cannot be scheduled" in problem.cause:
                raise StartError(problem.cause)
        if deploy.done.is_set() and deploy.error is not None:
            raise StartError(f"deploying the app failed: {_first_line(deploy.error)}")
        stop.wait(POLL_S)


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
def _shutdown(temp_dir: Path, *, graceful: bool, keep_logs: bool) -> None:
    """Serve, then Ray, each within the stop budget; then kill what is left of this Ray by pid.

    Before the app ran there is no job to re-queue and nothing worth a graceful stop: Ray calls made then
    could block on a half-started cluster, so its processes are simply killed."""
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
    if graceful:
        _within(serve_shutdown, deadline - 3.0)  # the ingress re-queues its running jobs here
    t1 = time.monotonic()
    if graceful:
        _within(ray_shutdown, deadline - 1.0)
    t2 = time.monotonic()
    killed: set[int] = set()
    # In rounds: a raylet killed in one round may have forked a worker just before. Being the subreaper, this
    # process inherits such orphans, so they are found as descendants even before their cmdline is set.
    for _ in range(10):
        left = [pid for pid in {*pids_using(temp_dir), *descendants(os.getpid())} if _alive(pid)]
        if not left:
            break
        killed.update(left)
        kill_processes(left, grace_s=max(0.0, min(0.2, deadline - time.monotonic())))
        _reap_children()
    logger.info(
        "shutdown: serve %.1f s, ray %.1f s, %d leftover process(es) killed", t1 - t0, t2 - t1, len(killed)
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


def become_subreaper() -> None:
    """Orphaned descendants (Ray workers whose raylet died) reparent to this process instead of init, so a
    stop can find and end every one of them (Linux; elsewhere a no-op)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def descendants(root: int) -> list[int]:
    """Every process below `root` in the process tree, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _reap_children() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


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
