"""The Backend protocol: the few model primitives every ranking method is built from.

The protocol is the inference primitives only. A backend that can be fine-tuned (``HFBackend``) adds optional
training primitives, which the trainer calls instead of touching the model: ``add_lora(r, alpha, dropout,
targets)`` or ``unfreeze()``, ``set_checkpointing(on)``, ``train_mode(on)``, ``trainable_parameters()`` (named)
and ``save_weights(folder)``.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    ) -> list[list[int]]:
        """Greedy continuations, one list of token ids per sequence.

        Each continuation ends after its first stop token (included in the result) or after its cap:
        ``max_new_tokens`` is one cap for all or one per sequence. ``stop_ids`` default to the model's
        end-of-sequence / end-of-turn tokens.
        """
        ...
