"""First-stage retrieval: BM25 over a corpus with bm25s, producing a run to rerank."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np

from llmrerank.types import Document

Run = dict[str, list[tuple[str, float]]]


def _make_stemmer(name: str | None):  # -> Stemmer.Stemmer | None
    if name is None:
        return None
    import Stemmer

    available = Stemmer.algorithms()
    if name not in available:
        raise ValueError(f"unknown stemmer {name!r}; PyStemmer knows: {', '.join(available)} (or None)")
    return Stemmer.Stemmer(name)


def _number(value: object) -> bool:
    """A real number that is not a bool (numpy scalars included)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def _doc_text(doc: Document) -> str:
    return f"{doc.title} {doc.text}" if doc.title else doc.text


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first; equal scores in index (corpus) order."""
    if k < len(scores):
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero(scores >= threshold)
    else:
        candidates = np.arange(len(scores))
    # lexsort: last key is primary -> score descending, then index ascending
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order][:k]


def bm25_search(
    corpus: Mapping[str, Document],
    queries: Mapping[str, str],
    top_k: int = 100,
    k1: float = 0.9,
    b: float = 0.4,
    stemmer: str | None = "english",
    show_progress: bool = True,
    stopwords: str | None = "english",
) -> Run:
    """Retrieve the BM25 top ``top_k`` documents of each query, with bm25s (Lucene BM25 variant).

    Documents are indexed as ``"title text"``. Text is lower-cased, split on word characters, English
    stopwords removed and tokens stemmed with PyStemmer (``stemmer=None`` turns stemming off; any
    name of ``Stemmer.algorithms()`` picks another language).

    Args:
        corpus: ``{doc_id: Document}``, e.g. from :func:`llmrerank.data.load_corpus`.
        queries: ``{query_id: text}``.
        top_k: documents kept per query, capped at the corpus size. Every query gets that many, documents
            that share no term with it scoring 0 at the tail.
        k1, b: BM25 parameters (0.9 and 0.4 are the Anserini defaults).
        stemmer: a PyStemmer algorithm name, or None.
        show_progress: show bm25s progress bars.
        stopwords: a bm25s stopword list name (e.g. ``"english"``), or None to keep every token.

    Returns:
        ``{query_id: [(doc_id, score), ...]}`` best first, queries in input order. Equal scores are
        ordered by corpus order, so the result is deterministic.

    Raises:
        ValueError: an unknown stemmer, ``top_k`` not a positive int, ``k1`` not a finite number >= 0, ``b``
            outside [0, 1], or an empty corpus.

    Example:
        >>> from llmrerank.data import load_beir, sample_path
        >>> ds = load_beir(sample_path())
        >>> run = bm25_search(ds.corpus, ds.queries, top_k=10, show_progress=False)
    """
    import bm25s

    if not isinstance(top_k, Integral) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"bm25_search: top_k must be a positive integer, got {type(top_k).__name__} {top_k!r}")
    if not _number(k1) or not (math.isfinite(k1) and k1 >= 0):
        raise ValueError(f"bm25_search: k1 must be a finite number >= 0, got {type(k1).__name__} {k1!r}")
    if not _number(b) or not 0 <= b <= 1:
        raise ValueError(f"bm25_search: b must be a number in [0, 1], got {type(b).__name__} {b!r}")
    if not corpus:
        raise ValueError("the corpus is empty: nothing to retrieve")
    stem = _make_stemmer(stemmer)
    doc_ids = list(corpus)
    k = min(top_k, len(doc_ids))

    corpus_tokens = bm25s.tokenize(
        [_doc_text(corpus[d]) for d in doc_ids], stopwords=stopwords, stemmer=stem, show_progress=show_progress
    )
    model = bm25s.BM25(k1=k1, b=b, method="lucene")
    model.index(corpus_tokens, show_progress=show_progress)

    query_ids = list(queries)
    query_tokens = bm25s.tokenize(
        [queries[q] for q in query_ids],
        stopwords=stopwords,
        stemmer=stem,
        return_ids=False,
        show_progress=show_progress,
    )
    run: Run = {}
    for qid, tokens in zip(query_ids, query_tokens):
        # tokens absent from the index vocabulary cannot match; a query left with none scores 0 everywhere
        token_ids = model.get_tokens_ids(tokens)
        if token_ids:
            scores = np.asarray(model.get_scores(token_ids), dtype=np.float64)
        else:
            scores = np.zeros(len(doc_ids), dtype=np.float64)
        run[qid] = [(doc_ids[i], float(scores[i])) for i in _top_k(scores, k)]
    return run
