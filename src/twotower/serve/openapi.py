"""The OpenAPI schema a running service serves: the static request schemas narrowed to what the served version
accepts, so that a request the schema allows is never refused for a name the served dataset does not know.

Which action names and item-feature columns are valid depends on the served dataset, and a hot reload may
change them, so the pydantic models (:mod:`.schemas`) cannot say it; :mod:`.context` refuses unknown names with
a 422 that lists the known ones. The schema served at ``/openapi.json`` says it too: ``Event.actions`` items are
an enum of the served model's action names, ``Filters.item_features`` keys an enum of its item-feature columns
(when the dataset records them), ``RetrieveRequest.shortlist`` exists only over an adaptive (Matryoshka)
index, and ``BatchRequest.requests`` has the configured ``max_batch_requests`` as its ``maxItems``. It is
rebuilt when the served version changes. Before the first bundle is loaded (and in an app never started) the
fields stay open strings, and the 422 is documented with what it refuses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

if TYPE_CHECKING:
    from .bundle import Bundle
    from .service import Service


def narrow_schema(base: dict, bundle: Bundle | None, max_batch_requests: int) -> dict:
    """A copy of the OpenAPI schema ``base`` with the served vocabularies of ``bundle`` (see the module)."""
    schema = copy.deepcopy(base)
    components = schema["components"]["schemas"]
    requests = components["BatchRequest"]["properties"]["requests"]
    requests["maxItems"] = min(requests.get("maxItems", max_batch_requests), max_batch_requests)
    if bundle is None:
        return schema
    actions = components["Event"]["properties"]["actions"]
    actions["items"]["enum"] = sorted(bundle.actions, key=bundle.actions.get)
    if not bundle.actions:  # a model without actions: only the empty list is valid
        del actions["items"]["enum"]
        actions["maxItems"] = 0
    if not hasattr(bundle.index, "prefix_dim"):  # a full-width index has no shortlist to choose
        request = components["RetrieveRequest"]
        request["properties"].pop("shortlist", None)
        if "shortlist" in request.get("required", []):
            request["required"].remove("shortlist")
    columns = bundle.items.features.columns
    if columns is not None:
        obj = next(
            s for s in components["Filters"]["properties"]["item_features"]["anyOf"] if s.get("type") == "object"
        )
        if columns:
            obj["propertyNames"]["enum"] = sorted(columns)
        else:  # a dataset without item features: only the empty filter is valid
            obj["maxProperties"] = 0
    return schema


def served_openapi(app: FastAPI, service: Service) -> Callable[[], dict]:
    """``app.openapi``: the schema narrowed to the version ``service`` serves now, rebuilt when it changes."""
    cache: dict[tuple[str, str] | None, dict] = {}

    def openapi() -> dict:
        retriever = service.retriever
        bundle = retriever.bundle if retriever is not None else None
        key = (bundle.model_version, bundle.index_version) if bundle is not None else None
        if key not in cache:
            base = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            cache.clear()  # only the served version's schema is kept
            cache[key] = narrow_schema(base, bundle, service.settings.max_batch_requests)
        return cache[key]

    return openapi
