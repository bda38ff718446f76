"""Prompt-cache cost (issue 15): what providers bill for the prompts that naive, cache-stable
and stable + compacted windows send.

    python benchmarks/prompt_cache.py [--quick] [--json FILE] [--seed N]

Workload: 20 synthetic conversations of 300 turns (seeded). A turn is a user message (mostly
short chat, 20-200 tokens, sometimes pasted code, 300-2,000), zero to two rounds of tool
calls (an assistant message with one or two calls, then their results: 1,000-6,000 tokens a
round) and a final assistant reply (chat, or code of 300-2,000 tokens). Turns are 5-90 s
apart, sometimes 1.5-5 minutes, and 6 % of the time 5-60 minutes (past the 5-minute cache
lifetime); a tool round adds 3-30 s. Every request carries the same system prompt (~500
tokens) and five tool definitions (~600 tokens). Budgets: 32K (the goals), 8K and 128K.

Each strategy writes the conversation into a real `ConversationCache` (one SQLite file in a
temporary directory, a namespace per strategy and, for compaction, per budget), turn by turn,
and builds every request as `BaseAgent` does: the system prompt, ``cache.window(thread,
max_tokens=budget - system prompt, model="gpt-4o", tools=TOOLS, strategy=...,
pending_tokens=<user message>)``, the user message. A tool round appends the user message,
the calls and the results, and sends the window of the thread as it is then (pending 0);
the final reply is appended after. Strategies:

- naive: ``strategy="sliding"`` (the longest newest suffix that fits);
- stable: ``strategy="stable"``, ``retain_ratio=0.7``;
- stable + compaction: stable windows, and after each turn the check `BaseAgent`'s
  `CompactionPolicy` makes (agent/_compaction.py, replicated here: it is private): when the
  thread holds ``trigger`` tokens, compact it with ``cache.compact`` to ``target = budget / 2``
  (summary cap min(1,024, target / 4), the policy's default), except that while the window
  is cut and the next turn, adding as many tokens as this one, would keep that cut, wait
  (until the thread holds trigger + target tokens). Two
  triggers: the budget itself, and 80 % of it (before the window is ever cut). The
  summarizer is a `ChatModel` of this file whose summary is 10 % of the transcript's
  tokens, capped at the summary cap; its own tokens are billed apart (input and output).

Billing, per request, on the exact prompt (`TokenCounter.count_message` per message, the
tools' definitions and reply priming; o200k counts stand in for Claude's, whose tokenizer
is not public; every provider is billed on the same counts):

- OpenAI: the cached part is the longest prefix, at message granularity (the tools, the
  system prompt and the leading messages identical to an earlier request's, byte for byte),
  shared with any earlier request of the conversation whose prefix is still cached; it
  counts only from 1,024 tokens, rounded down to 128-token steps. Cost = uncached + cached
  x (1 - discount). Three columns: gpt-5.x's 90 % discount with extended retention
  (``prompt_cache_retention="24h"``, which `OpenAIChatModel` sends when asked: a prefix
  outlives every gap of this workload, as in the issue's rule, which has no expiry), the
  same with in-memory retention (a prefix used in the last 5 minutes, the low end of
  OpenAI's 5-10 minutes of inactivity), and gpt-4o's 50 % (in-memory, its only
  retention). Matching the previous request only, instead of any earlier one, is computed
  too; in this workload it gives the same figures to 0.1 %.
- Anthropic: breakpoints where `AnthropicChatModel(cache_breakpoints="auto")` places them
  (`auto_breakpoints` in agent/_anthropic.py, private: its rule is replicated here and
  checked against the real model's request bodies by tests/test_benchmarks_smoke.py). A
  request reads the longest prefix, ending at a block boundary within 20 blocks before one
  of its breakpoints, that a live cache entry holds (0.1x); the tokens from there to its
  last breakpoint are written (1.25x), anything after at 1x. Each breakpoint's prefix of
  at least 1,024 tokens (Claude Sonnet's minimum) becomes or stays a live entry for 5
  minutes from this request (refreshed on every read).

Reported per budget and strategy: billed input cost relative to naive, cached-token shares,
the largest prompt against the budget (over budget: exit status 1), compactions and the
summarizer's tokens. Goals at 32K: stable >= 60 % below naive on Anthropic pricing and at
gpt-5.x's 90 % discount (24h retention), >= 25 % below at gpt-4o's 50 %; a goal missed
exits 1 (not with --quick). The 90 % discount with in-memory retention is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from _support import local_machine, print_machine, print_table, write_json
from agent_core import (
    SUMMARY_NAME,
    AgentCoreError,
    ChatStream,
    Completion,
    ConversationCache,
    Message,
    TokenBudgetExceeded,
    TokenCounter,
    Usage,
    Window,
)

MODEL: Final = "gpt-4o"
SEED: Final = 15
MAIN_BUDGET: Final = 32_000
RETAIN_RATIO: Final = 0.7

#: Cached prefixes live this long after their last use (Anthropic: 5 minutes, refreshed on
#: read; OpenAI's in-memory retention: "5 to 10 minutes of inactivity", the low end).
CACHE_TTL_S: Final = 300.0
#: OpenAI's extended retention (``prompt_cache_retention="24h"``, gpt-5.1 and later): up
#: to a day, longer than any gap of this workload, so the issue's rule (no expiry) holds.
EXTENDED_TTL_S: Final = 24 * 3600.0
#: OpenAI caches from 1,024 prompt tokens, in 128-token steps.
OPENAI_MIN_TOKENS: Final = 1024
OPENAI_STEP: Final = 128
#: Claude Sonnet's minimum cacheable prompt; the lookback of a breakpoint, in blocks.
ANTHROPIC_MIN_TOKENS: Final = 1024
ANTHROPIC_LOOKBACK: Final = 20
ANTHROPIC_READ: Final = 0.1
ANTHROPIC_WRITE: Final = 1.25
#: Output price / input price, for the summarizer's replies: Claude Sonnet 4.5 $3 / $15,
#: gpt-4o $2.50 / $10, gpt-5.x $1.25 / $10 per million tokens.
OUTPUT_RATIO: Final = {"anthropic": 5.0, "openai90_24h": 8.0, "openai90": 8.0, "openai50": 4.0}
PROVIDERS: Final = (
    ("anthropic", "Anthropic"),
    ("openai90_24h", "OpenAI 90 %, 24h"),
    ("openai90", "OpenAI 90 %"),
    ("openai50", "OpenAI 50 %"),
)
#: The issue's goals at the 32K budget: stable's saving against naive, per provider. The
#: 90 % discount is gpt-5.x's, whose cache the issue's rule keeps between any two turns:
#: extended retention; its in-memory figure is reported beside it.
GOALS: Final = {"anthropic": 0.60, "openai90_24h": 0.60, "openai50": 0.25}

SUMMARY_RATIO: Final = 0.10
TARGET_RATIO: Final = 0.5
#: Compaction triggers, as fractions of the budget.
TRIGGERS: Final = (1.0, 0.8)


@dataclass(frozen=True, slots=True)
class Plan:
    conversations: int
    turns: int
    budgets: tuple[int, ...]


FULL: Final = Plan(conversations=20, turns=300, budgets=(32_000, 8_000, 128_000))
QUICK: Final = Plan(conversations=3, turns=60, budgets=(32_000,))


# -- the workload ---------------------------------------------------------------------------

SYSTEM_PROMPT: Final = """You are Atlas, a senior software engineering assistant working inside \
a developer's terminal. You help the user understand, change, test and ship the code of the \
project they have open, and you answer general programming questions when they ask them.

