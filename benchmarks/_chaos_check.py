"""The checker of ``chaos.py``: the workers' merged logs against the store's final threads.

Not a benchmark itself. No deletes run, so a thread's seqs are 1..n and a message's
seq is its position. Per namespace (one per consistency mode) it counts:

- lost: a message of an acknowledged append missing from the store;
- duplicated: a message id stored more than once;
- partial: a batch (acknowledged or not) with some but not all of its messages
  stored, or not contiguous and in order;
- wrong: a stored message at another position than its append acknowledged
  (version - batch size + index + 1), an id no worker ever sent, a seq gap, a
  version other than the message count, or a read whose messages are not a prefix
  of the final thread (compared by digest of the ids) or whose version is not its
  message count;
- stale: a read that began after an append of a newer version was acknowledged
  (in any process). Its staleness is the read's start minus the acknowledgement of
  the oldest such append: how long the data it missed had been acknowledged. In
  strong mode every stale read is a linearizability violation; in bounded mode a
  stale read breaks the bound if its staleness exceeds ``max_staleness``.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from _chaos_worker import ids_digest
from _support import percentile


@dataclass(slots=True)
class FinalThread:
    """A thread as the store holds it at the end."""

    version: int
    seqs: tuple[int, ...]
    ids: list[str]


@dataclass(slots=True)
class ModeResult:
    appends_acked: int = 0
    appends_failed: int = 0
    appends_unknown: int = 0
    committed_unacked: int = 0
    reads: int = 0
    reads_failed: int = 0
    messages_stored: int = 0
    lost: int = 0
    duplicated: int = 0
    partial: int = 0
    wrong: int = 0
    stale_reads: int = 0
    bound_violations: int = 0
    staleness_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    untyped: int = 0
    untyped_example: str = ""
    examples: list[str] = field(default_factory=list)

    def note(self, example: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(example)

    def summary(self, mode: str, bound_s: float) -> dict[str, Any]:
        ordered = sorted(self.staleness_ms)
        staleness = (
            {"p50": round(percentile(ordered, 0.5), 2), "max": round(ordered[-1], 2)}
            if ordered
            else {"p50": 0.0, "max": 0.0}
        )
        violations = self.stale_reads if mode == "strong" else self.bound_violations
        failures = [
            name
            for name, count in (
                ("lost", self.lost),
                ("duplicated", self.duplicated),
                ("partial", self.partial),
                ("wrong", self.wrong),
                ("untyped errors", self.untyped),
                ("strong violations" if mode == "strong" else "bound violations", violations),
            )
            if count
        ]
        if not self.appends_acked or not self.reads:
            failures.append("no acknowledged append or no read: the run proves nothing")
        return {
            "appends_acked": self.appends_acked,
            "appends_failed": self.appends_failed,
            "appends_outcome_unknown": self.appends_unknown,
            "committed_unacknowledged": self.committed_unacked,
            "reads": self.reads,
            "reads_failed": self.reads_failed,
            "messages_stored": self.messages_stored,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "partial": self.partial,
            "wrong": self.wrong,
            "stale_reads": self.stale_reads,
            "staleness_ms": staleness,
            "bound_s": None if mode == "strong" else bound_s,
            "bound_violations": None if mode == "strong" else self.bound_violations,
            "errors": dict(self.errors),
            "untyped_errors": self.untyped,
            "untyped_example": self.untyped_example,
            "examples": self.examples,
            "failures": failures,
            "ok": not failures,
        }


@dataclass(slots=True)
class _Batch:
    ids: list[str]
    acks: list[dict[str, Any]] = field(default_factory=list)


def check_mode(
    records: Iterable[dict[str, Any]], finals: dict[str, FinalThread], mode: str, bound_s: float
) -> dict[str, Any]:
    """Check one namespace: ``records`` are its log records, ``finals`` its threads."""
    result = ModeResult()
    batches: dict[str, dict[str, _Batch]] = defaultdict(dict)
    reads: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        kind = record["k"]
        if kind in ("intent", "ack", "fail"):
            batch = batches[record["t"]].setdefault(record["ids"][0], _Batch(record["ids"]))
        if kind == "ack":
            batch.acks.append(record)
        elif kind == "read":
            reads[record["t"]].append(record)
        elif kind in ("fail", "rfail", "cfail"):
            _count_error(result, record)
    for thread in sorted(set(batches) | set(reads) | set(finals)):
        final = finals.get(thread, FinalThread(0, (), []))
        thread_batches = batches.get(thread, {})
        _check_thread(result, thread, final, thread_batches)
        _check_reads(result, thread, final, thread_batches, reads.get(thread, []), mode, bound_s)
    return result.summary(mode, bound_s)


def _count_error(result: ModeResult, record: dict[str, Any]) -> None:
    if record["k"] == "fail":
        result.appends_failed += 1
    elif record["k"] == "rfail":
        result.reads_failed += 1
    result.errors[record["err"]] += 1
    if not record["typed"]:
        result.untyped += 1
        if not result.untyped_example and "tb" in record:
            result.untyped_example = record["tb"]


def _check_thread(
    result: ModeResult, thread: str, final: FinalThread, batches: dict[str, _Batch]
) -> None:
    result.messages_stored += len(final.ids)
    if final.seqs != tuple(range(1, len(final.seqs) + 1)) or final.version != len(final.ids):
        result.wrong += 1
        result.note(f"{thread}: version {final.version}, seqs not 1..{len(final.seqs)}")
    positions: dict[str, list[int]] = defaultdict(list)
    for position, message_id in enumerate(final.ids, start=1):
        positions[message_id].append(position)
    sent = {message_id for batch in batches.values() for message_id in batch.ids}
    for message_id, where in positions.items():
        if len(where) > 1:
            result.duplicated += len(where) - 1
            result.note(f"{thread}: {message_id} stored at {where}")
        if message_id not in sent:
            result.wrong += 1
            result.note(f"{thread}: {message_id} stored, never sent")
    for batch in batches.values():
        _check_batch(result, thread, batch, positions)


def _check_batch(
    result: ModeResult, thread: str, batch: _Batch, positions: dict[str, list[int]]
) -> None:
    present = [positions[i][0] for i in batch.ids if i in positions]
    size = len(batch.ids)
    if batch.acks:
        result.appends_acked += 1
    else:  # every try failed, or it was in flight when its worker was killed
        result.appends_unknown += 1
    if present and not batch.acks:
        result.committed_unacked += 1
    if present and (len(present) < size or present != list(range(present[0], present[0] + size))):
        result.partial += 1
        result.note(f"{thread}: batch {batch.ids} stored at {present}")
        return
    for ack in batch.acks:
        if not present:
            result.lost += size
            result.note(f"{thread}: acknowledged {batch.ids} (version {ack['v']}) not stored")
        elif present[0] != ack["v"] - size + 1:
            result.wrong += 1
            result.note(f"{thread}: {batch.ids} acknowledged at {ack['v']}, stored at {present}")


def _check_reads(
    result: ModeResult,
    thread: str,
    final: FinalThread,
    batches: dict[str, _Batch],
    reads: Sequence[dict[str, Any]],
    mode: str,
    bound_s: float,
) -> None:
    # Acknowledgements by version: a read of version v missed those above v.
    acks = sorted(
        (ack["v"], ack["e"], ack.get("w", "?")) for batch in batches.values() for ack in batch.acks
    )
    versions = [ack[0] for ack in acks]
    prefixes: dict[int, str] = {}
    for read in reads:
        result.reads += 1
        count = read["n"]
        if count not in prefixes:
            prefixes[count] = ids_digest(final.ids[:count]) if count <= len(final.ids) else ""
        if read["v"] != count or read["h"] != prefixes[count]:
            result.wrong += 1
            result.note(
                f"{thread}: read of version {read['v']} with {count} messages "
                "is not a prefix of the final thread"
            )
        newer = acks[bisect.bisect_right(versions, read["v"]) :]
        missed = [ack for ack in newer if ack[1] < read["s"]]
        if missed:
            oldest = min(missed, key=lambda ack: ack[1])
            staleness_ms = (read["s"] - oldest[1]) / 1e6
            result.stale_reads += 1
            result.staleness_ms.append(staleness_ms)
            if mode != "strong" and staleness_ms > bound_s * 1000:
                result.bound_violations += 1
            if mode == "strong" or staleness_ms > bound_s * 1000:
                result.note(
                    f"{thread}: a read by {read.get('w', '?')} returned version {read['v']}; "
                    f"{len(missed)} newer append(s) had been acknowledged, the oldest "
                    f"(version {oldest[0]}, by {oldest[2]}) {staleness_ms:.1f} ms before it began"
                )
