"""`mask_url`: a store or Redis URL fit to print, its secrets replaced by ``***``.

Every error, log line, stat, health answer and benchmark report that shows a URL shows it
through `mask_url` (and any text that might quote one, a driver's error say, through
`redact`). It works on text, not on a parsed URL, so URLs that do not parse (a bad port,
an unknown scheme, an unencoded ``/`` or ``@`` in the password) are masked too.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote as percent_encode
from urllib.parse import unquote

from ._quote import quote

__all__ = ["MASK", "mask_url", "redact", "show_url"]

MASK: Final = "***"
_MAX_SHOWN: Final = 200
#: Query parameters whose values are secrets (PostgreSQL ``password``/``sslpassword``,
#: Redis ``password``, tokens and keys of proxies and poolers); matched anywhere in the name.
_SECRET_NAMES: Final = re.compile(r"pass|pwd|secret|token|key|auth|credential", re.IGNORECASE)
#: Parameters that name TLS files, shown although their names say "key": a key file's
#: path is no secret (its passphrase, ``sslpassword`` or ``ssl_password``, is).
_PATH_NAMES: Final = frozenset({"sslkey", "ssl_keyfile", "sslcert", "ssl_certfile"})


def mask_url(url: str) -> str:
    """``url`` with the userinfo password and secret query values replaced by ``***``."""
    head, separator, rest = url.partition("://")
    if not separator:
        head, rest = "", url
    else:
        head += separator
    # The userinfo ends at the last '@': a password may hold an unencoded '/', '?' or '@'.
    # If a query value holds an '@', the host is masked too: too much rather than too little.
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        if colon:
            rest = f"{user}:{MASK}{rest[at:]}"
    return head + _mask_query(rest)


def show_url(url: object) -> str:
    """``url`` masked and quoted for an error message, at most 200 characters."""
    if not isinstance(url, str):
        return quote(url)
    masked = mask_url(url)
    return repr(masked if len(masked) <= _MAX_SHOWN else masked[: _MAX_SHOWN - 3] + "...")


def redact(text: str, url: str | None) -> str:
    """``text`` (an error message, say) without any secret of ``url`` in it."""
    if url is None:
        return text
    for secret in _secrets(url):
        for form in {secret, unquote(secret), percent_encode(unquote(secret), safe="")}:
            if form:
                text = text.replace(form, MASK)
    return text.replace(url, mask_url(url))


def _mask_query(rest: str) -> str:
    path, question, query = rest.partition("?")
    if not question:
        return rest
    query, hash_sign, fragment = query.partition("#")
    pairs = []
    for pair in re.split(r"([&;])", query):
        name, equals, _value = pair.partition("=")
        pairs.append(f"{name}={MASK}" if equals and _is_secret(name) else pair)
    return f"{path}?{''.join(pairs)}{hash_sign}{fragment}"


def _secrets(url: str) -> list[str]:
    rest = url.partition("://")[2] or url
    found = []
    at = rest.rfind("@")
    if at >= 0:
        _user, colon, password = rest[:at].partition(":")
        if colon and password:
            found.append(password)
    query = rest.partition("?")[2].partition("#")[0]
    for pair in re.split(r"[&;]", query):
        name, equals, value = pair.partition("=")
        if equals and value and _is_secret(name):
            found.append(value)
    return found


def _is_secret(name: str) -> bool:
    return _SECRET_NAMES.search(name) is not None and name.lower() not in _PATH_NAMES
