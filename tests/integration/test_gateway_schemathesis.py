"""Property-based requests from the OpenAPI document against the real gateway: no unexpected 5xx,
answers that match the document (status codes, content types, schemas, headers), and invalid input
refused.

The document is the gateway's own (``app.openapi()``, what the running gateway serves at
``/openapi.json``); requests go to the running stack. Bounded: a few examples per operation,
derandomised, so the run is short and repeatable. The one 5xx allowed is the documented 503 of a
capability whose model or worker task is not built yet (``test_gateway_capabilities`` pins it).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.main import app
from tests.conftest import create_api_key

pytestmark = pytest.mark.integration
EXAMPLES_PER_OPERATION = 12
NOT_BUILT = ("/model-missing", "/worker-task-missing", "/capability-unavailable")

schema = schemathesis.openapi.from_dict(app.openapi())
# a .npy body is bytes like any other
schemathesis.serializer.alias("application/x-npy", "application/octet-stream")


@schemathesis.check
def no_unexpected_server_error(ctx, response, case) -> None:  # type: ignore[no-untyped-def]
    if response.status_code < 500:
        return
    kind = ""
    if response.headers.get("content-type", [""])[0].startswith("application/problem+json"):
        kind = response.json().get("type", "")
    if response.status_code == 503 and kind.endswith(NOT_BUILT):
        return
    raise AssertionError(f"server error {response.status_code} {kind}: {response.text[:300]}")


CHECKS = [no_unexpected_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def fuzz_key(stack) -> str:
    return create_api_key(stack, ["admin"], name="schemathesis", rate_per_s=0)


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_and_never_fails(case, stack, fuzz_key: str) -> None:
    case.call_and_validate(base_url=stack.gateway_url, headers={"Authorization": f"Bearer {fuzz_key}"},
                           checks=CHECKS, timeout=30)
