"""ANN indexes: one interface, exact / FAISS HNSW / IVF-Flat / IVF-PQ backends, versioned publishing."""

from .base import IndexConfig, IndexError_, VersionMismatch
from .vector_index import VectorIndex

__all__ = ["IndexConfig", "IndexError_", "VectorIndex", "VersionMismatch"]
