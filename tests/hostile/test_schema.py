"""Schemathesis against `/openapi.json` of the live local service: no 5xx, every response as documented.

Bounded: a few generated examples per operation (hypothesis `max_examples`) and a deadline per example.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.hostile.conftest import AUTH

pytestmark = pytest.mark.ray

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def live_schema(live):
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json", headers=AUTH, timeout=30)


schema = schemathesis.pytest.from_fixture("live_schema")


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=10_000,  # ms per example; the answers are errors or small documents
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_answers_as_documented_and_never_5xx(case):
    if case.path == "/reconstruct/events/{job_id}":
        case.headers = {
            **(case.headers or {}),
            "Last-Event-ID": "0",
        }  # an unknown job: 404 at once, no stream
    case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=30)
