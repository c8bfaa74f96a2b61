"""ANN indexes: one interface, exact / FAISS HNSW / IVF-Flat / IVF-PQ backends, versioned publishing."""

from ..errors import IndexError_, VersionMismatch
from .base import IndexConfig
from .faiss_backend import set_faiss_threads
from .vector_index import VectorIndex

__all__ = ["IndexConfig", "IndexError_", "VectorIndex", "VersionMismatch", "set_faiss_threads"]
