"""The transformers backend: CPU or GPU, length-sorted batches, left padding that does not change scores."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
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


def set_checkpointing(model: Any, on: bool) -> None:
    """Turn activation (gradient) checkpointing of a transformers model (or a peft model around one) on or off:
    recompute each layer's activations in the backward pass instead of keeping them. transformers 5 renamed the
    switch (``activation_checkpointing_enable``); 4.x has only ``gradient_checkpointing_enable``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if on:
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(base, "enable_input_require_grads"):
            base.enable_input_require_grads()  # LoRA: frozen embeddings would leave nothing to recompute through
    elif hasattr(base, "activation_checkpointing_disable"):
        base.activation_checkpointing_disable()
    else:
        base.gradient_checkpointing_disable()


class HFBackend:
    """A causal LM from transformers behind the Backend protocol.

    Sequences are sorted by length and cut into batches of ``batch_size`` so padding stays small; each batch is
    left-padded, with position ids taken from the attention mask, so a sequence gets the same scores alone or
    in any batch (up to float rounding). Only the logits that are needed are computed (``logits_to_keep``),
    never the full ``[batch, length, vocab]`` tensor.

    Beyond the inference primitives it has the few that fine-tuning needs (:meth:`add_lora`, :meth:`unfreeze`,
    :meth:`set_checkpointing`, :meth:`train_mode`, :meth:`trainable_parameters`, :meth:`save_weights`), so a
    trainer reaches the model only through them.
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
        """Load a preset, a Hugging Face folder or a GGUF file (see :func:`llmrerank.models.resolve`).

        The backend keeps what it was loaded with as ``options`` (a :class:`~llmrerank.options.BackendOptions`),
        so a ranker's ``config()`` can rebuild it.
        """
        from ..models import load_causal_lm
        from ..options import BackendOptions

        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)
        dev = resolve_device(device)
        lm, tokenizer, name = load_causal_lm(model, parse_dtype(dtype), dev)
        backend = cls(lm, tokenizer, batch_size=batch_size, device=dev, name=name)
        if isinstance(dtype, str):
            backend.options = BackendOptions(batch_size=batch_size, dtype=dtype, device=device, threads=threads)
        return backend

    # --- training primitives -------------------------------------------------------------------------------

    @property
    def has_lora(self) -> bool:
        """Whether the model carries peft (LoRA) adapters."""
        return hasattr(self.model, "get_base_model")

    def add_lora(self, r: int, alpha: int, dropout: float, targets: str | Sequence[str]) -> None:
        """Freeze the model and wrap it with trainable LoRA adapters (peft) of rank ``r`` on the ``targets``
        modules (a module-name list, or peft's ``"all-linear"``)."""
        from ..extras import require

        if self.has_lora:
            raise ValueError("the model already has LoRA adapters")
        peft = require("peft", "LoRA training")
        for p in self.model.parameters():
            p.requires_grad_(False)
        lora = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
        self.model = peft.get_peft_model(self.model, lora)

    def unfreeze(self) -> None:
        """Make every weight of the model trainable (full fine-tuning)."""
        for p in self.model.parameters():
            p.requires_grad_(True)

    def set_checkpointing(self, on: bool) -> None:
        """Activation (gradient) checkpointing on or off: see :func:`set_checkpointing`."""
        set_checkpointing(self.model, on)

    def train_mode(self, on: bool) -> None:
        """Training mode (dropout on) or evaluation mode."""
        self.model.train(on)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The model's parameters that require gradients, named, in the model's order."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def save_weights(self, folder: str | Path) -> None:
        """Write the weights to ``folder``: the adapter only under LoRA, else the model and its tokenizer."""
        self.model.save_pretrained(folder)
        if not self.has_lora:
            self.tokenizer.save_pretrained(folder)

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
        for p, t in zip(prompts, targets):
            if len(t) == 0:
                raise ValueError("a target sequence is empty")
            if len(p) == 0:
                raise ValueError("a prompt is empty: the first target token needs a context")
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

    def stop_ids(self) -> list[int]:
        """The model's end tokens: the tokenizer's EOS and the generation config's (e.g. an end-of-turn token)."""
        ids: list[int] = []
        eos = self.tokenizer.eos_token_id
        if eos is not None:
            ids.append(int(eos))
        config = getattr(self.model, "generation_config", None)
        extra = getattr(config, "eos_token_id", None)
        for t in extra if isinstance(extra, (list, tuple)) else [extra]:
            if t is not None and int(t) not in ids:
                ids.append(int(t))
        return ids

    def generate(
        self,
        sequences: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        stop_ids: Sequence[int] | None = None,
    ) -> list[list[int]]:
        """Greedy decoding with a key-value cache, batched like the other primitives.

        A continuation ends after its first stop token (kept in the result) or after its own cap. Rows of a
        batch that have finished are still fed (their tokens are discarded), so a row's tokens do not depend on
        the batch it ran in, up to float rounding.
        """
        n = len(sequences)
        caps = [max_new_tokens] * n if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
        if len(caps) != n:
            raise ValueError(f"{n} sequences but {len(caps)} max_new_tokens")
        if any(c < 1 for c in caps):
            raise ValueError("max_new_tokens must be at least 1")
        stops = set(self.stop_ids() if stop_ids is None else (int(t) for t in stop_ids))
        # transformers 5.2x renamed `past_key_values` to `cache`; accept both.
        cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

        def fn(idx: list[int]) -> list[list[int]]:
            ids, mask, positions = self._pad([sequences[i] for i in idx])
            out = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, use_cache=True
            )
            rows = [[] for _ in idx]
            done = [False] * len(idx)
            limit = max(caps[i] for i in idx)
            for step in range(limit):
                nxt = out.logits[:, -1, :].argmax(-1)
                for r, token in enumerate(nxt.tolist()):
                    if not done[r]:
                        rows[r].append(token)
                        done[r] = token in stops or len(rows[r]) >= caps[idx[r]]
                if all(done) or step == limit - 1:
                    break
                mask = torch.cat([mask, mask.new_ones((len(idx), 1))], dim=1)
                positions = positions[:, -1:] + 1
                out = self.model(
                    input_ids=nxt[:, None],
                    attention_mask=mask,
                    position_ids=positions,
                    **{cache_arg: _cache_of(out)},
                    logits_to_keep=1,
                    use_cache=True,
                )
                self.stats.forward_calls += 1
            self.stats.generated_tokens += sum(len(r) for r in rows)
            return rows

        return self._run(n, [len(s) for s in sequences], fn, grad=False)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(rows) if rows else torch.empty(0, 0)
