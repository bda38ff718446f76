"""`AgentCoreSession` (agent_core.integrations.openai_agents): the openai-agents ``Session``
over an agent-core thread, on both stores, with the real SDK.

Runs go through ``agents.Runner`` with a real ``Agent`` whose model speaks HTTP to a local
server: Chat Completions (tests/_chat_server.py, `OpenAIChatCompletionsModel`) or the
Responses API (`ResponsesServer` below, `OpenAIResponsesModel`, the SDK's default kind).
Tracing is off in every run (`RUN`), so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from copy import deepcopy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    SQLiteSession,
    function_tool,
)
from agents.items import TResponseInputItem
from agents.memory import Session, SessionSettings
from openai import AsyncOpenAI
from pydantic import TypeAdapter

from agent_core import (
    CacheClosed,
    ConfigurationError,
    ConversationCache,
    InvalidArgument,
    InvalidBatch,
    InvalidMessage,
    InvalidThreadId,
    MessageTooLarge,
    TokenBudgetExceeded,
    VersionConflict,
)
from agent_core.integrations.openai_agents import ENVELOPE_TYPE, AgentCoreSession

from ._chat_server import ChatServer, Reply, completion_body
from ._poll import eventually
from .conftest import CacheFactory
from .test_extras import _error_of

RUN = RunConfig(tracing_disabled=True)
SESSION = "user-1"


def user(text: str) -> TResponseInputItem:
    return {"role": "user", "content": text}


def said(items: list[TResponseInputItem]) -> list[str]:
    """The text of each user and assistant message, in order."""
    texts = []
    for item in items:
        content = item.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list) and item.get("role") == "assistant":
            texts.append(content[0]["text"])
    return texts


def dumped(items: list[Any]) -> list[str]:
    """Each item as SQLiteSession stores it (``json.dumps``): equal strings, equal bytes."""
    return [json.dumps(item) for item in items]


# -- Responses API items ----------------------------------------------------------------

IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
    "nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="
)

#: Items of the kinds the SDK stores, in the shapes the OpenAI SDK types give them.
KNOWN_ITEMS: list[dict[str, Any]] = [
    {"role": "developer", "content": "Answer in French."},
    {"content": "Décris l'image 🖼️ s'il te plaît", "role": "user"},
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "and this file?"},
            {"type": "input_image", "image_url": IMAGE, "detail": "low"},
            {"type": "input_file", "file_id": "file-abc", "filename": "notes.pdf"},
        ],
    },
    {
        "id": "rs_68a1",
        "summary": [{"text": "Looking at the **image**.", "type": "summary_text"}],
        "type": "reasoning",
        "content": [{"text": "raw chain", "type": "reasoning_text"}],
        "encrypted_content": "gAAAAABoZ2ZlbmNyeXB0ZWQ=",
        "status": "completed",
    },
    {
        "arguments": '{"city": "Paris", "units": "metric"}',
        "call_id": "call_Wz1",
        "name": "weather",
        "type": "function_call",
        "id": "fc_68a1",
        "status": "completed",
    },
    {
        "call_id": "call_Wz1",
        "output": '{"temp": 21.5, "sky": "clear"}',
        "type": "function_call_output",
    },
    {
        "call_id": "call_Wz2",
        "output": [
            {"type": "input_text", "text": "chart attached"},
            {"type": "input_image", "image_url": IMAGE, "detail": "auto"},
        ],
        "type": "function_call_output",
    },
    {
        "id": "msg_68a1",
        "content": [
            {
                "annotations": [
                    {
                        "type": "url_citation",
                        "start_index": 0,
                        "end_index": 5,
                        "title": "T",
                        "url": "https://example.com",
                    }
                ],
                "text": "Il fait beau.",
                "type": "output_text",
                "logprobs": [
                    {"token": "Il", "bytes": [73, 108], "logprob": -0.0001, "top_logprobs": []}
                ],
            },
            {"refusal": "Je ne peux pas.", "type": "refusal"},
        ],
        "role": "assistant",
        "status": "completed",
        "type": "message",
    },
    {
        "id": "ctc_1",
        "call_id": "call_c1",
        "input": "patch text",
        "name": "apply",
        "type": "custom_tool_call",
    },
    {"call_id": "call_c1", "output": "applied", "type": "custom_tool_call_output"},
    {
        "id": "cu_1",
        "action": {"type": "click", "button": "left", "x": 10, "y": 20},
        "call_id": "call_cu1",
        "pending_safety_checks": [],
        "status": "completed",
        "type": "computer_call",
    },
    {
        "call_id": "call_cu1",
        "output": {"type": "computer_screenshot", "image_url": IMAGE},
        "type": "computer_call_output",
    },
    {
        "id": "ws_1",
        "action": {"type": "search", "query": "météo"},
        "status": "completed",
        "type": "web_search_call",
    },
    {"id": "ig_1", "result": "aGVsbG8=", "status": "completed", "type": "image_generation_call"},
    {
        "id": "mcp_1",
        "arguments": "{}",
        "name": "list",
        "server_label": "files",
        "type": "mcp_call",
        "output": None,
        "error": None,
    },
    {"id": "cmp_1", "encrypted_content": "c29tZQ==", "type": "compaction"},
    {"id": "msg_68a0", "type": "item_reference"},
]

#: Items agent-core's message check refuses, kept in an envelope (`ENVELOPE_TYPE`).
ENVELOPED_ITEMS: list[dict[str, Any]] = [
    {"id": "msg_68a0", "type": None},  # an item_reference whose type is left out as null
    {"type": "message", "role": "user", "content": []},
    {"role": "system", "content": [{"type": "input_image", "image_url": IMAGE}]},
    {"type": ENVELOPE_TYPE, "item": {"role": "user", "content": "nested"}},
    {"type": ENVELOPE_TYPE},
]

#: Types no SDK version knows yet, with every kind of JSON value.
UNKNOWN_ITEMS: list[dict[str, Any]] = [
    {
        "type": "hologram_call",
        "id": "hc_1",
        "numbers": [0, -1, 2**63 - 1, -(2**63), 1.5, 1e-300, 0.1, -0.0],
        "flags": [True, False, None],
        "nested": {"z": {"y": [[], {}]}, "a": '\u0000 \u2028 \\ " \n'},
    },
    {"type": "x", "role_hint": "none"},
]

ALL_ITEMS: list[TResponseInputItem] = cast(
    "list[TResponseInputItem]", KNOWN_ITEMS + ENVELOPED_ITEMS + UNKNOWN_ITEMS
)


def test_known_items_are_responses_api_input_items() -> None:
    """The corpus is made of real items: the OpenAI SDK's own input item type takes them."""
    adapter = TypeAdapter(TResponseInputItem)
    for item in KNOWN_ITEMS:
        adapter.validate_python(item)


