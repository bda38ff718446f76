"""API keys: the keys file, the verifier, and ``agent-core keys``."""

from __future__ import annotations

import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from agent_core._api_keys import KeysFile, KeyVerifier
from agent_core.cli import app
from agent_core.errors import ConfigurationError, InvalidArgument


def test_a_created_key_verifies_and_only_its_hash_is_kept(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.json")
    entry, key = keys.create("acme", ["read"])
    assert key.startswith(f"ack_{entry.id}_")
    text = (tmp_path / "keys.json").read_text()
    assert key not in text
    assert key.rsplit("_", 1)[1] not in text
    assert stat.S_IMODE(os.stat(tmp_path / "keys.json").st_mode) == 0o600
    verifier = KeyVerifier(keys.load())
    found = verifier.verify(key)
    assert found is not None
    assert (found.id, found.tenant, found.scopes) == (entry.id, "acme", ("read",))
    assert verifier.verify(key) == found  # remembered: no second KDF


@pytest.mark.parametrize(
    "wrong",
    [
        lambda key: key[:-1] + ("A" if key[-1] != "A" else "B"),  # last character
        lambda key: key.replace("ack_", "ack_0", 1)[:-1],  # another id
        lambda key: "ack_000000000000_" + key.rsplit("_", 1)[1],  # unknown id
        lambda key: "",
        lambda key: "Bearer " + key,
        lambda key: key + "\ud800",
        lambda key: "x" * 100_000,
    ],
)
def test_a_wrong_key_is_refused(tmp_path: Path, wrong: object) -> None:
    keys = KeysFile(tmp_path / "keys.json")
    _, key = keys.create("acme")
    assert KeyVerifier(keys.load()).verify(wrong(key)) is None  # type: ignore[operator]


def test_revoked_and_expired_keys_stop_working(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.json")
    revoked, revoked_key = keys.create("acme")
    _, expiring_key = keys.create("acme", expires_at=datetime.now(UTC) + timedelta(hours=1))
    verifier = KeyVerifier(keys.load())
    assert verifier.verify(revoked_key) is not None  # and now remembered
    keys.revoke(revoked.id)
    assert KeyVerifier(keys.load()).verify(revoked_key) is None  # a reload forgets it
    later = datetime.now(UTC) + timedelta(hours=2)
    assert verifier.verify(expiring_key) is not None
    assert verifier.verify(expiring_key, now=later) is None  # even when remembered
    with pytest.raises(InvalidArgument, match="no key"):
        keys.revoke("0123456789ab")


def test_bad_input_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.json")
    for tenant, scopes in (("bad tenant!", ["read"]), ("acme", ["root"]), ("acme", [])):
        with pytest.raises(InvalidArgument):
            keys.create(tenant, scopes)
    with pytest.raises(InvalidArgument, match="expires_at"):
        keys.create("acme", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert keys.load() == []
    assert not (tmp_path / "keys.json").exists()


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[]", b'{"format": 2, "keys": []}', b'{"format": 1, "keys": [{"id": 1}]}'],
)
def test_a_malformed_keys_file_is_a_configuration_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "keys.json").write_bytes(content)
    with pytest.raises(ConfigurationError, match="malformed"):
        KeysFile(tmp_path / "keys.json").load()


def test_concurrent_creates_keep_every_key(tmp_path: Path) -> None:
    keys = KeysFile(tmp_path / "keys.json")
    made: list[str] = []

    def create() -> None:
        made.append(KeysFile(tmp_path / "keys.json").create("acme")[0].id)

    workers = [threading.Thread(target=create) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(entry.id for entry in keys.load()) == sorted(made)


def test_the_keys_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    path = str(tmp_path / "keys.json")
    created = runner.invoke(
        app,
        ["keys", "create", "--keys-file", path, "--tenant", "acme", "--scope", "admin",
         "--expires", "30d"],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    entry = KeyVerifier(KeysFile(path).load()).verify(key)
    assert entry is not None
    assert entry.scopes == ("admin",)
    listed = runner.invoke(app, ["keys", "list", "--json"], env={"AGENT_CORE_KEYS_FILE": path})
    assert listed.exit_code == 0, listed.output
    (row,) = [orjson.loads(line) for line in listed.stdout.splitlines()]
    assert (row["id"], row["tenant"], row["usable"]) == (entry.id, "acme", True)
    assert key not in listed.stdout
    revoked = runner.invoke(app, ["keys", "revoke", entry.id, "--keys-file", path])
    assert revoked.exit_code == 0, revoked.output
    assert KeyVerifier(KeysFile(path).load()).verify(key) is None
    for bad in (["--scope", "root"], ["--expires", "soon"], ["--tenant", "bad tenant"]):
        args = ["keys", "create", "--keys-file", path, "--tenant", "acme", *bad]
        refused = runner.invoke(app, args)
        assert refused.exit_code == 2, refused.output
    assert len(KeysFile(path).load()) == 1