How you work:
- Read before you write. When a question depends on the code, look at the relevant files \
with read_file or search the repository before you answer, and quote the lines you rely on.
- Prefer small, reviewable changes. Show a change as a unified diff or as the complete new \
function, never as a vague description. Keep the project's style: naming, formatting, error \
handling and the libraries it already uses.
- Run the tests that cover a change with run_tests, and report what failed with the first \
lines of its output. Never claim that something works without having checked it.
- When a task is ambiguous, state the assumption you make in one sentence and go on; ask a \
question only when a wrong guess would waste a lot of the user's time.
- Use query_database only for read-only queries unless the user explicitly asks for a \
migration, and show every statement before you run it.
- Use search_web and fetch_url for documentation, release notes and error messages that the \
repository does not explain; cite the page you used.

How you answer:
- Lead with the answer or the change, then the reasoning, briefly. Use short paragraphs and \
code blocks with a language tag. Do not repeat the user's question back to them.
- Be precise about versions, file paths, function names and numbers. If you are unsure, say \
so and say how to find out.
- Keep secrets secret: never print tokens, passwords or keys that appear in files or tool \
output; refer to them by name.
- If a tool fails, say which tool, with which arguments, and what it returned, then choose \
another way forward.

Project conventions you follow unless the repository shows otherwise:
- Python 3.11 with type hints everywhere; ruff for linting and formatting; pytest for tests, \
with one test module per source module and fixtures in conftest.py.
- Errors are typed exceptions with a message that says what to do; nothing is swallowed \
silently, and logs never hold personal data.
- Every change to the database schema comes with a migration and a rollback, and every \
public function with a docstring and a test.

The user's time matters more than completeness: when a complete answer would be long, give \
the part that unblocks them first and offer the rest."""


def _function(name: str, description: str, properties: dict[str, Any], required: list[str]) -> Any:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required},
        },
    }


TOOLS: Final = [
    _function(
        "read_file",
        "Read a file of the open repository. Returns its text with line numbers; long files "
        "are cut at max_lines lines from start_line.",
        {
            "path": {"type": "string", "description": "Path relative to the repository root."},
            "start_line": {"type": "integer", "description": "First line to return (1-based)."},
            "max_lines": {"type": "integer", "description": "At most this many lines."},
        },
        ["path"],
    ),
    _function(
        "search_repository",
        "Search the repository's files for a regular expression. Returns matching lines "
        "with their path and line number, at most 200 matches.",
        {
            "pattern": {"type": "string", "description": "A Python regular expression."},
            "glob": {"type": "string", "description": "Only files matching this glob."},
        },
        ["pattern"],
    ),
    _function(
        "run_tests",
        "Run the project's test suite, or the tests selected by a pytest expression. "
        "Returns the exit status and the last 400 lines of output.",
        {
            "selection": {"type": "string", "description": "A pytest -k expression or path."},
            "timeout_s": {"type": "integer", "description": "Give up after this many seconds."},
        },
        [],
    ),
    _function(
        "query_database",
        "Run one SQL statement on the development database and return the rows as a table "
        "(at most 500 rows). Read-only unless allow_writes is true.",
        {
            "sql": {"type": "string", "description": "One SQL statement."},
            "allow_writes": {"type": "boolean", "description": "Permit INSERT/UPDATE/DDL."},
        },
        ["sql"],
    ),
    _function(
        "fetch_url",
        "Fetch a web page or API response and return its main text, converted to Markdown. "
        "Use it for documentation, release notes and issue trackers.",
        {
            "url": {"type": "string", "description": "An http or https URL."},
            "max_chars": {"type": "integer", "description": "Cut the text at this length."},
        },
        ["url"],
    ),
]

_WORDS_TEXT: Final = """the of and to in is that for it as was with be by on not this are or from at
which but have an they you were her she there been one all we their has would when will
more if no out so what up about into than them can only other new some could time these two
may then do first any my now such like our over man me even most made after also did many
before must through back years where much your way well down should because each just those
people how too little state good very make world still own see men work long get here
between both life being under never day same another know while last might us great old
year off come since against go came right used take three cache token window thread message
budget model tool result query answer file test error value function class module import
return config server client request response build deploy branch commit merge review change
issue database table index column schema migration user session key field list string
number version release update install package library service endpoint cluster node"""
_NAMES_TEXT: Final = """parse load save fetch build render check update apply merge split resolve
compute handle validate encode decode flush retry close open read write scan index count
sort filter group join reduce convert format emit collect"""
_NOUNS_TEXT: Final = """user order item record config event batch entry token cache session
request response payload buffer queue task job node edge path route handler client store"""
_WORDS: Final = _WORDS_TEXT.split()
_NAMES: Final = _NAMES_TEXT.split()
_NOUNS: Final = _NOUNS_TEXT.split()


def log_uniform(rng: random.Random, low: float, high: float) -> int:
    return int(math.exp(rng.uniform(math.log(low), math.log(high))))


