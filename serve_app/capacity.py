"""Will the app's replicas fit the cluster? Checked before deploying, so a start never waits forever.

Ray schedules a replica only on a node with every logical resource it asks for (`ray_actor_options`); a
replica that fits nowhere stays pending without an error. `fit` places the replicas that must start (fixed
`num_replicas`, or autoscaling `min_replicas`/`initial_replicas`) onto the nodes' resources, first-fit from
the largest request, and names the first one that cannot be placed together with the key that fixes it.

`local_options` sizes the four deployments for `triposr-serve start` on the one machine it runs on: on a
CPU-only node the replicas' CPU requests are scaled down to share the node (the stages mostly run one after
another per job), and the Reconstruct replica asks for no GPU and runs torch on every core.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

DEPLOYMENTS = ("Ingress", "Preprocess", "Reconstruct", "Export")
WORKER_DEPLOYMENTS = DEPLOYMENTS[1:]
_EPS = 1e-9


@dataclass(frozen=True)
class Demand:
    """What one deployment needs before the app can run: `replicas` x `per_replica` logical resources."""

    deployment: str
    replicas: int
    per_replica: dict[str, float]
    fix: str  # the option or config key that changes it, as the user wrote the deployment


@dataclass(frozen=True)
class Node:
    name: str
    resources: dict[str, float]


def code_defaults() -> dict[str, dict[str, Any]]:
    """Each deployment's replica count and actor options as the decorators in the code set them."""
    from deployments.export import Export
    from deployments.preprocess import Preprocess
    from deployments.reconstruct import Reconstruct
    from serve_app.application import Ingress

    out = {}
    for dep in (Ingress, Preprocess, Reconstruct, Export):
        out[dep.name] = {
            "num_replicas": dep.num_replicas,
            "ray_actor_options": dict(dep.ray_actor_options or {}),
        }
    return out


def demand_of(name: str, options: Mapping[str, Any], fix: str) -> Demand:
    """The start-up demand of one deployment from Serve's deployment options (code, CLI or YAML)."""
    auto = options.get("autoscaling_config")
    if auto:
        replicas = auto.get("initial_replicas")
        replicas = auto.get("min_replicas", 1) if replicas is None else replicas
    else:
        replicas = options.get("num_replicas", 1)
        replicas = 1 if replicas in (None, "auto") else replicas
    actor = options.get("ray_actor_options") or {}
    per = {"CPU": float(actor.get("num_cpus", 1)), "GPU": float(actor.get("num_gpus", 0))}
    if actor.get("memory"):
        per["memory"] = float(actor["memory"])
    per.update({k: float(v) for k, v in (actor.get("resources") or {}).items()})
    return Demand(name, int(replicas), {k: v for k, v in per.items() if v > 0}, fix)


def demands_from_serve_config(doc: Mapping[str, Any], config_name: str = "serve_config.yaml") -> list[Demand]:
    """Start-up demands of every application in a Serve config file (`serve run/deploy` format).

    A deployment's YAML keys override the code's per key (`ray_actor_options` key by key), which is how Serve
    layers config over decorator values.
    """
    defaults = code_defaults()
    out = []
    for app_index, app in enumerate(doc.get("applications") or []):
        app_name = app.get("name", f"#{app_index}")
        listed = {d.get("name"): d for d in app.get("deployments") or []}
        for name in DEPLOYMENTS:
            given = listed.get(name, {})
            options = {**defaults[name], **{k: v for k, v in given.items() if k != "ray_actor_options"}}
            options["ray_actor_options"] = {
                **defaults[name]["ray_actor_options"], **(given.get("ray_actor_options") or {})
            }  # fmt: skip
            if "autoscaling_config" in given:
                options.pop("num_replicas", None)
            fix = (
                f"{config_name}: applications[{app_name}].deployments[{name}] ray_actor_options "
                "(num_cpus / num_gpus), num_replicas or autoscaling_config.min_replicas, or add nodes"
            )
            out.append(demand_of(name, options, fix))
    return out


