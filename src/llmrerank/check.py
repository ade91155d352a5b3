"""Model checks: whether a ranker's model and prompt can give true scores, before a run relies on them.

Peers ship silently wrong scores: an answer token split in two, a truncation that cut the answer suffix, a
model that writes ``<think>`` where it should answer yes or no. Each check here returns a :class:`Check` (pass,
warn, fail or skip, a one-line detail and the values behind it).

Two kinds:

- **build checks** need no forward pass: the answer tokens are single, distinct tokens after the prompt; a chat
  template exists when the template asks for one; a long document is cut and the prompt's suffix survives.
  Every ranker runs them when it is built (``ranker.build_checks``) and a failed one raises
  :class:`ModelCheckError`, a ``ValueError`` naming the problem;
- **forward checks** run the model on a few built-in (query, relevant passage, unrelated passage) triples:
  the probability mass on the answer tokens, finite scores in the backend's dtype, a document scoring the
  same alone and in a batch, a valid permutation from the list methods, a relevant passage above an
  unrelated one.

:func:`check_model` runs both for a built ranker (``llmrerank check-model`` prints them). Each method gets the
checks that apply to it; the others are ``skip`` with the reason. This module takes rankers as values and
imports none of them, so the rankers can import it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .prompts import PromptTooLongError
from .types import Document

STATUSES = ("pass", "warn", "fail", "skip")

# The checks in the order they are reported.
NAMES = (
    "chat_template",
    "answer_tokens",
    "suffix",
    "target_tokens",
    "prompt_fits",
    "answer_mass",
    "finite",
    "batch_invariance",
    "permutation",
    "relevant_first",
)

MIN_MASS = 0.5  # below this share of probability on the answer tokens, the model is not answering in the format
BATCH_TOLERANCE = 1e-4  # score parity, absolute, in float32

# (query, a relevant passage, an unrelated passage): plain English, short, unambiguous.
PAIRS: tuple[tuple[str, str, str], ...] = (
    (
        "how do honey bees make honey",
        "Honey bees make honey from flower nectar: they store it in wax combs and fan it until it thickens.",
        "The cat sat on the mat by the door all afternoon.",
    ),
    (
        "why does a volcano erupt",
        "A volcano erupts when pressure from gas and molten rock below the crust pushes magma to the surface.",
        "Sourdough bread is made with flour, water, salt and a starter kept in the kitchen.",
    ),
    (
        "what makes sourdough bread rise",
        "Sourdough bread rises because the wild yeast in its starter makes carbon dioxide, which fills the dough.",
        "The stock market closed higher on Friday after a quiet week of trading.",
    ),
)

LONG_WORD = "honey"  # one token in any tokenizer we know; a long document repeats it past max_length


@dataclass(frozen=True)
class Check:
    """One check's outcome: its ``name``, ``status`` (pass, warn, fail or skip), a one-line ``detail``, and the
    ``values`` it measured (plain JSON data)."""

    name: str
    status: str
    detail: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown check status {self.status!r}: choose one of {', '.join(STATUSES)}")

    def to_dict(self) -> dict[str, Any]:
        """``{"name", "status", "detail", "values"}``, what ``check-model --json`` prints."""
        return {"name": self.name, "status": self.status, "detail": self.detail, "values": dict(self.values)}


class ModelCheckError(ValueError):
    """A build check failed: the ranker would give wrong scores with this model and prompt. ``checks`` holds the
    build checks run so far (the failed ones included); the message is the failures' details."""

    def __init__(self, checks: Sequence[Check]):
        self.checks = tuple(checks)
        super().__init__("; ".join(c.detail for c in self.checks if c.status == "fail"))


def raise_failures(checks: Sequence[Check]) -> None:
    """Raise :class:`ModelCheckError` if any of ``checks`` failed."""
    if any(c.status == "fail" for c in checks):
        raise ModelCheckError(checks)


def failed(checks: Sequence[Check]) -> bool:
    """Whether any of ``checks`` failed (``check-model`` then exits with status 1)."""
    return any(c.status == "fail" for c in checks)


# --- build checks (no forward pass) -------------------------------------------------------------------------


