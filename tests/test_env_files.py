"""Secrets as ``*_FILE`` variables (the Docker and Kubernetes convention), never printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent_core import OpenAIChatModel
from agent_core.errors import ConfigurationError
from agent_core.server import Settings

SECRET = "s3cr3t-signing-key-0123456789abcdef"


def test_a_setting_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(SECRET + "\n")
    url = tmp_path / "redis"
    url.write_text("redis://127.0.0.1:6390/2")
    settings = Settings.from_env(
        {
            "AGENT_CORE_L2_SIGNING_KEY_FILE": str(secret),
            "AGENT_CORE_REDIS_URL_FILE": str(url),
            "AGENT_CORE_MAX_STALENESS": "0.5",
        }
    )
    assert settings.l2_signing_key == SECRET  # the trailing newline dropped
    assert settings.redis_url == "redis://127.0.0.1:6390/2"
    assert settings.max_staleness == 0.5
    assert SECRET not in repr(settings)


def test_a_bad_secret_file_is_a_clear_error_without_the_secret(tmp_path: Path) -> None:
    secret = tmp_path / "key"
    secret.write_text(SECRET)
    both = {"AGENT_CORE_L2_SIGNING_KEY": SECRET, "AGENT_CORE_L2_SIGNING_KEY_FILE": str(secret)}
    with pytest.raises(ConfigurationError, match="keep one") as caught:
        Settings.from_env(both)
    assert SECRET not in str(caught.value)
    missing = {"AGENT_CORE_L2_SIGNING_KEY_FILE": str(tmp_path / "absent")}
    with pytest.raises(ConfigurationError, match="cannot be read"):
        Settings.from_env(missing)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(ConfigurationError, match="not UTF-8") as caught:
        Settings.from_env({"AGENT_CORE_L2_SIGNING_KEY_FILE": str(binary)})
    assert SECRET not in str(caught.value)
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (65 << 10))
    with pytest.raises(ConfigurationError, match="64 KiB"):
        Settings.from_env({"AGENT_CORE_STORE_URL_FILE": str(huge)})


async def test_the_model_api_key_can_come_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigurationError, match="needs an API key"):
        OpenAIChatModel("gpt-4o")  # OpenAI's own API, no key anywhere
    key = tmp_path / "openai"
    key.write_text("sk-from-a-file\n")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(key))
    model = OpenAIChatModel("gpt-4o")
    try:
        assert "sk-from-a-file" not in repr(model)
    finally:
        await model.aclose()
