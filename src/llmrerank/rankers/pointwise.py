"""Pointwise scoring: each (query, document) prompt gets a score from one forward pass.

Two heads read the model's output at the last position:

``head="tokens"`` (default) uses the next-token logits of two fixed answer tokens (yes/no, true/false, ...).
With z_yes and z_no their logits, the ranker's logit is s = z_yes - z_no. Normalisations of the score:

- ``pair_softmax`` (default): log P(yes | {yes, no}) = log sigmoid(s);
- ``vocab_softmax``: log P(yes) with the softmax over the whole vocabulary;
- ``yes_logit``: the raw z_yes;
- ``logit``: s itself (ranks as ``pair_softmax`` does; what training optimises).

``head="dense"`` (RankLLaMA style) appends the EOS token to the prompt and maps the final hidden state there
to a score with a linear layer. The layer is learnt (``llmrerank train``), or read from a published peft adapter
(``adapter``: RankLLaMA's LoRA, merged into the model, and its ``score`` layer); an untrained one refuses to rank.

References: monoT5 (Nogueira et al., 2020, "Document Ranking with a Pretrained Sequence-to-Sequence Model");
Qin et al. / Zhuang et al. (2023) on relevance generation with LLMs; BGE's LLM rerankers (yes-token logit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..backends.base import Backend
from ..check import answer_tokens_check, raise_failures
from ..options import Options, option, template_option
from ..prompts import (
    TRUE_FALSE,
    YES_NO,
    PromptParts,
    continuation_ids,
    encode,
    word_openers,
)
from ..prompts.families import family_names, get_family
from ..prompts.pointwise import INSTRUCTION_SLOT
from ..types import DocLike, Document, Ranking
from .base import Encoded, PointScorer, check_finite

NORMALISATIONS = ("pair_softmax", "vocab_softmax", "yes_logit", "logit")
HEADS = ("tokens", "dense")
TOKEN_PAIRS = {"yes_no": ("yes", "no"), "true_false": ("true", "false")}
ANSWER_IDS = ("continuation", "vocabulary", "encoded")


def normalise(logits: torch.Tensor, yes_id: int, no_id: int, normalisation: str) -> torch.Tensor:
    """Scores from last-position logits ``[n, vocab]`` under one normalisation."""
    z_yes, z_no = logits[:, yes_id], logits[:, no_id]
    if normalisation == "pair_softmax":
        return F.logsigmoid(z_yes - z_no)
    if normalisation == "vocab_softmax":
        return z_yes - torch.logsumexp(logits, dim=-1)
    if normalisation == "yes_logit":
        return z_yes
    if normalisation == "logit":
        return z_yes - z_no
    raise ValueError(f"unknown normalisation {normalisation!r}: choose one of {', '.join(NORMALISATIONS)}")


def answer_token_ids(tokenizer: Any, renderer: Any, words: Sequence[str]) -> list[int]:
    """The ids of the answer words as the model writes them after this prompt's last text.

    After whitespace (a chat template's "assistant\n") the word itself, e.g. "yes"; after other text (an
    assistant prefix such as "Answer:") the word with a leading space, " yes", which is another token.
    """
    _, tail = renderer.text_around_document("query")
    problems = []
    for space in word_openers(tail):
        try:
            return continuation_ids(tokenizer, tail, [space + w for w in words])[1]
        except ValueError as e:
            problems.append(str(e))
    raise ValueError(
        f"answer tokens {tuple(words)!r} must each be one distinct token after the prompt ({'; '.join(problems)}); "
        "try another casing or another pair"
    )


def vocabulary_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The vocabulary entries of the answer words (``tokenizer.convert_tokens_to_ids``), as a family's reference
    code reads them (Qwen3-Reranker: ``convert_tokens_to_ids("yes")``); each must be a known, distinct token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words]
    bad = [w for w, i in zip(words, ids) if i is None or (unk is not None and i == unk)]
    if bad or len(set(ids)) != len(ids):
        why = f"{', '.join(map(repr, bad))} not in the vocabulary" if bad else "they are one token"
        raise ValueError(f"answer tokens {tuple(words)!r} must be distinct vocabulary entries: {why}")
    return ids


def encoded_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The first id of each answer word tokenised alone, without special tokens, as FlagEmbedding and
    mxbai-rerank read theirs (``tokenizer("Yes", add_special_tokens=False)["input_ids"][0]``); a word that is
    several tokens is read by its first, as they do. The ids must be distinct."""
    ids = []
    for word in words:
        encoded = encode(tokenizer, word)
        if not encoded:
            raise ValueError(f"answer token {word!r} has no tokens")
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"answer tokens {tuple(words)!r} must start with distinct tokens, got ids {ids}")
    return ids


