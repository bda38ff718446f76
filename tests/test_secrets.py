"""Passwords never appear in any output (issue 11, defect 7).

`mask_url` masks the userinfo password and secret query parameters of any URL, parsed or
not; errors, ``serve``'s stderr, /readyz, /v1/stats and ``bench --json`` go through it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from agent_core import ConversationCache
from agent_core._urls import mask_url, redact
from agent_core.bench import BenchConfig, BenchRun, report
from agent_core.errors import AgentCoreError
from agent_core.server import Settings, create_app

from .test_cli import CLEAN_ENV, invoke

SECRET = "s3cret"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://:s3cret@127.0.0.1:63a79/0", "redis://:***@127.0.0.1:63a79/0"),
        ("rediss://ann:s3cret@h/0?ssl_cert_reqs=none", "rediss://ann:***@h/0?ssl_cert_reqs=none"),
        ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=***&db=1"),
        (
            "redis+cluster://:s3cret@10.0.0.1:7000,10.0.0.2:7000",
            "redis+cluster://:***@10.0.0.1:7000,10.0.0.2:7000",
        ),
        (
            "rediss+cluster://ann:s3/c@ret@h1:7000,h2:7000?ssl_cert_reqs=none&password=s3cret",
            "rediss+cluster://ann:***@h1:7000,h2:7000?ssl_cert_reqs=none&password=***",
        ),
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslpassword=s3cret;pass=s3cret",
            "postgresql://u@h/db?sslpassword=***;pass=***",
        ),
        (
            "postgres://u@h/db?PWD=s3cret&token=s3cret&api_key=s3cret",
            "postgres://u@h/db?PWD=***&token=***&api_key=***",
        ),
        ("postgresql://u:s3/c?r@et@h/db", "postgresql://u:***@h/db"),
        # TLS files are paths, shown; the key's passphrase is a secret.
        (
            "postgresql://u:s3cret@h/db?sslmode=verify-full&sslkey=/k.pem&sslpassword=s3cret",
            "postgresql://u:***@h/db?sslmode=verify-full&sslkey=/k.pem&sslpassword=***",
        ),
        (
            "rediss://:s3cret@h/0?ssl_keyfile=/k.pem&ssl_certfile=/c.pem&ssl_password=s3cret",
            "rediss://:***@h/0?ssl_keyfile=/k.pem&ssl_certfile=/c.pem&ssl_password=***",
        ),
        ("http://:s3cret@[::1/0", "http://:***@[::1/0"),
        ("u:s3cret@h/db", "u:***@h/db"),
        ("sqlite:///a.db", "sqlite:///a.db"),
        (
            "postgresql://u@h/db?application_name=x#frag",
            "postgresql://u@h/db?application_name=x#frag",
        ),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert SECRET not in mask_url(url)


def test_redact_removes_every_form_of_the_secret() -> None:
    url = "redis://:p%40ss%2Fw@h:1/0?token=t0k3n"
    text = f"failed to connect to {url} with p@ss/w, p%40ss%2Fw and t0k3n"
    cleaned = redact(text, url)
    for secret in ("p@ss/w", "p%40ss%2Fw", "t0k3n"):
        assert secret not in cleaned


BAD_URLS = [
    ("sqlite:///{tmp}/a.db", "redis://:s3cret@127.0.0.1:63a79/0"),
    ("sqlite:///{tmp}/a.db", "http://:s3cret@127.0.0.1:6379/0"),
    ("sqlite:///{tmp}/a.db", "redis://:s3cret@[::1/0"),
    ("sqlite:///{tmp}/a.db", "redis://127.0.0.1:6379/0?password=s3cret&nosuchoption=1"),
    ("mysql://u:s3cret@h/db", None),
    ("postgresql://postgres:s3cret@127.0.0.1:54x32/test", None),
    ("postgresql://postgres:s3cret@[::1/test", None),
    ("postgresql://postgres@127.0.0.1:1/test?password=s3cret", None),
    ("postgresql://postgres@127.0.0.1:5432/test?password=s3cret&pool_max_size=x", None),
    ("sqlite://u:s3cret@host/x.db", None),
    ("sqlite:///{tmp}/a.db", "redis+cluster://:s3cret@127.0.0.1:7000,127.0.0.1:70a1"),
    ("sqlite:///{tmp}/a.db", "redis+cluster://:s3cret@127.0.0.1:7000,:7001"),
    ("sqlite:///{tmp}/a.db", "rediss+cluster://:s3cret@127.0.0.1:7000/1"),
    ("sqlite:///{tmp}/a.db", "redis+cluster://127.0.0.1:7000?password=s3cret&nosuchoption=1"),
]


@pytest.mark.integration
@pytest.mark.parametrize(("store", "redis"), BAD_URLS)
async def test_cache_errors_never_show_the_password(
    tmp_path: Path, store: str, redis: str | None
) -> None:
    with pytest.raises(AgentCoreError) as caught:
        async with ConversationCache.from_urls(
            store.format(tmp=tmp_path), redis=redis, namespace="n"
        ):
            pass
    assert SECRET not in str(caught.value)


@pytest.mark.integration
@pytest.mark.parametrize(("store", "redis"), BAD_URLS[:6])
def test_serve_stderr_never_shows_the_password(
    tmp_path: Path, store: str, redis: str | None
) -> None:
    script = Path(sys.executable).with_name("agent-core")
    args = [str(script), "serve", "--port", "0", "--store", store.format(tmp=tmp_path)]
    done = subprocess.run(
        [*args, *(["--redis", redis] if redis else [])],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k not in CLEAN_ENV},
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "error:" in done.stderr
    assert SECRET not in done.stdout + done.stderr


@pytest.mark.integration
def test_bench_json_masks_query_passwords() -> None:
    store = "postgresql://ana@db/x?password=s3cret&sslpassword=s3cret"
    run = BenchRun(
        BenchConfig(store=store, redis="redis://r:6379/0?password=s3cret"),
        store=store,
        namespace="n",
        memory_limit=1 << 30,
    )
    document = json.dumps(report(run))
    assert SECRET not in document
    assert "password=***" in document


def test_settings_repr_masks_its_urls() -> None:
    settings = Settings(store_url="postgresql://a:s3cret@h/d", redis_url="redis://:s3cret@h/0")
    assert SECRET not in repr(settings)


async def test_readyz_and_stats_never_show_the_password(tmp_path: Path) -> None:
    app = create_app(
        Settings(
            store_url=f"sqlite:///{tmp_path / 'a.db'}",
            # Nothing listens on port 1: Redis is degraded, its error reported.
            redis_url="redis://:s3cret@127.0.0.1:1/0",
            namespace="n",
        )
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        await http.get("/v1/threads/t")
        for path in ("/readyz", "/v1/stats", "/metrics"):
            assert SECRET not in (await http.get(path)).text


@pytest.mark.integration
@pytest.mark.parametrize("url", ["http://u:s3cret@127.0.0.1:1", "http://u:s3cret@[::1"])
def test_stats_never_shows_the_password(url: str) -> None:
    result = invoke(["stats", "--url", url, "--timeout", "1"])
    assert result.exit_code == 1
    assert "cannot reach" in result.output
    assert SECRET not in result.output
