"""Property-based: requests generated from the OpenAPI schema, valid and invalid ones
(schemathesis), against a real uvicorn process. No input may produce a 5xx.

Every response must also match the schema: its status code is documented, its content
type, headers and body are the documented ones.

Examples per operation: SCHEMA_EXAMPLES (default 500, what CI runs; about a minute on
the 2-core CI machine; measured 25-58 s there). Every operation that takes input gets
at least that many (measured: 501-531 each, 4214 requests in all); Hypothesis stops
early on one whose inputs it has exhausted (GET /health has none), and schemathesis
also tries each path with undocumented methods. Run with -s to see the counts.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from model_api.config import ApiSettings
from model_api.main import create_app
from model_load_harness.api import ApiServer, launch_api, stop_api
from tests.conftest import MODEL_V1

SERVED = {"name": "iris_svc", "version": "v1"}
EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", "500"))
SENT: Counter[str] = Counter()  # status class -> requests sent
PER_OPERATION: Counter[str] = Counter()


@pytest.fixture(scope="module")
def schema_api(loaded_model_dir: Path) -> Iterator[ApiServer]:
    server = launch_api(loaded_model_dir, MAX_BATCH_SIZE="64", LOG_LEVEL="WARNING")
    yield server
    stop_api(server)
    total = sum(SENT.values())
    print(f"\nschemathesis: {total} requests, by status class {dict(sorted(SENT.items()))}")
    for operation, count in sorted(PER_OPERATION.items()):
        if count > 3:  # the rest: operations without inputs, and undocumented methods
            print(f"  {count:5d}  {operation}")


# The schema the server publishes at /openapi.json, built in process (no model needed).
schema = schemathesis.openapi.from_dict(
    create_app(ApiSettings(MODEL_DIR=str(MODEL_V1))).openapi()  # type: ignore[call-arg]
)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_input_gets_a_server_error(case: schemathesis.Case, schema_api: ApiServer) -> None:
    # Random model names stop at the 404 (tested elsewhere): aim at the served model so
    # the generated bodies reach the validation and inference code.
    if case.path_parameters:
        case.path_parameters.update({k: v for k, v in SERVED.items() if k in case.path_parameters})
    response = case.call(base_url=schema_api.url)
    SENT[f"{response.status_code // 100}xx"] += 1
    PER_OPERATION[f"{case.method} {case.path}"] += 1
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
