"""Schemathesis against the real server's OpenAPI schema (25 generated requests per operation, ~250, valid and not): no 5xx,
every response matches the schema (status, content type, body). Bounded: a tiny max_length, body and page limit."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from _serving_helpers import start_server, stop_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fuzz_server(checkpoint):
    proc, base = start_server(checkpoint, "--max-length-limit", "3", "--max-body-mb", "0.004", "--max-pages", "1")
    yield base
    log = stop_server(proc)
    assert "Traceback" not in log, log[-3000:]


def test_no_server_errors_and_responses_match_the_schema(fuzz_server):
    # Hypothesis driven per operation by hand: schemathesis' pytest plugin does not load under this pytest.
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
                                   timeout=60)

        run()