def parse_pair(text: str) -> str | tuple[str, ...]:
    """The ``--tokens`` flag: a pair's name, or two words separated by a comma (``Relevant,Irrelevant``)."""
    return tuple(text.split(",")) if "," in text else text


@dataclass(frozen=True)
class PointwiseOptions(Options):
    """The options of :class:`PointwiseRanker`."""

    method: ClassVar[str] = "pointwise"

    tokens: str | tuple[str, ...] = option(
        "yes_no",
        "answer tokens: yes_no, true_false, or 'WORD,WORD'",
        types=(str, tuple, list),
        parse=parse_pair,
        when=("head", ("tokens",)),
    )
    normalisation: str = option(
        "pair_softmax",
        "score normalisation (logit = z_yes - z_no)",
        choices=NORMALISATIONS,
        when=("head", ("tokens",)),
    )
    template: Any = template_option("a yes/no prompt template (a name or a .toml/.json file)", "prompt")
    max_length: int = option(512, "token budget of one prompt (documents are cut)", positive=True)
    head: str = option(
        "tokens", "score from two answer tokens, or a trained dense head on the EOS state", choices=HEADS, flag=""
    )
    head_weights: str | None = option(
        None, "the dense head's weights file", types=(str, Path), convert=str, flag="", when=("head", ("dense",))
    )
    answer_ids: str = option(
        "continuation",
        "answer token ids: as the model writes the words after the prompt, the words' vocabulary entries, or "
        "the first token of each word tokenised alone",
        choices=ANSWER_IDS,
        when=("head", ("tokens",)),
    )
    family: str | None = option(
        None, "a trained reranker family: its exact prompt, answer tokens and score", choices=family_names("pointwise")
    )
    instruction: str | None = option(
        None, "the instruction of a template with {instruction} (the qwen3-reranker, bge-reranker-v2-gemma and "
        "mxbai-rerank-v2 families)"
    )
    adapter: str | None = option(
        None,
        "a published peft adapter folder (RankLLaMA's): its LoRA merged into the model, its score layer the dense "
        "head unless head_weights are given (a folder trained from the adapter)",
        types=(str, Path),
        convert=str,
        when=("head", ("dense",)),
    )

    @classmethod
    def build(cls, given: Mapping[str, Any], also: tuple[str, ...] = ()) -> PointwiseOptions:
        """As :meth:`Options.build`, with a ``family``'s options filled in where ``given`` leaves them out."""
        family = given.get("family")
        if isinstance(family, str):
            given = {**get_family(family, "pointwise").options, **given}
        return super().build(given, also)

    def check(self) -> None:
        if self.head_weights is not None and self.head != "dense":
            raise ValueError("head_weights only apply to head='dense'")
        template = self.template
        if template is None:
            template = TRUE_FALSE if self.tokens == "true_false" else YES_NO
        if template.target is not None:
            raise ValueError(f"template {template.name!r} is a query-likelihood template, not a pointwise one")
        if self.instruction is not None:
            if INSTRUCTION_SLOT not in template.user:
                raise ValueError(
                    f"instruction applies to a template with {INSTRUCTION_SLOT}; {template.name!r} has none"
                )
            template = replace(template, extra={**template.extra, "instruction": self.instruction})
        object.__setattr__(self, "template", template)
        if self.head == "tokens":  # the dense head reads no answer tokens (``when`` keeps them at the default)
            object.__setattr__(self, "tokens", answer_words(self.tokens))
        if self.family is not None:
            self._check_family(get_family(self.family))

    def _check_family(self, family: Any) -> None:
        """Refuse an option that disagrees with what the family fixes (its instruction may be replaced)."""
        fixed = dict(family.options)
        want_template = {**fixed.pop("template").to_dict(), "extra": {}}
        have_template = {**self.template.to_dict(), "extra": {}}
        differ = [] if have_template == want_template else ["template"]
        for key, value in fixed.items():
            have = getattr(self, key)
            if (tuple(have) if isinstance(have, (list, tuple)) else have) != value:
                differ.append(key)
        if differ:
            raise ValueError(
                f"family {family.name!r} fixes {', '.join(differ)} (its reference: {family.reference}); leave "
                f"{'it' if len(differ) == 1 else 'them'} out, or drop the family to use your own"
            )


