"""Typed errors. Each one says what was wrong and how to fix it."""

from __future__ import annotations

from typing import Any

from ._quote import quote

__all__ = [
    "AgentCoreError",
    "AuthenticationFailed",
    "CacheClosed",
    "ConfigurationError",
    "ContextFileError",
    "DecryptionFailed",
    "EncryptionKeyMissing",
    "IdempotencyKeyReused",
    "IdentityProviderUnavailable",
    "InvalidArgument",
    "InvalidBatch",
    "InvalidMessage",
    "InvalidNamespace",
    "InvalidThreadId",
    "MessageTooLarge",
    "ModelError",
    "PermissionDenied",
    "ProviderError",
    "QuotaExceeded",
    "RateLimited",
    "RequestTooLarge",
    "StoreUnavailable",
    "ThreadExists",
    "ThreadNotFound",
    "TokenBudgetExceeded",
    "TurnNotSaved",
    "VersionConflict",
]


class AgentCoreError(Exception):
    """Base class of every error that agent-core raises on purpose."""


class InvalidArgument(AgentCoreError, ValueError):
    """A parameter of a public call has the wrong type or is out of range."""


class InvalidThreadId(InvalidArgument):
    """A thread id is not 1-200 characters of ``A-Z a-z 0-9 . _ : @ -``."""


class InvalidNamespace(InvalidArgument):
    """A namespace is not 1-64 characters of ``A-Z a-z 0-9 . _ : @ -``."""


class InvalidMessage(InvalidArgument):
    """A message is not a JSON object with a known role (or a Responses API ``type``)."""


class MessageTooLarge(InvalidMessage):
    """A message's encoded size is over the configured cap."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class InvalidBatch(InvalidArgument):
    """A batch of messages is empty, too long, or not a list."""


class TokenBudgetExceeded(AgentCoreError):
    """A token window can't hold even the newest message beside the pinned ones."""

    def __init__(self, message: str, *, needed: int, max_tokens: int) -> None:
        super().__init__(message)
        #: The smallest budget a window would need.
        self.needed = needed
        self.max_tokens = max_tokens


class ConfigurationError(AgentCoreError, ValueError):
    """A store URL or option cannot be used."""


class VersionConflict(AgentCoreError):
    """A compare-and-append (or -splice) found another version than the caller expected."""

    def __init__(self, thread_id: str, *, expected: int, actual: int) -> None:
        super().__init__(
            f"thread {quote(thread_id)} is at version {actual}, not the expected {expected}: "
            "another writer wrote first; re-read the thread and retry with its version"
        )
        self.thread_id = thread_id
        self.expected = expected
        self.actual = actual


class IdempotencyKeyReused(AgentCoreError):
    """An idempotency key already applied to a different batch was sent again."""

    def __init__(self, thread_id: str, key: str, *, version: int) -> None:
        super().__init__(
            f"idempotency key {quote(key)} of thread {quote(thread_id)} already produced version "
            f"{version} with different messages; use a new key for a new batch"
        )
        self.thread_id = thread_id
        self.key = key
        self.version = version


class ThreadExists(AgentCoreError):
    """A fork's target thread already holds messages."""

    def __init__(self, thread_id: str, *, version: int) -> None:
        super().__init__(
            f"thread {quote(thread_id)} already holds messages (version {version}): a fork "
            "makes a new thread; delete or purge it first, or fork to another id"
        )
        self.thread_id = thread_id
        self.version = version


class ThreadNotFound(AgentCoreError):
    """The thread was never written in the caller's namespace (HTTP 404)."""

    def __init__(self, thread_id: str) -> None:
        super().__init__(
            f"no thread {quote(thread_id)}: append to it first (POST /v1/threads/<id>/messages)"
        )
        self.thread_id = thread_id


class AuthenticationFailed(AgentCoreError):
    """A request carried no credential, or one that is unknown, wrong, revoked or expired
    (HTTP 401). The message never quotes the credential."""


class PermissionDenied(AgentCoreError):
    """The credential is valid but lacks the scope the request needs (HTTP 403)."""


class QuotaExceeded(AgentCoreError):
    """A tenant's stored bytes would pass its quota (HTTP 507; 413 for a request larger
    than the whole quota, which could never fit)."""

    def __init__(self, tenant: str, *, used: int, adding: int, quota: int) -> None:
        never = adding > quota
        super().__init__(
            f"tenant {quote(tenant)} stores {used} bytes of its {quota}-byte quota; this "
            f"request adds about {adding}: "
            + ("it can never fit, send less" if never else "delete or purge threads first")
        )
        self.tenant = tenant
        self.used = used
        self.adding = adding
        self.quota = quota
        self.never_fits = never


