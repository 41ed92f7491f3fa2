"""``GET /openapi.json``: a valid OpenAPI 3.1 document that covers every route of the app,
generated from the models that validate requests, with the bearer scheme where the app asks
for the token."""

from __future__ import annotations

import re
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator
from starlette.routing import Route
from starlette.testclient import TestClient

from webhook import openapi
from webhook.api import ArchiveRequest, BudgetRequest, ChainRequest
from webhook.app import RequireToken

METHODS = ("get", "put", "post", "delete", "patch")


def fetch(client: TestClient) -> dict[str, Any]:
    reply = TestClient(client.app).get("/openapi.json")  # no token: the document is open
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("application/json")
    doc: dict[str, Any] = reply.json()
    return doc


def routes(client: TestClient) -> set[tuple[str, str]]:
    """Every (path template, method) the app answers, converters dropped: ``{index}``."""
    found = set()
    for route in client.app.routes:  # type: ignore[attr-defined]
        assert isinstance(route, Route), route
        path = re.sub(r"{(\w+):\w+}", r"{\1}", route.path)
        found |= {(path, m.lower()) for m in route.methods or () if m != "HEAD"}
    return found


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def test_the_document_is_valid_openapi_3_1(client: TestClient) -> None:
    doc = fetch(client)
    assert doc["openapi"].startswith("3.1")
    OpenAPIV31SpecValidator(doc).validate()  # raises with the first problem found


def test_every_route_is_documented_and_nothing_else(client: TestClient) -> None:
    documented = {(path, method) for path, method, _ in operations(fetch(client))}
    assert routes(client) - documented == set(), "routes missing from webhook/openapi.py"
    assert documented - routes(client) == set(), "documented operations with no route"


def test_request_bodies_are_the_validating_models(client: TestClient) -> None:
    doc = fetch(client)
    schemas = doc["components"]["schemas"]
    for model in (ChainRequest, ArchiveRequest, BudgetRequest):
        generated = model.model_json_schema(ref_template=openapi.REF)
        generated.pop("$defs", None)
        assert schemas[model.__name__] == generated
    # A field added to ChainRequest is in the document with nothing else to change.
    assert set(schemas["ChainRequest"]["properties"]) == set(ChainRequest.model_fields)
    body = doc["paths"]["/chains"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/ChainRequest"}


def test_replies_allow_fields_added_later(client: TestClient) -> None:
    schemas = fetch(client)["components"]["schemas"]
    for name in ("ChainView", "StepView", "ArchiveEntry", "VideoView", "SpendReport", "Error"):
        assert schemas[name]["additionalProperties"] is True, name
    assert "chain_status" in schemas["Refused"]["required"]
    assert set(schemas["Error"]["properties"]) == {"error", "details"}


def test_bearer_applies_exactly_where_the_app_asks_for_the_token(client: TestClient) -> None:
    doc = fetch(client)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "the service's API_TOKEN",
    }
    anonymous = TestClient(client.app)
    for path, method, op in operations(doc):
        url = re.sub(r"{index}", "0", re.sub(r"{kind}", "video-extend", path))
        url = re.sub(r"{\w+}", "x", url)
        reply = anonymous.request(method, url, json={})
        if op["security"] == []:
            assert RequireToken.is_open(path), path
            assert reply.status_code != 401, (method, path, reply.text)
            assert "401" not in op["responses"] or path.startswith("/callbacks/"), path
        else:
            assert op["security"] == [{"bearer": []}], path
            assert reply.status_code == 401, (method, path)
            assert "401" in op["responses"], path
            assert ("415" in op["responses"]) == (method in ("post", "put", "patch")), path


def test_callbacks_document_their_403_for_a_wrong_token(client: TestClient) -> None:
    doc = fetch(client)
    for path in ("/callbacks/{chain_id}/{index}/{token}", "/callbacks/archive/{kind}/{token}"):
        op = doc["paths"][path]["post"]
        assert op["security"] == []
        assert "403" in op["responses"]
    index = doc["paths"]["/callbacks/{chain_id}/{index}/{token}"]["post"]["parameters"][1]
    assert index["schema"] == {"type": "integer", "minimum": 0}


def test_without_api_auth_the_document_asks_for_no_token() -> None:
    doc = openapi.document(bearer=False, is_open=RequireToken.is_open)
    OpenAPIV31SpecValidator(doc).validate()
    assert "securitySchemes" not in doc["components"]
    for _, _, op in operations(doc):
        assert op.get("security", []) == []


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/chains", {"limit": "0"}),
        ("/chains", {"before": "nan"}),
        ("/archive", {"state": "gone"}),
        ("/spend", {"days": "²"}),  # str.isdigit() says yes, int() says no
        ("/spend", {"days": "٣"}),  # an Arabic-Indic digit
    ],
)
def test_malformed_queries_are_documented_422s(
    client: TestClient, path: str, params: dict[str, str]
) -> None:
    reply = client.get(path, params=params)
    assert reply.status_code == 422, reply.text
    assert "422" in fetch(client)["paths"][path]["get"]["responses"]


def test_a_method_a_route_does_not_take_is_405_with_allow(client: TestClient) -> None:
    reply = client.delete("/healthz")
    assert reply.status_code == 405
    assert set(reply.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}
    assert reply.json() == {"error": "Method Not Allowed"}


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/metrics", {"GET", "HEAD"}),  # a method no route takes: 405, not 415
        ("PUT", "/chains/c1/cancel", {"POST"}),
        ("OPTIONS", "/archive", {"GET", "HEAD", "POST"}),  # one route per method
        ("DELETE", "/chains", {"GET", "HEAD", "POST"}),
    ],
)
def test_an_undocumented_method_is_405_naming_every_method_of_the_path(
    client: TestClient, method: str, path: str, allow: set[str]
) -> None:
    reply = client.request(method, path)
    assert reply.status_code == 405, reply.text
    assert set(reply.headers["allow"].split(", ")) == allow
    for name in allow - {"HEAD"}:
        assert path.replace("c1", "{chain_id}") in fetch(client)["paths"]
        assert name.lower() in fetch(client)["paths"][path.replace("c1", "{chain_id}")]


def test_a_route_that_takes_a_body_still_wants_json(client: TestClient) -> None:
    reply = client.put("/spend/budget", content=b'{"daily_units": 5}')
    assert reply.status_code == 415
    reply = client.post("/chains/c1/cancel", content=b"x", headers={"Content-Type": "text/plain"})
    assert reply.status_code == 415