class TextMaker:
    """Texts of about a given number of o200k tokens: prose, code, tool output."""

    def __init__(self, counter: TokenCounter) -> None:
        self.counter = counter

    def fill(self, rng: random.Random, tokens: int, piece: Any, joiner: str) -> str:
        pieces: list[str] = []
        total = 0
        while total < tokens:
            text = piece(rng)
            pieces.append(text)
            total += self.counter.count(text) + 1
        return joiner.join(pieces)

    @staticmethod
    def sentence(rng: random.Random) -> str:
        words = rng.choices(_WORDS, k=rng.randint(6, 18))
        return " ".join([words[0].capitalize(), *words[1:]]) + rng.choice(".....?!")

    def prose(self, rng: random.Random, tokens: int) -> str:
        return self.fill(rng, tokens, self.sentence, " ")

    @staticmethod
    def code_line(rng: random.Random) -> str:
        name = f"{rng.choice(_NAMES)}_{rng.choice(_NOUNS)}"
        var = rng.choice(_NOUNS)
        shape = rng.randrange(7)
        indent = "    " * rng.randint(0, 3)
        if shape == 0:
            return f"\ndef {name}({var}: {var.capitalize()}, limit: int = {rng.randint(1, 500)}):"
        if shape == 1:
            return f"{indent}{var}s = [{rng.choice(_NAMES)}(x) for x in {var}_list if x.ok]"
        if shape == 2:
            return f"{indent}if {var} is None or {var}.size > {rng.randint(2, 9999)}:"
        if shape == 3:
            return f'{indent}raise ValueError(f"cannot {rng.choice(_NAMES)} {{{var}!r}}")'
        if shape == 4:
            return f"{indent}# {TextMaker.sentence(rng)}"
        if shape == 5:
            return f"{indent}return self.{name}({var}, key={rng.randint(0, 99)})"
        return f"{indent}{var} = await client.{name}({var}_id, timeout={rng.randint(1, 60)})"

    def code(self, rng: random.Random, tokens: int) -> str:
        return "```python\n" + self.fill(rng, tokens, self.code_line, "\n") + "\n```"

    @staticmethod
    def record(rng: random.Random) -> str:
        return (
            f'{{"id": {rng.randint(1, 99999)}, "{rng.choice(_NOUNS)}": "{rng.choice(_WORDS)}-'
            f'{rng.randint(1, 999)}", "score": {rng.random():.4f}, "note": '
            f'"{" ".join(rng.choices(_WORDS, k=rng.randint(3, 12)))}"}}'
        )

    @staticmethod
    def log_line(rng: random.Random) -> str:
        level = rng.choice(("INFO", "INFO", "INFO", "DEBUG", "WARNING", "ERROR"))
        return (
            f"2026-05-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
            f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z {level} "
            f"app.{rng.choice(_NOUNS)}: {TextMaker.sentence(rng)}"
        )

    def tool_output(self, rng: random.Random, tokens: int) -> str:
        kind = rng.randrange(4)
        if kind == 0:
            return self.code(rng, tokens)  # a file read
        if kind == 1:
            return "[\n" + self.fill(rng, tokens, self.record, ",\n") + "\n]"
        if kind == 2:
            return self.fill(rng, tokens, self.log_line, "\n")
        return self.prose(rng, tokens)  # a fetched page


@dataclass(frozen=True, slots=True)
class Round:
    """One round of tool calls: the assistant's calls, then their results."""

    delay_s: float
    call: Message
    results: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class Turn:
    at_s: float
    user: Message
    rounds: tuple[Round, ...]
    final: Message
    kinds: tuple[tuple[str, Message], ...]


@dataclass(frozen=True, slots=True)
class Chat:
    """One synthetic conversation."""

    index: int
    turns: tuple[Turn, ...]


def make_chat(maker: TextMaker, seed: int, index: int, turns: int) -> Chat:
    rng = random.Random(f"{seed}/{index}")
    clock = 0.0
    made: list[Turn] = []
    tool_names = [tool["function"]["name"] for tool in TOOLS]
    for number in range(turns):
        draw = rng.random()
        if draw < 0.85:
            clock += rng.uniform(5, 90)
        elif draw < 0.94:
            clock += rng.uniform(90, 300)
        else:
            clock += log_uniform(rng, 300, 3600)
        kinds: list[tuple[str, Message]] = []
        if rng.random() < 0.85:
            kind, text = "user chat", maker.prose(rng, log_uniform(rng, 20, 200))
        else:
            kind = "user code"
            text = maker.prose(rng, 30) + "\n" + maker.code(rng, log_uniform(rng, 300, 2000))
        user = Message.from_dict({"role": "user", "content": text})
        kinds.append((kind, user))
        rounds: list[Round] = []
        draw = rng.random()
        for number_of_round in range(0 if draw < 0.6 else 1 if draw < 0.88 else 2):
            calls = 1 if rng.random() < 0.7 else 2
            ids = [f"call_{index}_{number}_{number_of_round}_{i}" for i in range(calls)]
            content = maker.prose(rng, log_uniform(rng, 10, 60)) if rng.random() < 0.3 else None
            call = Message.from_dict(
                {
                    "role": "assistant",
                    "content": content,
                    "tool_calls": [
                        {
                            "id": call_id,
                            "type": "function",
                            "function": {
                                "name": rng.choice(tool_names),
                                "arguments": json.dumps(
                                    {
                                        "query": " ".join(
                                            rng.choices(_WORDS, k=rng.randint(3, 25))
                                        ),
                                        "limit": rng.choice((10, 50, 200)),
                                    }
                                ),
                            },
                        }
                        for call_id in ids
                    ],
                }
            )
            high = 6000 if calls == 1 else 3000
            results = tuple(
                Message.from_dict(
                    {
                        "role": "tool",
                        "tool_call_id": call_id,
                        "content": maker.tool_output(rng, log_uniform(rng, 1000, high)),
                    }
                )
                for call_id in ids
            )
            kinds.append(("tool call", call))
            kinds.extend(("tool result", result) for result in results)
            rounds.append(Round(rng.uniform(3, 30), call, results))
        if rng.random() < 0.65:
            kind, text = "assistant chat", maker.prose(rng, log_uniform(rng, 20, 200))
        else:
            kind = "assistant code"
            text = maker.prose(rng, 40) + "\n" + maker.code(rng, log_uniform(rng, 300, 2000))
        final = Message.from_dict({"role": "assistant", "content": text})
        kinds.append((kind, final))
        made.append(Turn(clock, user, tuple(rounds), final, tuple(kinds)))
        clock += sum(r.delay_s for r in rounds)
    return Chat(index, tuple(made))


# -- the summarizer ---------------------------------------------------------------------------