@pytest.fixture
async def session(cache: ConversationCache) -> AgentCoreSession:
    return AgentCoreSession(SESSION, cache)


async def test_it_is_an_sdk_session(session: AgentCoreSession) -> None:
    assert isinstance(session, Session)
    assert session.session_settings == SessionSettings()
    assert await session.get_items() == []
    assert await session.pop_item() is None


async def test_items_round_trip_exactly_through_each_tier(make_cache: CacheFactory) -> None:
    """What `get_items` and `pop_item` return is what was added: equal dicts whose
    ``json.dumps`` is the same string (key order included), from L1, L2 and the store."""
    async with make_cache() as writer, make_cache() as reader:
        written = AgentCoreSession(SESSION, writer)
        await written.add_items(deepcopy(ALL_ITEMS))
        read = AgentCoreSession(SESSION, reader)
        assert (await reader.read(SESSION)).source == "l2"
        from_l2 = await read.get_items()  # decoded from the bytes L2 gave
        await reader.invalidate(SESSION)  # L1 dropped, L2 fenced: the next read is the store's
        assert (await reader.read(SESSION)).source == "store"
        from_store = await read.get_items()
        for items in (await written.get_items(), from_l2, from_store):
            assert items == ALL_ITEMS
            assert dumped(items) == dumped(ALL_ITEMS)
        popped = [await read.pop_item() for _ in ALL_ITEMS]
        assert popped[::-1] == ALL_ITEMS
        assert dumped(popped[::-1]) == dumped(ALL_ITEMS)
        assert await written.get_items() == []


