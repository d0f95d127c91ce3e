"""The OpenAPI document is true: schemathesis drives every operation of a running server with generated
requests, valid and invalid, and every answer must be documented (status, content type, headers, body
schema) and never a 5xx.

Bounded: about 50 generated requests per operation, against ``aim serve`` on the tiny model.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import ServerProcess, png_b64, served

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    allow_header_conformance,
]


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"AIM_MODEL": "tiny", "AIM_ENGINE": "transformers", "AIM_MAX_TOKENS_LIMIT": "16"}
    with served(tmp_path_factory.mktemp("openapi"), env, start_timeout=180) as server:
        import httpx

        # Something to find: generated ids and set names mostly miss, these let some requests hit.
        r = httpx.post(
            server.base_url + "/demonstrations",
            json={"set": "a", "items": [{"image": png_b64("red"), "text": "Q: colour? A: red"}]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        yield server


def test_every_answer_is_documented_and_none_is_a_server_error(tiny_server: ServerProcess):
    api_schema = schemathesis.openapi.from_url(tiny_server.base_url + "/openapi.json")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            case.call_and_validate(checks=CHECKS, timeout=60)

        check()
