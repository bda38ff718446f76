"""``agent-core keys``: create, list and revoke the service's API keys, and re-encrypt
stored messages under the newest encryption key (issue 14)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Final, NoReturn

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._api_keys import SCOPES, ApiKey, KeysFile
from ._encryption import EncryptionKeys
from ._urls import redact, show_url
from .errors import AgentCoreError
from .store import Rotation, rotate_data, store_from_url

__all__ = ["keys_app"]

keys_app = typer.Typer(
    name="keys",
    help="Create, list and revoke API keys in a keys file (serve --keys-file reads it); "
    "re-encrypt stored messages under the newest encryption key (rotate-data).",
    no_args_is_help=True,
)
_err = Console(stderr=True)
_DURATION: Final = re.compile(r"(\d+)([smhd])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}

KeysFileOption = Annotated[
    Path,
    typer.Option(
        "--keys-file",
        envvar="AGENT_CORE_KEYS_FILE",
        help="The keys file (JSON; salted scrypt hashes only). Env: AGENT_CORE_KEYS_FILE.",
    ),
]


@keys_app.command("create")
def keys_create(
    keys_file: KeysFileOption,
    tenant: Annotated[str, typer.Option(help="The tenant (its namespace) the key acts for.")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help=f"One of {', '.join(SCOPES)}; repeat it for more (default: read and write).",
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(help="When the key stops working: 30d, 12h, 90m, or an ISO 8601 time."),
    ] = None,
) -> None:
    """Add a key; the key is printed once, on the last line of stdout, and stored nowhere."""
    created = datetime.now(UTC)
    try:
        entry, key = KeysFile(keys_file).create(
            tenant,
            scope or ("read", "write"),
            expires_at=None if expires is None else _expiry(expires, created),
            now=created,
        )
    except AgentCoreError as exc:
        _fail(str(exc))
    _err.print(
        f"created key [bold]{entry.id}[/] for tenant {escape(entry.tenant)} "
        f"({', '.join(entry.scopes)}); it is shown once:"
    )
    print(key)


@keys_app.command("list")
def keys_list(
    keys_file: KeysFileOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Show the keys (ids, tenants, scopes, times; never a key or its hash)."""
    try:
        entries = KeysFile(keys_file).load()
    except AgentCoreError as exc:
        _fail(str(exc))
    now = datetime.now(UTC)
    if as_json:
        for entry in entries:
            print(orjson.dumps({**_shown(entry), "usable": entry.usable(now)}).decode())
        return
    table = Table(title=f"API keys in {escape(str(keys_file))}")
    for column in ("id", "tenant", "scopes", "created", "expires", "revoked", "usable"):
        table.add_column(column)
    for entry in entries:
        shown = _shown(entry)
        table.add_row(
            entry.id,
            escape(entry.tenant),
            ", ".join(entry.scopes),
            shown["created_at"],
            shown["expires_at"] or "-",
            shown["revoked_at"] or "-",
            "yes" if entry.usable(now) else "no",
        )
    Console().print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (the 12 hex digits after ack_).")],
    keys_file: KeysFileOption,
) -> None:
    """Revoke a key: it stops working once the service reloads the file (on change)."""
    try:
        entry = KeysFile(keys_file).revoke(key_id)
    except AgentCoreError as exc:
        _fail(str(exc))
    _err.print(f"revoked key {entry.id} of tenant {escape(entry.tenant)}")


@keys_app.command("rotate-data")
def keys_rotate_data(
    store: Annotated[
        str,
        typer.Option(
            "--store",
            envvar="AGENT_CORE_STORE_URL",
            help="Store URL: sqlite:///file.db or postgresql://...",
        ),
    ],
    encryption_keys_file: Annotated[
        Path,
        typer.Option(
            "--encryption-keys-file",
            envvar="AGENT_CORE_ENCRYPTION_KEYS_FILE",
            help="The encryption keys file; the last key is the one rotated to.",
        ),
    ],
    namespace: Annotated[
        str | None,
        typer.Option(help="Only this namespace (tenant).  \\[default: every namespace]"),
    ] = None,
    batch: Annotated[
        int, typer.Option(help="Rows per transaction (each batch is one short transaction).")
    ] = 1000,
) -> None:
    """Re-encrypt stored messages under the newest key (older key ids and plaintext from
    before encryption was on), while the service runs: versions stay, no cache sees a change.
    Remove an old key from the file only once this has finished."""
    try:
        keys = EncryptionKeys.from_file(encryption_keys_file)
        done = asyncio.run(_rotate(store, keys, namespace, batch))
    except AgentCoreError as exc:
        _fail(redact(str(exc), store))
    _err.print(
        f"rotated {done.rotated} stored messages to key {escape(done.key_id)} in "
        f"{escape(show_url(store))} ({done.skipped} changed meanwhile, written anew)"
    )
    print(done.rotated)


async def _rotate(url: str, keys: EncryptionKeys, namespace: str | None, batch: int) -> Rotation:
    store = store_from_url(url)
    await store.open()
    try:
        return await rotate_data(
            store,
            keys,
            namespace=namespace,
            batch=batch,
            progress=lambda done: _err.print(f"{done.found} found, {done.rotated} rotated"),
        )
    finally:
        await store.close()


def _shown(entry: ApiKey) -> dict[str, str | None]:
    return {
        "id": entry.id,
        "tenant": entry.tenant,
        "scopes": ",".join(entry.scopes),
        "created_at": entry.created_at.isoformat(),
        "expires_at": None if entry.expires_at is None else entry.expires_at.isoformat(),
        "revoked_at": None if entry.revoked_at is None else entry.revoked_at.isoformat(),
    }


def _expiry(text: str, now: datetime) -> datetime:
    """``30d``-style durations from ``now``, or an ISO 8601 time with its offset."""
    match = _DURATION.fullmatch(text)
    if match:
        return now + timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (30d, 12h, 90m, 45s) nor an ISO 8601 time "
            "with an offset (2030-01-01T00:00:00+00:00)",
            param_hint="--expires",
        )
    return moment


def _fail(message: str) -> NoReturn:
    _err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(2)
