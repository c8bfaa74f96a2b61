"""Request body size limit as pure ASGI middleware: 413 before any JSON parsing or validation.

A declared ``Content-Length`` over the limit is refused without reading the body. A body without one
(chunked) is read up to the limit and refused as soon as it goes over; otherwise it is replayed to the app.
"""

from __future__ import annotations

import json


class BodySizeLimit:
    """Refuse request bodies larger than ``max_bytes`` with 413 and a message naming the setting."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _refuse(self, send, got: str) -> None:
        body = json.dumps(
            {
                "error": f"request body is {got}, the limit is {self.max_bytes} bytes; send fewer ids or events "
                "(or split a batch), or raise TWOTOWER_MAX_BODY_BYTES on the server"
            }
        ).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, f"{declared} bytes")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send, f"over {self.max_bytes} bytes (chunked)")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replay_body(b"".join(chunks), receive), send)


def replay_body(body: bytes, receive):
    """An ASGI ``receive`` that yields the already-read ``body`` once, then defers to ``receive``."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: wait for the disconnect as usual

    return replay