@dataclass(slots=True)
class SummarizerUsage:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class FixedRatioSummarizer:
    """A `ChatModel` whose reply is ``ratio`` of its last message's tokens (the transcript
    `cache.compact` sends), at most ``max_tokens``: words drawn from the transcript's hash,
    so that no two summaries are the same text."""

    def __init__(self, counter: TokenCounter, ratio: float = SUMMARY_RATIO) -> None:
        self.counter = counter
        self.ratio = ratio
        self.usage = SummarizerUsage()

    @property
    def name(self) -> str:
        return "fixed-ratio-summarizer"

    async def complete(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> Completion:
        transcript = messages[-1].to_dict().get("content") or ""
        wanted = max(1, round(self.ratio * self.counter.count(transcript)))
        if max_tokens is not None:
            wanted = min(wanted, max_tokens)
        rng = random.Random(zlib.crc32(transcript.encode()))
        words = rng.choices(_WORDS, k=wanted)
        text = " ".join(words)
        while max_tokens is not None and self.counter.count(text) > max_tokens:
            words.pop()
            text = " ".join(words)
        prompt_tokens = self.counter.count_messages(messages, tools)
        completion_tokens = self.counter.count(text)
        self.usage.calls += 1
        self.usage.input_tokens += prompt_tokens
        self.usage.output_tokens += completion_tokens
        return Completion(
            message={"role": "assistant", "content": text},
            text=text,
            usage=Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens),
            finish_reason="stop",
            model=self.name,
        )

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        max_tokens: int | None = None,
        cache_key: str | None = None,
    ) -> ChatStream:
        return ChatStream(self.events(messages, tools, max_tokens))

    async def events(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None,
        max_tokens: int | None,
    ) -> AsyncGenerator[str | Completion, None]:
        completion = await self.complete(messages, tools=tools, max_tokens=max_tokens)
        yield completion.text
        yield completion

    async def aclose(self) -> None:
        """Nothing to release."""


# -- billing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Facts:
    """What billing needs of one message."""

    tokens: int
    #: The Messages API role it converts to: "system", "user" or "assistant".
    role: str
    #: Content blocks it converts to (0: it gives none and is left out).
    blocks: int
    summary: bool


def message_facts(message: Message, counter: TokenCounter) -> Facts:
    item = message.to_dict()
    role = item.get("role")
    content = item.get("content")
    if isinstance(content, str):
        texts = 1 if content.strip() else 0
    elif isinstance(content, list):
        texts = sum(
            1
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str) and part["text"].strip()
        )
    else:
        texts = 0
    if role in ("system", "developer"):
        anthropic_role, blocks = "system", texts
    elif role == "tool":
        anthropic_role, blocks = "user", 1  # one tool_result block
    elif role == "assistant":
        anthropic_role, blocks = "assistant", texts + len(item.get("tool_calls") or [])
    else:
        anthropic_role, blocks = "user", texts
    summary = anthropic_role == "system" and item.get("name") == SUMMARY_NAME
    return Facts(counter.count_message(message), anthropic_role, blocks, summary)


@dataclass(frozen=True, slots=True)
class Layout:
    """A request as the Messages API sees it: system blocks, then turns of blocks."""

    #: Per message: (turn or None for system, first block, last block) or None (no block).
    places: list[tuple[int | None, int, int] | None]
    system_blocks: int
    #: Per turn: (role, number of blocks).
    turns: list[tuple[str, int]]


def anthropic_layout(facts: Sequence[Facts]) -> Layout:
    """How `agent_core`'s conversion for Anthropic places each message's blocks: system and
    developer messages to ``system``, consecutive messages of one role merged into a turn."""
    places: list[tuple[int | None, int, int] | None] = []
    system = 0
    turns: list[tuple[str, int]] = []
    for fact in facts:
        if not fact.blocks:
            places.append(None)
        elif fact.role == "system":
            places.append((None, system, system + fact.blocks - 1))
            system += fact.blocks
        elif turns and turns[-1][0] == fact.role:
            role, size = turns[-1]
            places.append((len(turns) - 1, size, size + fact.blocks - 1))
            turns[-1] = (role, size + fact.blocks)
        else:
            places.append((len(turns), 0, fact.blocks - 1))
            turns.append((fact.role, fact.blocks))
    return Layout(places, system, turns)


def auto_marks(facts: Sequence[Facts], layout: Layout) -> list[tuple[str, int]]:
    """``AnthropicChatModel(cache_breakpoints="auto")``'s breakpoints, replicated from
    `auto_breakpoints` (agent/_anthropic.py): ("system", block) or ("turn", turn index):

    1. the system prompt proper's last block (the last system block, or if that is the last
       compaction summary's, the last system block before the summary);
    2. the last compaction summary's last block;
    3. the last block of the last user turn before the final turn;
    4. the final turn's last block.
    """
    summary = None
    for fact, place in zip(facts, layout.places, strict=True):
        if place is not None and place[0] is None and fact.summary:
            summary = place
    marks: list[tuple[str, int]] = []
    last = layout.system_blocks - 1
    if summary is not None and summary[1] <= last <= summary[2]:
        last = summary[1] - 1
    if last >= 0:
        marks.append(("system", last))
    if summary is not None:
        marks.append(("system", summary[2]))
    final = len(layout.turns) - 1
    previous = next((t for t in range(final - 1, -1, -1) if layout.turns[t][0] == "user"), None)
    if previous is not None:
        marks.append(("turn", previous))
    marks.append(("turn", final))
    return marks


def breakpoint_labels(messages: Sequence[Message], counter: TokenCounter) -> list[str]:
    """The auto breakpoints as ``"system[i]"`` / ``"messages[t][b]"`` (what the smoke test
    compares with the bodies `AnthropicChatModel` sends)."""
    facts = [message_facts(message, counter) for message in messages]
    layout = anthropic_layout(facts)
    return [
        f"system[{index}]"
        if kind == "system"
        else f"messages[{index}][{layout.turns[index][1] - 1}]"
        for kind, index in auto_marks(facts, layout)
    ]


def floor_openai(tokens: int) -> int:
    return tokens - tokens % OPENAI_STEP if tokens >= OPENAI_MIN_TOKENS else 0


