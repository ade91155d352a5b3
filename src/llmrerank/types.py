"""Plain, immutable values that flow through the library."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(frozen=True)
class Document:
    """A candidate document: its text, and optionally an id and a title."""

    text: str
    id: str | None = None
    title: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"Document.text must be a str, got {type(self.text).__name__}")
        if self.id is not None and not isinstance(self.id, str):
            raise TypeError(f"Document.id must be a str or None, got {type(self.id).__name__}")
        if self.title is not None and not isinstance(self.title, str):
            raise TypeError(f"Document.title must be a str or None, got {type(self.title).__name__}")


DocLike = Union[str, Document]


def as_document(doc: DocLike, position: int | None = None) -> Document:
    """Turn a str or a Document into a Document; anything else is a TypeError naming its position."""
    if isinstance(doc, Document):
        return doc
    if isinstance(doc, str):
        return Document(text=doc)
    where = f" at position {position}" if position is not None else ""
    raise TypeError(f"a document must be a str or llmrerank.Document, got {type(doc).__name__}{where}")


def as_documents(docs: Sequence[DocLike], what: str = "docs") -> list[Document]:
    """A sequence (list, tuple, ...) of str or Document as Documents, in its order. Refused, naming ``what``: a
    single string, a mapping (its keys would be ranked), a set (it has no order) and anything else that is not a
    sequence, such as a generator."""
    if isinstance(docs, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of documents, not a single string")
    if isinstance(docs, Mapping):
        raise TypeError(
            f"{what} must be a sequence of documents, got a {type(docs).__name__} (its keys would be ranked): "
            "pass a list of documents, e.g. list(d.values())"
        )
    if isinstance(docs, AbstractSet):
        raise TypeError(
            f"{what} must be a sequence of documents, got a {type(docs).__name__}, which has no order: "
            "pass a list (sorted as you mean it)"
        )
    if not is_sequence(docs):
        kind = type(docs).__name__
        raise TypeError(f"{what} must be a sequence of documents (a list or tuple), got {kind}: pass list({what})")
    return [as_document(d, i) for i, d in enumerate(docs)]


def is_sequence(value: Any) -> bool:
    """Whether ``value`` is ordered and indexable: a :class:`~collections.abc.Sequence`, or an array-like with
    ``__len__`` and ``__getitem__`` (a numpy array), but not a mapping."""
    if isinstance(value, Sequence):
        return True
    return not isinstance(value, Mapping) and hasattr(value, "__len__") and hasattr(value, "__getitem__")


@dataclass(frozen=True)
class Ranking:
    """An order over the input documents, best first.

    ``indices[i]`` is the input position of the document at rank ``i``; ``scores[i]`` its score (higher is
    more relevant); ``ids[i]`` its id when every input document carried one. ``metadata`` holds per-query
    accounting (e.g. tokens processed).
    """

    indices: tuple[int, ...]
    scores: tuple[float, ...]
    ids: tuple[str, ...] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)


def make_ranking(
    order: Sequence[int],
    docs: Sequence[Document],
    scores: Sequence[float] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Ranking:
    """The one way a Ranking is built: ``docs`` in ``order`` (input positions, best first), with ``scores``
    aligned to ``order`` (default ``n - rank``, strictly decreasing), and ids when every document has one."""
    n = len(order)
    ids = None
    if docs and all(d.id is not None for d in docs):
        ids = tuple(docs[i].id for i in order)  # type: ignore[misc]
    values = tuple(float(s) for s in scores) if scores is not None else tuple(float(n - r) for r in range(n))
    return Ranking(indices=tuple(order), scores=values, ids=ids, metadata=dict(metadata or {}))


def ranking_from_scores(
    scores: Sequence[float], docs: Sequence[Document], metadata: Mapping[str, Any] | None = None
) -> Ranking:
    """Sort by score, descending; equal scores keep their input order (a stable sort)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    return make_ranking(order, docs, [scores[i] for i in order], metadata)
