"""Message shapes at append: what checking a message's role and fields adds to encoding it.

    python benchmarks/message_shape.py [--quick] [--json FILE]

One process, no services. For each kind of message (a text user message, an assistant
tool call, a user message of three parts, a Responses function_call item), times, with
``time.perf_counter_ns`` over batches of calls, visited in a shuffled order each round:

1. ``check_shape(item)`` alone: the per-role check that append runs (issue 11, defect 8);
2. ``encode_batch([item])``: the whole validation and encoding of a one-message append
   (the head and shape check, ``orjson.dumps``, the size cap);
3. ``orjson.dumps(item)`` alone: the floor, encoding without any check.

Goal: the shape check costs at most 2 µs per message, under a store's commit by three
orders of magnitude (an append is ~1 ms on SQLite with synchronous=full).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import orjson

from _support import gc_paused, local_machine, print_machine, print_table, write_json
from agent_core._message_shape import check_shape
from agent_core.messages import encode_batch

GOAL_US: Final = 2.0
CALL = {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
MESSAGES: Final[dict[str, dict[str, Any]]] = {
    "user text": {"role": "user", "content": "What is the weather in Paris today? " * 5},
    "assistant tool call": {"role": "assistant", "content": None, "tool_calls": [CALL]},
    "user, 3 parts": {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "text", "text": "And this one?"},
        ],
    },
    "function_call item": {
        "type": "function_call",
        "call_id": "call_1",
        "name": "weather",
        "arguments": '{"city": "Paris"}',
    },
}


def cells() -> dict[tuple[str, str], Callable[[], object]]:
    table: dict[tuple[str, str], Callable[[], object]] = {}
    for kind, item in MESSAGES.items():
        table[kind, "check_shape"] = partial(check_shape, item)
        table[kind, "encode_batch"] = partial(
            encode_batch, [item], max_message_bytes=1 << 20, max_batch_messages=1000
        )
        table[kind, "orjson.dumps"] = partial(orjson.dumps, item)
    return table


def measure(rounds: int, calls: int) -> dict[tuple[str, str], float]:
    """Per cell, the median over rounds of the mean ns per call within a round."""
    table = cells()
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in table}
    order = list(table)
    rng = random.Random(1)
    clock = time.perf_counter_ns
    with gc_paused():
        for _ in range(rounds):
            rng.shuffle(order)
            for key in order:
                call = table[key]
                started = clock()
                for _ in range(calls):
                    call()
                samples[key].append((clock() - started) / calls)
    return {key: sorted(values)[len(values) // 2] for key, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2,000 calls per cell")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    options = parser.parse_args()
    rounds, calls = (3, 2_000) if options.quick else (15, 20_000)
    machine = local_machine("orjson")
    print_machine(machine)
    medians = measure(rounds, calls)
    rows = []
    figures: dict[str, dict[str, float]] = {}
    for kind in MESSAGES:
        shape, whole, floor = (
            medians[kind, name] / 1000 for name in ("check_shape", "encode_batch", "orjson.dumps")
        )
        figures[kind] = {
            "check_shape_us": shape,
            "encode_batch_us": whole,
            "orjson_dumps_us": floor,
        }
        rows.append([kind, f"{shape:.2f}", f"{whole:.2f}", f"{floor:.2f}", f"{shape / whole:.0%}"])
    print_table(
        f"Validation and encoding of one message, µs per call (median of {rounds} rounds)",
        ["message", "check_shape", "encode_batch", "orjson.dumps", "shape / encode"],
        rows,
    )
    worst = max(values["check_shape_us"] for values in figures.values())
    passed = worst <= GOAL_US
    verdict = "pass" if passed else "FAIL"
    print(f"Goal: check_shape <= {GOAL_US:g} µs per message: worst {worst:.2f} µs, {verdict}")
    if options.json:
        write_json(
            options.json,
            {
                "mode": "quick" if options.quick else "full",
                "machine": machine,
                "messages": figures,
                "goal": {"check_shape_worst_us": worst, "passed": passed},
            },
        )


if __name__ == "__main__":
    main()
