"""Serve replicas' worker pids from Ray's actor table (GCS), without the dashboard's state API."""

from __future__ import annotations


def replica_pids() -> dict[str, int]:
    """{replica actor name: worker pid} of every alive Serve replica (names hold `#<Deployment>#`)."""
    import ray
    from ray.core.generated import gcs_pb2

    accessor = ray._private.state.state._connect_and_get_accessor()
    pids = {}
    for raw in accessor.get_actor_table(None, None):
        actor = gcs_pb2.ActorTableData.FromString(raw)
        if actor.name.startswith("SERVE_REPLICA::") and actor.state == gcs_pb2.ActorTableData.ALIVE:
            pids[actor.name] = actor.pid
    return pids
