"""A private local Ray head node for tests and benchmarks: `ray start --head`, stopped cleanly afterwards.

Other people's Ray clusters may run on the same machine (other test suites, a developer's `serve run`), so the
head gets its own temp dir and free ports for everything Ray would otherwise take by default (GCS, dashboard,
agents, client server, metrics), and stopping it never calls a bare `ray stop` (which stops *every* cluster of
this user). Instead it signals the `ray start --block` process it owns (Ray then shuts the node down), kills
that process group, and finally any process still running from this head's temp dir.

Nothing comes from the user's home: each head gets its own Ray auth token in its temp dir
(RAY_AUTH_TOKEN_PATH), so it starts the same on a machine that never ran Ray (no ~/.ray/auth_token).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from serve_app.launcher import pids_using

RAY_BIN = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalHead:
    """A running head node: `gcs_address` for ray.init, `dashboard_url` for `ray job submit --address`."""

    gcs_address: str
    dashboard_url: str
    metrics_port: int
    temp_dir: Path
    process: subprocess.Popen
    log_path: Path
    token_path: Path

    def env(self) -> dict[str, str]:
        """Environment for CLI calls against this head (and never against another cluster)."""
        return {**_ray_env(self.token_path), "RAY_ADDRESS": self.dashboard_url}

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # the group we created; nothing else is in it
        for pid in pids_using(self.temp_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _ray_env(token_path: Path) -> dict[str, str]:
    """Our environment minus any ambient cluster address, with Ray's token auth on explicitly and this head's
    own token: the CLI (`ray job submit`) only sends it when the mode says `token`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    return env


def start_head(*, num_cpus: int = 4, num_gpus: int = 1, timeout_s: float = 90.0) -> LocalHead:
    """Start a head with a logical GPU (fractional-GPU actors then schedule on CPU); wait until it serves."""
    # Short path: Ray's unix sockets live under the temp dir and must stay below ~107 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="rayops-", dir="/tmp"))
    names = ("port", "dashboard", "client", "agent_http", "agent_grpc", "metrics", "runtime_env",
             "node_manager", "object_manager")  # fmt: skip
    ports = {name: free_port() for name in names}
    log_path = temp_dir / "ray-start.log"
    token_path = temp_dir / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    cmd = [
        str(RAY_BIN), "start", "--head", "--block", "--disable-usage-stats",
        f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
        "--node-ip-address=127.0.0.1", f"--port={ports['port']}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={ports['dashboard']}",
        f"--ray-client-server-port={ports['client']}",
        f"--dashboard-agent-listen-port={ports['agent_http']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--metrics-export-port={ports['metrics']}",
        f"--runtime-env-agent-port={ports['runtime_env']}",
        f"--node-manager-port={ports['node_manager']}",
        f"--object-manager-port={ports['object_manager']}",
        "--object-store-memory=500000000",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=_ray_env(token_path), start_new_session=True
        )
    head = LocalHead(
        gcs_address=f"127.0.0.1:{ports['port']}",
        dashboard_url=f"http://127.0.0.1:{ports['dashboard']}",
        metrics_port=ports["metrics"],
        temp_dir=temp_dir,
        process=process,
        log_path=log_path,
        token_path=token_path,
    )
    try:
        _wait_for_dashboard(head, timeout_s)
    except BaseException:
        head.stop()
        raise
    return head


def _wait_for_dashboard(head: LocalHead, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            tail = head.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"ray start exited early:\n{tail}")
        try:
            # The jobs API answers once the head (GCS + dashboard) is up; 401 = up, asking for the token
            # (this probe does not send it).
            if httpx.get(f"{head.dashboard_url}/api/jobs/", timeout=2.0).status_code in (200, 401, 403):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Ray head did not come up in {timeout_s:.0f} s; log: {head.log_path}")
