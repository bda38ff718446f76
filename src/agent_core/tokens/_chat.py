"""OpenAI's chat-format counting rules (openai-cookbook, How_to_count_tokens_with_tiktoken).

Messages: 3 tokens per message, the tokens of each string value (role, content, name,
...), 1 more per ``name``, and 3 for the primed reply. Values that are not strings are
counted by what the model reads:

* ``content`` as a list of parts: the ``text`` of each part; images, audio and files are
  billed by other rules and count 0 here;
* ``tool_calls`` (and the legacy ``function_call``): each function's name and arguments;
* anything else that is not a string (``None``, numbers, ``refusal: None``, ...): 0.

Tools use the cookbook's function-definition rules, whose constants differ between the
gpt-4o generation (o200k_base) and gpt-3.5/gpt-4 (cl100k_base). The cookbook itself calls
both recipes an estimate that the API matched on its examples; nested parameter schemas
and ``required`` are not part of the recipe.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..errors import InvalidArgument
from ..messages import Message
from ._models import CL100K

__all__ = ["REPLY_PRIMING", "count_message", "count_messages", "count_tools"]

Count = Callable[[str], int]

_TOKENS_PER_MESSAGE: Final = 3
_TOKENS_PER_NAME: Final = 1
#: Tokens that prime the reply, once per request.
REPLY_PRIMING: Final = 3


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


def count_messages(count: Count, messages: Sequence[Mapping[str, Any] | Message]) -> int:
    """Prompt tokens of ``messages``, reply priming included."""
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise InvalidArgument(
            f"messages must be a sequence of message dicts or Message, got {type(messages)!r}"
        )
    total = REPLY_PRIMING
    for index, message in enumerate(messages):
        try:
            total += count_message(count, message)
        except InvalidArgument as exc:
            exc.args = (f"messages[{index}]: {exc}",)
            raise
    return total


def count_message(count: Count, message: Mapping[str, Any] | Message) -> int:
    """Tokens one message adds to a request: its texts and its share of the chat format."""
    item = message.to_dict() if isinstance(message, Message) else message
    if not isinstance(item, Mapping):
        raise InvalidArgument(f"a message must be a dict or Message, got {type(message)!r}")
    total = _TOKENS_PER_MESSAGE
    for key, value in item.items():
        total += sum(count(text) for text in _texts(key, value))
        if key == "name":
            total += _TOKENS_PER_NAME
    return total


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
            total += count(f"{key}:{p_type}:{p_desc}")
    return total


def _texts(key: str, value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif key == "content" and isinstance(value, list):
        for part in value:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield part["text"]
    elif key == "tool_calls" and isinstance(value, list):
        for call in value:
            if isinstance(call, Mapping):
                yield from _function_texts(call.get("function"))
    elif key == "function_call":
        yield from _function_texts(value)


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
        f"tools[{index}] must be a function definition with a string 'name', got {tool!r:.200}"
    )


def _str(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _no_period(value: object) -> str:
    text = _str(value)
    return text[:-1] if text.endswith(".") else text
