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

import numpy as np
from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, Response

from ..errors import RequestError, StoreError
from .bundle import Bundle
from .deps import ServiceDep
from .schemas import json_response

router = APIRouter(include_in_schema=False)  # a page for people, not part of the documented API
EXAMPLE_USERS = 12


def page() -> str:
    """The page's HTML (read from the package on each call: small, and a dev-only route)."""
    return resources.files(__package__).joinpath("static/demo.html").read_text(encoding="utf-8")


class UserHistories:
    """User id -> the user's events in the served dataset; the id table is built on first use, per bundle."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._rows: dict[str, int] | None = None

    def row(self, user_id: str) -> int:
        """The user's dense index, -1 when the served dataset does not know them."""
        if self._rows is None:
            data = self.bundle.data
            ids = data.user_ids() if data is not None else np.zeros(0, object)
            self._rows = {str(u): i for i, u in enumerate(ids.tolist())}
        return self._rows.get(user_id, -1)

    def last_events(self, user_id: str, n: int) -> tuple[int, list[dict]]:
        """(events the dataset holds for the user, their last ``n`` as JSON dicts, oldest first)."""
        data, row = self.bundle.data, self.row(user_id)
        if data is None or row < 0:
            return 0, []
        lo, hi = int(data.user_offsets[row]), int(data.user_offsets[row + 1])
        start = max(lo, hi - n)
        names = list(data.manifest.get("actions", []))
        surfaces = ["", *data.manifest.get("surfaces", [])]
        items = self.bundle.items.ids
        out = []
        for e in range(start, hi):
            bits = int(data.event_actions[e])
            surface = int(data.event_surface[e])
            out.append(
                {
                    "item_id": str(items[int(data.event_item[e])]),
                    "timestamp": int(data.event_ts[e]),
                    "actions": [a for i, a in enumerate(names) if bits >> i & 1],
                    "surface": surfaces[surface] if 0 < surface < len(surfaces) else None,
                }
            )
        return hi - lo, out


_histories: dict[int, UserHistories] = {}


def histories(bundle: Bundle) -> UserHistories:
    """The :class:`UserHistories` of ``bundle`` (a reload makes a new one; the old one is dropped)."""
    key = id(bundle)
    if key not in _histories:
        _histories.clear()
        _histories[key] = UserHistories(bundle)
    return _histories[key]


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
