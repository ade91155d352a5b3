"""llmrerank: rerank documents with decoder-only LLMs."""

from .registry import METHODS, Reranker
from .types import Document, Ranking

__version__ = "0.1.0"

__all__ = ["METHODS", "Document", "Ranking", "Reranker", "__version__"]
