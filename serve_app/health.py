"""Why a worker deployment is not running, read from Serve's own status, in one line.

Serve reports a replica whose constructor raised as a deployment message holding the whole traceback, and
only marks the deployment DEPLOY_FAILED after several retries. `deployment_problems` turns that into one line
per deployment: the operator's line keeps the error's own message (it names the missing file and the fix); the
public line, for HTTP clients, names the error class and what it means, never a server path. Errors that no
retry can cure (missing weights, a bad setting) count as failed at the first attempt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Errors raised by a replica's constructor that a restart cannot fix -> what they mean, for clients.
CONFIG_ERRORS = {
    "ModelNotFoundError": "the TripoSR weights are missing or unreadable on the server",
    "ModelMissingError": "the background-removal model is missing on the server",
    "SettingsError": "a server setting is invalid",
}
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?([A-Z]\w*(?:Error|Exception))(?:\(.*?\))?: (.*)$")


@dataclass(frozen=True)
class DeploymentProblem:
    deployment: str
    failed: (
        bool  # True: it cannot start (failed, or a configuration error); False: still starting / recovering
    )
    cause: str  # for the operator: the error's own message, one line
    public: str  # for HTTP clients: no paths, no tracebacks


def deployment_problems(app: Any, names: Iterable[str]) -> list[DeploymentProblem]:
    """Problems of the named deployments in a Serve `ApplicationStatusOverview` (or None: not deployed)."""
    problems = []
    deployments = getattr(app, "deployments", None) or {}
    for name in names:
        dep = deployments.get(name)
        if dep is None:
            problems.append(
                DeploymentProblem(name, False, f"{name} is not deployed yet", f"{name} is starting")
            )
            continue
        status = str(getattr(dep.status, "value", dep.status))
        if status == "HEALTHY":
            continue
        error, message = _last_error(dep.message or "")
        failed = status in ("DEPLOY_FAILED", "UNHEALTHY") or error in CONFIG_ERRORS
        if error and failed:
            cause = f"{name} cannot start: {error}: {message}"
            meaning = CONFIG_ERRORS.get(error, "its replicas fail to start")
            public = f"{name} cannot start: {meaning} ({error}); see the service log"
        elif error:  # Serve retries it; it may still come up
            cause = f"{name} is retrying after {error}: {message}"
            public = f"{name} is starting (a replica failed with {error}; Serve retries it)"
        elif failed:
            cause = f"{name} is {status.lower()}: {_one_line(dep.message) or 'no message'}"
            public = f"{name} is {status.lower()}; see the service log"
        else:
            cause = public = f"{name} is starting"
            if "to be scheduled" in (dep.message or ""):  # Serve's words for replicas no node can take
                cause = f"{name} cannot be scheduled: {_one_line(dep.message)}"
                public = f"{name} is waiting for cluster resources"
        problems.append(DeploymentProblem(name, failed, cause, public))
    return problems


def _last_error(text: str) -> tuple[str | None, str]:
    """(exception class name, its message) of the last exception line in a traceback-bearing message."""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        match = _ERROR_LINE.match(lines[i].strip())
        if match and not match.group(1).startswith(("RayTaskError", "RayActorError")):
            rest = " ".join(line.strip() for line in lines[i + 1 :] if line.strip())
            return match.group(1), _one_line(f"{match.group(2)} {rest}")
    return None, ""


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())
