"""``agent-core serve``'s listeners as a subprocess (issue 14): the ``--metrics-bind`` ops
listener beside the API port, ``--cors-origin``, HTTPS with ``--ssl-certfile`` and
``--ssl-keyfile``, and which ``--host`` it accepts without authentication.

One serve process per scenario at most, shared by the scenario's tests.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import pytest
import trustme

from ._poll import eventually_sync
from ._redis_server import free_port
from ._serve import ServeProcess, create_key

pytestmark = pytest.mark.integration

#: The ops routes: admin on the API port, open on the metrics listener.
OPS_ROUTES: Final = ("/metrics", "/readyz", "/v1/stats", "/v1/dashboard", "/")
ORIGIN: Final = "https://app.example"
#: The CORS headers that let a browser's page read a response.
GRANTS: Final = {"access-control-allow-origin", "access-control-allow-credentials"}


@dataclass(frozen=True)
class Served:
    process: ServeProcess
    metrics_url: str
    keys: dict[str, str]

    def bearer(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[name]}"}


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """serve with a keys file and ``--metrics-bind 127.0.0.1:<port>``, without CORS."""
    directory = tmp_path_factory.mktemp("listeners")
    keys_file = directory / "keys.json"
    keys = {
        "read": create_key(keys_file, "tenant-a", "read"),
        "write": create_key(keys_file, "tenant-a", "read", "write"),
        "admin": create_key(keys_file, "tenant-a", "admin"),
    }
    metrics_port = free_port()
    process = ServeProcess(
        directory,
        args=["--keys-file", str(keys_file), "--metrics-bind", f"127.0.0.1:{metrics_port}"],
    )
    process.start()
    metrics_url = f"http://127.0.0.1:{metrics_port}"
    try:
        # The ops listener starts beside the API one: wait for it too.
        eventually_sync(lambda: answers(f"{metrics_url}/healthz"), within=30)
        yield Served(process, metrics_url, keys)
    finally:
        process.stop()


@pytest.mark.parametrize("path", OPS_ROUTES)
def test_the_metrics_listener_serves_ops_routes_without_credentials(
    served: Served, path: str
) -> None:
    response = httpx.get(served.metrics_url + path, timeout=10)
    assert response.status_code == 200, response.text
    if path == "/metrics":
        assert "agent_core_" in response.text
    elif path == "/":
        assert response.headers["content-type"].startswith("text/html")
    else:
        assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/threads"),
        ("GET", "/v1/threads/t"),
        ("GET", "/v1/threads/t/info"),
        ("POST", "/v1/threads/t/messages"),
        ("POST", "/v1/threads/t/turns"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
    ],
)
def test_the_metrics_listener_404s_everything_else(served: Served, method: str, path: str) -> None:
    for headers in ({}, served.bearer("admin")):  # a key does not help either
        response = httpx.request(
            method,
            served.metrics_url + path,
            json={"messages": [{"role": "user", "content": "x"}], "message": "x"},
            headers=headers,
            timeout=10,
        )
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
    # Nothing was written through it.
    thread = httpx.get(f"{served.process.url}/v1/threads/t", headers=served.bearer("read"))
    assert thread.status_code == 404, thread.text


@pytest.mark.parametrize("path", OPS_ROUTES)
def test_ops_routes_on_the_api_port_need_the_admin_scope(served: Served, path: str) -> None:
    url = served.process.url + path
    refused = httpx.get(url, timeout=10)
    assert refused.status_code == 401, refused.text
    assert refused.headers["www-authenticate"].startswith("Bearer")
    for name in ("read", "write"):
        response = httpx.get(url, headers=served.bearer(name), timeout=10)
        assert response.status_code == 403, (name, response.text)
        assert response.json()["error"] == "PermissionDenied"
    assert httpx.get(url, headers=served.bearer("admin"), timeout=10).status_code == 200


def test_the_api_port_serves_threads_and_healthz(served: Served) -> None:
    url = served.process.url
    assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200  # liveness stays open
    posted = httpx.post(
        f"{url}/v1/threads/listeners/messages",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=served.bearer("write"),
        timeout=10,
    )
    assert posted.status_code == 201, posted.text
    assert httpx.get(f"{url}/v1/threads/listeners", timeout=10).status_code == 401
    try:
        read = httpx.get(f"{url}/v1/threads/listeners", headers=served.bearer("read"), timeout=10)
        assert read.json()["messages"] == [{"role": "user", "content": "hi"}]
    finally:
        httpx.delete(
            f"{url}/v1/threads/listeners?purge=true", headers=served.bearer("admin"), timeout=10
        )


def preflight(url: str, origin: str) -> httpx.Response:
    return httpx.options(
        url,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=10,
    )


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


def test_without_the_flag_no_cors_headers(served: Served) -> None:
    url = f"{served.process.url}/v1/threads/t/messages"
    response = preflight(url, ORIGIN)
    assert cors_headers(response) == {}
    answered = httpx.get(
        f"{served.process.url}/v1/threads", headers={"Origin": ORIGIN, **served.bearer("read")}
    )
    assert answered.status_code == 200
    assert cors_headers(answered) == {}


@pytest.fixture(scope="module")
def cors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """serve with ``--cors-origin https://app.example`` (loopback, no keys)."""
    process = ServeProcess(tmp_path_factory.mktemp("cors"), args=["--cors-origin", ORIGIN])
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_cors_preflight_of_an_allowed_origin(cors: ServeProcess) -> None:
    response = preflight(f"{cors.url}/v1/threads/t/messages", ORIGIN)
    assert response.status_code == 200, response.text
    headers = cors_headers(response)
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "if-match"} <= allowed
    # The actual request then carries the origin and the headers a browser may read.
    posted = httpx.post(
        f"{cors.url}/v1/threads/t/messages",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"Origin": ORIGIN},
        timeout=10,
    )
    assert posted.status_code == 201, posted.text
    assert posted.headers["access-control-allow-origin"] == ORIGIN
    exposed = {
        h.strip().lower() for h in posted.headers["access-control-expose-headers"].split(",")
    }
    assert {"location", "retry-after"} <= exposed