async def test_refused_items_are_stored_in_an_envelope(
    session: AgentCoreSession, cache: ConversationCache
) -> None:
    """Other readers of the thread see the envelope; the session, the item."""
    await session.add_items(cast("list[TResponseInputItem]", [*KNOWN_ITEMS[:2], *ENVELOPED_ITEMS]))
    stored = (await cache.get(SESSION)).to_list()
    assert stored[:2] == KNOWN_ITEMS[:2]
    assert stored[2:] == [{"type": ENVELOPE_TYPE, "item": item} for item in ENVELOPED_ITEMS]
    assert await session.get_items() == [*KNOWN_ITEMS[:2], *ENVELOPED_ITEMS]


async def test_returned_items_are_copies(session: AgentCoreSession) -> None:
    await session.add_items([user("hi")])
    first = await session.get_items()
    cast("dict[str, Any]", first[0])["content"] = "changed"
    assert await session.get_items() == [user("hi")]


# -- through the Runner: the Responses API ------------------------------------------------


class ResponsesServer:
    """A local OpenAI Responses API (``POST /v1/responses``, no streaming): each request is
    recorded and answered with the next scripted list of output items."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.outputs: list[list[dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> ResponsesServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _answer(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.bodies.append(body)
            if path != "/v1/responses" or not self.outputs:
                return 404, {"error": {"message": f"nothing scripted for {path}", "type": "test"}}
            output = self.outputs.pop(0)
            number = len(self.bodies)
        return 200, {
            "id": f"resp_{number}",
            "object": "response",
            "created_at": 1700000000,
            "model": body["model"],
            "status": "completed",
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 10,
                "output_tokens": 5,
                "total_tokens": 15,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 3},
            },
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                status, answer = server._answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def said_by_model(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


REASONING: dict[str, Any] = {
    "id": "rs_1",
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "The user shows an image 🖼️."}],
    "encrypted_content": "gAAAAABpZW5jcnlwdGVk",
}
LOOK: list[TResponseInputItem] = [
    {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": IMAGE, "detail": "low"},
        ],
    }
]


async def two_turns(session: Session) -> tuple[list[dict[str, Any]], list[TResponseInputItem]]:
    """Two runs over the Responses API (a reasoning item and an image in the first); the
    second request's input and the session's items after."""
    with ResponsesServer() as server:
        server.outputs += [[REASONING, said_by_model("msg_1", "A pixel.")]]
        server.outputs += [[said_by_model("msg_2", "You're welcome.")]]
        client = AsyncOpenAI(base_url=server.url, api_key="sk-local", max_retries=0)
        model = OpenAIResponsesModel(model="o4-mini", openai_client=client)
        agent = Agent(name="looker", instructions="Be brief.", model=model)
        await Runner.run(agent, deepcopy(LOOK), session=session, run_config=RUN)
        await Runner.run(agent, "Thanks!", session=session, run_config=RUN)
        await client.close()
    return server.bodies[-1]["input"], await session.get_items()


@pytest.mark.integration
async def test_reasoning_and_images_reach_the_next_request_as_with_sqlite_session(
    session: AgentCoreSession, tmp_path: Path
) -> None:
    """Over the Responses API, the second turn's request carries the first turn's image and
    reasoning item exactly, and is the same, byte for byte, as with the SDK's SQLiteSession."""
    sent, items = await two_turns(session)
    assert sent[0] == LOOK[0]
    assert sent[1] == REASONING
    assert sent == items[:-1]
    sqlite_session = SQLiteSession(SESSION, tmp_path / "sdk.db")
    try:
        sdk_sent, sdk_items = await two_turns(sqlite_session)
    finally:
        sqlite_session.close()
    assert json.dumps(sent) == json.dumps(sdk_sent)
    assert dumped(items) == dumped(sdk_items)


