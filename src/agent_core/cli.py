"""The ``agent-core`` console script: ``serve``, ``bench``, ``stats``, ``chat``, ``threads``,
``gc`` and ``keys``.

Every option also reads an ``AGENT_CORE_*`` variable, the same ones `Settings.from_env`
reads, so a flag, the environment and the server's defaults give one configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib.metadata
import inspect
import ipaddress
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn, TypeVar

import httpx
import orjson

from ._env import env_value
from ._extras import needs_extra
from ._urls import mask_url, redact
from ._validation import check_thread_id
from .agent import BaseAgent
from .cache import ConversationCache
from .errors import AgentCoreError, ConfigurationError
from .server import Settings
from .store import MAX_PAGE_SIZE, ThreadInfo

# The ``cli`` extra; `serve` also needs the ``server`` extra, which it imports when it runs.
with needs_extra("The agent-core command"):
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    from ._keys_cli import keys_app

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .bench import BenchRun, Row

__all__ = ["app", "main"]

T = TypeVar("T")

#: What ``chat`` reads as the end of the session, besides end of input.
QUIT_COMMANDS: Final = frozenset({"/quit", "/exit"})
#: Rows ``gc`` removes per transaction unless told otherwise.
DEFAULT_GC_BATCH: Final = 1000

app = typer.Typer(
    name="agent-core",
    help="agent-core: the memory layer for LLM agents.",
    no_args_is_help=True,
    add_completion=False,
    # Typed errors are reported as one line by the commands; anything else is a bug and
    # keeps Python's plain traceback.
    pretty_exceptions_enable=False,
)

_out = Console(highlight=False)
_err = Console(stderr=True, highlight=False)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="AGENT_CORE_STORE_URL",
        help="Store URL: sqlite:///file.db or postgresql://...  \\[default: sqlite:///agent-core.db]",
        show_default=False,
    ),
]
RedisOption = Annotated[
    str | None,
    typer.Option(
        "--redis",
        envvar="AGENT_CORE_REDIS_URL",
        help="Redis URL for the shared L2 cache and invalidation bus.  \\[default: none]",
        show_default=False,
    ),
]
ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        envvar="AGENT_CORE_MODEL",
        help="'echo' (offline), a claude-* model (ANTHROPIC_API_KEY) or a model name for "
        "an OpenAI-compatible server (OPENAI_BASE_URL, OPENAI_API_KEY).  \\[default: echo]",
        show_default=False,
    ),
]
NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        envvar="AGENT_CORE_NAMESPACE",
        help="Namespace of the threads.  \\[default: default]",
        show_default=False,
    ),
]


def _version() -> str:
    """The installed distribution's version (pip's metadata, not a copy of it)."""
    try:
        return importlib.metadata.version("agent-core")
    except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        print(f"agent-core {_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """agent-core: the memory layer for LLM agents."""


def _fail(message: str, *urls: str | None) -> NoReturn:
    """One red line on stderr, exit code 1; no secret of ``urls`` in it."""
    for url in urls:
        message = redact(message, url)
    _err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.from_env(environ=os.environ, **overrides)
    except AgentCoreError as exc:
        _fail(str(exc), overrides.get("store_url"), overrides.get("redis_url"))


@app.command()
def serve(
    host: Annotated[
        str, typer.Option(envvar="AGENT_CORE_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="AGENT_CORE_PORT", help="Port to listen on.")] = 8000,
    store: StoreOption = None,
    redis: RedisOption = None,
    model: ModelOption = None,
    namespace: NamespaceOption = None,
    consistency: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_CONSISTENCY",
            help="'bounded' (reads at most --max-staleness behind) or 'strong' (linearizable, "
            "one store query per read).  \\[default: bounded]",
            show_default=False,
        ),
    ] = None,
    max_staleness: Annotated[
        float | None,
        typer.Option(
            envvar="AGENT_CORE_MAX_STALENESS",
            help="Seconds a bounded read may lag an acknowledged append.  \\[default: 1.0]",
            show_default=False,
        ),
    ] = None,
    max_context_tokens: Annotated[
        int | None,
        typer.Option(
            envvar="AGENT_CORE_MAX_CONTEXT_TOKENS",
            help="The model's context window, in tokens, for turns.  \\[default: 16000]",
            show_default=False,
        ),
    ] = None,
    reserve_output_tokens: Annotated[
        int | None,
        typer.Option(
            envvar="AGENT_CORE_RESERVE_OUTPUT_TOKENS",
            help="Tokens of the context window kept for the reply.  \\[default: 1000]",
            show_default=False,
        ),
    ] = None,
    window_strategy: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_WINDOW_STRATEGY",
            help="History windows of turns: 'sliding' or 'stable' (cache-stable prefixes "
            "that providers bill at their cached price).  \\[default: sliding]",
            show_default=False,
        ),
    ] = None,
    prompt_cache_retention: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_PROMPT_CACHE_RETENTION",
            help="OpenAI models: how long OpenAI keeps cached prompt prefixes, 'in_memory' "
            "(5-10 minutes) or '24h' (gpt-5.1 and later).  \\[default: OpenAI's]",
            show_default=False,
        ),
    ] = None,
    max_body_bytes: Annotated[
        int | None,
        typer.Option(
            envvar="AGENT_CORE_MAX_BODY_BYTES",
            help="Largest request body, in bytes (413 beyond).  \\[default: 4194304]",
            show_default=False,
        ),
    ] = None,
    max_message_bytes: Annotated[
        int | None,
        typer.Option(
            envvar="AGENT_CORE_MAX_MESSAGE_BYTES",
            help="Largest message, in bytes of its JSON.  \\[default: 1048576]",
            show_default=False,
        ),
    ] = None,
    retention: Annotated[
        float | None,
        typer.Option(
            envvar="AGENT_CORE_RETENTION",
            help="Seconds each thread is kept after its last write.  \\[default: none, forever]",
            show_default=False,
        ),
    ] = None,
    sweep_interval: Annotated[
        float | None,
        typer.Option(
            envvar="AGENT_CORE_SWEEP_INTERVAL",
            help="Seconds between deletions of expired threads; 0: never (agent-core gc does "
            "it on demand).  \\[default: 60]",
            show_default=False,
        ),
    ] = None,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log/--no-access-log",
            envvar="AGENT_CORE_ACCESS_LOG",
            help="Log one line per request (uvicorn's access log).",
        ),
    ] = True,
    insecure_no_auth: Annotated[
        bool,
        typer.Option(
            "--insecure-no-auth",
            envvar="AGENT_CORE_INSECURE_NO_AUTH",
            help="Listen on a non-loopback address although requests are not "
            "authenticated: anyone who reaches the port can read, write and purge every "
            "thread.",
        ),
    ] = False,
    keys_file: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_KEYS_FILE",
            help="API keys (agent-core keys create): every request then needs "
            "'Authorization: Bearer <key>', and acts for the key's tenant. Reloaded on change.",
        ),
    ] = None,
    jwt_jwks_url: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_JWT_JWKS_URL",
            help="Accept RS256/ES256 JWTs signed by a key of this JWKS (needs --jwt-audience "
            "and --jwt-issuer).",
        ),
    ] = None,
    jwt_audience: Annotated[
        str | None,
        typer.Option(envvar="AGENT_CORE_JWT_AUDIENCE", help="The JWTs' required 'aud'."),
    ] = None,
    jwt_issuer: Annotated[
        str | None,
        typer.Option(envvar="AGENT_CORE_JWT_ISSUER", help="The JWTs' required 'iss'."),
    ] = None,
    jwt_tenant_claim: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_JWT_TENANT_CLAIM",
            help="The JWT claim naming the tenant.  \\[default: tenant]",
            show_default=False,
        ),
    ] = None,
    max_tenants: Annotated[
        int | None,
        typer.Option(
            envvar="AGENT_CORE_MAX_TENANTS",
            help="Tenants this instance serves at once (each holds a cache and a Redis "
            "pub/sub connection).  \\[default: 100]",
            show_default=False,
        ),
    ] = None,
    tenant_requests_per_minute: Annotated[
        int | None,
        typer.Option(
            envvar="AGENT_CORE_TENANT_REQUESTS_PER_MINUTE",
            help="Requests per minute per tenant (429 beyond).  \\[default: unlimited]",
            show_default=False,
        ),
    ] = None,
    tenant_tokens_per_minute: Annotated[
        int | None,
        typer.Option(
            envvar="AGENT_CORE_TENANT_TOKENS_PER_MINUTE",
            help="Model tokens (prompt + reserved output) per minute per tenant, for turns "
            "(429 beyond).  \\[default: unlimited]",
            show_default=False,
        ),
    ] = None,
    tenant_max_stored_bytes: Annotated[
        int | None,
        typer.Option(
            envvar="AGENT_CORE_TENANT_MAX_STORED_BYTES",
            help="Bytes of messages each tenant may store (507 beyond; soft: measured every "
            "10 s).  \\[default: unlimited]",
            show_default=False,
        ),
    ] = None,
    audit_log: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_AUDIT_LOG",
            help="Write the audit log (JSON lines) to this file, or '-' for stderr.",
        ),
    ] = None,
    audit_sample_rate: Annotated[
        float | None,
        typer.Option(
            envvar="AGENT_CORE_AUDIT_SAMPLE_RATE",
            help="Fraction of reads and appends the audit log records (the rest is always "
            "recorded).  \\[default: 0]",
            show_default=False,
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            envvar="AGENT_CORE_CORS_ORIGINS",
            help="A browser origin allowed to call the API (repeat for more; the variable: "
            "comma-separated).  \\[default: none, CORS off]",
            show_default=False,
        ),
    ] = None,
    metrics_bind: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_METRICS_BIND",
            help="Also serve /metrics, /readyz, /v1/stats and the dashboard, without "
            "credentials, on [HOST:]PORT (host 127.0.0.1 unless given).",
        ),
    ] = None,
    ssl_certfile: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_SSL_CERTFILE", help="Serve HTTPS with this certificate (PEM)."
        ),
    ] = None,
    ssl_keyfile: Annotated[
        str | None,
        typer.Option(envvar="AGENT_CORE_SSL_KEYFILE", help="The private key of --ssl-certfile."),
    ] = None,
    encryption_keys_file: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_ENCRYPTION_KEYS_FILE",
            help="Encrypt stored messages (store and Redis) with the keys of this file; the "
            "last key encrypts new writes.  \\[default: none, not encrypted]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the HTTP API (and /metrics, /healthz) with uvicorn until SIGINT or SIGTERM.

    Every setting is also an AGENT_CORE_* variable; AGENT_CORE_L2_SIGNING_KEY, a secret, has
    no flag (it would show in ps). Without --keys-file or --jwt-jwks-url requests are not
    authenticated, so serve then listens only on a loopback address unless told
    --insecure-no-auth.
    """
    settings = _settings(
        store_url=store,
        redis_url=redis,
        model=model,
        namespace=namespace,
        consistency=consistency,
        max_staleness=max_staleness,
        max_context_tokens=max_context_tokens,
        reserve_output_tokens=reserve_output_tokens,
        window_strategy=window_strategy,
        prompt_cache_retention=prompt_cache_retention,
        max_body_bytes=max_body_bytes,
        max_message_bytes=max_message_bytes,
        retention=retention,
        sweep_interval=sweep_interval,
        keys_file=keys_file,
        jwt_jwks_url=jwt_jwks_url,
        jwt_audience=jwt_audience,
        jwt_issuer=jwt_issuer,
        jwt_tenant_claim=jwt_tenant_claim,
        max_tenants=max_tenants,
        tenant_requests_per_minute=tenant_requests_per_minute,
        tenant_tokens_per_minute=tenant_tokens_per_minute,
        tenant_max_stored_bytes=tenant_max_stored_bytes,
        audit_log=audit_log,
        audit_sample_rate=audit_sample_rate,
        cors_origins=",".join(cors_origin) if cors_origin else None,
        encryption_keys_file=encryption_keys_file,
    )
    if not _is_loopback(host) and not settings.authenticates:
        if not insecure_no_auth:
            _fail(
                f"refusing to listen on {host!r} without authentication: anyone who reaches "
                "the port could read, write and purge every thread. Give --keys-file (or "
                "--jwt-jwks-url), listen on 127.0.0.1 behind a proxy that authenticates, or "
                "pass --insecure-no-auth to accept that"
            )
        _err.print(
            f"[bold red]WARNING:[/] listening on {escape(host)} with NO authentication "
            "(--insecure-no-auth): anyone who reaches the port can read, write and purge "
            "every thread"
        )
    listeners = _Listeners(host, port, _metrics_address(metrics_bind), ssl_certfile, ssl_keyfile)
    try:
        from .server import create_app  # the ``server`` extra: ConfigurationError without it

        asgi = create_app(settings)
        with _signals_end_quietly():
            asyncio.run(_serve(asgi, listeners, access_log=access_log))
    except AgentCoreError as exc:
        _fail(str(exc), settings.store_url, settings.redis_url)


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``); a name could be anything."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class _Listeners:
    """Where serve listens: the API, the optional ops listener, and HTTPS files."""

    host: str
    port: int
    metrics: tuple[str, int] | None
    ssl_certfile: str | None
    ssl_keyfile: str | None


