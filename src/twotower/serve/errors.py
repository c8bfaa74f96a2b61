"""Exception handlers: every error answer is ``{"error": ..., "detail": [...]}`` with a message that says what
to change.

* request validation (pydantic) -> 422 naming the fields, 415 for a body sent without a JSON content type,
  422 with line and column for a body that is not JSON;
* a body the JSON parser cannot read at all (FastAPI's undocumented 400): invalid UTF-8 -> 422 naming the byte
  and its position, nesting too deep for the parser -> 422 saying so;
* :class:`~twotower.errors.RequestError` (valid JSON that cannot be served as is) -> 422;
* :class:`~.service.ReloadRefused` (a reload running, or an unloadable version) -> 409;
* ``HTTPException`` (401/403 from the admin check, 404, 405, ...) -> its status and detail.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import RequestError
from .schemas import json_response
from .service import ReloadRefused


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json`` (what FastAPI parses as JSON), parameters ignored."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _json_position(doc: str | bytes, pos: int) -> tuple[int, int]:
    """1-based (line, column) of character ``pos`` in ``doc``."""
    doc = doc.decode("utf-8", "replace") if isinstance(doc, bytes) else str(doc)
    line = doc.count("\n", 0, pos) + 1
    return line, pos - (doc.rfind("\n", 0, pos) + 1) + 1


def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """415 for a body FastAPI did not parse as JSON, 422 with the position of a JSON syntax error, else 422
    naming (up to three of) the invalid fields."""
    errors = exc.errors()
    content_type = request.headers.get("content-type")
    if any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors) and not _is_json(content_type):
        # FastAPI does not parse a body without a JSON content type, then reports "not a valid dictionary"
        got = f"got {content_type[:100]!r}" if content_type else "the request has none"
        msg = f"send the body as JSON with the header Content-Type: application/json ({got})"
        return json_response({"error": msg}, 415)
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:  # its loc is ("body", character offset): say where instead of naming a field "22"
        loc = tuple(bad_json.get("loc", ()))
        pos = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else 0
        line, col = _json_position(exc.body or "", pos)
        reason = (bad_json.get("ctx") or {}).get("error", "JSON decode error")
        msg = (
            f"the body is not valid JSON: {reason} at line {line} column {col} (character {pos}); send one JSON object"
        )
        return json_response({"error": msg, "detail": [{"loc": "body", "msg": msg, "type": "json_invalid"}]}, 422)
    detail = [
        {"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors
    ]
    summary = "; ".join(f"{d['loc']}: {d['msg']}" for d in detail[:3]) + (" ..." if len(detail) > 3 else "")
    return json_response({"error": f"invalid request, change {summary}", "detail": detail}, 422)


def _unreadable_body(cause: BaseException) -> str:
    """What to change about a body ``json.loads`` raised ``cause`` on (not a :class:`json.JSONDecodeError`)."""
    if isinstance(cause, UnicodeDecodeError):
        byte = cause.object[cause.start : cause.start + 1].hex()
        encoding = "UTF-8" if cause.encoding.replace("-", "").lower() == "utf8" else cause.encoding
        return (
            f"the body is not valid {encoding}: byte 0x{byte} at position {cause.start} ({cause.reason}); "
            "send JSON encoded as UTF-8"
        )
    if isinstance(cause, RecursionError):
        return "the body is JSON nested too deeply to parse; requests nest a few levels, send one JSON object"
    return f"the body could not be read as JSON ({type(cause).__name__}); send one JSON object encoded as UTF-8"


def http_error(_: Request, exc: StarletteHTTPException) -> Response:
    """The exception's status and detail as ``{"error": ...}``, with its headers (``WWW-Authenticate``).

    FastAPI answers a body ``json.loads`` fails on other than with a JSON syntax error (invalid UTF-8, nesting
    deeper than the parser's recursion limit) with a bare 400 "There was an error parsing the body", raised
    from the parser's exception: that becomes a 422 saying what to change, like every other unreadable body."""
    if exc.status_code == 400 and exc.__cause__ is not None:
        msg = _unreadable_body(exc.__cause__)
        return json_response({"error": msg, "detail": [{"loc": "body", "msg": msg, "type": "json_invalid"}]}, 422)
    resp = json_response({"error": str(exc.detail)}, exc.status_code)
    for k, v in (exc.headers or {}).items():
        resp.headers[k] = v
    return resp


def request_error(_: Request, exc: RequestError) -> Response:
    """422 with the message (it names what to change)."""
    return json_response({"error": str(exc)}, 422)


def reload_refused(_: Request, exc: ReloadRefused) -> Response:
    """409: the reload did not happen and the current version keeps serving; the message says why."""
    return json_response({"error": str(exc)}, 409)


def add_error_handlers(app: FastAPI) -> None:
    """Install the handlers above on ``app``."""
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestError, request_error)
    app.add_exception_handler(ReloadRefused, reload_refused)