class StoreUnavailable(AgentCoreError):
    """The thread store could not be reached or failed; retrying may succeed.

    A read can simply be retried. ``may_have_committed`` says whether a write was sent
    before the failure, so that it may have been applied although no answer came: retry
    it with the same ``idempotency_key`` to make sure it lands exactly once. When False,
    nothing was written.
    """

    def __init__(self, message: str, *, may_have_committed: bool = False) -> None:
        super().__init__(message)
        self.may_have_committed = may_have_committed


class IdentityProviderUnavailable(AgentCoreError):
    """A JWT could not be checked: the identity provider's keys (JWKS) could not be fetched
    (HTTP 503). The token may be valid; ``retry_after`` is the wait in seconds before the
    keys are fetched again."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DecryptionFailed(AgentCoreError):
    """A stored message payload does not decrypt: it was tampered with, moved from another
    thread or namespace, or its key id names other key material than the one that wrote it.
    The message never shows key material or the payload."""

    def __init__(self, message: str, *, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class EncryptionKeyMissing(DecryptionFailed):
    """A stored payload names an encryption key id that the keys in use do not hold."""


class CacheClosed(AgentCoreError):
    """The cache is used outside ``async with`` (not opened yet, or already closed)."""


class ProviderError(AgentCoreError):
    """A model provider's API refused or failed a request, or could not be reached.

    Only the optional online count (`TokenCounter.count_messages_online`) calls a
    provider. ``status`` is the HTTP status, None if no answer came (network failure,
    timeout); ``error_type`` is the provider's error type (``"rate_limit_error"``, ...),
    None if it gave none. Nothing is retried: retry, or count offline, as suits you.
    """

    def __init__(self, message: str, *, status: int | None, error_type: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class ContextFileError(AgentCoreError):
    """A context file is missing, unreadable, not UTF-8 text or over its size limit."""


# Chat models (agent_core.agent).


class ModelError(AgentCoreError):
    """A chat model's server refused, failed or garbled a request, or could not be reached.

    ``status`` is the HTTP status, None if no answer came. ``error_type`` is the server's
    error type (``"invalid_request_error"``, ``"insufficient_quota"``, ...) or one of ours:
    ``"timeout"``, ``"connection_error"``, ``"invalid_response"``, ``"closed"``.
    ``retryable`` says whether the same request may succeed later (rate limits, server
    errors, timeouts, network failures); ``attempts`` is how many were made, retries
    included; ``retry_after`` is the wait in seconds that the server asked for, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        error_type: str | None,
        retryable: bool,
        attempts: int = 1,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.retryable = retryable
        self.attempts = attempts
        self.retry_after = retry_after


# Rate limits (agent_core.ratelimit).


class RateLimited(AgentCoreError):
    """A rate limit would make a request wait longer than its ``max_wait``.

    ``limit`` is the limit that binds (``"requests"`` or ``"tokens"``), ``retry_after``
    the wait in seconds it would have needed; nothing was reserved.
    """

    def __init__(self, model: str, *, limit: str, retry_after: float, max_wait: float) -> None:
        super().__init__(
            f"the {limit} limit of model {quote(model)} would make this request wait "
            f"{retry_after:.3f} s, more than max_wait={max_wait:g} s; retry after "
            f"{retry_after:.3f} s, or raise max_wait"
        )
        self.model = model
        self.limit = limit
        self.retry_after = retry_after
        self.max_wait = max_wait


class RequestTooLarge(InvalidArgument):
    """A request costs more tokens than a whole period's budget: it can never be admitted."""

    def __init__(self, model: str, *, tokens: int, tokens_per_minute: int) -> None:
        super().__init__(
            f"a request of {tokens} tokens can never fit tokens_per_minute="
            f"{tokens_per_minute} of model {quote(model)}: send fewer tokens (a shorter window "
            "or fewer reserved output tokens) or raise the limit"
        )
        self.model = model
        self.tokens = tokens
        self.tokens_per_minute = tokens_per_minute


# Agents (agent_core.agent).


class TurnNotSaved(AgentCoreError):
    """An agent's reply came back but could not be stored (the cause is chained).

    Nothing of the turn may have been stored. ``reply`` is the turn's `AgentReply`
    (``version`` None); to store it later, append ``messages`` (the user message and
    the reply) with this ``idempotency_key``: if the first try did land, nothing is
    written twice. (``reply`` is typed ``Any``: errors sit below the agent layer.)
    """

    def __init__(
        self,
        thread_id: str,
        *,
        reply: Any,
        messages: list[dict[str, Any]],
        idempotency_key: str,
        cause: BaseException,
    ) -> None:
        super().__init__(
            f"the reply of thread {quote(thread_id)} could not be stored: {cause}; it is in "
            "this error's reply: append its messages with its idempotency_key to keep it"
        )
        self.thread_id = thread_id
        self.reply = reply
        self.messages = messages
        self.idempotency_key = idempotency_key