@pytest.mark.parametrize("origin", ["https://evil.example", "http://app.example", "null"])
def test_cors_gives_nothing_to_another_origin(cors: ServeProcess, origin: str) -> None:
    # Starlette sends its fixed headers (allowed methods, exposed headers) to any origin;
    # what a browser checks, Access-Control-Allow-Origin, is never there.
    response = preflight(f"{cors.url}/v1/threads/t/messages", origin)
    assert response.status_code == 400, response.text
    assert response.text == "Disallowed CORS origin"
    assert not GRANTS & set(response.headers)
    answered = httpx.get(f"{cors.url}/v1/threads", headers={"Origin": origin}, timeout=10)
    assert answered.status_code == 200
    assert not GRANTS & set(answered.headers)


def test_https_with_a_certificate_of_a_local_ca(tmp_path: Path) -> None:
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "server.pem", tmp_path / "server.key", tmp_path / "ca.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert))
    certificate.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    process = ServeProcess(
        tmp_path, args=["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)], ca=ca_file
    )
    process.start()  # its /healthz answered over HTTPS, verified with the CA
    try:
        assert process.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(ca_file))
        posted = httpx.post(
            f"{process.url}/v1/threads/t/messages",
            json={"messages": [{"role": "user", "content": "over TLS"}]},
            verify=trusted,
            timeout=10,
        )
        assert posted.status_code == 201, posted.text
        assert posted.http_version == "HTTP/1.1"
        # A client that does not trust the CA refuses the certificate ...
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{process.url}/healthz", timeout=10)
        # ... and the port does not speak plain HTTP.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{process.port}/healthz", timeout=10)
    finally:
        process.stop()


def test_a_non_loopback_host_is_refused_without_authentication(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent_core.cli", "serve", "--host", "0.0.0.0"],
        cwd=tmp_path,
        env=ServeProcess(tmp_path).env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "refusing to listen on '0.0.0.0' without authentication" in result.stderr
    assert "--keys-file" in result.stderr
    assert "--insecure-no-auth" in result.stderr


def test_a_non_loopback_host_is_accepted_with_a_keys_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    key = create_key(keys_file, "tenant-a")
    process = ServeProcess(tmp_path, args=["--host", "0.0.0.0", "--keys-file", str(keys_file)])
    process.start()
    try:
        url = f"{process.url}/v1/threads/t/messages"
        body = {"messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(url, json=body, timeout=10).status_code == 401
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.post(url, json=body, headers=headers, timeout=10).status_code == 201
        assert "WARNING" not in process.log.read_text()
    finally:
        process.stop()
