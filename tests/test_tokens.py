"""TokenCounter: model mapping, offline loading, verified vocabularies and exactness.

tiktoken is the oracle. It is never allowed to download: its own encoding constructors
(tiktoken_ext/openai_public.py) run with their loader replaced by one that rebuilds the
``.tiktoken`` file from quicktok's bundled data and checks tiktoken's expected sha256.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import quicktok
import tiktoken
import tiktoken_ext.openai_public as openai_public

from agent_core import InvalidArgument, Message, TokenCounter
from agent_core.tokens._encodings import _UNICODE_17, _UNICODE_17_UTF8, PATTERNS, bpe_counter

ENCODINGS = ("cl100k_base", "o200k_base")
_DATA_FILES = {"cl100k_base": "cl100k.vocab", "o200k_base": "o200k.vocab"}


def _quicktok_ranks(name: str) -> list[bytes]:
    """Token bytes by rank from quicktok's data file: u32 count, then (u16 len, bytes, u32 rank)."""
    data = (Path(quicktok.__file__).parent / "data" / _DATA_FILES[name]).read_bytes()
    (count,) = struct.unpack_from("<I", data, 0)
    offset, tokens = 4, []
    for expected_rank in range(count):
        (length,) = struct.unpack_from("<H", data, offset)
        token = data[offset + 2 : offset + 2 + length]
        (rank,) = struct.unpack_from("<I", data, offset + 2 + length)
        assert rank == expected_rank
        tokens.append(token)
        offset += 2 + length + 4
    assert offset == len(data)
    return tokens


def _tiktoken_file(tokens: list[bytes]) -> bytes:
    return b"".join(base64.b64encode(t) + b" %d\n" % rank for rank, t in enumerate(tokens))