# -- through the Runner: Chat Completions ------------------------------------------------


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as running:
        yield running


@pytest.fixture
async def chat_model(server: ChatServer) -> AsyncIterator[OpenAIChatCompletionsModel]:
    client = AsyncOpenAI(base_url=server.url, api_key="sk-local", max_retries=0)
    yield OpenAIChatCompletionsModel(model="gpt-4o-mini", openai_client=client)
    await client.close()


def answer(text: str) -> Reply:
    return Reply(body=completion_body(text))


@function_tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def sent_messages(server: ChatServer, index: int = -1) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = server.requests[index].json()["messages"]
    return messages


async def test_a_tool_call_turn_is_stored_and_sent_back(
    server: ChatServer, chat_model: OpenAIChatCompletionsModel, session: AgentCoreSession
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
    }
    server.script(
        Reply(body=completion_body(None, tool_calls=[call], finish_reason="tool_calls")),
        answer("Sunny."),
        answer("Bye."),
    )
    agent = Agent(name="forecaster", model=chat_model, tools=[weather])
    first = await Runner.run(agent, "Weather in Paris?", session=session, run_config=RUN)
    await Runner.run(agent, "Thanks", session=session, run_config=RUN)
    items = await session.get_items()
    assert [item.get("type") for item in items[:4]] == [
        None,
        "function_call",
        "function_call_output",
        "message",
    ]
    assert items[:4] == first.to_input_list()
    assert sent_messages(server) == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny in Paris"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "user", "content": "Thanks"},
    ]


@pytest.mark.parametrize("runs", [3])
async def test_two_runners_on_two_instances_lose_nothing(
    server: ChatServer,
    chat_model: OpenAIChatCompletionsModel,
    make_cache: CacheFactory,
    runs: int,
) -> None:
    """openai-agents #2722: concurrent first writes to a fresh session dropped items. Two
    Runners, each on its own cache instance, run turns on one new session at once: every
    input and every reply is there once, each turn's batch whole."""
    server.script(*(answer(f"reply {n}") for n in range(2 * runs)))
    agent = Agent(name="twin", model=chat_model)
    async with (
        make_cache(consistency="strong") as a,
        make_cache(consistency="strong") as b,
    ):
        start = asyncio.Event()

        async def runner(cache: ConversationCache, name: str) -> list[list[TResponseInputItem]]:
            session = AgentCoreSession(SESSION, cache)
            await start.wait()
            turns = []
            for n in range(runs):
                result = await Runner.run(agent, f"{name} {n}", session=session, run_config=RUN)
                turns.append(result.new_items)
            return [[item.to_input_item() for item in turn] for turn in turns]

        tasks = [asyncio.create_task(runner(a, "alice")), asyncio.create_task(runner(b, "bob"))]
        start.set()
        outputs = await asyncio.gather(*tasks)
        items = await AgentCoreSession(SESSION, a).get_items()
    texts = said(items)
    assert len(items) == 4 * runs
    assert sorted(texts) == sorted(
        [f"{name} {n}" for name in ("alice", "bob") for n in range(runs)]
        + [f"reply {n}" for n in range(2 * runs)]
    )
    for turns in outputs:
        for new_items in turns:
            position = items.index(new_items[0])
            assert items[position : position + len(new_items)] == new_items
    # Each runner's own inputs come in the order it sent them.
    for name in ("alice", "bob"):
        assert [t for t in texts if t.startswith(name)] == [f"{name} {n}" for n in range(runs)]


