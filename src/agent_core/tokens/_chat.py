"""Chat-format counting rules: OpenAI's, Llama 3's and Qwen's (ChatML).

OpenAI (openai-cookbook, How_to_count_tokens_with_tiktoken; also used for estimates):
3 tokens per message, the tokens of each string value (role, content, name, ...), 1 more
per ``name``, and 3 for the primed reply. Values that are not strings are counted by
what the model reads:

* ``content`` as a list of parts: the ``text`` of each part; images, audio and files are
  billed by other rules and count 0 here;
* ``tool_calls`` (and the legacy ``function_call``): each function's name and arguments;
* anything else that is not a string (``None``, numbers, ``refusal: None``, ...): 0.

Llama 3 (Meta's ``ChatFormat``) and Qwen (ChatML) count each special token as 1 and each
text between special tokens with the encoding:

* Llama 3: ``<|begin_of_text|>`` once, then per message
  ``<|start_header_id|>{role}<|end_header_id|>\n\n{content stripped}<|eot_id|>``, and
  ``<|start_header_id|>assistant<|end_header_id|>\n\n`` to prime the reply;
* ChatML: per message ``<|im_start|>{role}\n{content}<|im_end|>\n``, and
  ``<|im_start|>assistant\n`` to prime the reply.

Content given as parts is the concatenation of their texts (each stripped for Llama 3).
Exact for messages of role and text content. Simplifications: the other string values
(``name``, ``tool_call_id``, tool calls' names and arguments, ...) are counted as bare
texts, as in OpenAI's rules, though each model's template renders them its own way, and
what templates add on their own is not counted: the dated system preamble of Llama 3.1+'s
Hugging Face template, Qwen2.5's default system prompt, Qwen3's removal of earlier
reasoning and its empty ``<think>`` block when thinking is off.

Tools use the cookbook's function-definition rules, whose constants differ between the
gpt-4o generation (o200k_base) and gpt-3.5/gpt-4 (cl100k_base). The cookbook itself calls
both recipes an estimate that the API matched on its examples; nested parameter schemas
and ``required`` are not part of the recipe. Llama 3 and Qwen get the gpt-4o recipe too,
which undercounts them: their templates render each definition as JSON with an
instruction preamble.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, final

from .._quote import quote
from ..errors import InvalidArgument
from ..messages import Message
from ._models import CL100K, LLAMA3, QWEN

__all__ = ["ChatFormat", "chat_format", "count_message", "count_messages", "count_tools"]

Count = Callable[[str], int]

_TOKENS_PER_MESSAGE: Final = 3
_TOKENS_PER_NAME: Final = 1
# Tokens that prime the reply, once per request.
_REPLY_PRIMING: Final = 3


class ChatFormat(Protocol):
    """How a model family wraps messages in special tokens."""

    def message(self, count: Count, item: Mapping[str, Any]) -> int:
        """Tokens one message adds: its texts and its share of the chat format."""
        ...

    def reply_priming(self, count: Count) -> int:
        """Tokens a request adds once, beyond its messages, up to the model's reply."""
        ...


@final
class _OpenAI:
    __slots__ = ()

    def message(self, count: Count, item: Mapping[str, Any]) -> int:
        total = _TOKENS_PER_MESSAGE
        for key, value in item.items():
            total += sum(count(text) for text in _texts(key, value))
            if key == "name":
                total += _TOKENS_PER_NAME
        return total

    def reply_priming(self, count: Count) -> int:
        return _REPLY_PRIMING


@final
class _Llama3:
    __slots__ = ()

    def message(self, count: Count, item: Mapping[str, Any]) -> int:
        # <|start_header_id|>, <|end_header_id|> and <|eot_id|>.
        role, content = _role_and_content(item, strip=True)
        return 3 + count(role) + count(f"\n\n{content}") + _other_texts(count, item)

    def reply_priming(self, count: Count) -> int:
        # <|begin_of_text|>, then the assistant's header.
        return 3 + count("assistant") + count("\n\n")


@final
class _ChatML:
    __slots__ = ()

    def message(self, count: Count, item: Mapping[str, Any]) -> int:
        # <|im_start|> and <|im_end|>; the "\n" after <|im_end|> stands between specials.
        role, content = _role_and_content(item, strip=False)
        return 2 + count(f"{role}\n{content}") + count("\n") + _other_texts(count, item)

    def reply_priming(self, count: Count) -> int:
        return 1 + count("assistant\n")


_OPENAI_CHAT: Final = _OpenAI()
_FORMATS: Final[Mapping[str | None, ChatFormat]] = {LLAMA3: _Llama3(), QWEN: _ChatML()}


def chat_format(encoding: str | None) -> ChatFormat:
    """The chat format of the models of ``encoding``: OpenAI's unless it is an open model's."""
    return _FORMATS.get(encoding, _OPENAI_CHAT)


