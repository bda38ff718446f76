"""Every `Settings` field is a ``serve`` flag and an ``AGENT_CORE_*`` variable, and has a row
in the README's table of settings: generated from the fields, so that a new setting cannot be
added without them."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import agent_core.server
from agent_core.cli import app
from agent_core.errors import ConfigurationError
from agent_core.server import Settings

ENV_PREFIX = "AGENT_CORE_"
README = Path(__file__).resolve().parent.parent / "README.md"
#: Secrets: a variable only, since a flag's value shows in ``ps``.
ENV_ONLY = frozenset({"l2_signing_key"})
FIELDS = [field.name for field in dataclasses.fields(Settings)]


def serve_options() -> dict[str, Any]:
    """The ``serve`` options (click parameters, typer's own click), by the variable they read."""
    group: Any = typer.main.get_command(app)
    serve = group.commands["serve"]
    return {
        param.envvar: param
        for param in serve.params
        if param.param_type_name == "option" and isinstance(param.envvar, str)
    }


def readme_rows() -> list[str]:
    """The rows of the README's settings table (the one whose header has "variable")."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| setting"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def variable(name: str) -> str:
    return ENV_PREFIX + name.upper()


@pytest.mark.parametrize("name", FIELDS)
def test_every_setting_is_a_flag_a_variable_and_a_readme_row(name: str) -> None:
    options = serve_options()
    row = [line for line in readme_rows() if f"`{variable(name)}`" in line]
    assert len(row) == 1, f"the README's settings table needs one row for {variable(name)}"
    if name in ENV_ONLY:
        assert variable(name) not in options
        return
    assert variable(name) in options, f"serve needs a flag reading {variable(name)}"
    flag = options[variable(name)].opts[0]
    assert f"`{flag}`" in row[0], f"the README row of {variable(name)} should name {flag}"


def test_every_readme_row_is_a_serve_option_or_setting() -> None:
    """No stale rows: each variable in the table is read by serve or by `Settings`."""
    known = set(serve_options()) | {variable(name) for name in FIELDS}
    for line in readme_rows():
        names = re.findall(r"`(AGENT_CORE_[A-Z0-9_]+)`", line)
        assert names, line
        assert set(names) <= known, line


#: A value unlike the default, per field, as a flag's text and as the parsed value.
NON_DEFAULTS: dict[str, tuple[str, Any]] = {
    "store_url": ("sqlite:///elsewhere.db", "sqlite:///elsewhere.db"),
    "redis_url": ("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"),
    "model": ("gpt-4o-mini", "gpt-4o-mini"),
    "namespace": ("ns-1", "ns-1"),
    "consistency": ("strong", "strong"),
    "max_staleness": ("2.5", 2.5),
    "max_context_tokens": ("8000", 8000),
    "reserve_output_tokens": ("500", 500),
    "window_strategy": ("stable", "stable"),
    "prompt_cache_retention": ("24h", "24h"),
    "max_body_bytes": ("1000", 1000),
    "max_message_bytes": ("999", 999),
    "retention": ("3600", 3600.0),
    "sweep_interval": ("0", 0.0),
    "l2_signing_key": ("s3cret", "s3cret"),
    "keys_file": ("/run/keys.json", "/run/keys.json"),
    "jwt_jwks_url": ("https://idp.example/jwks", "https://idp.example/jwks"),
    "jwt_audience": ("agent-core", "agent-core"),
    "jwt_issuer": ("https://idp.example/", "https://idp.example/"),
    "jwt_tenant_claim": ("org", "org"),
    "max_tenants": ("7", 7),
    "tenant_requests_per_minute": ("600", 600),
    "tenant_tokens_per_minute": ("90000", 90000),
    "tenant_max_stored_bytes": ("1000000", 1000000),
    "audit_log": ("-", "-"),
    "audit_sample_rate": ("0.5", 0.5),
    "cors_origins": ("https://app.example", "https://app.example"),
    "encryption_keys_file": ("/run/keys.json", "/run/keys.json"),
}


class _Stop(ConfigurationError):
    pass


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """`serve` stops at `create_app`, keeping the settings it was given."""
    seen: list[Settings] = []

    def create_app(settings: Settings) -> Any:
        seen.append(settings)
        raise _Stop("stopped by the test")

    monkeypatch.setattr(agent_core.server, "create_app", create_app)
    return seen


def run_serve(args: list[str], env: dict[str, str]) -> None:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith(ENV_PREFIX)}
    result = CliRunner().invoke(app, ["serve", *args], env=clean | env, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "stopped by the test" in result.stderr, result.output


def test_the_table_covers_every_field() -> None:
    assert set(NON_DEFAULTS) == set(FIELDS)
    defaults = Settings()
    for name, (_, value) in NON_DEFAULTS.items():
        assert getattr(defaults, name) != value, name


def test_each_flag_reaches_the_settings(captured: list[Settings]) -> None:
    options = serve_options()
    args = []
    for name, (text, _) in NON_DEFAULTS.items():
        if name not in ENV_ONLY:
            args += [options[variable(name)].opts[0], text]
    run_serve(args, {variable(name): NON_DEFAULTS[name][0] for name in ENV_ONLY})
    (settings,) = captured
    for name, (_, value) in NON_DEFAULTS.items():
        assert getattr(settings, name) == value, name


def test_each_variable_reaches_the_settings(captured: list[Settings]) -> None:
    run_serve([], {variable(name): text for name, (text, _) in NON_DEFAULTS.items()})
    (settings,) = captured
    for name, (_, value) in NON_DEFAULTS.items():
        assert getattr(settings, name) == value, name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-message-bytes", "1"], "max_message_bytes must be an integer of at least 2"),
        (["--max-body-bytes", "0"], "max_body_bytes must be an integer of at least 1"),
        (["--sweep-interval", "-1"], "sweep_interval"),
        (["--prompt-cache-retention", "1h"], "prompt_cache_retention must be"),
    ],
)
def test_a_bad_setting_is_one_red_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["serve", *args], catch_exceptions=False)
    assert result.exit_code == 1
    assert message in result.stderr


def test_every_serve_option_has_a_readme_row() -> None:
    rows = readme_rows()
    for name, option in serve_options().items():
        assert any(f"`{name}`" in row and f"`{option.opts[0]}" in row for row in rows), name
