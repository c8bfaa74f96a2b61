"""The online retrieval service: settings, schemas, the request path, micro-batching, the FastAPI app.

Serve an artifact root (layout in :mod:`twotower.serve.artifacts`) with ``twotower serve --artifacts ROOT``;
assemble one from a trained hybrid run with ``twotower serve-prepare --run RUN --artifacts ROOT``.
"""

from ..errors import ArtifactError, UnsafeSettings
from .artifacts import Bundle, build_artifacts, load_bundle
from .settings import ServeSettings

__all__ = ["ArtifactError", "Bundle", "ServeSettings", "UnsafeSettings", "build_artifacts", "load_bundle"]
