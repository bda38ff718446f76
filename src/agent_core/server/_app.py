"""`create_app`: the FastAPI app. Its lifespan opens the cache, the model and the agent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import orjson
from fastapi import APIRouter, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from .._quote import quote
from .._tasks import cancel_and_wait
from .._validation import (
    ID_PATTERN,
    MAX_COUNT,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_INDEX,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
    MAX_THREAD_ID_LENGTH,
)
from ..agent import AgentReply, BaseAgent
from ..cache import ConversationCache
from ..errors import AgentCoreError, InvalidArgument, ThreadNotFound
from ..observe import LoopLagMonitor
from ..store import MAX_PAGE_SIZE, ThreadInfo
from ._access import Adder, Ops, Reader, Writer
from ._audit import AuditLog, RouteKind
from ._auth import Authenticator, ReloadingKeys
from ._core import Core, core_of
from ._dashboard import dashboard_router
from ._jwt import JwtVerifier
from ._message_schema import MESSAGE_SCHEMA, USER_MESSAGE_SCHEMA
from ._metrics import Metrics
from ._problems import error_problem, install_problem_handlers, problem
from ._recent import RecentActivity
from ._settings import Settings
from ._tenant_limits import StoredBytesQuota, TenantTokens, tenant_limiter
from ._tenants import Tenants

__all__ = ["create_app"]

# A server samples lag every 10 ms rather than every 1 ms: a hundred wake-ups a second
# still catch any stall worth reporting, at a tenth of the cost.
_LAG_INTERVAL: Final = 0.01
_READY_TIMEOUT: Final = 2.0
_JSON: Final = "application/json"
#: Expired threads deleted per transaction by the background sweep.
_SWEEP_BATCH: Final = 1000
_log = logging.getLogger("agent_core.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- request and response bodies (they are the OpenAPI schemas) ---------------------

# The spec states the rules the cache and the agent check, but FastAPI does not enforce
# them: the checks' own typed errors (400 InvalidThreadId, InvalidMessage) say more than a
# generic 422 would.
_ID_RULE: Final = f"1-{MAX_THREAD_ID_LENGTH} characters of A-Z a-z 0-9 . _ : @ -"
_ID_SCHEMA: Final[dict[str, Any]] = {
    "pattern": f"^{ID_PATTERN}$",
    "minLength": 1,
    "maxLength": MAX_THREAD_ID_LENGTH,
}
ThreadId = Annotated[str, Path(description=_ID_RULE, json_schema_extra=_ID_SCHEMA)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description=f"1-{MAX_IDEMPOTENCY_KEY_LENGTH} printable characters, e.g. a UUID: a "
        "retry with the same key and messages returns the first version and writes nothing",
        json_schema_extra={"minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
    ),
]
IfMatch = Annotated[
    str | None,
    Header(
        alias="If-Match",
        description='The version the thread must be at, quoted as an entity tag ("7") or '
        "bare (7): the same as `expected_version` (a mismatch is a 409 VersionConflict). "
        "Given with `expected_version`, the two must agree (else 400).",
        json_schema_extra={"pattern": '^("[0-9]{1,19}"|[0-9]{1,19})$'},
    ),
]
MessageObject = Annotated[dict[str, Any], WithJsonSchema(MESSAGE_SCHEMA)]
UserMessage = Annotated[str | dict[str, Any], WithJsonSchema(USER_MESSAGE_SCHEMA)]


_MESSAGES: Final = "Chat Completions messages or Responses API items (JSON objects)."
# Versions are BIGINTs in the stores.
Version = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]


class AppendRequest(BaseModel):
    """Messages to append, in order; with ``expected_version``, compare-and-append."""

    messages: list[MessageObject] = Field(description=_MESSAGES, json_schema_extra={"minItems": 1})
    expected_version: Version | None = Field(
        default=None, description="Append only if the thread is at this version (else 409)."
    )


SliceIndex = Annotated[StrictInt, Field(ge=-MAX_INDEX, le=MAX_INDEX)]


class SpliceRequest(BaseModel):
    """Replace the messages ``[start:stop]`` (Python slice rules) by ``messages``."""

    model_config = ConfigDict(extra="forbid")

    start: SliceIndex | None = Field(
        default=None,
        description="Index of the first message replaced; negative counts from the end; "
        "null: the first.",
    )
    stop: SliceIndex | None = Field(
        default=None,
        description="Index after the last message replaced; negative counts from the end; "
        "null: the end. `start` = `stop` inserts before that index.",
    )
    messages: list[MessageObject] = Field(
        default_factory=list,
        description=f"{_MESSAGES} They take the place of those removed; none: a removal.",
    )
    expected_version: Version | None = Field(
        default=None,
        description="Splice only if the thread is at this version (else 409); "
        "`If-Match` says the same.",
    )


class ForkRequest(BaseModel):
    """The new thread: its id, and the source's version to copy."""

    model_config = ConfigDict(extra="forbid")

    new_id: str = Field(
        description=f"The new thread's id ({_ID_RULE}); it must hold no messages (else 409).",
        json_schema_extra=_ID_SCHEMA,
    )
    at_version: Version | None = Field(
        default=None,
        description="Copy the source as it was at this version (null: as it is now). A "
        "version before the source's last splice or delete cannot be rebuilt (400).",
    )