def chat_template_check(template: Any, tokenizer: Any) -> Check:
    """A template that asks for the model's chat template (``chat = true``, neither verbatim nor a text pair,
    which the renderer writes without one) needs a tokenizer that has one; otherwise the model would see a plain
    concatenation it was not prompted with."""
    name = getattr(template, "name", "custom")
    if getattr(template, "verbatim", False):
        return Check("chat_template", "pass", f"template {name!r} is verbatim: written as is, no chat template")
    if getattr(template, "text_pair", None) is not None:  # the renderer tokenises a text pair, never a chat
        return Check(
            "chat_template",
            "pass",
            f"template {name!r} is a text pair, tokenised as tokenizer(text, text_pair): no chat template",
        )
    if not getattr(template, "chat", False):
        return Check("chat_template", "pass", f"template {name!r} asks for no chat template (chat = false)")
    if getattr(tokenizer, "chat_template", None):
        return Check("chat_template", "pass", f"template {name!r} is written through the model's chat template")
    return Check(
        "chat_template",
        "fail",
        f"template {name!r} asks for the model's chat template (chat = true), but this tokenizer has none: use a "
        "model with a chat template (an instruct model), or a template with chat = false (a --prompt-file)",
    )


def answer_tokens_check(tokenizer: Any, words: Sequence[str], find: Callable[[], Sequence[int]]) -> Check:
    """The answer ``words`` as single, distinct tokens: ``find`` returns their ids or raises the ValueError that
    says why not (``rankers.pointwise.answer_token_ids`` or ``vocabulary_ids``)."""
    try:
        ids = [int(i) for i in find()]
    except ValueError as e:
        return Check("answer_tokens", "fail", str(e), {"words": list(words)})
    tokens = tokenizer.convert_ids_to_tokens(ids)
    shown = ", ".join(f"{w!r} -> {i} ({t!r})" for w, i, t in zip(words, ids, tokens))
    return Check(
        "answer_tokens",
        "pass",
        f"{shown}: single, distinct tokens",
        {"words": list(words), "ids": ids, "tokens": list(tokens)},
    )


def label_tokens_check(tokenizer: Any, labels: Sequence[str], find: Callable[[], tuple[str, Sequence[int]]]) -> Check:
    """The passage labels (pairwise/setwise) or identifiers (listwise FIRST) a ranker reads, as single, distinct
    tokens: ``find`` returns the opener written before them and their ids, or raises the ValueError that says why
    not. The ``answer_tokens`` line of a list method; its values hold ``opener`` and ``ids`` for the ranker."""
    try:
        opener, found = find()
    except ValueError as e:
        return Check("answer_tokens", "fail", str(e), {"words": list(labels)})
    ids = [int(i) for i in found]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    shown = [f"{opener + w!r} -> {i} ({t!r})" for w, i, t in zip(labels, ids, tokens)]
    if len(shown) > 4:  # a window of 20 identifiers: the first ones and the last (values hold them all)
        shown = [*shown[:3], "...", shown[-1]]
    return Check(
        "answer_tokens",
        "pass",
        f"{', '.join(shown)}: {len(ids)} single, distinct tokens",
        {"words": list(labels), "opener": opener, "ids": ids, "tokens": list(tokens)},
    )


def long_document(max_length: int) -> Document:
    """A document longer than ``max_length`` tokens."""
    return Document(" ".join([LONG_WORD] * (max_length + 1)))


def suffix_check(renderer: Any, query: str = PAIRS[0][0], appended: int = 0) -> Check:
    """A document longer than ``max_length`` is cut, and the rendered ids end with the template's suffix ids
    (the text after the document, the answer prefix included) within the template's length bound
    (``max_length``; under a family's pair budget, what its reference allows): a truncation never cuts the part
    of the prompt that asks for the answer. ``renderer`` is a ``PromptRenderer`` whose budget leaves room for
    ``appended`` tokens the ranker adds after the prompt (the dense head's EOS); they count in the totals."""
    max_length = renderer.max_length + appended
    try:
        parts = renderer.parts(query)
    except PromptTooLongError as e:
        return Check("suffix", "fail", str(e), {"max_length": max_length})
    doc_ids, cut = renderer.document_ids(long_document(max_length), parts)
    ids = [*parts.head, *doc_ids, *parts.tail]
    total = len(ids) + len(parts.target) + appended
    tail = list(parts.tail)
    limit = parts.fixed + renderer.document_budget(parts) + appended  # max_length, unless a pair budget allows more
    values = {
        "max_length": max_length,
        "limit": limit,
        "prompt_tokens": total,
        "suffix_tokens": len(tail),
        "document_cut": cut,
        "suffix": renderer.tokenizer.decode(tail) if tail else "",
    }
    if ids[len(ids) - len(tail) :] != tail or total > limit:
        return Check("suffix", "fail", f"a long document's prompt ({total} tokens) lost its suffix", values)
    how = "is cut" if cut else "is not cut (it fits)"
    return Check(
        "suffix",
        "pass",
        f"a long document {how} to {total} tokens within {limit} (max_length={max_length}); the prompt "
        f"still ends with its {len(tail)}-token suffix {values['suffix']!r}",
        values,
    )