@dataclass(slots=True)
class Tally:
    """Token totals of one (budget, strategy) cell, summed over its requests."""

    requests: int = 0
    turns: int = 0
    prompt_tokens: int = 0
    max_prompt: int = 0
    over_budget: int = 0
    #: Windows that raised TokenBudgetExceeded (the request fell back to pinned messages).
    fallbacks: int = 0
    #: Requests whose prefix after the system prompt and tools differs from the request
    #: before (a new cut, or a compaction): the prompt cache can't hold more than that.
    prefix_breaks: int = 0
    #: Requests whose window starts elsewhere in the thread than the previous one's did.
    cut_moves: int = 0
    openai_cached: int = 0
    #: OpenAI's uncached tokens by cause: a conversation's first request; a request more
    #: than `CACHE_TTL_S` after the one before; a prefix break; and, in requests that extend
    #: the one before, what they add (and the 128-token rounding).
    uncached_first: int = 0
    uncached_expired: int = 0
    uncached_break: int = 0
    uncached_growth: int = 0
    openai_cached_previous: int = 0
    #: OpenAI's cached tokens with extended retention (`EXTENDED_TTL_S`).
    openai_cached_24h: int = 0
    anthropic_read: int = 0
    anthropic_write: int = 0
    anthropic_plain: int = 0
    compactions: int = 0
    deferred: int = 0
    compaction_failures: int = 0
    summarizer_calls: int = 0
    summarizer_input: int = 0
    summarizer_output: int = 0

    def add(self, other: Tally) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(other, name)
            setattr(
                self,
                name,
                max(getattr(self, name), value)
                if name == "max_prompt"
                else getattr(self, name) + value,
            )


class PrefixCache:
    """OpenAI's prompt cache for one conversation: when each message-boundary prefix was
    last used, so that one record answers for every retention."""

    def __init__(self, ttls: tuple[float, ...]) -> None:
        self.ttls = ttls
        self.used: dict[int, float] = {}

    def bill(self, hashes: list[int], sums: list[int], now: float) -> list[int]:
        """The request's cached tokens under each of ``ttls``; its prefixes are then used."""
        used = self.used
        cached = []
        for ttl in self.ttls:
            length = 0
            while length < len(hashes) and used.get(hashes[length], -math.inf) + ttl >= now:
                length += 1
            cached.append(floor_openai(sums[length - 1]) if length else 0)
        for chain in hashes:
            used[chain] = now
        if len(used) > 200_000:
            oldest = now - max(self.ttls)
            self.used = {key: at for key, at in used.items() if at >= oldest}
        return cached


class Biller:
    """One conversation's requests under one strategy and budget, billed as they come."""

    def __init__(self, counter: TokenCounter, budget: int, ttl_s: float = CACHE_TTL_S) -> None:
        self.counter = counter
        self.budget = budget
        self.ttl_s = ttl_s
        self.tally = Tally()
        self.tools_tokens = counter.count_messages([], TOOLS) - counter.reply_priming
        self.facts: dict[bytes, Facts] = {}
        self.openai = PrefixCache((ttl_s, EXTENDED_TTL_S))
        self.previous: list[int] = []
        self.previous_at = -math.inf
        self.anthropic_live: dict[int, float] = {}

    def facts_of(self, message: Message) -> Facts:
        raw = message.raw
        found = self.facts.get(raw)
        if found is None:
            found = self.facts[raw] = message_facts(message, self.counter)
        return found

    def bill(self, prompt: Sequence[Message], now: float) -> int:
        """Bill one request sent at ``now`` (seconds); returns its prompt tokens."""
        facts = [self.facts_of(message) for message in prompt]
        roles = [fact.role for fact in facts]
        first_other = next((i for i, role in enumerate(roles) if role != "system"), len(roles))
        assert "system" not in roles[first_other:], "a system message after the conversation"
        # Prefix hashes and token sums at each message boundary (tools come first).
        chain = hash(b"tools")
        hashes = [chain]
        sums = [self.tools_tokens]
        for message, fact in zip(prompt, facts, strict=True):
            chain = hash((chain, message.raw))
            hashes.append(chain)
            sums.append(sums[-1] + fact.tokens)
        total = sums[-1] + self.counter.reply_priming
        tally = self.tally
        tally.requests += 1
        tally.prompt_tokens += total
        tally.max_prompt = max(tally.max_prompt, total)
        tally.over_budget += total > self.budget
        # The rule: the prefix shared with the previous request (if still cached).
        common = 0
        limit = min(len(hashes), len(self.previous))
        while common < limit and hashes[common] == self.previous[common]:
            common += 1
        # A break: this request does not extend the previous one (a new cut, a compaction).
        broken = bool(self.previous) and common < len(self.previous)
        tally.prefix_breaks += broken
        expired = now - self.previous_at > self.ttl_s
        if common and not expired:
            tally.openai_cached_previous += floor_openai(sums[common - 1])
        cached, cached_24h = self.openai.bill(hashes, sums, now)
        tally.openai_cached += cached
        tally.openai_cached_24h += cached_24h
        uncached = total - cached
        # Why the tokens OpenAI bills in full were not cached.
        if not self.previous:
            tally.uncached_first += uncached
        elif expired:
            tally.uncached_expired += uncached
        elif broken:
            tally.uncached_break += uncached
        else:
            tally.uncached_growth += uncached
        self.bill_anthropic(facts, hashes, sums, total, now)
        self.previous, self.previous_at = hashes, now
        return total

    def bill_anthropic(
        self, facts: list[Facts], hashes: list[int], sums: list[int], total: int, now: float
    ) -> None:
        layout = anthropic_layout(facts)
        # Global block positions: system blocks first, then each turn's.
        turn_starts = [layout.system_blocks]
        for _, size in layout.turns:
            turn_starts.append(turn_starts[-1] + size)
        # The message whose last block ends at each position that ends a message.
        ends: dict[int, int] = {}
        for index, place in enumerate(layout.places):
            if place is not None:
                turn, _, last = place
                ends[last if turn is None else turn_starts[turn] + last] = index
        marked: list[tuple[int, int]] = []  # (block position, message index)
        for kind, index in auto_marks(facts, layout):
            position = index if kind == "system" else turn_starts[index + 1] - 1
            assert position in ends, "a breakpoint inside a message"
            marked.append((position, ends[position]))
        live = self.anthropic_live
        hit = -1
        # The longest live prefix ending within the lookback of a breakpoint.
        for position, _ in marked:
            for back in range(position, max(-1, position - ANTHROPIC_LOOKBACK - 1), -1):
                found = ends.get(back)
                if found is not None and found > hit and live.get(hashes[found + 1], -1) >= now:
                    hit = found
                    break
        read = sums[hit + 1] if hit >= 0 else 0
        cacheable = [m for _, m in marked if sums[m + 1] >= ANTHROPIC_MIN_TOKENS]
        end = max((sums[m + 1] for m in cacheable), default=0)
        write = max(0, end - read)
        tally = self.tally
        tally.anthropic_read += read
        tally.anthropic_write += write
        tally.anthropic_plain += total - read - write
        expiry = now + self.ttl_s
        for index in [*cacheable, *([hit] if hit >= 0 else [])]:
            live[hashes[index + 1]] = expiry
        if len(live) > 50_000:
            self.anthropic_live = {key: at for key, at in live.items() if at >= now}