async def test_session_settings_limit_reaches_the_model(
    server: ChatServer, chat_model: OpenAIChatCompletionsModel, cache: ConversationCache
) -> None:
    session = AgentCoreSession(SESSION, cache, session_settings=SessionSettings(limit=3))
    await session.add_items([user(f"old {n}") for n in range(6)])
    server.script(answer("a"), answer("b"))
    agent = Agent(name="short", model=chat_model)
    await Runner.run(agent, "now", session=session, run_config=RUN)
    assert [m["content"] for m in sent_messages(server)] == ["old 3", "old 4", "old 5", "now"]
    # RunConfig's settings override the session's.
    limited = RunConfig(tracing_disabled=True, session_settings=SessionSettings(limit=1))
    await Runner.run(agent, "again", session=session, run_config=limited)
    assert [m["content"] for m in sent_messages(server)] == ["a", "again"]


# -- limits ---------------------------------------------------------------------------


async def test_get_items_limits(cache: ConversationCache) -> None:
    session = AgentCoreSession(SESSION, cache)
    items = [user(f"m{n}") for n in range(5)]
    await session.add_items(items)
    assert await session.get_items() == items
    assert await session.get_items(None) == items
    assert await session.get_items(0) == []
    assert await session.get_items(2) == items[-2:]
    assert await session.get_items(5) == items
    assert await session.get_items(99) == items
    limited = AgentCoreSession(SESSION, cache, session_settings={"limit": 3})
    assert limited.session_settings == SessionSettings(limit=3)
    assert await limited.get_items() == items[-3:]
    assert await limited.get_items(1) == items[-1:]  # an explicit limit wins
    assert await limited.get_items(0) == []
    assert await limited.get_items_and_version() == (items[-3:], 5)


@pytest.mark.parametrize("limit", [-1, True, 1.5, "2"])
async def test_a_bad_limit_is_refused(session: AgentCoreSession, limit: Any) -> None:
    with pytest.raises(InvalidArgument, match="limit must be an int of at least 0"):
        await session.get_items(limit)


async def test_a_token_window_instead_of_the_whole_history(cache: ConversationCache) -> None:
    """With ``window_tokens``, `get_items` is the cache's window for ``model`` (system
    messages kept, a function call kept with its output), then ``limit``."""
    session = AgentCoreSession(SESSION, cache, window_tokens=120, model="gpt-4o")
    history: list[TResponseInputItem] = [
        {"role": "system", "content": "Be terse."},
        *[user(f"message number {n} " + "word " * 10) for n in range(20)],
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "x " * 30},
        user("last"),
    ]
    await session.add_items(history)
    window = await cache.window(SESSION, max_tokens=120, model="gpt-4o")
    items = await session.get_items()
    assert items == window.to_list()
    assert items[0] == history[0]
    assert 0 < window.omitted < len(history) - 3
    assert items[-3:] == history[-3:]
    assert await session.get_items(2) == history[-2:]
    assert await session.get_items_and_version() == (items, len(history))
    tight = AgentCoreSession(SESSION, cache, window_tokens=30, model="gpt-4o")
    await tight.add_items([user("word " * 100)])
    with pytest.raises(TokenBudgetExceeded):
        await tight.get_items()


# -- concurrent writers -------------------------------------------------------------------


async def test_concurrent_pops_across_instances_never_share_an_item(
    make_cache: CacheFactory,
) -> None:
    items = [user(f"m{n}") for n in range(30)]
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        sessions = [AgentCoreSession(SESSION, a), AgentCoreSession(SESSION, b)]
        await sessions[0].add_items(items)

        async def pops(session: AgentCoreSession) -> list[TResponseInputItem | None]:
            return [await session.pop_item() for _ in range(20)]

        popped = [item for got in await asyncio.gather(*map(pops, sessions)) for item in got]
        assert popped.count(None) == 10
        taken = [item for item in popped if item is not None]
        assert sorted(dumped(taken)) == sorted(dumped(items))
        assert await sessions[1].get_items() == []