def answer_words(tokens: str | Sequence[str]) -> tuple[str, ...]:
    """The (positive, negative) answer words of a token pair's name or of two words."""
    if isinstance(tokens, str):
        if tokens not in TOKEN_PAIRS:
            raise ValueError(f"unknown token pair {tokens!r}: give {sorted(TOKEN_PAIRS)} or two words")
        return TOKEN_PAIRS[tokens]
    words = tuple(tokens)
    if len(words) != 2 or not all(isinstance(w, str) for w in words):
        raise ValueError(f"tokens must be a pair of words (positive, negative), got {tokens!r}")
    return words


class PointwiseRanker(PointScorer):
    """Relevance from the logits of two answer tokens after a yes/no style prompt, or a dense head.

    Options (:class:`PointwiseOptions`):
        tokens: ``"yes_no"`` (default), ``"true_false"``, or a pair of single-token words (positive first).
        normalisation: ``pair_softmax`` (default), ``vocab_softmax``, ``yes_logit`` or ``logit``.
        template: a prompt template (name, file path or PromptTemplate); defaults to the one matching the
            token pair.
        max_length: the token budget of a whole prompt; only the document is cut to fit.
        head: ``"tokens"`` (default) or ``"dense"``; head_weights: the dense head's trained weights.
        adapter: a published peft adapter folder trained on a sequence-classification model (RankLLaMA's):
            its LoRA is merged into the backend's model (which is then that model for every ranker sharing the
            backend) and its ``score`` layer becomes the dense head, unless ``head_weights`` are given too: then
            those are the head (a model trained from the adapter records both).
        family: a trained reranker family (:mod:`llmrerank.prompts.families`); instruction: its instruction.
    """

    method: ClassVar[str] = "pointwise"
    Options: ClassVar[type[Options]] = PointwiseOptions

    def __init__(self, backend: Backend, options: PointwiseOptions | None = None, **given: Any):
        super().__init__(backend, options, **given)
        o = self.options
        self.dense: DenseHead | None = None
        if o.head == "tokens":
            tok = backend.tokenizer
            if o.answer_ids == "vocabulary":
                check = answer_tokens_check(tok, o.tokens, lambda: vocabulary_ids(tok, o.tokens))
            elif o.answer_ids == "encoded":
                check = answer_tokens_check(tok, o.tokens, lambda: encoded_ids(tok, o.tokens))
            else:
                check = answer_tokens_check(tok, o.tokens, lambda: answer_token_ids(tok, self.renderer, o.tokens))
            self.build_checks.append(check)
            raise_failures(self.build_checks)
            self.yes_id, self.no_id = check.values["ids"]
        if o.head == "dense":
            eos = backend.tokenizer.eos_token_id
            if eos is None:
                raise ValueError("head='dense' appends the EOS token, but this tokenizer has none")
            self.eos_id = int(eos)
            self.dense = DenseHead(_hidden_size(backend)).to(getattr(backend, "device", "cpu"))
            if o.adapter is not None:
                self._merge_adapter(o.adapter)
            if o.head_weights is not None:  # after the adapter: a head trained from its score layer replaces it
                self.dense.load(o.head_weights)

    def _merge_adapter(self, folder: str) -> None:
        """Merge a published adapter's LoRA into the backend's model (once per backend) and read its score layer
        into the dense head."""
        from ..models import merge_score_adapter, read_score_adapter

        adapter = read_score_adapter(folder)
        merged = getattr(self.backend, "merged_adapter", None)
        if merged is not None and merged != adapter.path.resolve():
            raise ValueError(
                f"this backend's model already has the adapter {merged} merged in; load the base model again for "
                f"{adapter.path}"
            )
        if merged is None:
            if getattr(self.backend, "has_lora", False):
                raise ValueError("the backend's model carries trainable LoRA adapters: a published one cannot merge")
            self.backend.model = merge_score_adapter(self.backend.model, adapter)
            self.backend.merged_adapter = adapter.path.resolve()
        self.dense.set_weights(adapter.weight, adapter.bias)

    def appended_tokens(self) -> int:
        """The dense head reads the state of an EOS appended after the prompt."""
        return 1 if self.options.head == "dense" else 0

    def encode_pair(self, query: str, doc: Document, parts: PromptParts) -> Encoded:
        doc_ids, cut = self.renderer.document_ids(doc, parts)
        prompt = (*parts.head, *doc_ids, *parts.tail)
        if self.dense is not None:
            prompt = (*prompt, self.eos_id)
        return Encoded(prompt=prompt, truncated=cut)

    def score_encoded(self, items: Sequence[Encoded], grad: bool = False) -> torch.Tensor:
        if not items:
            return torch.empty(0)
        seqs = [e.prompt for e in items]
        if self.dense is not None:
            if not grad and not self.dense.trained:
                raise ValueError(
                    "this dense head is untrained: train one with `llmrerank train` and load the trained folder"
                )
            hidden = self.backend.last_hidden(seqs, grad=grad)
            if grad:
                return self.dense(hidden)
            with torch.inference_mode():
                return self.dense(hidden)
        logits = self.backend.last_logits(seqs, grad=grad)
        return normalise(logits, self.yes_id, self.no_id, self.normalisation)

    def relevance(self, ranking: Ranking) -> list[float]:
        """P(yes) for the probability normalisations (``exp`` of their log-probability: over the answer pair
        for ``pair_softmax``, the vocabulary for ``vocab_softmax``); the sigmoid of the score for ``logit``
        (which is the pair P(yes) again), ``yes_logit`` and the dense head."""
        scores = torch.tensor(ranking.scores, dtype=torch.float64)
        if self.dense is None and self.normalisation in ("pair_softmax", "vocab_softmax"):
            return scores.exp().tolist()
        return torch.sigmoid(scores).tolist()

    def score_variants(self, query: str, docs: Sequence[DocLike]) -> dict[str, list[float]]:
        """All normalisations from one forward pass, in input order (the tokens head only)."""
        if self.dense is not None:
            raise ValueError("score_variants reads the answer tokens' logits: it needs head='tokens', not 'dense'")
        items = self.encode(query, docs)
        if not items:
            return {n: [] for n in NORMALISATIONS}
        logits = check_finite(self.backend.last_logits([e.prompt for e in items]), "logits")
        return {n: normalise(logits, self.yes_id, self.no_id, n).tolist() for n in NORMALISATIONS}


    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.pop("head_weights", None)  # where the weights file lies is not how the ranker scores (config() keeps it)
        return out


