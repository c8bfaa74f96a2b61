"""``GET /demo``: a small read-only page for looking at what the service returns for a user, and why.

Off unless ``TWOTOWER_DEMO=1`` (on by default only in dev mode): it shows users' histories to whoever can reach
the port. The page (``static/demo.html``: plain HTML and a little JavaScript, no build step) calls the JSON API
the product serves: ``POST /v1/retrieve`` for the answer, so what the page shows is what a client gets, and
two read-only helpers here:

- ``GET /demo/info``: the served versions, the dataset's action and surface names, a few example user ids;
- ``GET /demo/user/{user_id}?n=20``: the user's last ``n`` events in the served dataset (item id, time, action
  names, surface) and what the feature store holds for them (found, snapshot and last-event time).
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from ..errors import RequestError, StoreError
from .deps import ServiceDep
from .histories import histories
from .schemas import json_response

router = APIRouter(include_in_schema=False)  # a page for people, not part of the documented API
EXAMPLE_USERS = 12


def page() -> str:
    """The page's HTML (read from the package on each call: small, and a dev-only route)."""
    return resources.files(__package__).joinpath("static/demo.html").read_text(encoding="utf-8")


@router.get("/demo", response_class=HTMLResponse)
async def demo_page() -> HTMLResponse:
    """The page."""
    return HTMLResponse(page())


@router.get("/demo/info")
async def demo_info(svc: ServiceDep) -> Response:
    """Versions, action and surface names, example users."""
    b = svc.retriever.bundle
    users: list[str] = []
    if b.data is not None:
        ids = b.data.user_ids()
        users = [str(u) for u in ids[: min(EXAMPLE_USERS, len(ids))].tolist()]
    return json_response(
        {
            "model_version": b.model_version,
            "index_version": b.index_version,
            "items": int(len(b.items.ids)),
            "actions": list(b.actions),
            "surfaces": list(b.surfaces),
            "example_users": users,
        }
    )


@router.get("/demo/user/{user_id}")
async def demo_user(svc: ServiceDep, user_id: str, n: Annotated[int, Query(ge=1, le=200)] = 20) -> Response:
    """The user's last ``n`` events in the served dataset and their feature-store state."""
    if not user_id or len(user_id) > 256:
        raise RequestError("user_id: 1-256 characters")
    b = svc.retriever.bundle
    total, events = await asyncio.to_thread(histories(b).last_events, user_id, n)
    try:
        found, snap, last = await asyncio.to_thread(svc.retriever.store.get_meta, [user_id], b.model_version)
        state: dict = {"found": bool(found[0]), "snapshot_ts": int(snap[0]), "last_event_ts": int(last[0])}
    except StoreError as exc:
        state = {"found": False, "error": f"feature store unavailable: {exc}"}
    return json_response(
        {"user_id": user_id, "events": total, "history": events, "state": state, "model_version": b.model_version}
    )
