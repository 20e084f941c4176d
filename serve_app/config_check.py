"""`triposr-serve check-config serve_config.yaml`: what `serve deploy` would do, checked before it is done.

Three checks, each answered by one readable line: the file is a valid Serve config (Serve's own
`ServeDeploySchema`), the app's `args` are valid settings (the same `AppArgs` + `Settings` the builder
uses), and the replicas that must start fit the cluster (`capacity.fit`) — this machine, a running cluster
(`--address`), or the largest cluster a cluster-launcher YAML can grow to (`--cluster`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from serve_app.capacity import Node, demands_from_serve_config, fit, nodes_from_cluster_config, nodes_from_ray
from serve_app.settings import Settings, SettingsError

OUR_IMPORT_PATH = "serve_app:app"


def check_serve_config(
    path: Path,
    *,
    address: str | None = None,
    cluster_config: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
) -> tuple[list[str], str]:
    """(problems, summary): no problems means the config deploys and every replica can be scheduled."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        return [f"{path}: cannot read it as YAML: {_one_line(exc)}"], ""
    if not isinstance(doc, dict):
        return [f"{path}: not a Serve config (expected a mapping with `applications`)"], ""
    problems = _schema_problems(doc, path) + _settings_problems(doc, path)
    if problems:
        return problems, ""
    nodes, where = _nodes(address, cluster_config, num_cpus, num_gpus)
    demands = demands_from_serve_config(doc, Path(path).name)
    problems = fit(demands, nodes)
    replicas = sum(d.replicas for d in demands)
    asked = {k: sum(d.per_replica.get(k, 0) * d.replicas for d in demands) for k in ("CPU", "GPU")}
    have = {k: sum(n.resources.get(k, 0) for n in nodes) for k in ("CPU", "GPU")}
    summary = (
        f"{replicas} replica(s) of {len(demands)} deployment(s) fit {where}: CPU {asked['CPU']:g} of "
        f"{have['CPU']:g}, GPU {asked['GPU']:g} of {have['GPU']:g}"
    )
    return problems, summary


def _schema_problems(doc: dict[str, Any], path: Path) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(doc)
    except ValidationError as exc:
        return [f"{path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]]
    return []


def _settings_problems(doc: dict[str, Any], path: Path) -> list[str]:
    from pydantic import ValidationError

    from serve_app.application import AppArgs, settings_from_args

    problems = []
    for app in doc.get("applications") or []:
        if app.get("import_path") != OUR_IMPORT_PATH:
            continue
        try:
            settings_from_args(AppArgs.model_validate(app.get("args") or {}), Settings.from_env())
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            problems.append(f"{path}: applications[{app.get('name')}].args.{where}: {err['msg']}")
        except SettingsError as exc:
            problems.append(f"{path}: applications[{app.get('name')}].args: {exc}")
    return problems


def _nodes(
    address: str | None, cluster_config: str | None, num_cpus: float | None, num_gpus: float | None
) -> tuple[list[Node], str]:
    if cluster_config:
        doc = yaml.safe_load(Path(cluster_config).read_text())
        nodes = nodes_from_cluster_config(doc)
        return nodes, f"{cluster_config} at its largest ({len(nodes)} node(s))"
    if address:
        import ray

        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        try:
            nodes = nodes_from_ray(ray.nodes())
        finally:
            ray.shutdown()
        return nodes, f"the cluster at {address} ({len(nodes)} node(s) now)"
    cpus = float(num_cpus if num_cpus is not None else os.cpu_count() or 1)
    gpus = float(num_gpus if num_gpus is not None else _cuda_devices())
    return [Node("this machine", {"CPU": cpus, "GPU": gpus})], "this machine"


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