def _metrics_address(bind: str | None) -> tuple[str, int] | None:
    """``--metrics-bind`` [HOST:]PORT as (host, port); the host defaults to loopback."""
    if bind is None or not bind.strip():
        return None
    host, _, port = bind.strip().rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not (port.isdigit() and 0 < int(port) < 65536):
        _fail(f"--metrics-bind must be [HOST:]PORT with a port of 1-65535, got {bind!r}")
    if not _is_loopback(host):
        _err.print(
            f"[bold yellow]note:[/] the metrics listener on {escape(host)} serves /metrics, "
            "/readyz, /v1/stats and the dashboard to anyone who reaches it"
        )
    return host, int(port)


async def _serve(asgi: FastAPI, listeners: _Listeners, *, access_log: bool) -> None:
    """uvicorn inside the app's lifespan, which this runs itself; with a metrics address,
    a second uvicorn serving only the ops routes, stopped with the first.

    Under uvicorn's lifespan a store that will not open is a logged traceback and exit
    code 3; run here, it is the typed error that `serve` reports in one line.
    """
    with needs_extra("agent-core serve"):
        import uvicorn

    from .server import ops_only

    class _OpsServer(uvicorn.Server):
        # The API server owns SIGINT/SIGTERM: it stops this one when it stops.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    async with asgi.router.lifespan_context(asgi):
        _freeze_startup_objects()
        config = uvicorn.Config(
            asgi,
            host=listeners.host,
            port=listeners.port,
            lifespan="off",
            access_log=access_log,
            ssl_certfile=listeners.ssl_certfile,
            ssl_keyfile=listeners.ssl_keyfile,
        )
        if listeners.metrics is None:
            await uvicorn.Server(config).serve()
            return
        ops_host, ops_port = listeners.metrics
        ops = _OpsServer(
            uvicorn.Config(
                ops_only(asgi), host=ops_host, port=ops_port, lifespan="off", access_log=False
            )
        )
        ops_task = asyncio.create_task(ops.serve())
        try:
            await uvicorn.Server(config).serve()
        finally:
            ops.should_exit = True
            await ops_task