async def test_concurrent_adds_and_pops_across_instances(make_cache: CacheFactory) -> None:
    """Each batch lands whole and in order; every item is popped at most once, and what was
    added is either popped or still there."""
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        adder, other, popper = (
            AgentCoreSession(SESSION, a),
            AgentCoreSession(SESSION, b),
            AgentCoreSession(SESSION, b),
        )
        batches = {
            name: [[user(f"{name}{n}.{k}") for k in range(3)] for n in range(8)]
            for name in ("a", "b")
        }

        async def add(session: AgentCoreSession, name: str) -> None:
            for batch in batches[name]:
                await session.add_items(deepcopy(batch))

        async def pop() -> list[TResponseInputItem]:
            popped = []
            for _ in range(12):
                item = await popper.pop_item()
                if item is not None:
                    popped.append(item)
                await asyncio.sleep(0)
            return popped

        _, _, popped = await asyncio.gather(add(adder, "a"), add(other, "b"), pop())
        left = await adder.get_items()
    added = [item for name in batches for batch in batches[name] for item in batch]
    assert sorted(dumped(popped + left)) == sorted(dumped(added))
    assert len(set(dumped(popped))) == len(popped)
    # Pops take from the end: what is left of a batch is its beginning, all together.
    for batch in (batch for name in batches for batch in batches[name]):
        kept = [item for item in batch if item in left]
        assert kept == batch[: len(kept)]
        if kept:
            position = left.index(kept[0])
            assert left[position : position + len(kept)] == kept


async def test_whole_batches_from_two_instances_never_interleave(
    make_cache: CacheFactory,
) -> None:
    async with make_cache() as a, make_cache() as b:
        batches = {
            name: [[user(f"{name}{n}.{k}") for k in range(4)] for n in range(10)]
            for name in ("a", "b")
        }

        async def add(cache: ConversationCache, name: str) -> None:
            session = AgentCoreSession(SESSION, cache)
            for batch in batches[name]:
                await session.add_items(deepcopy(batch))

        await asyncio.gather(add(a, "a"), add(b, "b"))
        await b.invalidate(SESSION)  # read from the store
        items = await AgentCoreSession(SESSION, b).get_items()
    assert len(items) == 80
    for name in batches:
        for batch in batches[name]:
            position = items.index(batch[0])
            assert items[position : position + 4] == batch


# -- VersionConflict --------------------------------------------------------------------


async def test_the_sdk_path_never_conflicts(
    server: ChatServer, chat_model: OpenAIChatCompletionsModel, make_cache: CacheFactory
) -> None:
    """The SDK passes no version: a write by another instance during a run (here, while the
    model is answering) is kept, and so is the run's own."""
    held = threading.Event()
    server.script(Reply(body=completion_body("late reply"), until=held))
    agent = Agent(name="slow", model=chat_model)
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        run = asyncio.create_task(
            Runner.run(agent, "question", session=AgentCoreSession(SESSION, a), run_config=RUN)
        )
        other = AgentCoreSession(SESSION, b)
        await eventually(lambda: server.requests)  # the run is waiting for the model
        await other.add_items([user("meanwhile")])
        held.set()
        await run
        assert said(await other.get_items()) == ["question", "meanwhile", "late reply"]


async def test_expected_version_makes_writes_conditional(make_cache: CacheFactory) -> None:
    """Beyond the protocol: ``expected_version`` (from `get_items_and_version`) makes
    `add_items` a compare-and-append and `pop_item` a compare-and-pop. A conflict raises
    `VersionConflict` with both versions and writes nothing."""
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        mine, theirs = AgentCoreSession(SESSION, a), AgentCoreSession(SESSION, b)
        await mine.add_items([user("one"), user("two")])
        items, version = await mine.get_items_and_version()
        assert (said(items), version) == (["one", "two"], 2)
        await theirs.add_items([user("three")])
        with pytest.raises(VersionConflict) as conflict:
            await mine.add_items([user("four")], expected_version=version)
        assert (conflict.value.expected, conflict.value.actual) == (2, 3)
        with pytest.raises(VersionConflict):
            await mine.pop_item(expected_version=version)
        assert said(await theirs.get_items()) == ["one", "two", "three"]
        _, version = await mine.get_items_and_version()
        await mine.add_items([user("four")], expected_version=version)
        assert await mine.pop_item(expected_version=version + 1) == user("four")
        assert said(await theirs.get_items()) == ["one", "two", "three"]