class VersionResponse(BaseModel):
    """The thread's version after the change."""

    version: int


class ThreadResponse(BaseModel):
    """A thread's messages (all of them, or the window that fits ``max_tokens``)."""

    thread_id: str
    version: int
    messages: list[MessageObject]
    token_count: int | None = Field(
        default=None, description="Billed prompt tokens of the window (windows only)."
    )
    omitted: int | None = Field(
        default=None, description="Messages left out of the window (windows only)."
    )


_METADATA_KEY_PATTERN: Final = "^[A-Za-z0-9._:-]{1,64}$"


def _encodable(text: str) -> str:
    # json.loads accepts lone surrogate escapes ("\\ud800"), which no store can keep.
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("not Unicode text: it holds a lone surrogate") from None
    return text


Metadata = Annotated[
    dict[str, Annotated[StrictStr, AfterValidator(_encodable)] | None],
    WithJsonSchema(
        {
            "type": "object",
            "description": f"At most {MAX_METADATA_KEYS} keys of 1-64 characters of "
            f"A-Z a-z 0-9 . _ : -; values strings of at most {MAX_METADATA_VALUE_LENGTH} "
            "characters without NUL, or null to remove the key.",
            "maxProperties": MAX_METADATA_KEYS,
            "propertyNames": {"pattern": _METADATA_KEY_PATTERN},
            "additionalProperties": {
                "anyOf": [
                    {
                        "type": "string",
                        "maxLength": MAX_METADATA_VALUE_LENGTH,
                        "pattern": "^[^\\u0000]*$",
                    },
                    {"type": "null"},
                ]
            },
        }
    ),
]


def _text_only(value: object) -> object:
    # Pydantic would read a number as seconds since the epoch: the spec says a string.
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date and time with a UTC offset, as a string")
    return value


Moment = Annotated[datetime, BeforeValidator(_text_only)]


class ThreadUpdate(BaseModel):
    """What to change of a thread besides its messages; a field left out (or null) is left
    as it is."""

    model_config = ConfigDict(extra="forbid")

    metadata: Metadata | None = Field(
        default=None,
        description="Merged into the thread's metadata: a string sets its key, null removes it.",
    )
    expires_at: Moment | None = Field(
        default=None,
        description="When the thread expires (ISO 8601 with a UTC offset, e.g. "
        "2030-01-01T00:00:00Z): from then on it reads as deleted, and `agent-core gc` "
        "removes it. A time already past deletes it now.",
    )


