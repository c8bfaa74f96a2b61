"""The API contract and the answers agree: every status, content type and body a running service gives is the
one its OpenAPI schema documents (schemathesis with all checks), and the bodies the JSON parser cannot read get
a documented 422 that says where."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hyp_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.core.failures import FailureGroup
from test_serve_support import TOKEN, settings, shared_artifacts

from twotower.serve.app import create_app

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="session")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


@pytest.fixture(scope="module")
def client(art):
    app = create_app(settings(art.root, max_body_bytes=64 * 1024, reload_poll_s=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_invalid_utf8_is_a_422_naming_the_byte(client):
    body = b'{"user_id": "u1", "context": {"surface": "ho\xffme"}}'
    for route in ("/v1/retrieve", "/v1/retrieve/batch"):
        r = client.post(route, content=body, headers=JSON)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == (
            "the body is not valid UTF-8: byte 0xff at position 44 (invalid start byte); send JSON encoded as UTF-8"
        )
        assert r.json()["detail"] == [{"loc": "body", "msg": r.json()["error"], "type": "json_invalid"}]


def test_deeply_nested_json_is_a_documented_422(client):
    body = b"[" * 10_000 + b"]" * 10_000
    r = client.post("/v1/retrieve", content=body, headers=JSON)
    assert r.status_code == 422, r.text
    assert "nested too deeply" in r.json()["error"]
    assert "422" in client.get("/openapi.json").json()["paths"]["/v1/retrieve"]["post"]["responses"]


def test_metrics_are_documented_as_prometheus_text(client):
    r = client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain") and "twotower_http_requests_total" in r.text
    content = client.get("/openapi.json").json()["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(content) == [r.headers["content-type"]]
    assert content[r.headers["content-type"]]["schema"] == {"type": "string"}


def test_served_schema_names_the_served_vocabularies(client):
    """The schema a running service serves lists its model's action names and item-feature columns, so a client
    (or a fuzzer) sending what the schema allows is never refused for an unknown name."""
    bundle = client.app.state.service.retriever.bundle
    components = client.get("/openapi.json").json()["components"]["schemas"]
    assert components["Event"]["properties"]["actions"]["items"]["enum"] == ["click", "like"] == list(bundle.actions)
    features = components["Filters"]["properties"]["item_features"]["anyOf"][0]
    columns = bundle.items.features.columns
    assert features["propertyNames"].get("enum") == (sorted(columns) if columns else None), columns
    assert components["BatchRequest"]["properties"]["requests"]["maxItems"] == 256
    # an exact index has no shortlist to choose: the field is not offered (sending it is a 422)
    assert "shortlist" not in components["RetrieveRequest"]["properties"]
    assert "rerank" in components["RetrieveRequest"]["properties"]


MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def fuzz(operation, mode: GenerationMode, headers: dict | None) -> str | None:
    """Run ~30 generated cases of ``operation`` with every check; the first failure found, or None."""
    checks = CHECKS.get_all()

    @given(case=operation.as_strategy(generation_mode=mode))
    @hyp_settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])  # fmt: skip
    def run(case) -> None:
        case.call_and_validate(headers=headers, checks=checks)

    try:
        run()
    except Unsatisfiable:  # no parameter or body the schema constrains: no negative case exists (GET /healthz)
        return None
    except (Exception, FailureGroup) as exc:  # FailureGroup is a BaseExceptionGroup
        return f"{operation.label} ({mode.value}): {exc}"[:3000]
    return None


def test_schemathesis_all_checks_pass(client):
    """Every endpoint of the schema the running service serves, every schemathesis check (status codes, content
    types, response schemas and headers, positive data accepted, negative data rejected, auth, methods ...),
    positive and negative cases, with the admin token for /admin/reload. All failures are reported together."""
    load_all_checks()
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    # A body over the size limit (64 KiB here) is refused with 413 before it is parsed: that is a rejection too
    rejection = schema.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    failures = []
    for result in schema.get_all_operations():
        operation = result.ok()
        headers = {"Authorization": f"Bearer {TOKEN}"} if operation.path.startswith("/admin/") else None
        failures += [fuzz(operation, mode, headers) for mode in MODES]
    failures = [f for f in failures if f]
    assert not failures, "\n\n".join(failures)
