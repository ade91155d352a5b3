"""The Backend protocol: the few model primitives every ranking method is built from.

The protocol is the inference primitives only. A backend that can be fine-tuned (``HFBackend``) adds optional
training primitives, which the trainer calls instead of touching the model: ``add_lora(r, alpha, dropout,
targets)`` or ``unfreeze()``, ``set_checkpointing(on)``, ``train_mode(on)``, ``trainable_parameters()`` (named)
and ``save_weights(folder)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class BackendStats:
    """Running totals a backend keeps, for docs/s and tokens/s reports."""

    forward_calls: int = 0
    sequences: int = 0
    tokens: int = 0  # real (non-padding) tokens the model computed
    padded_tokens: int = 0  # tokens including padding (padding waste: padded_tokens - tokens)
    reused_tokens: int = 0  # prompt tokens served from a shared prefix's cache instead (tokens + reused: as served)
    generated_tokens: int = 0  # tokens produced by greedy generation (fed back one at a time, not in `tokens`)

    def snapshot(self) -> dict[str, int]:
        return dict(vars(self))

    def since(self, before: dict[str, int]) -> dict[str, int]:
        return {k: v - before.get(k, 0) for k, v in vars(self).items()}


@runtime_checkable
class Backend(Protocol):
    """Model primitives over token-id sequences. Results come back in input order, whatever the batching.

    ``grad=False`` runs under ``torch.inference_mode`` in length-sorted batches; ``grad=True`` runs the given
    sequences as one batch with autograd on (for training).
    """

    tokenizer: Any
    stats: BackendStats

    def last_logits(
        self, sequences: Sequence[Sequence[int]], grad: bool = False, columns: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Next-token logits at the last position of each sequence: float ``[n, vocab]``, or ``[n, len(columns)]``
        with only those token ids' logits (what a ranker reading a few label tokens of many prompts asks for)."""
        ...

    def target_logprobs(
        self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], grad: bool = False
    ) -> list[torch.Tensor]:
        """Teacher-forced log P(target token_t | prompt, target_<t) for each pair: a ``[len(target)]`` tensor each."""
        ...

    def last_hidden(self, sequences: Sequence[Sequence[int]], grad: bool = False) -> torch.Tensor:
        """The final hidden state at the last position of each sequence: ``[n, hidden]``."""
        ...

    def generate(
        self,
        sequences: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        stop_ids: Sequence[int] | None = None,
        sampling: Sampling | None = None,
    ) -> list[list[int]]:
        """Greedy continuations (or, with ``sampling``, sampled ones), one list of token ids per sequence.

        Each continuation ends after its first stop token (included in the result) or after its cap:
        ``max_new_tokens`` is one cap for all or one per sequence. ``stop_ids`` default to the model's
        end-of-sequence / end-of-turn tokens.
        """
        ...


@dataclass(frozen=True)
class Sampling:
    """How :meth:`HFBackend.generate` samples: softmax(logits / ``temperature``) cut to the smallest set of
    tokens whose probability reaches ``top_p`` (nucleus sampling; 1.0 keeps all), one seed per sequence."""

    temperature: float
    seeds: tuple[int, ...]
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise TypeError(f"temperature must be a number, got {self.temperature!r}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number > 0 (greedy: no sampling), got {self.temperature}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in self.seeds):
            raise ValueError("sampling seeds must be integers >= 0")

    def start(self, rows: Sequence[int]) -> Callable[[torch.Tensor, Sequence[bool]], torch.Tensor]:
        """A drawing function for the sequences ``rows`` of one pass: ``draw(logits, done) -> next ids``."""
        generators = [torch.Generator().manual_seed(self.seeds[i]) for i in rows]

        def draw(logits: torch.Tensor, done: Sequence[bool]) -> torch.Tensor:
            probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
            out = []
            for r, g in enumerate(generators):
                if done[r]:  # a finished row draws nothing, so its generator is its own
                    out.append(0)
                    continue
                out.append(int(sample_token(probs[r], self.top_p, g)))
            return torch.tensor(out, device=logits.device)

        return draw


def sample_token(probs: torch.Tensor, top_p: float, generator: torch.Generator) -> int:
    """One token id drawn from ``probs`` ([vocab], summing to 1) cut to its top-``top_p`` nucleus (the tokens in
    descending probability, so the same generator state draws the same token whatever ``top_p`` keeps)."""
    ranked, order = probs.sort(descending=True)
    keep = int((ranked.cumsum(0) < top_p).sum().item()) + 1 if top_p < 1.0 else len(ranked)
    return int(order[torch.multinomial(ranked[:keep], 1, generator=generator)].item())