def costs(tally: Tally) -> dict[str, float]:
    """Billed input cost in uncached-input-token units, and the summarizer's apart."""
    prompt = tally.prompt_tokens
    billed = {
        "anthropic": tally.anthropic_plain
        + ANTHROPIC_READ * tally.anthropic_read
        + ANTHROPIC_WRITE * tally.anthropic_write,
        "openai90_24h": prompt - 0.9 * tally.openai_cached_24h,
        "openai90": prompt - 0.9 * tally.openai_cached,
        "openai50": prompt - 0.5 * tally.openai_cached,
        "openai90_previous": prompt - 0.9 * tally.openai_cached_previous,
        "openai50_previous": prompt - 0.5 * tally.openai_cached_previous,
        "anthropic_no_breakpoints": float(prompt),
    }
    for provider, ratio in OUTPUT_RATIO.items():
        billed[f"{provider}_summarizer"] = tally.summarizer_input + ratio * tally.summarizer_output
    return billed


# -- the strategies ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Strategy:
    key: str
    label: str
    window: Literal["sliding", "stable"]
    #: Compaction trigger as a fraction of the budget, or None.
    trigger: float | None = None


STRATEGIES: Final = (
    Strategy("naive", "naive (sliding)", "sliding"),
    Strategy("stable", "stable", "stable"),
    *(
        Strategy(f"compact{int(t * 100)}", f"stable + compaction at {t * 100:.0f} %", "stable", t)
        for t in TRIGGERS
    ),
)


@dataclass(slots=True)
class Track:
    """One thread per conversation in its own namespace, and the budgets windowed from it
    (naive and stable threads are the same at every budget; a compacted one is not)."""

    strategy: Strategy
    cache: ConversationCache
    budgets: tuple[int, ...]
    retain_ratio: float = RETAIN_RATIO
    ttl_s: float = CACHE_TTL_S
    summarizer: FixedRatioSummarizer | None = None
    tallies: dict[int, Tally] = field(default_factory=dict)
    #: Compaction failures by error (type and the start of its message).
    errors: dict[str, int] = field(default_factory=dict)


async def run_chat(chat: Chat, track: Track, counter: TokenCounter, system: Message) -> None:
    strategy = track.strategy
    cache = track.cache
    thread = f"chat-{chat.index}"
    system_tokens = counter.count_message(system)
    billers = {budget: Biller(counter, budget, track.ttl_s) for budget in track.budgets}
    cuts: dict[int, int] = {}
    #: The cut and tokens of each turn's first request: what `BaseAgent`'s check compares.
    checks: dict[int, tuple[int, int]] = {}

    async def request(budget: int, pending: Message | None, now: float) -> None:
        pending_tokens = 0 if pending is None else counter.count_message(pending)
        try:
            window = await cache.window(
                thread,
                max_tokens=budget - system_tokens,
                model=MODEL,
                tools=TOOLS,
                strategy=strategy.window,
                retain_ratio=track.retain_ratio,
                pending_tokens=pending_tokens,
            )
            history = window.messages
            if budget in cuts and window.cut != cuts[budget]:
                billers[budget].tally.cut_moves += 1
            cuts[budget] = window.cut
            if pending is not None:
                checks[budget] = (window.cut, window.token_count)
            expected = system_tokens + window.token_count + pending_tokens
        except TokenBudgetExceeded:
            # As BaseAgent does: the thread's pinned messages only.
            billers[budget].tally.fallbacks += 1
            conversation = await cache.get(thread)
            history = tuple(m for m in conversation.messages if m.role in ("system", "developer"))
            cuts[budget] = len(conversation)
            checks.pop(budget, None)
            expected = None
        prompt = [system, *history, *(() if pending is None else (pending,))]
        billed = billers[budget].bill(prompt, now)
        assert expected is None or billed == expected, (billed, expected)

    for turn in chat.turns:
        now = turn.at_s
        for budget in track.budgets:
            await request(budget, turn.user, now)
        batch = [turn.user]
        for round_ in turn.rounds:
            now += round_.delay_s
            batch += [round_.call, *round_.results]
            await cache.append(thread, batch)
            batch = []
            for budget in track.budgets:
                await request(budget, None, now)
        batch.append(turn.final)
        await cache.append(thread, batch)
        for budget in track.budgets:
            billers[budget].tally.turns += 1
        if strategy.trigger is not None:
            (budget,) = track.budgets
            check = checks.get(budget)
            await after_turn(track, thread, budget, check, system_tokens, billers[budget])
    for budget, biller in billers.items():
        track.tallies.setdefault(budget, Tally()).add(biller.tally)
    cache.evict_local(thread)  # the next conversation's threads take its place in L1