# -- clear, lifecycle, validation -----------------------------------------------------------


async def test_clear_session(make_cache: CacheFactory) -> None:
    async with make_cache(consistency="strong") as a, make_cache(consistency="strong") as b:
        mine, theirs = AgentCoreSession(SESSION, a), AgentCoreSession(SESSION, b)
        await mine.add_items([user("one"), user("two")])
        assert len(await theirs.get_items()) == 2
        await theirs.clear_session()
        assert await mine.get_items_and_version() == ([], 3)
        await mine.clear_session()  # clearing an empty session is fine
        await mine.add_items([user("again")])
        assert await theirs.get_items() == [user("again")]


async def test_from_urls_opens_on_first_use_and_owns_its_cache(
    store_url: str, redis_url: str, namespace: str
) -> None:
    session = AgentCoreSession.from_urls(
        SESSION, store=store_url, redis=redis_url, namespace=namespace, consistency="strong"
    )
    assert session.cache.namespace == namespace
    assert session.cache.consistency == "strong"
    await session.add_items([user("hi")])  # opened here
    assert await session.get_items() == [user("hi")]
    await session.close()
    await session.close()  # closing twice is fine
    with pytest.raises(CacheClosed):
        await session.get_items()
    async with AgentCoreSession.from_urls(
        SESSION, store=store_url, namespace=namespace, session_settings={"limit": 1}
    ) as again:
        assert await again.get_items() == [user("hi")]
    unused = AgentCoreSession.from_urls(SESSION, store=store_url, redis=redis_url)
    await unused.close()  # never opened: releases its clients all the same


async def test_from_urls_counts_the_window_model_at_append(sqlite_url: str) -> None:
    async with AgentCoreSession.from_urls(
        SESSION, store=sqlite_url, window_tokens=1000, model="gpt-3.5-turbo"
    ) as session:
        assert session.cache.options.token_models == ("gpt-3.5-turbo",)
        await session.add_items([user("hi")])
        assert await session.get_items() == [user("hi")]


async def test_concurrent_first_uses_open_once(sqlite_url: str) -> None:
    async with AgentCoreSession.from_urls(SESSION, store=sqlite_url) as _:
        pass
    session = AgentCoreSession.from_urls(SESSION, store=sqlite_url)
    try:
        await asyncio.gather(*(session.add_items([user(f"m{n}")]) for n in range(5)))
        assert len(await session.get_items()) == 5
    finally:
        await session.close()


async def test_a_borrowed_cache_stays_open(cache: ConversationCache) -> None:
    async with AgentCoreSession(SESSION, cache) as session:
        await session.add_items([user("hi")])
    assert await AgentCoreSession(SESSION, cache).get_items() == [user("hi")]


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"session_id": "has space"}, InvalidThreadId, "invalid thread id"),
        ({"session_id": ""}, InvalidThreadId, "invalid thread id"),
        ({"session_settings": {"limit": -1}}, InvalidArgument, "session_settings.limit"),
        ({"session_settings": {"size": 3}}, InvalidArgument, "has no size: it takes limit"),
        ({"session_settings": {"limit": "x"}}, InvalidArgument, "session_settings: 1 validation"),
        ({"session_settings": 3}, InvalidArgument, "SessionSettings or a dict"),
        ({"window_tokens": 100}, InvalidArgument, "needs the model"),
        ({"window_tokens": 0, "model": "gpt-4o"}, InvalidArgument, "window_tokens must be"),
        ({"model": "gpt-4o"}, InvalidArgument, "only used with window_tokens"),
        ({"no_such_option": 1}, ConfigurationError, "no_such_option"),
    ],
)
def test_bad_arguments_are_refused_before_anything_opens(
    tmp_path: Path, arguments: dict[str, Any], error: type[Exception], match: str
) -> None:
    arguments = {"session_id": SESSION, **arguments}
    store = f"sqlite:///{tmp_path / 'never.db'}"
    with pytest.raises(error, match=match):
        AgentCoreSession.from_urls(store=store, **arguments)
    assert not (tmp_path / "never.db").exists()