def _freeze_startup_objects() -> None:
    """Keep what startup made (modules, the app, the vocabularies) out of later GC passes.

    A full collection walks every tracked object: with ~50,000 of them after startup it
    held the loop for 10-45 ms in ``bench`` runs, enough to fail the loop-lag target.
    Frozen objects are skipped, so a pause costs only what the work since allocated.
    """
    gc.collect()
    gc.freeze()


@app.command()
def stats(
    url: Annotated[
        str, typer.Option(envvar="AGENT_CORE_URL", help="Base URL of a running server.")
    ] = "http://127.0.0.1:8000",
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the server.")] = 5.0,
) -> None:
    """Show the cache statistics of a running server (GET /v1/stats).

    A server with API keys wants an admin key in AGENT_CORE_API_KEY (or its _FILE twin; a
    variable only, as a flag would show in ps), or --url of its --metrics-bind listener.
    """
    endpoint = url.rstrip("/") + "/v1/stats"
    shown = mask_url(endpoint)
    key = env_value(os.environ, "AGENT_CORE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(endpoint, timeout=timeout, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        _fail(f"cannot reach {shown}: {str(exc) or type(exc).__name__}", url)
    if response.status_code != 200:
        _fail(f"{shown} answered {response.status_code}: {_problem(response)}", url)
    try:
        data = response.json()
    except ValueError:
        _fail(f"{shown} did not answer JSON: {response.text[:200]!r}", url)
    if not isinstance(data, dict):
        _fail(f"{shown} answered {type(data).__name__}, expected a JSON object", url)
    if as_json:
        # Plain print: rich would re-wrap or colour the JSON that scripts parse.
        print(response.text)
        return
    _out.print(_fields_table(data, title="agent-core stats", caption=mask_url(url)))


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="200 threads, 1,000 turns: about 15 s.")
    ] = False,
    store: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_BENCH_STORE_URL",
            help="Store URL; the run's own namespace is removed from it (and Redis) at the end.  "
            "\\[default: SQLite in a temporary directory]",
            show_default=False,
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(
            envvar="AGENT_CORE_BENCH_REDIS_URL",
            help="Redis URL for L2.  \\[default: none, L1 and the store only]",
            show_default=False,
        ),
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write every figure to this JSON file.")
    ] = None,
    plot_dir: Annotated[
        Path | None,
        typer.Option("--plot", help="Write PNG plots to this directory (needs matplotlib)."),
    ] = None,
    requests: Annotated[
        int | None, typer.Option(help="Agent turns.  \\[default: 20,000; 1,000 with --quick]")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="Threads.  \\[default: 1,000; 200 with --quick]")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the trace and the texts.")] = 1,
    baseline: Annotated[
        bool,
        typer.Option(
            help="Run the trace again, side by side with a Phase-1 baseline (store reads, "
            "tokens recounted, no cache), and judge the seed's 70 % latency claim."
        ),
    ] = True,
) -> None:
    """Measure the success metrics: hit rates, latency, memory and loop lag, with targets.

    Agent turns (EchoModel) on Zipf-distributed threads, through a new cache every 50
    turns as serverless cold starts make. Then the same trace again, each turn by
    agent-core and by a Phase-1 baseline. Exit code 1 if a target is missed.
    """
    from .bench import BenchConfig, plot, report, rows, run_bench

    overrides = {
        name: value
        for name, value in (("requests", requests), ("threads", threads))
        if value is not None
    }
    try:
        make = BenchConfig.quick if quick else BenchConfig
        config = make(store=store, redis=redis, seed=seed, baseline=baseline, **overrides)
        # Checked before the run, not after minutes of it.
        _check_writable(json_file, plot_dir)
        _freeze_startup_objects()
        with _progress(config.requests * (2 if config.baseline else 1)) as advance:
            run = asyncio.run(run_bench(config, advance))
        table = rows(run)
        written = plot(run, plot_dir) if plot_dir is not None else []
        if json_file is not None:
            _write(json_file, orjson.dumps(report(run), option=orjson.OPT_INDENT_2) + b"\n")
    except AgentCoreError as exc:
        _fail(str(exc), store, redis)
    except KeyboardInterrupt:
        # run_bench deleted what it wrote on the way out (its cleanup is a finally).
        _err.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None
    _out.print(_bench_table(run, table))
    for path in [*written, *([json_file] if json_file is not None else [])]:
        _out.print(f"wrote {escape(str(path))}")
    if any(row.passed is False for row in table):
        raise typer.Exit(1)


