"""One line from Serve's deployment status: what `start` prints and what /readyz answers."""

from __future__ import annotations

from dataclasses import dataclass

from serve_app.health import deployment_problems

TRACEBACK = """A replica failed to start with exception. Retrying 2 more time(s). Error:
ray::ServeReplica:triposr:Reconstruct.initialize_and_get_metadata() (pid=4242, ip=192.0.2.7, actor_id=ab12)
Traceback (most recent call last):
  File "/srv/app/deployments/reconstruct.py", line 51, in __init__
    self.model = load_model(
triposr.loading.ModelNotFoundError: cannot get config.yaml of 'stabilityai/TripoSR': HF_HUB_OFFLINE is set.
Hugging Face cache searched: /srv/cache/hub. Get the weights with `hf download stabilityai/TripoSR`."""


@dataclass
class Dep:
    status: str
    message: str


@dataclass
class App:
    deployments: dict


def test_a_configuration_error_fails_at_the_first_attempt_with_its_own_message():
    app = App(
        {
            "Reconstruct": Dep("UPDATING", TRACEBACK),
            "Preprocess": Dep("HEALTHY", ""),
            "Export": Dep("HEALTHY", ""),
        }
    )
    (problem,) = deployment_problems(app, ["Preprocess", "Reconstruct", "Export"])
    assert problem.failed and problem.deployment == "Reconstruct"
    assert problem.cause == (
        "Reconstruct cannot start: ModelNotFoundError: cannot get config.yaml of 'stabilityai/TripoSR': "
        "HF_HUB_OFFLINE is set. Hugging Face cache searched: /srv/cache/hub. Get the weights with "
        "`hf download stabilityai/TripoSR`."
    )
    # Clients learn which deployment and what kind of error, never paths, pids or addresses.
    assert problem.public == (
        "Reconstruct cannot start: the TripoSR weights are missing or unreadable on the server "
        "(ModelNotFoundError); see the service log"
    )


def test_other_errors_count_as_failed_only_once_serve_gives_up():
    crash = (
        "A replica failed to start with exception. Retrying 2 more time(s). Error:\nRuntimeError: CUDA busy"
    )
    starting = deployment_problems(App({"Export": Dep("UPDATING", crash)}), ["Export"])
    assert [(p.failed, p.public) for p in starting] == [
        (False, "Export is starting (a replica failed with RuntimeError; Serve retries it)")
    ]
    given_up = deployment_problems(App({"Export": Dep("DEPLOY_FAILED", crash)}), ["Export"])
    assert [(p.failed, p.cause) for p in given_up] == [(True, "Export cannot start: RuntimeError: CUDA busy")]


def test_unscheduled_replicas_and_missing_deployments_are_not_ready():
    pending = Dep(
        "UPDATING", "Deployment 'Reconstruct' has 1 replicas that have taken more than 30s to be scheduled."
    )
    problems = deployment_problems(App({"Reconstruct": pending}), ["Reconstruct", "Export"])
    assert [p.public for p in problems] == [
        "Reconstruct is waiting for cluster resources",
        "Export is starting",
    ]
    assert problems[0].cause.startswith("Reconstruct cannot be scheduled: Deployment 'Reconstruct' has 1")
    assert deployment_problems(App({"Export": Dep("HEALTHY", "")}), ["Export"]) == []
