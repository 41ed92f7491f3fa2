"""The live web process against its own ``GET /openapi.json``, with schemathesis.

Every operation of the document gets a few generated requests, valid and invalid, sent over
a real socket to the Procfile's web process (real Redis, Celery worker, fake gateway). Every
reply must be documented (status, content type, body schema), and none may be a 5xx.
Generation is deterministic (a fixed seed, no example database) and bounded, so a failure
repeats and the module stays within about a minute on a loaded machine.

The schema is loaded when the tests are collected, before the service runs, from the code
that serves it; ``test_the_live_document_is_the_one_tested`` holds the live
``/openapi.json`` to it. (schemathesis's fixture-based loader does not run on pytest 9.2.)
"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis

from tests.support import Service, module_service, start_chain
from webhook.app import RequireToken
from webhook.openapi import document

svc = module_service("openapi")

SEED = 20261201
EXAMPLES = 4  # per operation, in the fuzzing phase; the coverage phase adds its edge cases
DOCUMENT = document(bearer=True, is_open=RequireToken.is_open)

schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "request-timeout": 10,
            "generation": {
                "max-examples": EXAMPLES,
                "database": "none",
                "deterministic": True,
                # Query parameters and headers it does not know, the API ignores by design.
                "allow-extra-parameters": False,
            },
            # Rules JSON Schema cannot state: a chain needs exactly one of video_id and
            # text_prompt and must fit under the 180 s cap; units take at most 6 decimal
            # places. A request valid field by field may then be refused (422, documented).
            "operations": [
                {
                    "include-path": path,
                    "include-method": method,
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                }
                for path, method in (("/chains", "POST"), ("/spend/budget", "PUT"))
            ],
        }
    ),
)


@pytest.fixture(scope="module")
def chain(svc: Service) -> dict[str, Any]:
    """One chain run to its end first, so lists, spend and the archive have real entries."""
    started = start_chain(svc, steps=1)
    return svc.wait(started["id"])


def test_the_live_document_is_the_one_tested(svc: Service) -> None:
    reply = requests.get(f"{svc.api}/openapi.json", timeout=10)  # open: no token
    assert reply.status_code == 200
    assert reply.json() == DOCUMENT


@schema.parametrize()
def test_every_reply_conforms_to_the_document(
    case: schemathesis.Case[Any], svc: Service, chain: dict[str, Any]
) -> None:
    auth = {"Authorization": f"Bearer {svc.env['API_TOKEN']}"}
    case.call_and_validate(base_url=svc.api, headers=auth, timeout=10)


def test_real_replies_conform_too(svc: Service, chain: dict[str, Any]) -> None:
    """Replies generated requests seldom reach: a finished chain, its refused commands, the
    link to its archived video and the file behind it."""
    assert chain["status"] == "succeeded", chain
    video = chain["archive"][0]
    assert video["status"] == "done", chain
    link = svc.http.get(f"{svc.api}/archive/{video['video_id']}/url", timeout=10)
    assert link.status_code == 200, link.text
    cases = [
        ("GET", "/chains/{chain_id}", f"/chains/{chain['id']}", 200),
        ("GET", "/chains", "/chains?status=succeeded", 200),
        ("GET", "/archive", "/archive?state=archived", 200),
        ("GET", "/archive.jsonl", "/archive.jsonl", 200),
        ("GET", "/spend", "/spend", 200),
        ("GET", "/account", "/account", 200),
        ("POST", "/chains/{chain_id}/cancel", f"/chains/{chain['id']}/cancel", 409),
        ("POST", "/chains/{chain_id}/resume", f"/chains/{chain['id']}/resume", 409),
        ("GET", "/files/{video_id}", link.json()["url"], 200),
    ]
    schema["/archive/{video_id}/url"]["GET"].validate_response(link)
    for method, path, url, status in cases:
        body: dict[str, Any] | None = {} if method == "POST" else None
        reply = svc.http.request(method, f"{svc.api}{url}", json=body, timeout=10)
        assert reply.status_code == status, (method, url, reply.text[:300])
        schema[path][method].validate_response(reply)