def fit(demands: Sequence[Demand], nodes: Sequence[Node]) -> list[str]:
    """Problems (one readable line each) placing every replica that must start; [] when all fit."""
    free = [dict(n.resources) for n in nodes]
    replicas = [d for d in demands for _ in range(d.replicas)]
    replicas.sort(key=lambda d: (-d.per_replica.get("GPU", 0), -d.per_replica.get("CPU", 0)))
    problems = []
    for demand in replicas:
        for node_free in free:
            if all(node_free.get(k, 0.0) + _EPS >= v for k, v in demand.per_replica.items()):
                for k, v in demand.per_replica.items():
                    node_free[k] = node_free.get(k, 0.0) - v
                break
        else:
            total = _sum(n.resources for n in nodes)
            largest = max(free, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
            problems.append(
                f"{demand.deployment} cannot start: each of its {demand.replicas} replica(s) asks for "
                f"{_fmt(demand.per_replica)}, but the cluster ({len(nodes)} node(s)) has "
                f"{_fmt(total, demand)} in total and at most {_fmt(largest, demand)} left on one node after "
                "the other replicas; "
                f"fix: {demand.fix}"
            )
            break  # one clear message: the later ones follow from it
    return problems


def local_options(
    cpus: float, has_gpu: bool, defaults: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Deployment options for one machine with `cpus` logical CPUs, every deployment one replica.

    Requests keep the code's values where they fit; otherwise every CPU request is scaled by the same
    factor so the four replicas share the machine (fractions are fine for Ray's scheduler).
    """
    defaults = defaults or code_defaults()
    actor = {name: dict(defaults[name]["ray_actor_options"]) for name in DEPLOYMENTS}
    if not has_gpu:  # a fractional GPU request would never schedule on a CPU-only machine
        actor["Reconstruct"]["num_gpus"] = 0
    wanted = sum(float(a.get("num_cpus", 1)) for a in actor.values())
    if wanted > cpus:
        scale = math.floor(cpus / wanted * 100) / 100
        for a in actor.values():
            a["num_cpus"] = max(0.01, round(float(a.get("num_cpus", 1)) * scale, 2))
    # A local service stops on Ctrl-C within seconds: replicas need not wait Serve's 2 s loop / 20 s grace
    # (running jobs are re-queued by the ingress, not finished).
    stop = {"graceful_shutdown_wait_loop_s": 0.2, "graceful_shutdown_timeout_s": 2.0}
    return {name: {"num_replicas": 1, "ray_actor_options": actor[name], **stop} for name in DEPLOYMENTS}


def nodes_from_ray(ray_nodes: Sequence[Mapping[str, Any]]) -> list[Node]:
    """Alive nodes of `ray.nodes()` with their total logical resources."""
    return [
        Node(str(n.get("NodeManagerAddress", n.get("NodeID", "?"))), dict(n.get("Resources", {})))
        for n in ray_nodes
        if n.get("Alive", n.get("alive", False))
    ]


def nodes_from_cluster_config(doc: Mapping[str, Any]) -> list[Node]:
    """The largest cluster a Ray cluster-launcher config can grow to: the head plus every worker type at its
    `max_workers` (within the global `max_workers`), each with its declared `resources`."""
    types = doc.get("available_node_types") or {}
    head = doc.get("head_node_type")
    nodes = []
    if head in types:
        nodes.append(Node(f"{head} (head)", _declared(types[head])))
    budget = int(doc.get("max_workers", 10**6))
    for name, spec in types.items():
        if name == head:
            continue
        count = min(int(spec.get("max_workers", 0)), budget)
        budget -= count
        nodes += [Node(f"{name} #{i + 1}", _declared(spec)) for i in range(count)]
    return nodes


def _declared(spec: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in (spec.get("resources") or {}).items()}


def _sum(resources: Any) -> dict[str, float]:
    total: dict[str, float] = {}
    for res in resources:
        for k, v in res.items():
            total[k] = total.get(k, 0.0) + float(v)
    return total


def _fmt(resources: Mapping[str, float], only: Demand | None = None) -> str:
    keys = list(only.per_replica) if only is not None else list(resources)
    parts = []
    for k in keys:
        v = float(resources.get(k, 0.0))
        shown = round(v / 1024**3, 2) if k == "memory" else round(max(v, 0.0), 2)
        parts.append(f"{k} {shown:g}{' GiB' if k == 'memory' else ''}")
    return "{" + ", ".join(parts) + "}" if parts else "{}"
