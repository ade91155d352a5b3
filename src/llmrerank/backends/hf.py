"""The transformers backend: CPU or GPU, length-sorted batches, left padding that does not change scores."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import BackendStats

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but torch sees no CUDA device")
    return dev


class HFBackend:
    """A causal LM from transformers behind the Backend protocol.

    Sequences are sorted by length and cut into batches of ``batch_size`` so padding stays small; each batch is
    left-padded, with position ids taken from the attention mask, so a sequence gets the same scores alone or
    in any batch (up to float rounding). Only the logits that are needed are computed (``logits_to_keep``),
    never the full ``[batch, length, vocab]`` tensor.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 16,
        device: str | torch.device | None = None,
        name: str = "model",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.stats = BackendStats()

    @classmethod
    def load(
        cls,
        model: str = "default",
        dtype: str | torch.dtype = "float32",
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 16,
    ) -> HFBackend:
        """Load a preset, a Hugging Face folder or a GGUF file (see :func:`llmrerank.models.resolve`)."""
        from ..models import load_causal_lm

        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)
        dev = resolve_device(device)
        lm, tokenizer, name = load_causal_lm(model, parse_dtype(dtype), dev)
        return cls(lm, tokenizer, batch_size=batch_size, device=dev, name=name)

    # --- batching -------------------------------------------------------------------------------------------

    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if len(s) == 0:
                raise ValueError("cannot score an empty token sequence")
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.stats.forward_calls += 1
        self.stats.sequences += len(seqs)
        self.stats.tokens += int(mask.sum())
        self.stats.padded_tokens += ids.numel()
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _run(self, n: int, lengths: Sequence[int], fn: Callable[[list[int]], Any], grad: bool) -> list[Any]:
        """Apply ``fn`` to batches of indices (sorted by length unless grad) and return results per index."""
        if grad:
            return list(fn(list(range(n))))
        order = sorted(range(n), key=lambda i: lengths[i], reverse=True)
        out: list[Any] = [None] * n
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                chunk = order[start : start + self.batch_size]
                for i, r in zip(chunk, fn(chunk)):
                    out[i] = r
        return out

    def _forward(self, seqs: Sequence[Sequence[int]], keep: int, hidden: bool = False) -> Any:
        ids, mask, positions = self._pad(seqs)
        return self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            logits_to_keep=keep,
            output_hidden_states=hidden,
            use_cache=False,
        )

    # --- primitives -----------------------------------------------------------------------------------------

    def last_logits(self, sequences: Sequence[Sequence[int]], grad: bool = False) -> torch.Tensor:
        def fn(idx: list[int]) -> torch.Tensor:
            logits = self._forward([sequences[i] for i in idx], keep=1).logits[:, -1, :]
            return logits.float()

        return _stack(self._run(len(sequences), [len(s) for s in sequences], fn, grad))

    def target_logprobs(
        self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], grad: bool = False
    ) -> list[torch.Tensor]:
        if len(prompts) != len(targets):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        for t in targets:
            if len(t) == 0:
                raise ValueError("a target sequence is empty")
        seqs = [[*p, *t] for p, t in zip(prompts, targets)]

        def fn(idx: list[int]) -> list[torch.Tensor]:
            longest = max(len(targets[i]) for i in idx)
            # Left padding aligns every sequence's end, so the last `longest + 1` positions hold the logits
            # that predict each target token (the final position predicts past the end and is dropped).
            logits = self._forward([seqs[i] for i in idx], keep=longest + 1).logits[:, :-1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            out = []
            for row, i in enumerate(idx):
                t = torch.as_tensor(list(targets[i]), device=logprobs.device)
                lp = logprobs[row, longest - len(t) :, :]
                out.append(lp.gather(-1, t[:, None]).squeeze(-1))
            return out

        return self._run(len(seqs), [len(s) for s in seqs], fn, grad)

    def last_hidden(self, sequences: Sequence[Sequence[int]], grad: bool = False) -> torch.Tensor:
        def fn(idx: list[int]) -> torch.Tensor:
            out = self._forward([sequences[i] for i in idx], keep=1, hidden=True)
            return out.hidden_states[-1][:, -1, :].float()

        return _stack(self._run(len(sequences), [len(s) for s in sequences], fn, grad))


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(rows) if rows else torch.empty(0, 0)