# --- forward checks -----------------------------------------------------------------------------------------


def _token(tokenizer: Any, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _dtype(ranker: Any) -> str:
    return str(getattr(ranker.backend, "dtype", "float32"))


def _answer_mass(ranker: Any, pairs: Sequence[tuple[str, str, str]], min_mass: float) -> Check:
    """The probability the model puts on the answer tokens at the answer position (softmax over the whole
    vocabulary), and the token it most likely writes instead. Below ``min_mass``: a warning, or a failure for a
    named family, whose model must answer in its format."""
    prompts = [e.prompt for q, rel, unrel in pairs for e in ranker.encode(q, [rel, unrel])]
    logits = ranker.backend.last_logits(prompts).double()
    if not bool(torch.isfinite(logits).all()):
        return Check("answer_mass", "fail", f"the logits at the answer position are not finite in {_dtype(ranker)}")
    probs = torch.softmax(logits, dim=-1)
    answer = [ranker.yes_id, ranker.no_id]
    mass = probs[:, answer].sum(-1)
    others = probs.clone()
    others[:, answer] = -1.0
    instead_ids = others.argmax(-1).tolist()
    instead, _ = Counter(instead_ids).most_common(1)[0]
    p_instead = float(probs[:, instead].mean())
    tok = ranker.backend.tokenizer
    family = getattr(ranker.options, "family", None)
    low, mean = float(mass.min()), float(mass.mean())
    values = {
        "mass": [float(m) for m in mass],
        "min": low,
        "mean": mean,
        "threshold": min_mass,
        "instead": {"id": instead, "token": _token(tok, instead), "probability": p_instead},
    }
    detail = (
        f"P(answer tokens) at the answer position: min {low:.3f}, mean {mean:.3f} over {len(prompts)} prompts; "
        f"the likeliest other token is {_token(tok, instead)!r} (p={p_instead:.3f})"
    )
    if low >= min_mass:
        return Check("answer_mass", "pass", detail, values)
    if family is not None:
        return Check(
            "answer_mass",
            "fail",
            f"{detail}: below {min_mass}, so this model does not answer in the format of family {family!r}",
            values,
        )
    return Check(
        "answer_mass",
        "warn",
        f"{detail}: below {min_mass}, so the model mostly writes something else (an untrained model, or one that "
        "thinks first); the scores may mean little",
        values,
    )


def _target_tokens(ranker: Any, pairs: Sequence[tuple[str, str, str]]) -> Check:
    """Query likelihood: each query has target tokens, scored after the prompt."""
    counts = [len(ranker.renderer.parts(q).target) for q, _, _ in pairs]
    values = {"target_tokens": counts}
    if min(counts) < 1:
        return Check("target_tokens", "fail", "a query has no target tokens", values)
    shown = ", ".join(map(str, counts))
    return Check("target_tokens", "pass", f"each query is the target: {shown} tokens scored after the prompt", values)


def _point_scores(ranker: Any, pairs: Sequence[tuple[str, str, str]]) -> list[Check]:
    """finite, batch_invariance and relevant_first for a ranker that scores each document alone."""
    items = [e for q, rel, unrel in pairs for e in ranker.encode(q, [rel, unrel])]
    items += ranker.encode(pairs[0][0], [long_document(ranker.renderer.max_length)])
    dtype = _dtype(ranker)
    together = ranker.score_encoded(items).detach().double()
    finite = torch.isfinite(together)
    # NaN and inf as strings ("nan", "inf"), which JSON can hold
    values = {"dtype": dtype, "scores": [x if math.isfinite(x) else str(x) for x in together.tolist()]}
    if not bool(finite.all()):
        bad = int((~finite).sum())
        checks = [Check("finite", "fail", f"{bad} of {len(items)} scores are NaN or inf in {dtype}", values)]
        reason = "the scores are not finite"
        return checks + [Check(n, "skip", reason) for n in ("batch_invariance", "relevant_first")]
    low, high = float(together.min()), float(together.max())
    checks = [Check("finite", "pass", f"{len(items)} scores finite in {dtype}, from {low:.4g} to {high:.4g}", values)]

    alone = torch.cat([ranker.score_encoded([e]).detach().double() for e in items])
    diff = float((together - alone).abs().max())
    batch = getattr(ranker.backend, "batch_size", None)
    values = {"max_difference": diff, "tolerance": BATCH_TOLERANCE, "dtype": dtype, "batch_size": batch}
    detail = f"{len(items)} documents scored alone and in batches of {batch}: max difference {diff:.2e}"
    if diff <= BATCH_TOLERANCE:
        checks.append(Check("batch_invariance", "pass", f"{detail} (within {BATCH_TOLERANCE:g})", values))
    elif dtype == "float32":
        checks.append(Check("batch_invariance", "fail", f"{detail}, above {BATCH_TOLERANCE:g} in float32", values))
    else:
        checks.append(
            Check("batch_invariance", "warn", f"{detail}, above {BATCH_TOLERANCE:g} (expected in {dtype})", values)
        )

    pair_scores = together[: 2 * len(pairs)].view(len(pairs), 2)
    wins = [bool(s[0] > s[1]) for s in pair_scores]
    values = {"relevant": pair_scores[:, 0].tolist(), "unrelated": pair_scores[:, 1].tolist(), "wins": wins}
    checks.append(_relevant(sum(wins), len(pairs), values))
    return checks


def _relevant(wins: int, n: int, values: Mapping[str, Any]) -> Check:
    if wins == n:
        return Check("relevant_first", "pass", f"the relevant passage comes first in {wins} of {n} pairs", values)
    return Check(
        "relevant_first",
        "warn",
        f"the relevant passage comes first in only {wins} of {n} pairs: this model may rank poorly with this prompt",
        values,
    )


def _candidates(pairs: Sequence[tuple[str, str, str]], i: int) -> list[str]:
    """Query ``i``'s list for the list methods: its unrelated passage first, the other queries' relevant
    passages, its relevant passage last (so that keeping the input order fails ``relevant_first``)."""
    others = [rel for j, (_, rel, _) in enumerate(pairs) if j != i]
    return [pairs[i][2], *others, pairs[i][1]]


def _list_checks(ranker: Any, pairs: Sequence[tuple[str, str, str]]) -> list[Check]:
    """prompt_fits, finite, permutation and relevant_first for a method that orders a whole list."""
    generates = getattr(ranker.options, "decoding", None) == "generate"
    dtype = _dtype(ranker)
    checks = []
    max_length = ranker.options.max_length
    try:
        fit = ranker.rank(pairs[0][0], [long_document(max_length), pairs[0][1], pairs[0][2]])
        cut = int(fit.metadata.get("truncated", 0))
        checks.append(
            Check(
                "prompt_fits",
                "pass",
                f"a list with a passage longer than max_length={max_length} fits: {cut} passage(s) cut",
                {"max_length": max_length, "truncated": cut},
            )
        )
    except PromptTooLongError as e:
        checks.append(Check("prompt_fits", "fail", str(e), {"max_length": max_length}))

    lists = [_candidates(pairs, i) for i in range(len(pairs))]
    try:
        rankings = ranker.rank_many([q for q, _, _ in pairs], lists)
    except FloatingPointError as e:
        checks.append(Check("finite", "fail", str(e), {"dtype": dtype}))
        return checks + [Check(n, "skip", "the run failed") for n in ("permutation", "relevant_first")]
    except PromptTooLongError as e:
        return checks + [Check(n, "skip", f"the run failed: {e}") for n in ("finite", "permutation", "relevant_first")]
    if generates:
        checks.append(Check("finite", "skip", "listwise generation writes an order, not scores"))
    else:
        checks.append(Check("finite", "pass", f"the logits the method reads are finite in {dtype}", {"dtype": dtype}))

    orders = [list(r.indices) for r in rankings]
    valid = all(sorted(o) == list(range(len(c))) for o, c in zip(orders, lists))
    repairs = sum(int(r.metadata.get("repairs", 0)) for r in rankings)
    values = {"orders": orders, "repairs": repairs}
    if not valid:
        checks.append(Check("permutation", "fail", "a run did not give a permutation of its list", values))
    elif repairs:
        checks.append(
            Check(
                "permutation",
                "warn",
                f"valid orders of {len(pairs)} lists, but the model's answers needed {repairs} repair(s) (identifiers "
                "missing, repeated or unknown): it does not write this format reliably",
                values,
            )
        )
    else:
        checks.append(Check("permutation", "pass", f"valid orders of {len(pairs)} lists of {len(lists[0])}", values))

    last = len(lists[0]) - 1  # the relevant passage's index; the unrelated one is 0
    wins = [o.index(last) < o.index(0) for o in orders]
    checks.append(_relevant(sum(wins), len(pairs), {"orders": orders, "wins": wins}))
    return checks


# --- which checks apply -------------------------------------------------------------------------------------


def _scores_alone(ranker: Any) -> bool:
    return hasattr(ranker, "score_encoded") and hasattr(ranker, "encode")


def _reads_answer_tokens(ranker: Any) -> bool:
    return ranker.method == "pointwise" and getattr(ranker.options, "head", "tokens") == "tokens"


def _no_answer_tokens(ranker: Any) -> str:
    """Why the answer-token checks do not apply to ``ranker``."""
    o = ranker.options
    if ranker.method == "pointwise":
        return "the dense head reads the final hidden state, not answer tokens"
    if ranker.method == "likelihood":
        return "query likelihood scores the query's own tokens, not answer tokens"
    if ranker.method == "listwise" and getattr(o, "decoding", None) == "first":
        return "FIRST reads the first identifier's logits: no probability mass on two answer tokens to check"
    if ranker.method == "listwise":
        return "listwise generation writes a permutation, not an answer token"
    if ranker.method in ("pairwise", "setwise"):
        return f"{ranker.method} compares its label tokens' logits: no yes/no mass to check"
    return f"{ranker.method} reads no answer tokens"


def complete(checks: Sequence[Check], reason: str) -> list[Check]:
    """``checks`` in report order, with a skip (``reason``) for each check name they lack."""
    by_name = {c.name: c for c in checks}
    extra = [c for c in checks if c.name not in NAMES]
    return [by_name.get(n) or Check(n, "skip", reason) for n in NAMES] + extra


def check_model(
    ranker: Any, *, min_mass: float = MIN_MASS, pairs: Sequence[tuple[str, str, str]] = PAIRS
) -> list[Check]:
    """Every check that applies to ``ranker`` (a built ranker), in report order; the rest are ``skip`` lines
    saying why.

    The build checks come from ``ranker.build_checks`` (run when it was built); the forward checks run the model
    on ``pairs``, (query, relevant passage, unrelated passage) triples. ``min_mass`` is the share of probability
    on the answer tokens below which ``answer_mass`` warns (fails for a named family).

    Example::

        from llmrerank import Reranker
        from llmrerank.check import check_model

        for c in check_model(Reranker("pointwise", model="smollm2-135m")):
            print(c.status, c.name, c.detail)
    """
    if not 0 <= min_mass <= 1:
        raise ValueError(f"min_mass must be from 0 to 1, got {min_mass}")
    pairs = [tuple(p) for p in pairs]
    if not pairs or any(len(p) != 3 or not all(isinstance(x, str) for x in p) for p in pairs):
        raise ValueError("pairs must be (query, relevant passage, unrelated passage) triples of str")
    checks = list(getattr(ranker, "build_checks", ()))
    if _reads_answer_tokens(ranker):
        checks.append(_answer_mass(ranker, pairs, min_mass))
    else:
        reason = _no_answer_tokens(ranker)
        if not any(c.name == "answer_tokens" for c in checks):  # a list method's labels are a build check
            checks.append(Check("answer_tokens", "skip", reason))
        checks.append(Check("answer_mass", "skip", reason))
    if ranker.method != "likelihood":
        checks.append(Check("target_tokens", "skip", "only query likelihood scores target tokens"))
    if _scores_alone(ranker):
        if ranker.method == "likelihood":
            checks.append(_target_tokens(ranker, pairs))
        checks.append(Check("prompt_fits", "skip", "one document a prompt: see suffix"))
        checks.append(Check("permutation", "skip", "scores each document alone; its order sorts the scores"))
        try:
            checks += _point_scores(ranker, pairs)
        except (ValueError, FloatingPointError) as e:  # e.g. an untrained dense head refuses to score
            checks.append(Check("finite", "fail", f"scoring failed: {e}"))
    else:
        checks.append(Check("suffix", "skip", "a prompt of several passages: see prompt_fits"))
        checks.append(Check("batch_invariance", "skip", "orders a whole list; a document has no score of its own"))
        checks += _list_checks(ranker, pairs)
    return complete(checks, "not run")
