"""Environment variables, and their ``*_FILE`` twins (the Docker and Kubernetes secrets
convention): ``AGENT_CORE_REDIS_URL_FILE=/run/secrets/redis`` gives the value of
``AGENT_CORE_REDIS_URL`` from that file. Neither the value nor the file's content ever
appears in an error."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ConfigurationError

__all__ = ["env_value"]

#: A secret file larger than this is not a secret but a mistake.
_MAX_FILE_BYTES = 64 << 10


def env_value(environ: Mapping[str, str], name: str) -> str | None:
    """``environ[name]``, or the content of the file ``environ[name + "_FILE"]`` names
    (one trailing newline dropped); None if neither is set; both set is an error."""
    path = environ.get(f"{name}_FILE")
    if path is None:
        return environ.get(name)
    if name in environ:
        raise ConfigurationError(f"both {name} and {name}_FILE are set: keep one")
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(
            f"{name}_FILE names {path!r}, which cannot be read ({exc.strerror or exc})"
        ) from None
    if len(raw) > _MAX_FILE_BYTES:
        raise ConfigurationError(f"{name}_FILE names {path!r}, larger than 64 KiB")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ConfigurationError(f"{name}_FILE names {path!r}, which is not UTF-8") from None
    return text.removesuffix("\n").removesuffix("\r")