@contextlib.contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar of turns on stderr, shown only on a terminal."""
    with Progress(
        TextColumn("turns"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_err,
        transient=True,
        disable=not _err.is_terminal,
    ) as progress:
        task = progress.add_task("turns", total=total)
        yield lambda n: progress.advance(task, n)


def _bench_table(run: BenchRun, table: list[Row]) -> Table:
    config = run.config
    l2 = "Redis L2" if config.redis is not None else "no L2"
    versus = (
        f" Then {run.config.requests:,} turns side by side with the Phase-1 baseline "
        f"({run.comparison.seconds:.1f} s): all but the model call, improvement = "
        "1 - agent-core / baseline."
        if run.comparison.agent_core
        else ""
    )
    caption = (
        f"{config.requests:,} turns on {config.threads:,} threads (Zipf s={config.zipf_s:g}), "
        f"{run.instances:,} cold starts; {_store_kind(run.store)}, {l2}; "
        f"{run.turn_seconds:.1f} s. A load is a turn's history read and token window.{versus}"
    )
    out = Table(title="agent-core bench", caption=caption, header_style="bold")
    for column in ("metric", "target", "measured", ""):
        out.add_column(column)
    verdicts = {True: "[green]pass[/]", False: "[bold red]FAIL[/]", None: "[dim]-[/]"}
    for row in table:
        out.add_row(row.metric, row.target, row.measured, verdicts[row.passed])
    return out


def _store_kind(url: str) -> str:
    return "PostgreSQL" if url.startswith("postgres") else "SQLite"


def _check_writable(json_file: Path | None, plot_dir: Path | None) -> None:
    from .bench import plot_directory

    if json_file is not None and not json_file.parent.is_dir():
        raise ConfigurationError(f"cannot write {json_file}: {json_file.parent} is not a directory")
    if plot_dir is not None:
        plot_directory(plot_dir)


def _write(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path}: {exc}") from exc


@app.command()
def chat(
    thread: Annotated[str, typer.Argument(help="Thread id: its history is kept in the store.")],
    store: StoreOption = None,
    redis: RedisOption = None,
    model: ModelOption = None,
    namespace: NamespaceOption = None,
    system: Annotated[
        str, typer.Option(envvar="AGENT_CORE_SYSTEM_PROMPT", help="System prompt of each turn.")
    ] = "",
) -> None:
    """Chat on THREAD in the terminal, one line a turn, until end of input or /quit.

    Runs the agent in this process (no server needed), on the same store and cache.
    """
    settings = _settings(store_url=store, redis_url=redis, model=model, namespace=namespace)
    try:
        # Checked before the first line is read, not after the user typed it.
        check_thread_id(thread)
        asyncio.run(_chat(settings, thread, system))
    except AgentCoreError as exc:
        _fail(str(exc), settings.store_url, settings.redis_url)


async def _chat(settings: Settings, thread: str, system: str) -> None:
    chat_model = settings.chat_model()
    try:
        async with settings.cache() as memory:
            agent = BaseAgent(
                chat_model,
                memory,
                system_prompt=system,
                max_context_tokens=settings.max_context_tokens,
                reserve_output_tokens=settings.reserve_output_tokens,
                token_model=settings.token_model,
                window_strategy=settings.turn_windows,
            )
            interactive = sys.stdin.isatty()
            lines = _stdin_lines()
            while True:
                if interactive:
                    _out.print("[bold cyan]you>[/] ", end="")
                line = await lines.get()
                if line is None and interactive:
                    _out.print()  # end the prompt's line after Ctrl-D
                if line is None or line.strip() in QUIT_COMMANDS:
                    break
                if not line.strip():
                    continue
                await _turn(agent, thread, line.rstrip("\n"))
    finally:
        await chat_model.aclose()


def _with_cache(settings: Settings, work: Callable[[ConversationCache], Awaitable[T]]) -> T:
    """``work`` on an opened cache; a typed error is one red line, exit code 1."""

    async def run() -> T:
        async with settings.cache() as cache:
            return await work(cache)

    try:
        return asyncio.run(run())
    except AgentCoreError as exc:
        _fail(str(exc), settings.store_url, settings.redis_url)


async def _turn(agent: BaseAgent, thread: str, text: str) -> None:
    """One streamed turn: the reply as it comes, then its version, tier and tokens, dimly."""
    async with agent.stream(thread, text) as chunks:
        async for chunk in chunks:
            _out.print(chunk, end="", markup=False, soft_wrap=True)
    _out.print()
    reply = chunks.reply
    if reply is not None:  # the stream ran to its end, so the turn is stored
        _out.print(
            f"[dim]v{reply.version} · history {reply.history_tier} "
            f"({reply.history_messages} messages) · {reply.prompt_tokens} prompt + "
            f"{reply.usage.completion_tokens} completion tokens[/]"
        )


def _stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of stdin, then None at end of input, read by a daemon thread.

    A worker thread of the loop's executor would keep asyncio.run from returning on
    Ctrl-C until the blocked read ends; a daemon thread is simply left behind.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    stdin = sys.stdin  # the stream of this call (CliRunner swaps it per invocation)

    def read() -> None:
        for line in stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, name="agent-core-stdin", daemon=True).start()
    return queue


# -- threads and gc ----------------------------------------------------------------------

threads_app = typer.Typer(
    name="threads",
    help="List, inspect and purge the threads of a store (no server needed).",
    no_args_is_help=True,
)
app.add_typer(threads_app)
app.add_typer(keys_app)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (the HTTP API's shape).")]


@threads_app.command("list")
def threads_list(
    store: StoreOption = None,
    redis: RedisOption = None,
    namespace: NamespaceOption = None,
    limit: Annotated[
        int, typer.Option(min=1, max=MAX_PAGE_SIZE, help="Thread ids on this page.")
    ] = 100,
    after: Annotated[
        str | None,
        typer.Option(help="Only ids after this one: the previous page's next cursor."),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(
            "--metadata",
            metavar="KEY=VALUE",
            help="Only threads whose metadata has KEY=VALUE; repeat it: all must hold.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List thread ids in id order, a page at a time; the next page's cursor goes to stderr."""
    filters = _pairs(metadata or [])
    settings = _settings(store_url=store, redis_url=redis, namespace=namespace)
    page = _with_cache(
        settings,
        lambda cache: cache.list_threads(limit=limit, after=after, metadata=filters or None),
    )
    if as_json:
        print(
            orjson.dumps({"thread_ids": page.thread_ids, "next_cursor": page.next_cursor}).decode()
        )
        return
    for thread_id in page.thread_ids:
        print(thread_id)
    if page.next_cursor is not None:
        _err.print(f"[dim]more: --after {escape(page.next_cursor)}[/]")
    elif not page.thread_ids:
        _err.print("[dim]no threads[/]")


