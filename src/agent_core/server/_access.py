"""The routes' access dependencies: authenticate, check the scope, rate-limit, find the tenant.

Every thread route takes a `Caller`: its tenant's cache is the only one the handler can
reach, so a thread id names a thread of the caller's namespace and nothing else. Ops
routes (`/readyz`, `/metrics`, `/v1/stats`, the dashboard) need the admin scope, except
on the ``--metrics-bind`` listener, which serves only them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Final

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from ._auth import Principal
from ._core import core_of
from ._problems import problem
from ._tenant_limits import admit_request
from ._tenants import Tenant

__all__ = [
    "OPS_LISTENER",
    "OPS_PATHS",
    "Adder",
    "Caller",
    "Ops",
    "Reader",
    "Writer",
    "ops_only",
]

#: Set in the ASGI scope by the ``--metrics-bind`` listener.
OPS_LISTENER: Final = "agent_core.ops_listener"
_bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`agent-core keys create`) or a JWT of the configured issuer.",
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, and their tenant."""

    principal: Principal
    tenant: Tenant


async def _authenticated(request: Request, scope: str) -> Principal:
    core = core_of(request)
    principal = await core.auth.authenticate(request.headers.get("authorization"))
    request.state.principal = principal
    principal.require(scope)
    if core.request_limits is not None:
        await admit_request(core.request_limits, principal.tenant)
    return principal


def _caller_of(scope: str) -> object:
    async def caller(request: Request, _: object = Security(_bearer)) -> Caller:
        principal = await _authenticated(request, scope)
        return Caller(principal, await core_of(request).tenants.get(principal.tenant))

    return Depends(caller)


async def _ops(request: Request, _: object = Security(_bearer)) -> None:
    if not request.scope.get(OPS_LISTENER):
        await _authenticated(request, "admin")


Reader = Annotated[Caller, _caller_of("read")]
Writer = Annotated[Caller, _caller_of("write")]


async def _adding(request: Request, caller: Writer) -> Caller:
    quota = core_of(request).quota
    if quota is not None:
        # The body's size stands for what the request stores (the reply of a turn comes
        # later: the next measurement counts it).
        await quota.admit(caller.principal.tenant, len(await request.body()))
    return caller


#: A writer whose request adds messages: also held to the tenant's stored-bytes quota.
Adder = Annotated[Caller, Depends(_adding)]
Ops = Depends(_ops)


#: What the ``--metrics-bind`` listener serves.
OPS_PATHS: Final = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v1/stats", "/v1/dashboard"})


def ops_only(app: ASGIApp) -> ASGIApp:
    """``app`` as the ``--metrics-bind`` listener serves it: the ops routes only, without
    credentials (the listener's address is what protects them); anything else is a 404."""

    async def listener(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPS_PATHS:
            response = problem(
                404, f"the metrics listener serves only {', '.join(sorted(OPS_PATHS))}"
            )
            await response(scope, receive, send)
            return
        await app({**scope, OPS_LISTENER: True}, receive, send)

    return listener
