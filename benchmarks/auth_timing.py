"""API key verification (issue 14): what a request pays, and what a wrong key's timing tells.

    python benchmarks/auth_timing.py [--quick] [--json FILE]

- ``cached``: `KeyVerifier.verify` of a key it verified before (one SHA-256 and two dict
  lookups): what every request after a key's first pays.
- ``first``: a fresh verifier per sample, so the scrypt KDF runs (a key's first use in a
  process).
- ``wrong, k right``: keys whose first k characters are the real key's and the rest are
  wrong, for k from 0 (not even the ``ack_`` prefix) through the whole id to all but the
  last character. Every cell's samples are interleaved in one shuffled order. The goal:
  rejection time does not depend on k, i.e. each cell's p50 within ±10 % of k = 0's and
  the bootstrap intervals of the ratios overlapping 1.0.

No service is needed: it runs the verifier in this process, on a temporary keys file.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

import orjson

from _support import print_table, ratio_interval
from agent_core._api_keys import KeysFile, KeyVerifier

FULL: Final = 300
QUICK: Final = 12


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few samples; a smoke run")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    samples = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="ac-bench-keys-") as directory:
        keys = KeysFile(Path(directory) / "keys.json")
        _, key = keys.create("acme")
        entries = keys.load()
    verifier = KeyVerifier(entries)
    assert verifier.verify(key) is not None
    clock = time.perf_counter_ns
    cached = []
    for _ in range(samples * 50):
        started = clock()
        verifier.verify(key)
        cached.append(clock() - started)
    first = []
    for _ in range(samples // 4 or 1):
        fresh = KeyVerifier(entries)
        started = clock()
        fresh.verify(key)
        first.append(clock() - started)
    prefixes = [0, 4, 10, 17, len(key) - 1]
    wrong: dict[int, list[int]] = {k: [] for k in prefixes}
    rng = random.Random(14)
    plan = [k for k in prefixes for _ in range(samples)]
    rng.shuffle(plan)
    for k in plan:
        guess = key[:k] + "".join(
            rng.choice("0123456789abcdefXYZ-_") if c != "_" else "_" for c in key[k:]
        )
        if guess == key:
            continue
        started = clock()
        refused = KeyVerifier(entries).verify(guess) is None
        wrong[k].append(clock() - started)
        assert refused
    base = statistics.median(wrong[0])
    rows = []
    figures: dict[str, object] = {
        "cached_p50_us": round(statistics.median(cached) / 1000, 2),
        "first_p50_ms": round(statistics.median(first) / 1e6, 2),
        "wrong": {},
    }
    for k in prefixes:
        ratio = statistics.median(wrong[k]) / base
        low, high = ratio_interval(wrong[k], wrong[0])
        rows.append(
            [
                str(k),
                f"{statistics.median(wrong[k]) / 1e6:.2f}",
                f"{ratio:.3f} [{low:.3f}-{high:.3f}]",
            ]
        )
        figures["wrong"][str(k)] = {  # type: ignore[index]
            "p50_ms": round(statistics.median(wrong[k]) / 1e6, 3),
            "ratio": round(ratio, 3),
            "interval_95": [round(low, 3), round(high, 3)],
        }
    print(f"Key verification: cached p50 {figures['cached_p50_us']} µs, first use (scrypt) "
          f"p50 {figures['first_p50_ms']} ms")  # fmt: skip
    print_table(
        f"Wrong keys: rejection time by right leading characters ({samples} samples each, "
        "interleaved)",
        ["k right", "p50 ms", "p50 / p50(k=0) (95% CI)"],
        rows,
    )
    if args.json:
        document = {"benchmark": "auth_timing", "mode": "quick" if args.quick else "full"}
        Path(args.json).write_bytes(orjson.dumps({**document, **figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
