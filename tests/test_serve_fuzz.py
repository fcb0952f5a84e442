"""schemathesis against the server's own OpenAPI schema (texocr's shipped model behind it): no input it generates,
valid or not, gets a 5xx, and every answer fits the schema. Bounded: a few dozen examples per route."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) is not installed")
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from texocr.config import ServeConfig

EXAMPLES = 25
SERVE = ServeConfig(max_new_tokens=32, max_images=4, max_queue=16, max_request_bytes=2_000_000)


@pytest.fixture(scope="module")
def app():
    from texocr.serve.app import create_app
    from texocr.serve.model import describe, load_recognizer

    rec = load_recognizer("default", None, SERVE)
    application = create_app(rec, SERVE, info=describe(rec, "default", None))
    yield application
    application.state.batcher.close()


@pytest.fixture(scope="module")
def api_schema(app):
    return schemathesis.openapi.from_asgi("/openapi.json", app)


ROUTES = [("GET", "/health"), ("GET", "/v1/model"), ("POST", "/v1/predict"), ("POST", "/v1/render")]


def test_schema_lists_every_route(api_schema):
    listed = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert listed == set(ROUTES)


# schemathesis' own pytest integration (`from_fixture(...).parametrize()`) breaks on pytest 9 (`_nodeid`),
# so each route's strategy is driven by hypothesis directly: the same generated cases, the same checks
# invalid data exists only for routes that take some: the POST bodies
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in ROUTES] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in ROUTES if m == "POST"]


@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{m}-{p}-{g.value}" for m, p, g in CASES])
def test_no_5xx_and_answers_fit_the_schema(api_schema, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call()
        assert response.status_code < 500, f"{method} {path}: {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"], body
        case.validate_response(response, checks=[status_code_conformance, content_type_conformance,
                                                 response_schema_conformance])

    check()