@dataclass(frozen=True, slots=True)
class _ToolRules:
    func_init: int
    prop_init: int = 3
    prop_key: int = 3
    enum_init: int = -3
    enum_item: int = 3
    func_end: int = 12


_GPT4O_TOOLS: Final = _ToolRules(func_init=7)
_GPT4_TOOLS: Final = _ToolRules(func_init=10)


def count_messages(
    chat: ChatFormat, count: Count, messages: Sequence[Mapping[str, Any] | Message]
) -> int:
    """Prompt tokens of ``messages``, reply priming included."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidArgument(
            f"messages must be a sequence of message dicts or Message, got {type(messages)!r}"
        )
    total = chat.reply_priming(count)
    for index, message in enumerate(messages):
        try:
            total += count_message(chat, count, message)
        except InvalidArgument as exc:
            exc.args = (f"messages[{index}]: {exc}",)
            raise
    return total


def count_message(chat: ChatFormat, count: Count, message: Mapping[str, Any] | Message) -> int:
    """Tokens one message adds to a request: its texts and its share of the chat format."""
    item = message.to_dict() if isinstance(message, Message) else message
    if not isinstance(item, Mapping):
        raise InvalidArgument(f"a message must be a dict or Message, got {type(message)!r}")
    return chat.message(count, item)


def count_tools(count: Count, encoding: str | None, tools: Sequence[Mapping[str, Any]]) -> int:
    """Tokens the function definitions in ``tools`` add to a request (0 if there are none)."""
    if isinstance(tools, str | bytes) or not isinstance(tools, Sequence):
        raise InvalidArgument(f"tools must be a sequence of tool dicts, got {type(tools)!r}")
    if not tools:
        return 0
    # Estimates (encoding None) follow the current, gpt-4o, generation.
    rules = _GPT4_TOOLS if encoding == CL100K else _GPT4O_TOOLS
    total = rules.func_end
    for index, tool in enumerate(tools):
        function = _function_of(tool, index)
        total += rules.func_init
        total += count(f"{_str(function.get('name'))}:{_no_period(function.get('description'))}")
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
        if not isinstance(properties, Mapping) or not properties:
            continue
        total += rules.prop_init
        for key, spec in properties.items():
            spec = spec if isinstance(spec, Mapping) else {}
            total += rules.prop_key
            enum = spec.get("enum")
            if isinstance(enum, Sequence) and not isinstance(enum, str):
                total += rules.enum_init
                total += sum(rules.enum_item + count(_str(item)) for item in enum)
            p_type, p_desc = _str(spec.get("type")), _no_period(spec.get("description"))
            total += count(f"{_str(key)}:{p_type}:{p_desc}")
    return total


def _texts(key: str, value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif key == "content" and isinstance(value, list):
        for part in value:
            if _is_text_part(part):
                yield part["text"]
    elif key == "tool_calls" and isinstance(value, list):
        for call in value:
            if isinstance(call, Mapping):
                yield from _function_texts(call.get("function"))
    elif key == "function_call":
        yield from _function_texts(value)


def _role_and_content(item: Mapping[str, Any], *, strip: bool) -> tuple[str, str]:
    role = item.get("role")
    content = item.get("content")
    if isinstance(content, list):
        parts = (part["text"] for part in content if _is_text_part(part))
        content = "".join(part.strip() if strip else part for part in parts)
    elif not isinstance(content, str):
        content = ""
    return (role if isinstance(role, str) else ""), (content.strip() if strip else content)


def _is_text_part(part: object) -> bool:
    return isinstance(part, Mapping) and isinstance(part.get("text"), str)


def _other_texts(count: Count, item: Mapping[str, Any]) -> int:
    return sum(
        count(text)
        for key, value in item.items()
        if key not in ("role", "content")
        for text in _texts(key, value)
    )


def _function_texts(function: object) -> Iterable[str]:
    if isinstance(function, Mapping):
        for field in ("name", "arguments"):
            if isinstance(function.get(field), str):
                yield function[field]


def _function_of(tool: object, index: int) -> Mapping[str, Any]:
    # Chat Completions wraps the definition in {"type": "function", "function": {...}};
    # the legacy ``functions`` parameter and the Responses API use it bare.
    if isinstance(tool, Mapping):
        inner = tool.get("function")
        function = inner if isinstance(inner, Mapping) else tool
        if isinstance(function.get("name"), str):
            return function
    raise InvalidArgument(
        f"tools[{index}] must be a function definition with a string 'name', got {quote(tool)}"
    )


def _str(value: object) -> str:
    # quote() matches str() for the small values a schema holds, and bounds hostile ones.
    return value if isinstance(value, str) else "" if value is None else quote(value)


def _no_period(value: object) -> str:
    text = _str(value)
    return text[:-1] if text.endswith(".") else text