def test_the_cache_must_be_a_conversation_cache() -> None:
    with pytest.raises(ConfigurationError, match="ConversationCache"):
        AgentCoreSession(SESSION, "sqlite:///agent-core.db")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("items", "error", "match"),
    [
        ({"role": "user", "content": "hi"}, InvalidBatch, "wrap a single message in a list"),
        ("hi", InvalidBatch, "list of message dicts"),
        ([user("ok"), "not a dict"], InvalidMessage, r"messages\[1\]: a message must be a dict"),
        ([user("ok"), {"type": "x", "v": float("nan")}], InvalidMessage, r"messages\[1\]: .*NaN"),
        ([user("ok"), {"type": "x", "v": {1, 2}}], InvalidMessage, r"messages\[1\]"),
        ([user("x" * 2000)], MessageTooLarge, "max_message_bytes"),
        ([{"role": "user", "content": [], "v": float("nan")}], InvalidMessage, "NaN"),
        ([user(str(n)) for n in range(4)], InvalidBatch, "over the limit of 3"),
    ],
)
async def test_refused_items_write_nothing(
    store_url: str, namespace: str, items: Any, error: type[Exception], match: str
) -> None:
    async with AgentCoreSession.from_urls(
        SESSION, store=store_url, namespace=namespace, max_message_bytes=1024, max_batch_messages=3
    ) as session:
        await session.add_items([user("before")])
        with pytest.raises(error, match=match):
            await session.add_items(items)
        assert await session.get_items_and_version() == ([user("before")], 1)


async def test_empty_batches_write_nothing(session: AgentCoreSession) -> None:
    await session.add_items([])
    assert await session.get_items_and_version() == ([], 0)


@pytest.mark.integration
def test_without_the_sdk_the_import_names_the_extra() -> None:
    raised = _error_of("import agent_core.integrations.openai_agents", blocked=("agents",))
    assert raised == (
        "agent_core.errors.ConfigurationError",
        "AgentCoreSession needs openai-agents: pip install 'agent-core[openai-agents]'",
    )


RUN_SYNC = """
import sys
from agents import Agent, RunConfig, Runner
from agents.testing import ScriptedModel, assistant_message
from agent_core.integrations.openai_agents import AgentCoreSession

model = ScriptedModel([[assistant_message("one")], [assistant_message("two")]])
agent = Agent(name="sync", model=model)
session = AgentCoreSession.from_urls("user-1", store=sys.argv[1])
offline = RunConfig(tracing_disabled=True)
replies = [Runner.run_sync(agent, text, session=session, run_config=offline).final_output
           for text in ("hi", "again")]
print(replies, len(model.last_call.input))
"""


@pytest.mark.integration
def test_run_sync_calls_share_the_session(sqlite_url: str) -> None:
    """`Runner.run_sync` runs every call on the thread's default loop: the session's cache,
    opened by the first call, serves the second (in a fresh interpreter, as a script would)."""
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", RUN_SYNC, sqlite_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['one', 'two'] 3"


async def test_a_close_during_the_first_open_leaves_the_session_closed(sqlite_url: str) -> None:
    """The close waits for the opening call's open (never closing a cache half open, nor
    leaving one open after it); that call then writes, or finds the cache closed."""
    session = AgentCoreSession.from_urls(SESSION, store=sqlite_url)
    first = asyncio.create_task(session.add_items([user("hi")]))
    await asyncio.sleep(0)  # the first call is opening the cache
    await session.close()
    (outcome,) = await asyncio.gather(first, return_exceptions=True)
    assert outcome is None or isinstance(outcome, CacheClosed), outcome
    with pytest.raises(CacheClosed):
        await session.get_items()
