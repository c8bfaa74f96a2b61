"""The online retrieval service, laid out by concern:

* :mod:`.app` builds the FastAPI app (``create_app``, ``app_from_env``); :mod:`.routes` are the HTTP routes,
  :mod:`.deps` their dependencies, :mod:`.errors` the exception handlers, :mod:`.schemas` the wire format;
* :mod:`.service` is the lifecycle (start, hot reload across workers, readiness, stop);
* :mod:`.engine` is the request path (lookup -> head -> search), :mod:`.health` the feature store's health,
  :mod:`.context` turns a request into the head's inputs, :mod:`.head` is the online head as served;
* :mod:`.bundle` loads one served version (:mod:`.items`: the item tables and filter index).

Serve an artifact root with ``twotower serve --artifacts ROOT``; assemble one from a trained hybrid run with
``twotower serve-prepare --run RUN --artifacts ROOT`` (:mod:`twotower.jobs.serving`). Nothing heavy is imported
here: ``from twotower.serve import ServeSettings`` does not load torch.
"""

from ..errors import ArtifactError, UnsafeSettings
from .settings import ServeSettings

__all__ = ["ArtifactError", "ServeSettings", "UnsafeSettings"]