class _Oracle:
    """tiktoken's own constructors, fed quicktok's data after tiktoken's hash check."""

    def __init__(self) -> None:
        self.checked: dict[str, tuple[str, str]] = {}

    def load(self, name: str) -> tuple[tiktoken.Encoding, dict[str, Any]]:
        def load_tiktoken_bpe(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
            contents = _tiktoken_file(_quicktok_ranks(name))
            self.checked[name] = (hashlib.sha256(contents).hexdigest(), str(expected_hash))
            assert url.endswith(f"/{name}.tiktoken")
            return {
                base64.b64decode(token): int(rank)
                for token, rank in (line.split() for line in contents.splitlines())
            }

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(openai_public, "load_tiktoken_bpe", load_tiktoken_bpe)
            spec: dict[str, Any] = getattr(openai_public, name)()
        return tiktoken.Encoding(**spec), spec


Oracle = tuple[_Oracle, dict[str, tiktoken.Encoding], dict[str, Any]]


@pytest.fixture(scope="module")
def oracle() -> Oracle:
    def deny(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args[:2]!r}")

    made = _Oracle()
    encodings, specs = {}, {}
    with pytest.MonkeyPatch.context() as patch:
        for target, attr in [(socket, "getaddrinfo"), (socket, "create_connection")]:
            patch.setattr(target, attr, deny)
        patch.setattr(socket.socket, "connect", deny)
        for name in ENCODINGS:
            encodings[name], specs[name] = made.load(name)
    return made, encodings, specs


# (a) model mapping


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:org::id", "o200k_base"),
        ("ft:gpt-4.1-2025-04-14:my-org:custom:abc123", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini-2025-08-07", "o200k_base"),
        ("gpt-5.1", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-preview-2024-09-12", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-2025-04-16", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("ft:gpt-3.5-turbo-0613:org::7p4lURel", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
    ],
)
def test_openai_models_map_to_their_encoding(model: str, encoding: str) -> None:
    counter = TokenCounter.for_model(model)
    assert (counter.model, counter.encoding, counter.exact) == (model, encoding, True)


@pytest.mark.parametrize(
    "model", ["claude-sonnet-4-5", "claude-3-5-haiku-20241022", "llama-3.1-8b", "gpt-4x", "o2"]
)
def test_other_models_are_estimates(model: str) -> None:
    counter = TokenCounter.for_model(model)
    assert (counter.encoding, counter.exact) == (None, False)
    assert counter.count("") == 0
    # Within the documented calibration band (-28%..+24% of o200k_base).
    for text in [Path(json.__file__).read_text(encoding="utf-8"), "日本語のテキストです。" * 50]:
        exact = TokenCounter.for_model("gpt-4o").count(text)
        assert 0.7 * exact <= counter.count(text) <= 1.3 * exact


# (b) counts published in tiktoken's README and the OpenAI cookbook


@pytest.mark.parametrize(
    ("model", "text", "tokens"),
    [
        ("gpt-4", "tiktoken is great!", 6),
        ("gpt-4o", "tiktoken is great!", 6),
        ("gpt-4", "antidisestablishmentarianism", 6),
        ("gpt-4o", "antidisestablishmentarianism", 6),
        ("gpt-4", "2 + 2 = 4", 7),
        ("gpt-4o", "2 + 2 = 4", 7),
        ("gpt-4", "お誕生日おめでとう", 9),
        ("gpt-4o", "お誕生日おめでとう", 8),
    ],
)
def test_published_counts(model: str, text: str, tokens: int) -> None:
    assert TokenCounter.for_model(model).count(text) == tokens


# (c) offline


def test_import_and_first_use_open_no_connection() -> None:
    script = textwrap.dedent(
        """
        import socket

        def deny(*args, **kwargs):
            raise OSError(f"network access attempted: {args[:2]!r}")

        socket.socket.connect = deny
        socket.socket.connect_ex = deny
        socket.getaddrinfo = deny
        socket.create_connection = deny

        from agent_core import TokenCounter

        for model in ("gpt-4o", "gpt-4"):
            counter = TokenCounter.for_model(model)
            assert counter.count("hello world") == 2
            assert counter.count("x\\u088f's \\ud800") > 0
            assert counter.count_messages([{"role": "user", "content": "hi"}]) == 8
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# (d) the vocabularies are the official ones


@pytest.mark.parametrize("name", ENCODINGS)
def test_vocabulary_sha256_is_tiktokens_expected_hash(oracle: Oracle, name: str) -> None:
    made, _, _ = oracle
    actual, expected = made.checked[name]
    assert actual == expected
    # The engine uses the file that was hashed.
    engine, tokens = quicktok.get_encoding(name), _quicktok_ranks(name)
    assert [engine.decode_single_token_bytes(rank) for rank in range(len(tokens))] == tokens


@pytest.mark.parametrize("name", ENCODINGS)
def test_split_patterns_are_tiktokens(oracle: Oracle, name: str) -> None:
    assert PATTERNS[name] == oracle[2][name]["pat_str"]


# (e) ids and counts equal tiktoken's


def _corpus() -> list[str]:
    rng = random.Random(20261124)
    english = (
        "It's 12345 O'Neil's café—they'll say we've \"done\" it. I'M HERE, you're not.\r\n" * 200
    )
    code = Path(json.__file__).read_text(encoding="utf-8") + "\n\tif x:\n\t\treturn  y  \n"
    data = json.dumps(
        [
            {"id": i, "név": f"élément {i}", "tags": ["\u03b1", "\u03b2"], "v": i / 7}
            for i in range(300)
        ],
        indent=2,
        ensure_ascii=False,
    )
    cjk = "日本語のテキストです。中文文本\uff0c한국어 텍스트입니다。𠀀𪚥 " * 200
    emoji = "👨‍👩‍👧‍👦 👍🏽 🇫🇷🇯🇵 🏴󠁧󠁢󠁳󠁣󠁴󠁿 1️⃣ ❤️ " * 200
    code_points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    random_unicode = "".join(chr(rng.choice(code_points)) for _ in range(20_000))
    specials = "a<|endoftext|>b <|endofprompt|> <|fim_prefix|><|im_start|>user\n" * 100
    # New letters in Unicode 17, in the contexts that split differently (guard 2).
    unicode_17 = "".join(
        f"a{c}b A{c}a {c}'s 1{c}2  {c} x!{c}\n{c}{c} "
        for c in ("\u088f", "\u0c5c", "\ua7ce", "\U00010940", "\U00016ea0", "\U000323b0")
    )
    runs = ["a" * 100_000, " " * 50_000, "\n" * 50_000, "1" * 20_000, "é" * 20_000]
    mixed = english[:2000] + cjk[:500] + emoji[:300] + unicode_17 + random_unicode[:2000]
    return [english, code, data, cjk, emoji, random_unicode, specials, unicode_17, mixed, *runs]


@pytest.mark.parametrize("name", ENCODINGS)
def test_counts_equal_tiktoken_on_mixed_corpus(oracle: Oracle, name: str) -> None:
    reference = oracle[1][name]
    engine = quicktok.get_encoding(name)
    counter = bpe_counter(name)
    for text in _corpus():
        ids = reference.encode_ordinary(text)
        assert counter.count(text) == len(ids), text[:80]
        if not _UNICODE_17.search(text):
            # Unguarded text goes straight to quicktok: its ids must be tiktoken's too.
            assert engine.encode_ordinary(text) == ids, text[:80]


@pytest.mark.parametrize("name", ENCODINGS)
def test_unicode_17_guard_matches_tiktoken(oracle: Oracle, name: str) -> None:
    reference = oracle[1][name]
    counter = bpe_counter(name)
    # The example of the research note: quicktok alone gives 4 tokens, tiktoken 5.
    assert quicktok.get_encoding(name).count("\u088f's") == 4
    assert counter.count("\u088f's") == len(reference.encode_ordinary("\u088f's")) == 5
    rng = random.Random(17)
    alphabet = ["\u088f", "\u1ad0", "\U00011db5", "\U00033000", "a", "Z", "'", "s", "ll", " "]
    alphabet += ["\n", "1", "é", "日", "👍", "!", "\u0301", "/", "\r\n", "<|endoftext|>"]
    # Whitespace of several kinds next to Unicode-17 letters: where a split in pieces
    # is easiest to get wrong (a per-run shortcut once failed here).
    alphabet += ["\t", "   ", "\u3000", "x", "9999", "?!", "\U0001e6c5", "\ua7ce"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert counter.count(text) == len(reference.encode_ordinary(text)), repr(text)


def test_unicode_17_byte_prefilter_covers_every_guarded_code_point() -> None:
    guarded = [chr(c) for c in range(0x110000) if _UNICODE_17.match(chr(c))]
    assert len(guarded) > 4699  # the research note's mismatch count, ranges include gaps
    assert all(_UNICODE_17_UTF8.search(c.encode("utf-8")) for c in guarded)


@pytest.mark.parametrize("name", ENCODINGS)
def test_lone_surrogates_are_repaired_like_tiktoken(oracle: Oracle, name: str) -> None:
    reference = oracle[1][name]
    counter = bpe_counter(name)
    for text in ["x\ud800y", "\udfff", "a\ud83d\ude00b\ud83d", "\ud800\u088f's"]:
        assert counter.count(text) == len(reference.encode_ordinary(text)), repr(text)


def test_special_token_text_counts_as_text() -> None:
    counter = TokenCounter.for_model("gpt-4")
    assert counter.count("a<|endoftext|>b") == 9


# (f) chat format


COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates "
        "corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the "
        "client deliverable.",
    },
]

COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]

COOKBOOK_TOOL_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


@pytest.mark.parametrize(
    ("model", "messages", "with_tools"),
    [
        ("gpt-3.5-turbo-0125", 129, 105),
        ("gpt-4-0613", 129, 105),
        ("gpt-4o-2024-08-06", 124, 101),
        ("gpt-4o-mini-2024-07-18", 124, 101),
    ],
)
def test_cookbook_examples_match_the_api_counts(model: str, messages: int, with_tools: int) -> None:
    counter = TokenCounter.for_model(model)
    assert counter.count_messages(COOKBOOK_MESSAGES) == messages
    as_messages = [Message(m) for m in COOKBOOK_MESSAGES]
    assert counter.count_messages(as_messages) == messages
    assert counter.count_messages(COOKBOOK_TOOL_MESSAGES, tools=COOKBOOK_TOOLS) == with_tools
    # The bare (legacy ``functions``) form counts the same.
    bare = [tool["function"] for tool in COOKBOOK_TOOLS]
    assert counter.count_messages(COOKBOOK_TOOL_MESSAGES, tools=bare) == with_tools
    no_tools = counter.count_messages(COOKBOOK_TOOL_MESSAGES)
    assert counter.count_messages(COOKBOOK_TOOL_MESSAGES, tools=[]) == no_tools


def test_multipart_content_and_tool_calls() -> None:
    counter = TokenCounter.for_model("gpt-4o")
    count = counter.count
    call = {"name": "get_current_weather", "arguments": '{"location": "Paris"}'}
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": call}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    expected = (
        3 * 3
        + 3
        + count("user")
        + count("What is in this image?")
        + count("assistant")
        + count(call["name"])
        + count(call["arguments"])
        + count("tool")
        + count("call_1")
        + count("18C")
    )
    assert counter.count_messages(messages) == expected
    assert counter.count_messages([]) == 3


# (g) bad input


@pytest.mark.parametrize("name", ["", "   ", None, 4, b"gpt-4o"])
def test_bad_model_name(name: Any) -> None:
    with pytest.raises(InvalidArgument):
        TokenCounter.for_model(name)


def test_bad_arguments() -> None:
    counter = TokenCounter.for_model("gpt-4o")
    with pytest.raises(InvalidArgument):
        TokenCounter("gpt-4o", "p50k_base")
    with pytest.raises(InvalidArgument):
        counter.count(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        counter.count_messages("hello")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        counter.count_messages([{"role": "user", "content": "hi"}, "hello"])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        counter.count_messages([], tools=[{"description": "no name"}])
    with pytest.raises(InvalidArgument):
        counter.count_messages([], tools="get_weather")  # type: ignore[arg-type]


async def test_long_texts_are_counted_off_the_event_loop() -> None:
    counter = TokenCounter.for_model("gpt-4o")
    text = "The quick brown fox jumps over the lazy dog. 你好\uff0c世界。 " * 100_000  # ~5.6 MB
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    running = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    counted = await counter.count_async(text)
    running.cancel()
    assert counted == counter.count(text)
    # The loop kept turning while the text was counted in a worker thread.
    assert ticks - before >= 5
    assert await counter.count_async("short") == counter.count("short")
