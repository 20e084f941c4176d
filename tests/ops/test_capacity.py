"""The fit check that stops `start` and `check-config` from waiting forever, against a real 2-CPU Ray node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serve_app.capacity import Node, code_defaults, demand_of, fit, local_options

ROOT = Path(__file__).resolve().parents[2]


def test_the_codes_requests_do_not_fit_two_cpus_but_starts_sizes_do():
    node = [Node("laptop", {"CPU": 2.0})]
    as_coded = [demand_of(name, opts, "the fix") for name, opts in code_defaults().items()]
    (problem,) = fit(as_coded, node)
    # The largest request is placed first: the GPU-asking Reconstruct replica cannot go anywhere.
    assert problem.startswith("Reconstruct cannot start: each of its 1 replica(s) asks for {CPU 1, GPU 0.5}")
    assert problem.endswith("fix: the fix")
    sized = [demand_of(name, opts, "-") for name, opts in local_options(2, has_gpu=False).items()]
    assert fit(sized, node) == []
    assert 1.9 <= sum(d.per_replica["CPU"] for d in sized) <= 2.0
    assert all("GPU" not in d.per_replica for d in sized)


def test_replicas_are_placed_per_node_not_against_the_cluster_total():
    """Two 1-CPU nodes hold 2 CPUs in total, but no node can take a 1.5-CPU replica."""
    nodes = [Node("a", {"CPU": 1.0}), Node("b", {"CPU": 1.0})]
    demand = demand_of("Export", {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1.5}}, "lower it")
    (problem,) = fit([demand], nodes)
    assert "has {CPU 2} in total and at most {CPU 1} left on one node" in problem


def test_autoscaling_min_replicas_is_what_must_start():
    auto = {"autoscaling_config": {"min_replicas": 3}, "ray_actor_options": {"num_cpus": 1}}
    assert demand_of("Preprocess", auto, "-").replicas == 3
    assert fit([demand_of("Preprocess", auto, "-")], [Node("n", {"CPU": 2.0})])


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_check_config_against_a_live_two_cpu_ray_head(tmp_path):
    from tests.ops.raycluster import start_head

    head = start_head(num_cpus=2, num_gpus=0)
    try:
        cli = [sys.executable, "-m", "serve_app.cli", "check-config"]
        shipped = subprocess.run(
            [*cli, str(ROOT / "serve_config.yaml"), "--address", head.gcs_address],
            capture_output=True, text=True, env=head.env(), timeout=120,
        )  # fmt: skip
        assert shipped.returncode == 2, shipped
        line = shipped.stderr.strip().splitlines()[-1]
        assert line.startswith("error: Reconstruct cannot start"), shipped.stderr
        assert "the cluster (1 node(s)) has {CPU 2, GPU 0} in total" in line

        # The same config with the sizes `start` would use on this node fits.
        doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        sized = local_options(2, has_gpu=False)
        for dep in doc["applications"][0]["deployments"]:
            dep.pop("autoscaling_config", None)
            dep["num_replicas"] = 1
            dep["ray_actor_options"] = sized[dep["name"]]["ray_actor_options"]
        small = tmp_path / "small.yaml"
        small.write_text(yaml.safe_dump(doc))
        fits = subprocess.run(
            [*cli, str(small), "--address", head.gcs_address],
            capture_output=True, text=True, env=head.env(), timeout=120,
        )  # fmt: skip
        assert fits.returncode == 0, fits
        assert fits.stdout.startswith("ok: 4 replica(s) of 4 deployment(s) fit the cluster at")
    finally:
        head.stop()
