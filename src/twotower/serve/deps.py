"""Route dependencies (``Annotated[..., Depends()]``): the running :class:`~.service.Service`, and the admin check.

Use them as parameter types: ``svc: ServiceDep`` gives the service; ``_: AdminDep`` makes a route answer 401
without a bearer token and 403 with a wrong one before its body runs.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .service import Service


def get_service(request: Request) -> Service:
    """The service the app was built with (``create_app`` puts it on ``app.state``)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


# The OpenAPI schema documents /admin/* as bearer-token routes (a security scheme, not a free header); the
# check below answers the missing token itself, with a message naming the setting.
bearer = HTTPBearer(auto_error=False, description="the value of TWOTOWER_ADMIN_TOKEN the server runs with")


def require_admin(
    service: ServiceDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """Bearer-token check for /admin/*: 401 without a token, 403 with a wrong one (constant-time compare)."""
    if credentials is None:
        raise HTTPException(401, "send the admin token as `Authorization: Bearer <TWOTOWER_ADMIN_TOKEN>`",
                            headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    given = credentials.credentials.encode()
    if not secrets.compare_digest(given, service.settings.admin_token.get_secret_value().encode()):
        raise HTTPException(403, "wrong admin token; use the value of TWOTOWER_ADMIN_TOKEN the server runs with")


AdminDep = Annotated[None, Depends(require_admin)]