async def after_turn(
    track: Track,
    thread: str,
    budget: int,
    check: tuple[int, int] | None,
    system_tokens: int,
    biller: Biller,
) -> None:
    """`CompactionPolicy`'s check after a turn (agent/_compaction.py, replicated)."""
    strategy = track.strategy
    assert strategy.trigger is not None
    assert track.summarizer is not None
    cache = track.cache
    trigger = int(strategy.trigger * budget)
    target = int(TARGET_RATIO * budget)
    summary_tokens = max(1, min(1024, target // 4))
    conversation = await cache.get(thread)
    total = conversation.token_count(MODEL)
    if total < trigger:
        return

    async def cut_after(pending: int) -> Window:
        return await cache.window(
            thread,
            max_tokens=budget - system_tokens,
            model=MODEL,
            tools=TOOLS,
            strategy="stable",
            retain_ratio=track.retain_ratio,
            pending_tokens=pending,
        )

    if check is not None and check[0] > 0 and total < trigger + target:
        # Deferred while the next turn, adding what this one did, would keep the cut.
        cut, tokens = check
        now = await cut_after(0)
        if now.cut == cut and (await cut_after(max(0, now.token_count - tokens))).cut == cut:
            biller.tally.deferred += 1
            return
    usage = track.summarizer.usage
    before = (usage.calls, usage.input_tokens, usage.output_tokens)
    tally = biller.tally
    try:
        version = await cache.compact(
            thread,
            summarizer=track.summarizer,
            model=MODEL,
            keep_recent_tokens=target - summary_tokens,
            max_summary_tokens=summary_tokens,
        )
    except AgentCoreError as exc:
        # As the policy does: logged and counted, never raised into a turn.
        tally.compaction_failures += 1
        track.errors[f"{type(exc).__name__}: {str(exc)[:80]}"] = (
            track.errors.get(f"{type(exc).__name__}: {str(exc)[:80]}", 0) + 1
        )
        return
    tally.compactions += version != conversation.version
    tally.summarizer_calls += usage.calls - before[0]
    tally.summarizer_input += usage.input_tokens - before[1]
    tally.summarizer_output += usage.output_tokens - before[2]


# -- the run ----------------------------------------------------------------------------------


def workload_figures(chats: Sequence[Chat], counter: TokenCounter) -> dict[str, Any]:
    sizes: dict[str, list[int]] = {}
    gaps: list[float] = []
    rounds = 0
    for chat in chats:
        previous = None
        for turn in chat.turns:
            for kind, message in turn.kinds:
                sizes.setdefault(kind, []).append(counter.count_message(message))
            if previous is not None:
                gaps.append(turn.at_s - previous)
            previous = turn.at_s + sum(r.delay_s for r in turn.rounds)
            rounds += len(turn.rounds)
    turns = sum(len(chat.turns) for chat in chats)
    return {
        "conversations": len(chats),
        "turns": turns,
        "tool_rounds": rounds,
        "thread_tokens_mean": round(sum(sum(v) for v in sizes.values()) / len(chats)),
        "messages": {
            kind: {
                "count": len(values),
                "mean": round(statistics.fmean(values)),
                "p50": round(statistics.median(values)),
                "max": max(values),
            }
            for kind, values in sorted(sizes.items())
        },
        "gaps_s": {
            "p50": round(statistics.median(gaps), 1),
            "over_5_min": round(sum(g > CACHE_TTL_S for g in gaps) / len(gaps), 4),
        },
    }


async def simulate(
    plan: Plan, directory: str, seed: int, retain_ratio: float, ttl_s: float
) -> dict[str, Any]:
    counter = TokenCounter.for_model(MODEL)
    maker = TextMaker(counter)
    started = time.perf_counter()
    chats = [make_chat(maker, seed, index, plan.turns) for index in range(plan.conversations)]
    generated_s = time.perf_counter() - started
    system = Message.from_dict({"role": "system", "content": SYSTEM_PROMPT})
    url = f"sqlite:///{Path(directory) / 'prompt_cache.db'}?synchronous=normal"
    async with AsyncExitStack() as stack:
        root = await stack.enter_async_context(
            ConversationCache.from_urls(store=url, namespace="naive")
        )
        tracks: list[Track] = []
        for strategy in STRATEGIES:
            if strategy.trigger is None:
                cache = root if strategy.key == "naive" else root.for_namespace(strategy.key)
                if cache is not root:
                    await stack.enter_async_context(cache)
                tracks.append(Track(strategy, cache, plan.budgets, retain_ratio, ttl_s))
                continue
            for budget in plan.budgets:
                cache = root.for_namespace(f"{strategy.key}-{budget}")
                await stack.enter_async_context(cache)
                tracks.append(
                    Track(
                        strategy,
                        cache,
                        (budget,),
                        retain_ratio,
                        ttl_s,
                        FixedRatioSummarizer(counter),
                    )
                )
        for chat in chats:
            begun = time.perf_counter()
            for track in tracks:
                await run_chat(chat, track, counter, system)
            print(
                f"  conversation {chat.index + 1}/{len(chats)}: "
                f"{time.perf_counter() - begun:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    cells: dict[str, dict[str, Any]] = {}
    for budget in plan.budgets:
        row: dict[str, Any] = {}
        for track in tracks:
            if budget in track.tallies:
                tally = track.tallies[budget]
                row[track.strategy.key] = {"tally": asdict(tally), "cost": costs(tally)}
        naive_cost = row["naive"]["cost"]
        for cell in row.values():
            cost, tally = cell["cost"], cell["tally"]
            prompt = tally["prompt_tokens"]
            cell["relative"] = {
                name: round(cost[name] / naive_cost[name], 4)
                for name in (
                    *(name for name, _ in PROVIDERS),
                    "openai90_previous",
                    "openai50_previous",
                    "anthropic_no_breakpoints",
                )
            }
            cell["relative_with_summarizer"] = {
                name: round((cost[name] + cost[f"{name}_summarizer"]) / naive_cost[name], 4)
                for name, _ in PROVIDERS
            }
            cell["shares"] = {
                "openai_cached": round(tally["openai_cached"] / prompt, 4),
                "openai_cached_24h": round(tally["openai_cached_24h"] / prompt, 4),
                "anthropic_read": round(tally["anthropic_read"] / prompt, 4),
                "anthropic_write": round(tally["anthropic_write"] / prompt, 4),
            }
            cell["uncached"] = {
                cause: round(tally[f"uncached_{cause}"] / prompt, 4)
                for cause in ("first", "expired", "break", "growth")
            }
            cell["mean_prompt"] = round(prompt / tally["requests"])
        cells[str(budget)] = row
    return {
        "plan": asdict(plan),
        "seed": seed,
        "retain_ratio": retain_ratio,
        "generation_s": round(generated_s, 1),
        "workload": workload_figures(chats, counter),
        "fixed_tokens": {
            "system_prompt": counter.count_message(system),
            "tools": counter.count_messages([], TOOLS) - counter.reply_priming,
        },
        "prices": {
            "anthropic_read": ANTHROPIC_READ,
            "anthropic_write": ANTHROPIC_WRITE,
            "output_over_input": OUTPUT_RATIO,
            "cache_ttl_s": ttl_s,
        },
        "cells": cells,
        "compaction_errors": {
            f"{track.strategy.key}/{track.budgets[0]}": track.errors
            for track in tracks
            if track.errors
        },
    }


def judge(document: dict[str, Any]) -> dict[str, Any]:
    over = [
        f"{budget}/{key}: {cell['tally']['max_prompt']} tokens"
        for budget, row in document["cells"].items()
        for key, cell in row.items()
        if cell["tally"]["over_budget"]
    ]
    goals: dict[str, Any] = {"over_budget": over}
    main = document["cells"].get(str(MAIN_BUDGET))
    if main is not None:
        for provider, _ in PROVIDERS:
            saving = 1 - main["stable"]["relative"][provider]
            goal = GOALS.get(provider)
            goals[provider] = {
                "goal": goal,
                "saving": round(saving, 4),
                "met": None if goal is None else saving >= goal,
            }
    goals["met"] = not over and all(
        value["met"] is not False for value in goals.values() if isinstance(value, dict)
    )
    return goals


# -- the report ---------------------------------------------------------------------------------


def summarizer_tokens(tally: dict[str, int]) -> str:
    if not tally["summarizer_calls"]:
        return ""
    return f"{tally['summarizer_input']:,} / {tally['summarizer_output']:,}"


def pct(value: float) -> str:
    return f"{value * 100:.1f} %"


def report(document: dict[str, Any]) -> None:
    workload = document["workload"]
    fixed = document["fixed_tokens"]
    print_table(
        f"Workload: {workload['conversations']} conversations x {document['plan']['turns']} "
        "turns, message sizes in tokens",
        ["message", "count", "mean", "p50", "max"],
        [
            [kind, f"{v['count']:,}", f"{v['mean']:,}", f"{v['p50']:,}", f"{v['max']:,}"]
            for kind, v in workload["messages"].items()
        ],
    )
    print(
        f"  {workload['tool_rounds']:,} tool rounds; system prompt {fixed['system_prompt']} and "
        f"tools {fixed['tools']} tokens; a thread ends at {workload['thread_tokens_mean']:,} "
        f"tokens on average;\n  turn gaps p50 {workload['gaps_s']['p50']} s, "
        f"{pct(workload['gaps_s']['over_5_min'])} over the cache lifetime of 5 min; "
        f"stable retain_ratio {document['retain_ratio']}, cache lifetime "
        f"{document['prices']['cache_ttl_s']:.0f} s\n"
    )
    labels = {strategy.key: strategy.label for strategy in STRATEGIES}
    for budget, row in document["cells"].items():
        budget_label = f"{int(budget):,}"
        print_table(
            f"Billed input cost relative to naive, budget {budget_label} tokens "
            "(with the summarizer's tokens in brackets)",
            ["strategy", *(name for _, name in PROVIDERS), "Anthropic, no breakpoints"],
            [
                [
                    labels[key],
                    *(
                        f"{cell['relative'][name]:.3f}"
                        + (
                            f" [{cell['relative_with_summarizer'][name]:.3f}]"
                            if cell["tally"]["summarizer_calls"]
                            else ""
                        )
                        for name, _ in PROVIDERS
                    ),
                    f"{cell['relative']['anthropic_no_breakpoints']:.3f}",
                ]
                for key, cell in row.items()
            ],
        )
        print_table(
            f"Cache shares and prompt sizes, budget {budget_label} tokens",
            [
                "strategy",
                "requests",
                "OpenAI cached",
                "24h",
                "Anthropic read",
                "written",
                "prefix breaks",
                "mean prompt",
                "max prompt",
                "compactions",
                "summarizer in / out",
            ],
            [
                [
                    labels[key],
                    f"{cell['tally']['requests']:,}",
                    pct(cell["shares"]["openai_cached"]),
                    pct(cell["shares"]["openai_cached_24h"]),
                    pct(cell["shares"]["anthropic_read"]),
                    pct(cell["shares"]["anthropic_write"]),
                    f"{cell['tally']['prefix_breaks']:,}",
                    f"{cell['mean_prompt']:,}",
                    f"{cell['tally']['max_prompt']:,}"
                    + (" OVER" if cell["tally"]["over_budget"] else ""),
                    f"{cell['tally']['compactions']:,}"
                    if cell["tally"]["summarizer_calls"]
                    else "",
                    summarizer_tokens(cell["tally"]),
                ]
                for key, cell in row.items()
            ],
        )
        print_table(
            f"Why OpenAI billed tokens in full (in-memory retention), % of prompt tokens, budget "
            f"{budget_label}",
            ["strategy", "first request", "cache expired", "prefix break", "new tokens"],
            [
                [labels[key], *(pct(cell["uncached"][cause]) for cause in cell["uncached"])]
                for key, cell in row.items()
            ],
        )
        for key, cell in row.items():
            tally = cell["tally"]
            if tally["summarizer_calls"] or tally["compaction_failures"]:
                print(
                    f"  {labels[key]}: {tally['compactions']} compactions, "
                    f"{tally['deferred']:,} checks over the trigger deferred (the cut would "
                    f"not move), {tally['compaction_failures']} failed"
                )
        fallbacks = sum(cell["tally"]["fallbacks"] for cell in row.values())
        if fallbacks:
            print(f"  {fallbacks} window(s) fell back to the pinned messages (TokenBudgetExceeded)")
    for name, errors in document["compaction_errors"].items():
        for error, count in errors.items():
            print(f"  compaction failures of {name}: {count} x {error}")
    if any(
        cell["tally"]["summarizer_calls"]
        for row in document["cells"].values()
        for cell in row.values()
    ):
        print()
    goals = document["goals"]
    print(f"Goals at {MAIN_BUDGET:,} tokens (stable against naive):")
    for provider, name in PROVIDERS:
        goal = goals.get(provider)
        if goal is not None:
            verdict = "    " if goal["met"] is None else "PASS" if goal["met"] else "FAIL"
            print(
                f"  {verdict}  {name}: {pct(goal['saving'])} lower "
                + ("(reported)" if goal["goal"] is None else f"(goal >= {pct(goal['goal'])})")
            )
    over = goals["over_budget"]
    print(
        f"  {'FAIL' if over else 'PASS'}  no prompt over its budget" + (f": {over}" if over else "")
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="3 conversations x 60 turns at 32K, seconds"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--seed", type=int, default=SEED, help="workload seed (%(default)s)")
    parser.add_argument(
        "--retain-ratio",
        type=float,
        default=RETAIN_RATIO,
        help="stable windows' retain_ratio (default %(default)s, the library's)",
    )
    parser.add_argument(
        "--cache-ttl",
        type=float,
        default=CACHE_TTL_S,
        help="seconds a cached prefix lives after its last use (default %(default)s)",
    )
    args = parser.parse_args()
    machine = local_machine("quicktok-v1")
    print_machine(machine)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ac-prompt-cache-") as directory:
        figures = asyncio.run(
            simulate(plan, directory, args.seed, args.retain_ratio, args.cache_ttl)
        )
    document: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        **figures,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    document["goals"] = judge(document)
    report(document)
    if args.json:
        write_json(args.json, document)
    if document["goals"]["over_budget"]:
        return 1
    return 0 if args.quick or document["goals"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
