"""Schemathesis against the app's own OpenAPI spec: no input gets a 5xx, every error is a problem.

Each operation in ``/openapi.json`` gets positive (schema-valid) and negative (schema-violating)
cases, sent in process to a live app on real SQLite with `EchoModel`, authenticated with an admin
key of the app's keys file (so every route is reached past its access check). Schemathesis runs
the app's lifespan on its own event loop, on the first request; the fixture shuts it down after
the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from requests.structures import CaseInsensitiveDict
from schemathesis.python import asgi

from agent_core._api_keys import KeysFile
from agent_core.server import Settings, create_app

PROBLEM = "application/problem+json"
POSITIVE = schemathesis.GenerationMode.POSITIVE


# create_app opens nothing: this instance only gives the spec. (schemathesis.pytest.from_fixture
# would load it per test, but its lazy loader does not run under pytest 9.)
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
schema.config.generation.update(modes=[POSITIVE, schemathesis.GenerationMode.NEGATIVE])


# Drives the whole service (app, cache, store) with generated requests: an integration test.
pytestmark = pytest.mark.integration


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    keys = tmp_path / "keys.json"
    _, key = KeysFile(keys).create("fuzz", ("admin",))
    app = create_app(
        Settings(
            store_url=f"sqlite:///{tmp_path / 'agent-core.db'}",
            model="echo",
            namespace="fuzz",
            max_body_bytes=64 << 10,
            keys_file=str(keys),
        )
    )
    try:
        yield app, {"Authorization": f"Bearer {key}"}
    finally:
        # Closes the cache and the model that the first request's lifespan opened.
        asgi.shutdown_lifespans()


@schema.parametrize()
@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(
    app: tuple[FastAPI, dict[str, str]], case: schemathesis.Case[Any]
) -> None:
    served, credential = app
    if case.path_parameters and case.meta and case.meta.generation.mode is POSITIVE:
        # Valid cases use a few real threads rather than a new one each (the spec's pattern
        # admits billions): windows and turns then meet the messages earlier cases wrote.
        thread_id = str(case.path_parameters.get("thread_id", ""))
        case.path_parameters["thread_id"] = f"t{len(thread_id) % 3}"
    # Reassigned, not updated in place: schemathesis 4.x sends only headers it saw set (and
    # case.call's own headers= did not reach the app).
    case.headers = CaseInsensitiveDict({**case.headers, **credential})
    response = case.call(app=served)
    request = case.as_curl_command()
    assert response.status_code < 500, f"{response.status_code} for {request}: {response.text}"
    # The admin key reaches every route: a refusal would mean the fuzzing stopped at the door.
    assert response.status_code not in (401, 403), f"{request}: {response.text}"
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])[0]
        assert content_type == PROBLEM, f"{content_type!r} for {request}: {response.text}"
        body = response.json()
        assert body["status"] == response.status_code
        assert body["type"].startswith("urn:agent-core:problem:")
        assert isinstance(body["detail"], str)
        assert body["detail"]
