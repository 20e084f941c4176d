"""The service on a private multi-node local Ray cluster, for tests and benchmarks (documented CLI only).

    head    (resource `head`)    the Ingress; the data dir lives here and only here
    node A  (resource `node_a`)  Preprocess + Export; own mount namespace, tmpfs over the data dir and /tmp
    node B  (resource `node_b`)  Reconstruct on a logical GPU; same isolation

The app is deployed with `serve deploy` (a generated config, the way serve_config.yaml is deployed) and
reached over HTTP on a free port. Replica processes are found by their Ray process title
(`ray::ServeReplica:<app>:<deployment>`), so tests can read /proc/<pid>/root (what that process sees of the
file system) or kill one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serve_app.launcher import pids_using
from tests.ops.raycluster import (
    RAY_BIN,
    LocalHead,
    LocalWorker,
    free_port,
    start_head,
    start_worker,
)

ROOT = Path(__file__).resolve().parents[2]
APP = "triposr"
SERVE_BIN = RAY_BIN.with_name("serve")


@dataclass
class ClusterService:
    head: LocalHead
    workers: list[LocalWorker]
    base: Path  # the ingress's folder on the head: data/ and inputs/
    url: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    def replica_pids(self, deployment: str) -> list[int]:
        """Live replica processes of `deployment` in THIS cluster (other clusters on the machine may run an
        app of the same name): those descending from one of its nodes' processes."""
        ours = set()
        for temp_dir in (self.head.temp_dir, *(w.temp_dir for w in self.workers)):
            ours.update(pids_using(temp_dir))
        return [pid for pid in replica_pids(deployment) if _descends_from(pid, ours)]


def service_config(
    args: dict[str, Any], http_port: int, *, faults: bool = False, reconstruct_user_config: dict | None = None
) -> dict[str, Any]:
    """A ServeDeploySchema document pinning each deployment to its node (custom resources)."""
    env = {"PYTHONPATH": str(ROOT)}
    worker_env = {**env, **({"TRIPOSR_TEST_FAULTS": "poison-exit"} if faults else {})}

    def pinned(node: str, **options: Any) -> dict[str, Any]:
        return {"num_cpus": 1, "resources": {node: 1}, "runtime_env": {"env_vars": worker_env}, **options}

    batching = reconstruct_user_config or {"max_batch_size": 8, "batch_wait_timeout_s": 0.5}
    deployments = [
        {"name": "Ingress", "ray_actor_options": {"num_cpus": 0.5, "resources": {"head": 1}}},
        {"name": "Preprocess", "ray_actor_options": pinned("node_a")},
        {"name": "Export", "ray_actor_options": pinned("node_a")},
        {"name": "Reconstruct", "health_check_period_s": 2, "user_config": batching,
         "ray_actor_options": pinned("node_b", num_gpus=0.5)},
    ]  # fmt: skip
    application = {
        "name": APP, "route_prefix": "/", "import_path": "serve_app:app", "runtime_env": {"env_vars": env},
        "args": args, "deployments": deployments,
    }  # fmt: skip
    return {
        "proxy_location": "HeadOnly",  # one HTTP proxy: all nodes share this machine's ports
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [application],
    }


def deploy(head: LocalHead, config: dict[str, Any], timeout_s: float = 300.0) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    try:
        proc = subprocess.run(
            [str(SERVE_BIN), "deploy", f.name, "--address", head.dashboard_url], env=head.env(),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"serve deploy failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    wait_running(head, timeout_s)


def app_status(head: LocalHead) -> dict[str, Any]:
    proc = subprocess.run(
        [str(SERVE_BIN), "status", "--address", head.dashboard_url], env=head.env(), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    doc = yaml.safe_load(proc.stdout) or {}
    return (doc.get("applications") or {}).get(APP) or {}


def wait_running(head: LocalHead, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = app_status(head)
        if status.get("status") == "RUNNING":
            return
        if status.get("status") in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"app failed: {status}")
        time.sleep(1.0)
    raise TimeoutError(f"app not RUNNING after {timeout_s:.0f} s: {status}")


def replica_pids(deployment: str) -> list[int]:
    """Pids of this machine's live replica processes of `deployment` (by Ray's process title)."""
    marker = f"ServeReplica:{APP}:{deployment}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline and b"ray::" in cmdline:
            pids.append(int(entry.name))
    return pids


def _descends_from(pid: int, ancestors: set[int], depth: int = 6) -> bool:
    for _ in range(depth):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if pid in ancestors:
            return True
        if pid <= 1:
            return False
    return False


def sees(pid: int, path: Path) -> bool:
    """Whether process `pid` can see `path` (resolved in its own mount namespace, via /proc/<pid>/root)."""
    return os.path.exists(f"/proc/{pid}/root{Path(path).resolve()}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def kill9(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _may_hide_tmp() -> bool:
    """A whole fresh /tmp on the workers hides every host temp file, unless the checkout or its venv live
    there (a CI clone under /tmp): then only the service's own folder (data dir, inputs) is hidden."""
    tmp = Path("/tmp").resolve()
    here = (Path(__file__).resolve(), Path(sys.prefix).resolve())
    return not any(p.is_relative_to(tmp) for p in here)


@contextlib.contextmanager
def cluster_service(
    args: dict[str, Any], *, faults: bool = False, reconstruct_user_config: dict | None = None
) -> Iterator[ClusterService]:
    """Head + two isolated worker nodes + the app; everything stopped (by pid) afterwards."""
    base = Path(tempfile.mkdtemp(prefix="svc-", dir="/tmp"))
    (base / "inputs").mkdir()
    head = start_head(num_cpus=2, num_gpus=0, resources={"head": 10})
    workers: list[LocalWorker] = []
    try:
        hide = (Path("/tmp"), base) if _may_hide_tmp() else (base,)
        workers.append(start_worker(head, num_cpus=2, resources={"node_a": 10}, hide=hide))
        workers.append(start_worker(head, num_cpus=1, num_gpus=1, resources={"node_b": 10}, hide=hide))
        port = free_port()
        full_args = {"data_dir": str(base / "data"), "input_roots": [str(base / "inputs")], **args}
        config = service_config(
            full_args, port, faults=faults, reconstruct_user_config=reconstruct_user_config
        )
        deploy(head, config)
        yield ClusterService(head, workers, base, f"http://127.0.0.1:{port}", config)
    finally:
        for worker in workers:
            worker.stop()
        head.stop()
        shutil.rmtree(base, ignore_errors=True)