def _pairs(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` options as a dict (the value may hold ``=``); a key given twice is an error."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--metadata")
        if key in pairs:
            raise typer.BadParameter(f"key {key!r} is given twice", param_hint="--metadata")
        pairs[key] = value
    return pairs


@threads_app.command("info")
def threads_info(
    thread: Annotated[str, typer.Argument(help="Thread id.")],
    store: StoreOption = None,
    redis: RedisOption = None,
    namespace: NamespaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a thread's version, message count, times and metadata."""
    settings = _settings(store_url=store, redis_url=redis, namespace=namespace)
    data = _info_json(thread, _with_cache(settings, lambda cache: cache.thread_info(thread)))
    if as_json:
        print(orjson.dumps(data).decode())
        return
    caption = f"namespace {settings.namespace} of {mask_url(settings.store_url)}"
    shown = {**data, "metadata": data["metadata"] or None}  # "-" rather than no row
    _out.print(_fields_table(shown, title=f"thread {thread}", caption=caption, column="field"))


def _info_json(thread: str, info: ThreadInfo) -> dict[str, Any]:
    """A thread's info as GET /v1/threads/{id}/info answers it: times in ISO 8601, UTC."""
    return {
        "thread_id": thread,
        "version": info.version,
        "message_count": info.message_count,
        "created_at": _iso(info.created_at),
        "updated_at": _iso(info.updated_at),
        "metadata": dict(info.metadata),
        "expires_at": _iso(info.expires_at),
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


@threads_app.command("purge")
def threads_purge(
    thread: Annotated[str, typer.Argument(help="Thread id.")],
    store: StoreOption = None,
    redis: RedisOption = None,
    namespace: NamespaceOption = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask: needed when stdin is not a terminal.")
    ] = False,
) -> None:
    """Erase a thread: its messages, metadata and idempotency keys leave the store, and its
    cached copies Redis and every instance. Irreversible; asks first unless --yes."""
    settings = _settings(store_url=store, redis_url=redis, namespace=namespace)
    try:
        check_thread_id(thread)  # before asking, not after
    except AgentCoreError as exc:
        _fail(str(exc))
    if not yes:
        if not sys.stdin.isatty():
            _fail(f"not purging {thread}: stdin is not a terminal to confirm on; pass --yes")
        where = f"namespace {settings.namespace} of {mask_url(settings.store_url)}"
        if not typer.confirm(f"Erase thread {thread} of {where} for good?", default=False):
            _err.print("not purged")
            raise typer.Exit(1)
    version = _with_cache(settings, lambda cache: cache.purge(thread))
    _out.print(f"purged {escape(thread)} (version {version})")


@app.command("gc")
def collect_garbage(
    store: StoreOption = None,
    redis: RedisOption = None,
    namespace: NamespaceOption = None,
    batch: Annotated[
        int, typer.Option(min=1, help="Rows removed per transaction.")
    ] = DEFAULT_GC_BATCH,
) -> None:
    """Remove what has expired: the namespace's threads past their expires_at (as purge
    does) and idempotency keys older than the store's idempotency_ttl (every namespace).

    Runs batch after batch until one comes back short; safe beside running servers.
    """
    settings = _settings(store_url=store, redis_url=redis, namespace=namespace)
    removed = _with_cache(settings, lambda cache: _collect(cache, batch))
    for what, count in removed.items():
        _out.print(f"removed {count:,} {what}")


async def _collect(cache: ConversationCache, batch: int) -> dict[str, int]:
    """Each sweep run to its end: how many of what each removed."""
    sweeps: dict[str, Callable[[int], Awaitable[int]]] = {
        "expired threads": lambda n: cache.sweep_expired(limit=n),
        "expired idempotency keys": lambda n: cache.store.expire_idempotency_keys(limit=n),
    }
    return {what: await _sweep(sweep, batch) for what, sweep in sweeps.items()}


async def _sweep(sweep: Callable[[int], Awaitable[int]], batch: int) -> int:
    total = 0
    while True:
        removed = await sweep(batch)
        total += removed
        if removed < batch:
            return total


@contextlib.contextmanager
def _signals_end_quietly() -> Iterator[None]:
    """SIGINT and SIGTERM stop ``serve`` with exit code 0.

    uvicorn shuts down gracefully on either, then raises the signal again against the
    handlers it found; with these no-op handlers installed that ends in a normal return
    instead of a KeyboardInterrupt or a death by signal.
    """
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda sig, frame: None) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _problem(response: httpx.Response) -> str:
    """The ``detail`` of an RFC 9457 problem, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])
    return response.text[:200]


def _fields_table(
    data: Mapping[str, Any], *, title: str, caption: str, column: str = "stat"
) -> Table:
    """Every field of a JSON object (the stats, a thread's info): hit rates first, then
    one section per nested object.

    Fields are shown as the server names them, so a field added later shows up too;
    known sizes and durations get units.
    """
    table = Table(title=title, caption=escape(caption), header_style="bold")
    table.add_column(column)
    table.add_column("value", justify="right")
    fields = list(_flatten(data))
    rates = [(key, value) for key, value in fields if key.endswith("hit_rate")]
    rest = [(key, value) for key, value in fields if not key.endswith("hit_rate")]
    # Top-level fields first, then each nested object (memory, loop_lag, ...) in one block.
    order = {group: i for i, group in enumerate(dict.fromkeys(["", *(_group(k) for k, _ in rest)]))}
    rest.sort(key=lambda item: order[_group(item[0])])
    group: str | None = None
    for key, value in rates + rest:
        current = "rates" if key.endswith("hit_rate") else _group(key)
        if group is not None and current != group:
            table.add_section()
        group = current
        style = "bold red" if key == "degraded" and value is True else None
        table.add_row(key, _format(key, value), style=style)
    return table


#: Fields of the stats JSON in bytes, and the nested object whose floats are seconds.
_BYTE_FIELDS: Final = frozenset(
    {"l1_bytes", "l1_max_bytes", "memory.rss", "memory.limit", "memory.budget", "memory.max_budget"}
)
_SECONDS_PREFIX: Final = "loop_lag."


def _group(key: str) -> str:
    """The nested object a flattened field came from; "" for top-level fields."""
    return key.partition(".")[0] if "." in key else ""


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _format(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and key.endswith("rate"):
        return f"{value:.1%}"
    if isinstance(value, int) and key in _BYTE_FIELDS:
        return _size(value)
    if isinstance(value, float) and key.startswith(_SECONDS_PREFIX):
        return f"{value * 1000:.2f} ms"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _reflow(text: str) -> str:
    """``text`` with each paragraph on one line, for rich to wrap to the terminal.

    Typer keeps the single line breaks of a docstring's later paragraphs (and of the
    command list's summaries), so source-wrapped lines came out broken mid-sentence.
    A paragraph that starts with ``\\b`` keeps its lines, as in click.
    """
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        part if part.startswith("\b") else " ".join(line.strip() for line in part.splitlines())
        for part in paragraphs
    )


def _reflow_help(typer_app: typer.Typer) -> None:
    """Every command's help, in ``typer_app`` and its sub-apps, through `_reflow`."""
    for command in typer_app.registered_commands:
        text = command.help or (command.callback.__doc__ if command.callback else None)
        if text:
            command.help = _reflow(text)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)


def main() -> None:
    """The console script's entry point."""
    app()


if __name__ == "__main__":
    main()