class DenseHead(torch.nn.Module):
    """A linear layer from the final hidden state to one score (RankLLaMA's head)."""

    def __init__(self, hidden_size: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.linear = torch.nn.Linear(hidden_size, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(1, hidden_size, generator=generator) / hidden_size**0.5)
            self.linear.bias.zero_()
        self.trained = False

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1)

    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Take a trained linear layer's weights (``[1, hidden]``; no bias means zero), e.g. RankLLaMA's ``score``."""
        if tuple(weight.shape) != tuple(self.linear.weight.shape):
            raise ValueError(
                f"a score layer of shape {tuple(weight.shape)} does not fit this model's dense head "
                f"{tuple(self.linear.weight.shape)}"
            )
        with torch.no_grad():
            self.linear.weight.copy_(weight.to(self.linear.weight.dtype))
            self.linear.bias.copy_(bias.reshape(1).to(self.linear.bias.dtype) if bias is not None else torch.zeros(1))
        self.trained = True

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path))

    def load(self, path: str | Path) -> None:
        """Load trained weights; a damaged file is a :class:`~llmrerank.models.ModelLoadError` naming it."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from ..models import ModelLoadError

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"dense head weights not found: {p}")
        try:
            state = load_file(str(p))
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(
                f"{p}: the dense head's weights file is damaged (truncated or not a safetensors file: {e}); "
                "retrain, or copy the whole folder `llmrerank train` wrote again"
            ) from None
        expected = tuple(self.linear.weight.shape)
        if tuple(state.get("linear.weight", torch.empty(0)).shape) != expected:
            raise ValueError(f"{p}: head weights do not fit this model (expected linear.weight of shape {expected})")
        self.load_state_dict(state)
        self.trained = True


def _hidden_size(backend: Backend) -> int:
    model = getattr(backend, "model", None)
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None)
    if size is None and config is not None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "hidden_size", None)
    if size is None:
        raise ValueError("head='dense' needs the model's hidden size, which this backend does not expose")
    return int(size)