class ThreadInfoResponse(BaseModel):
    """A thread's version, size, times and metadata (not its messages)."""

    thread_id: str
    version: int
    message_count: int
    created_at: datetime | None = Field(
        description="When the thread was first written (ISO 8601, UTC); null if never."
    )
    updated_at: datetime | None = Field(
        description="When the thread was last written (ISO 8601, UTC); null if never."
    )
    metadata: dict[str, str]
    expires_at: datetime | None = Field(
        description="When the thread expires and reads as deleted (ISO 8601, UTC); null: never."
    )

    @classmethod
    def of(cls, thread_id: str, info: ThreadInfo) -> ThreadInfoResponse:
        return cls(
            thread_id=thread_id,
            version=info.version,
            message_count=info.message_count,
            created_at=info.created_at,
            updated_at=info.updated_at,
            metadata=dict(info.metadata),
            expires_at=info.expires_at,
        )


class ThreadListResponse(BaseModel):
    """One page of thread ids, in id order."""

    thread_ids: list[str]
    next_cursor: str | None = Field(
        description="Pass it as `after` for the next page; null on the last page."
    )


class TurnRequest(BaseModel):
    """The user's message: its text, or a user message object."""

    message: UserMessage


class UsageResponse(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    #: Prompt tokens the provider read from its prompt cache (billed at a discount).
    cached_tokens: int
    #: Prompt tokens the provider wrote to its prompt cache (Anthropic bills 1.25x).
    cache_write_tokens: int


class TurnResponse(BaseModel):
    """The stored turn: the reply and what it cost."""

    text: str
    version: int | None
    history_tier: Literal["l1", "l2", "store", "none"]
    prompt_tokens: int
    history_messages: int
    history_omitted: int
    conflicted: bool
    finish_reason: str | None
    usage: UsageResponse
    timings: dict[str, float]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    """``status`` ok/degraded/unavailable; ``redis``: none, ok or degraded."""

    status: Literal["ok", "degraded", "unavailable"]
    store: Literal["ok", "unavailable"]
    redis: Literal["none", "ok", "degraded"]
    detail: str = ""


_PROBLEM: Final[dict[int | str, dict[str, Any]]] = {
    status: {"description": description, "content": {"application/problem+json": {}}}
    for status, description in (
        (400, "Malformed JSON or an invalid thread id, message or argument."),
        (409, "Version conflict, or (fork) the new thread already holds messages."),
        (413, "Request body or a message too large."),
        (422, "Invalid request body, reused idempotency key or token budget exceeded."),
        (503, "Store unavailable."),
    )
}
_TURN_PROBLEMS: Final[dict[int | str, dict[str, Any]]] = {
    **_PROBLEM,
    429: {"description": "Rate limited.", "content": {"application/problem+json": {}}},
    502: {"description": "The model failed.", "content": {"application/problem+json": {}}},
}


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service's ASGI app; ``settings`` defaults to `Settings.from_env()`."""
    settings = Settings.from_env() if settings is None else settings

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            audit = AuditLog(settings.audit_log, sample_rate=settings.audit_sample_rate)
            stack.callback(audit.close)
            auth = Authenticator(
                keys=_keys(settings, audit),
                jwt=await _jwt(settings, stack),
                open_tenant=settings.namespace,
            )
            cache = await stack.enter_async_context(settings.cache())
            model = settings.chat_model()
            stack.push_async_callback(model.aclose)
            request_limits = tenant_limiter(settings, "requests")
            token_limits = tenant_limiter(settings, "tokens")
            for limiter in (request_limits, token_limits):
                if limiter is not None:
                    stack.push_async_callback(limiter.aclose)

            def make_agent(tenant: str, tenant_cache: ConversationCache) -> BaseAgent:
                return BaseAgent(
                    model,
                    tenant_cache,
                    max_context_tokens=settings.max_context_tokens,
                    reserve_output_tokens=settings.reserve_output_tokens,
                    token_model=settings.token_model,
                    window_strategy=settings.turn_windows,
                    rate_limits=None
                    if token_limits is None
                    else TenantTokens(token_limits, tenant),
                )

            tenants = Tenants(cache, make_agent, max_tenants=settings.max_tenants)
            stack.push_async_callback(tenants.aclose)  # before the base cache closes
            if settings.sweep_interval > 0:
                sweeper = asyncio.create_task(
                    _sweep_expired(tenants, settings.sweep_interval),
                    name="agent-core-sweep",
                )
                stack.push_async_callback(cancel_and_wait, sweeper)  # before the caches close
            recent = RecentActivity()
            lag = await stack.enter_async_context(
                LoopLagMonitor(_LAG_INTERVAL, on_sample=recent.loop_lag.add)
            )
            core = Core(
                settings,
                cache,
                tenants,
                auth,
                audit,
                request_limits,
                None
                if settings.tenant_max_stored_bytes is None
                else StoredBytesQuota(cache.store, settings.tenant_max_stored_bytes),
                lag,
                Metrics(tenants.stats, lag.snapshot),
                settings.token_model,
                recent,
            )
            app.state.core = core
            yield

    app = FastAPI(
        title="agent-core",
        summary="The memory layer for LLM agents: threads, windows and agent turns.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.include_router(_router)
    app.include_router(dashboard_router)
    # The last added runs first: refused bodies (413) are timed too.
    app.add_middleware(_BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-Match"],
            expose_headers=["Location", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(_Timing)
    return app


async def _sweep_expired(tenants: Tenants, interval: float) -> None:
    """Every ``interval`` seconds, delete the expired threads of every tenant open here
    and the store's expired idempotency keys, a batch at a time (both already count as
    gone: this frees their rows and Redis values). Tenants not open on this instance
    wait for one that serves them, or for ``agent-core gc``."""
    while True:
        await asyncio.sleep(interval)
        try:
            for tenant in tenants:
                while await tenant.cache.sweep_expired(limit=_SWEEP_BATCH) == _SWEEP_BATCH:
                    pass
            store = tenants.base.store
            while await store.expire_idempotency_keys(limit=_SWEEP_BATCH) == _SWEEP_BATCH:
                pass
        except AgentCoreError as exc:  # the store is down, say: the next round tries again
            _log.warning("agent-core: sweeping expired threads failed: %s", exc)


def _keys(settings: Settings, audit: AuditLog) -> ReloadingKeys | None:
    if settings.keys_file is None:
        return None
    path = pathlib.Path(settings.keys_file)
    return ReloadingKeys(path, lambda changes: audit.key_changes(changes, str(path)))


async def _jwt(settings: Settings, stack: contextlib.AsyncExitStack) -> JwtVerifier | None:
    if settings.jwt_jwks_url is None:
        return None
    # Settings refuse a JWKS URL without both.
    assert settings.jwt_audience is not None
    assert settings.jwt_issuer is not None
    verifier = JwtVerifier(
        settings.jwt_jwks_url,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        tenant_claim=settings.jwt_tenant_claim,
    )
    stack.push_async_callback(verifier.aclose)
    return verifier


# -- endpoints -----------------------------------------------------------------------

_router = APIRouter()


@_router.post(
    "/v1/threads/{thread_id}/messages",
    status_code=201,
    response_model=VersionResponse,
    responses=_PROBLEM,
    tags=["threads"],
)
async def append_messages(
    request: Request,
    caller: Adder,
    thread_id: ThreadId,
    body: AppendRequest,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Append messages; a repeated ``Idempotency-Key`` returns its first version."""
    version = await caller.tenant.cache.append(
        thread_id,
        body.messages,
        expected_version=body.expected_version,
        idempotency_key=idempotency_key,
    )
    request.state.version = version
    return _version_response(version, status_code=201)


def _version_response(
    version: int, *, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        b'{"version":%d}' % version, status_code=status_code, media_type=_JSON, headers=headers
    )


@_router.get(
    "/v1/threads/{thread_id}",
    response_model=ThreadResponse,
    responses=_PROBLEM,
    tags=["threads"],
)
async def get_thread(
    request: Request,
    caller: Reader,
    thread_id: ThreadId,
    max_tokens: Annotated[int | None, Query(ge=1, description="Window budget.")] = None,
    model: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Window's token model.")
    ] = None,
    strategy: Annotated[
        Literal["sliding", "stable"],
        Query(description="Window: the longest suffix that fits, or a cache-stable one."),
    ] = "sliding",
) -> Response:
    """The thread's messages, or with ``max_tokens`` the newest that fit (pinned kept)."""
    core = core_of(request)
    cache = caller.tenant.cache
    if (model is not None or strategy != "sliding") and max_tokens is None:
        raise InvalidArgument("model and strategy only apply to a window: give max_tokens too")
    started = time.perf_counter()
    if max_tokens is None:
        read = await cache.read(thread_id)
        conversation, source = read.value, read.source
        version, payloads, tail = conversation.version, conversation.payloads, b""
    else:
        served = await cache.read_window(
            thread_id, max_tokens=max_tokens, model=model or core.token_model, strategy=strategy
        )
        window, source = served.value, served.source
        version = window.version
        payloads = tuple(message.raw for message in window.messages)
        tail = b',"token_count":%d,"omitted":%d' % (window.token_count, window.omitted)
    core.record_get(source, time.perf_counter() - started)
    if version == 0:
        await _existing(cache, thread_id, version=0)
    # The cached bytes are spliced in as they are: no decoding, no re-encoding.
    body = b"".join(
        (
            b'{"thread_id":',
            orjson.dumps(thread_id),
            b',"version":%d,"messages":[' % version,
            b",".join(payloads),
            b"]",
            tail,
            b"}",
        )
    )
    return Response(body, media_type=_JSON)


@_router.delete(
    "/v1/threads/{thread_id}",
    response_model=VersionResponse,
    responses=_PROBLEM,
    tags=["threads"],
)
async def delete_thread(
    request: Request,
    caller: Writer,
    thread_id: ThreadId,
    purge: Annotated[
        bool,
        Query(
            description="Erase the thread: its messages, metadata and idempotency keys leave "
            "the store, and its cached copies every instance (irreversible)."
        ),
    ] = False,
) -> Response:
    """Delete the thread's messages (with ``purge``, erase the thread: admin scope);
    returns its new version (versions never go back)."""
    if purge:
        caller.principal.require("admin")
    cache = caller.tenant.cache
    await _existing(cache, thread_id)
    version = await (cache.purge(thread_id) if purge else cache.delete(thread_id))
    request.state.version = version
    return _version_response(version)


@_router.post(
    "/v1/threads/{thread_id}/splice",
    response_model=VersionResponse,
    responses=_PROBLEM,
    tags=["threads"],
)
async def splice_thread(
    request: Request,
    caller: Adder,
    thread_id: ThreadId,
    body: SpliceRequest,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    """Replace the messages ``[start:stop]`` by ``messages``, atomically; returns the new
    version. Remove (no messages), insert (``start`` = ``stop``) or edit; a splice that
    changes nothing writes nothing. A repeated ``Idempotency-Key`` returns its first version."""
    cache = caller.tenant.cache
    await _existing(cache, thread_id)
    version = await cache.splice(
        thread_id,
        body.start,
        body.stop,
        body.messages,
        expected_version=_expected_version(body.expected_version, if_match),
        idempotency_key=idempotency_key,
    )
    request.state.version = version
    return _version_response(version)


def _expected_version(in_body: int | None, if_match: str | None) -> int | None:
    """The version a write expects: ``expected_version``, ``If-Match``, or both alike."""
    if if_match is None:
        return in_body
    tag = if_match.strip()
    digits = tag[1:-1] if len(tag) > 1 and tag[0] == tag[-1] == '"' else tag
    # The length check first: int() refuses more than 4,300 digits (ValueError).
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 19) or int(digits) > MAX_COUNT:
        raise InvalidArgument(
            f'If-Match must be a thread version, quoted ("7") or bare (7), got {quote(if_match)}'
        )
    version = int(digits)
    if in_body is not None and in_body != version:
        raise InvalidArgument(
            f"If-Match ({version}) and expected_version ({in_body}) differ: give one of them, "
            "or the same version in both"
        )
    return version


@_router.post(
    "/v1/threads/{thread_id}/fork",
    status_code=201,
    response_model=VersionResponse,
    responses=_PROBLEM,
    tags=["threads"],
)
async def fork_thread(
    request: Request, caller: Writer, thread_id: ThreadId, body: ForkRequest
) -> Response:
    """Make ``new_id`` a copy of this thread (messages and metadata), now or as of
    ``at_version``; returns the new thread's version, with its URL in ``Location``. Each
    thread then changes alone."""
    cache = caller.tenant.cache
    await _existing(cache, thread_id)
    version = await cache.fork(thread_id, body.new_id, at_version=body.at_version)
    request.state.version = version
    # A path, not a URL: behind a proxy, the Host and scheme this app sees may not be the
    # client's.
    path = request.app.url_path_for("get_thread", thread_id=body.new_id)
    location = request.scope.get("root_path", "") + path
    return _version_response(version, status_code=201, headers={"Location": location})


#: The query parameters of GET /v1/threads besides ``metadata.<key>``.
_LIST_PARAMETERS: Final = frozenset({"limit", "after"})
_METADATA_PARAMETER: Final = "metadata."
#: Problems name at most this many bad query parameters.
_MAX_REPORTED: Final = 5


@_router.get(
    "/v1/threads",
    response_model=ThreadListResponse,
    responses=_PROBLEM,
    tags=["threads"],
    description="Threads of the namespace that hold messages or metadata, in id order, "
    "`limit` at a time: pass `next_cursor` as `after` for the next page. Each "
    "`metadata.<key>=<value>` query parameter is an exact-match filter (all must hold; "
    f"at most {MAX_METADATA_KEYS}, keys and values as in `PATCH`). Any other query "
    "parameter, or one given twice, is a 422.",
)
async def list_threads(
    request: Request,
    caller: Reader,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Thread ids per page.")] = 100,
    after: Annotated[
        str | None,
        Query(
            description="Only ids after this one: the previous page's `next_cursor`.",
            json_schema_extra=_ID_SCHEMA,
        ),
    ] = None,
) -> Response:
    """List thread ids, filtered by metadata."""
    metadata = _metadata_filter(request)
    page = await caller.tenant.cache.list_threads(
        limit=limit, after=after, metadata=metadata or None
    )
    return Response(
        orjson.dumps({"thread_ids": page.thread_ids, "next_cursor": page.next_cursor}),
        media_type=_JSON,
    )


def _metadata_filter(request: Request) -> dict[str, str]:
    """The ``metadata.<key>=<value>`` query parameters; an unknown or repeated one is a 422
    (a misspelt filter must not list every thread)."""
    metadata: dict[str, str] = {}
    seen: set[str] = set()
    errors: list[dict[str, Any]] = []
    for name, value in request.query_params.multi_items():
        if name in seen:
            errors.append({"loc": ("query", name), "msg": "given twice", "type": "repeated"})
        elif name.startswith(_METADATA_PARAMETER):
            metadata[name.removeprefix(_METADATA_PARAMETER)] = value
        elif name not in _LIST_PARAMETERS:
            errors.append(
                {
                    "loc": ("query", quote(name)),
                    "msg": "unknown query parameter: use limit, after or metadata.<key>",
                    "type": "extra_forbidden",
                }
            )
        seen.add(name)
    if errors:
        raise RequestValidationError(errors[:_MAX_REPORTED])
    return metadata


@_router.get(
    "/v1/threads/{thread_id}/info",
    response_model=ThreadInfoResponse,
    responses=_PROBLEM,
    tags=["threads"],
)
async def thread_info(caller: Reader, thread_id: ThreadId) -> Response:
    """The thread's version, message count, times and metadata; not its messages."""
    return _info_response(
        thread_id, _found(thread_id, await caller.tenant.cache.thread_info(thread_id))
    )


@_router.patch(
    "/v1/threads/{thread_id}",
    response_model=ThreadInfoResponse,
    responses=_PROBLEM,
    tags=["threads"],
)
async def update_thread(caller: Writer, thread_id: ThreadId, body: ThreadUpdate) -> Response:
    """Merge metadata into the thread's (null removes a key) and set its expiry; the
    version does not move (unless the expiry is already past: then it is deleted).

    A thread never written is a 404. A refused update writes nothing.
    """
    cache = caller.tenant.cache
    await _existing(cache, thread_id)
    # Only the fields the client sent: a field left out is left as it is.
    info = await cache.update_thread(thread_id, **body.model_dump(exclude_unset=True))
    return _info_response(thread_id, info)


async def _existing(
    cache: ConversationCache, thread_id: str, *, version: int | None = None
) -> None:
    """`ThreadNotFound` unless the thread was written in this namespace (any thread of
    another tenant is not: the same answer, so nothing leaks).

    One indexed version read (none if the caller knows the ``version``); only a thread at
    version 0, which may hold metadata alone, costs a `thread_info` (it counts messages).
    """
    if version is None:
        version = await cache.store.version(cache.namespace, thread_id)
    if version == 0:
        _found(thread_id, await cache.thread_info(thread_id))


def _found(thread_id: str, info: ThreadInfo) -> ThreadInfo:
    if info.created_at is None:
        raise ThreadNotFound(thread_id)
    return info


def _info_response(thread_id: str, info: ThreadInfo) -> Response:
    return Response(ThreadInfoResponse.of(thread_id, info).model_dump_json(), media_type=_JSON)


@_router.post(
    "/v1/threads/{thread_id}/turns",
    response_model=TurnResponse,
    responses={
        **_TURN_PROBLEMS,
        200: {
            "description": "The reply as JSON, or with `Accept: text/event-stream` as SSE: "
            '`chunk` events (`{"text": ...}`), then one `reply` event (the JSON reply) '
            "or one `error` event (a problem).",
            "content": {"text/event-stream": {}},
        },
    },
    tags=["agent"],
)
async def run_turn(
    request: Request, caller: Adder, thread_id: ThreadId, body: TurnRequest
) -> Response:
    """One agent turn: history window, model call, and the user message and reply stored."""
    core = core_of(request)
    agent = caller.tenant.agent
    if "text/event-stream" in request.headers.get("accept", ""):
        return await _stream_turn(core, agent, thread_id, body.message)
    reply = await agent.run(thread_id, body.message)
    request.state.version = reply.version
    core.record_turn(reply)
    return Response(_reply_json(reply), media_type=_JSON)


async def _stream_turn(
    core: Core, agent: BaseAgent, thread_id: str, message: str | dict[str, Any]
) -> Response:
    stream = agent.stream(thread_id, message)
    # The first chunk is awaited before answering, so that a turn that can't start
    # (budget, rate limit, model down) still gets its own status code.
    try:
        first: str | None = await stream.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await stream.aclose()
        raise

    async def events() -> AsyncIterator[bytes]:
        async with stream:
            try:
                if first is not None:
                    yield _sse("chunk", orjson.dumps({"text": first}))
                async for chunk in stream:
                    yield _sse("chunk", orjson.dumps({"text": chunk}))
            except AgentCoreError as exc:
                yield _sse("error", error_problem(exc).body)
                return
        reply = stream.reply
        assert reply is not None
        core.record_turn(reply)
        yield _sse("reply", _reply_json(reply))

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(event: str, data: bytes | memoryview) -> bytes:
    # orjson never writes raw newlines, so each payload is one ``data:`` line.
    return b"event: " + event.encode() + b"\ndata: " + bytes(data) + b"\n\n"


def _reply_json(reply: AgentReply) -> bytes:
    return orjson.dumps(
        {
            "text": reply.text,
            "version": reply.version,
            "history_tier": reply.history_tier,
            "prompt_tokens": reply.prompt_tokens,
            "history_messages": reply.history_messages,
            "history_omitted": reply.history_omitted,
            "conflicted": reply.conflicted,
            "finish_reason": reply.finish_reason,
            "usage": asdict(reply.usage),
            "timings": reply.timings,
        }
    )


@_router.get("/metrics", tags=["ops"], response_class=Response, dependencies=[Ops])
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry = core_of(request).metrics.registry
    # stats() samples RSS: a scrape is rare enough to do it on the loop.
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@_router.get("/healthz", response_model=Health, tags=["ops"])
async def healthz() -> Health:
    """The process is up and serving."""
    return Health(status="ok")


@_router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The store is unreachable."}},
    tags=["ops"],
    dependencies=[Ops],
)
async def readyz(request: Request) -> Response:
    """Ready when the store answers; a degraded Redis is reported but still ready (200)."""
    core = core_of(request)
    store: Literal["ok", "unavailable"] = "ok"
    detail = ""
    try:
        async with asyncio.timeout(_READY_TIMEOUT):
            await core.cache.store.version(core.cache.namespace, "readyz")
    except Exception as exc:
        store, detail = "unavailable", core.redact(f"{type(exc).__name__}: {exc}")
    stats = core.stats()
    redis = core.redis_state(stats)
    if store != "ok":
        status: Literal["ok", "degraded", "unavailable"] = "unavailable"
    else:
        status = "degraded" if redis == "degraded" else "ok"
    if not detail and redis == "degraded":
        detail = core.redact(stats.redis_last_error)
    body = Readiness(status=status, store=store, redis=redis, detail=detail)
    return Response(
        body.model_dump_json(), status_code=503 if store != "ok" else 200, media_type=_JSON
    )


@_router.get("/v1/stats", tags=["ops"], dependencies=[Ops])
async def stats(request: Request) -> dict[str, Any]:
    """The caches' counters (every tenant's, combined), hit rates and memory, and the
    event-loop lag."""
    core = core_of(request)
    s = core.stats()
    return {
        **asdict(s),
        "redis_last_error": core.redact(s.redis_last_error),
        "requests": s.requests,
        "l1_hit_rate": s.l1_hit_rate,
        "l2_hit_rate": s.l2_hit_rate,
        "hit_rate": s.hit_rate,
        "loop_lag": asdict(core.lag.snapshot()),
    }


# -- middleware ------------------------------------------------------------------------


class _BodyLimit:
    """Refuses request bodies over ``max_bytes`` with a 413 problem.

    ``Content-Length`` is checked first; the body is then read whole (it is bounded) and
    its real size checked too, for chunked requests and lying headers.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                # The length check first: int() refuses more than 4,300 digits (ValueError).
                if not value.isdigit() or len(value) > 19 or int(value) > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
                break
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                # The client left: let the app see the disconnect.
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([body], then=receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            f"the request body is over the limit of {self.max_bytes} bytes",
            error="RequestBodyTooLarge",
            limit=self.max_bytes,
        )
        await response(scope, receive, send)


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    queue = list(messages)

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        if then is None:
            return {"type": "http.disconnect"}
        return await then()

    return receive


class _Timing:
    """Records each request's latency under its route template (unmatched: ``"unmatched"``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            core: Core | None = getattr(scope["app"].state, "core", None)
            if core is not None:
                route = scope.get("route")
                path = getattr(route, "path", "unmatched")
                method = scope["method"]
                core.metrics.record_request(path, method, status, time.perf_counter() - started)
                if core.audit.enabled:
                    _audit(core.audit, scope, path, method, status)


#: Routes whose requests the audit log samples as appends (the other writes: always).
_APPENDS: Final = frozenset({"/v1/threads/{thread_id}/messages", "/v1/threads/{thread_id}/turns"})


def _audit(audit: AuditLog, scope: Scope, route: str, method: str, status: int) -> None:
    state = scope.get("state", {})
    kind: RouteKind
    if not route.startswith("/v1/threads"):
        kind = "ops"
    elif method == "GET":
        kind = "read"
    else:
        kind = "append" if route in _APPENDS else "change"
    client = scope.get("client")
    audit.request(
        state.get("principal"),
        method=method,
        route=route,
        kind=kind,
        status=status,
        thread_id=scope.get("path_params", {}).get("thread_id"),
        version=state.get("version"),
        client=client[0] if client else None,
    )
