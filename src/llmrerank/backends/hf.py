"""The transformers backend: CPU or GPU, passes planned by a token budget, shared prefixes computed once, left
padding that does not change scores."""

from __future__ import annotations

import copy
import functools
import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .base import BackendStats, Sampling
from .planner import Pass, plan

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with AVX512-BF16
    or AMX tiles (elsewhere bfloat16 still runs, but emulated and many times slower than float32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private but long-standing in torch.cpu
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def parse_dtype(dtype: str | torch.dtype, device: torch.device | str = "cpu") -> torch.dtype:
    """A dtype from its name; ``"auto"`` is bfloat16 where ``device`` computes it natively, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def weights_dtype(dtype: str | torch.dtype, device: torch.device | str, quantize: str | None = None) -> torch.dtype:
    """The dtype a model's weights load in: ``dtype`` resolved for ``device`` (:func:`parse_dtype`), float32 under
    int8 quantisation (its kernels take float32 activations, so ``"auto"`` means float32 there)."""
    return torch.float32 if quantize is not None else parse_dtype(dtype, device)


def dtype_name(dtype: torch.dtype) -> str:
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of every linear layer (weights int8, activations quantised per batch): CPU and
    float32 only."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


# What one more forward pass costs, in padded tokens, by device type and dtype, for the planner (plan_batches'
# pass_cost): a pass is cut where its padding would cost more. Measured on this project's CPU (2 Xeon cores, AMX)
# with benchmarks/pass_cost.py on the 135M preset: 38-55 tokens in float32, 200-360 in bfloat16, whose per-token
# time falls 2-4x from one row to sixteen (docs/benchmarks.md, "Speed"). Elsewhere (a GPU: not measured here, its
# fixed cost a pass is large) passes are filled (None).
PASS_COST = {("cpu", "float32"): 40, ("cpu", "bfloat16"): 250}

# What ``compile`` fuses: each decoder layer's feed-forward block and RMS norms, and the final norm, found by class
# name (LlamaMLP, Qwen2RMSNorm, Gemma2MLP, Qwen3RMSNorm...). They hold most of the elementwise work (SiLU times the
# gate, the norms' square, mean and scaling) that is most of a pass's time once bfloat16 makes the matrix
# multiplies fast. Attention stays eager: its key/value cache changes kind and shape from pass to pass.
COMPILED_KINDS = ("MLP", "RMSNorm")


class CompileError(RuntimeError):
    """torch.compile could not build kernels for the model (on a CPU: no working C++ compiler, say)."""


def compile_model(model: Any) -> list[Any]:
    """Compile, in place, the modules of ``model`` that :data:`COMPILED_KINDS` names (``nn.Module.compile``: the
    module tree, its names and its weights stay as they are), with dynamic shapes, so that passes of any batch
    size and width share the compiled code; the first pass of a new kind of shape (one row, one token) compiles
    once more. Returns the compiled modules."""
    picked = [m for m in model.modules() if type(m).__name__.endswith(COMPILED_KINDS)]
    if not picked:
        raise ValueError(
            f"compile found no feed-forward or RMS norm modules in {type(model).__name__} (it knows transformers' "
            "decoder layers, whose classes end in MLP and RMSNorm): load it without compile"
        )
    for module in picked:
        module.compile(dynamic=True)
    return picked


def uncompile(modules: Sequence[Any]) -> None:
    """Undo :func:`compile_model` (``nn.Module.compile`` keeps the compiled call in ``_compiled_call_impl``)."""
    for module in modules:
        module._compiled_call_impl = None


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


def contiguous_head_input(model: Any) -> None:
    """Make the output embedding (``lm_head``) take a contiguous input, once per model.

    transformers hands it a slice of the hidden states (``logits_to_keep``). With a weight that needs no gradient
    (a merged adapter, a LoRA model's frozen head, a model that is not trained), torch's matmul does not fold such
    a slice into one matrix product but expands the weight to every row of the batch and copies it: on this
    project's CPU, 1 s a pass instead of 2-10 ms in bfloat16, and 4x slower in float32 (``smollm2-135m-distilled``
    scored at a third of its base model's speed in bfloat16). A contiguous slice always folds; the values are the
    same product."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_llmrerank_contiguous", False):
        return

    def hook(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
            return (args[0].contiguous(), *args[1:])
        return None

    head._llmrerank_contiguous = head.register_forward_pre_hook(hook)  # its handle (benchmarks remove it)


class HFBackend:
    """A causal LM from transformers behind the Backend protocol.

    Each call's sequences are cut into forward passes by :func:`~llmrerank.backends.planner.plan`: longest first,
    at most ``batch_size`` rows and ``batch_tokens`` padded tokens a pass, cut where padding a pass further would
    cost more than another pass (``pass_cost`` tokens; default the device's, :data:`PASS_COST`). With
    ``reuse_prefix`` (the default), sequences that share a long prefix (one query's prompts share the instruction
    and the query) have it computed once: its key/value cache is copied to every row of their passes, and only
    each row's own tokens run. Each pass is left-padded (between the shared prefix and the rows' tokens when
    there is one), with position ids taken from the attention mask, so a sequence gets the same scores alone, in
    any pass, with or without a reused prefix (up to float rounding). Only the logits that are needed are computed
    (``logits_to_keep``), never the full ``[batch, length, vocab]`` tensor.

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
        batch_tokens: int = 8192,
        reuse_prefix: bool = True,
        compile: bool = False,
        pass_cost: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if batch_tokens < 1:
            raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}")
        self.model = model
        contiguous_head_input(model)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.reuse_prefix = bool(reuse_prefix)
        self.name = name
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if pass_cost is not None and (isinstance(pass_cost, bool) or not isinstance(pass_cost, int)):
            raise TypeError(f"pass_cost must be an int or None (the device's), got {pass_cost!r}")
        if pass_cost is not None and pass_cost < 0:
            raise ValueError(f"pass_cost must be at least 0, got {pass_cost}")
        self.pass_cost_option = pass_cost  # as given (None: the device's), so that a config rebuilds it anywhere
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_id = int(pad)
        self.stats = BackendStats()
        self.dtype = dtype_name(next(model.parameters()).dtype)  # what it runs in ("auto" resolved)
        # None: the device's own (PASS_COST); a GPU fills its passes
        self.pass_cost = pass_cost if pass_cost is not None else PASS_COST.get((self.device.type, self.dtype))
        self.quantize: str | None = None
        # transformers 5.2x renamed `past_key_values` to `cache`; accept both.
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.compiled = 0  # how many modules compile_model compiled (0: eager)
        self.compile_seconds = 0.0  # the first passes' compile time, at load
        if compile:
            self._compile()

    def _compile(self) -> None:
        """Compile the model's feed-forward blocks and norms (:func:`compile_model`) and run four small passes
        (two rows and one, of 16 tokens and of one: dynamic shapes still treat a size of one apart, and decoding
        steps and rows after a shared prefix have one token), so that the kernels are built now, not in the first
        request, and a failure to build them is an error at load, naming its cause."""
        import time

        start = time.perf_counter()
        modules = compile_model(self.model)
        token = self.pad_id if self.tokenizer.eos_token_id is None else int(self.tokenizer.eos_token_id)
        inductor = logging.getLogger("torch._inductor")
        level = inductor.level
        inductor.setLevel(logging.CRITICAL + 1)  # a failed build logs pages of its graph: the error below says it
        try:
            with torch.inference_mode():
                for rows, width in ((2, 16), (1, 16), (2, 1), (1, 1)):
                    ids = torch.full((rows, width), token, dtype=torch.long, device=self.device)
                    self.model(input_ids=ids, logits_to_keep=1, use_cache=False)
        except Exception as e:
            uncompile(modules)  # the model as it was
            if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
                raise  # not a build failure: the CLI names it as what it is
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            needs = ("a working C++ compiler (gcc or clang) and Python's headers" if self.device.type == "cpu"
                     else "Triton and a GPU that torch.compile supports")
            raise CompileError(
                f"torch.compile could not build kernels for this model ({type(e).__name__}: {first}); on "
                f"{self.device.type} it needs {needs}: install them, or load the model without compile"
            ) from e
        finally:
            inductor.setLevel(level)
        self.compiled = len(modules)
        self.compile_seconds = time.perf_counter() - start

    @classmethod
    def load(
        cls,
        model: str = "default",
        dtype: str | torch.dtype | None = "float32",
        device: str = "auto",
        threads: int | None = None,
        batch_size: int = 16,
        batch_tokens: int = 8192,
        reuse_prefix: bool = True,
        quantize: str | None = None,
        compile: bool = False,
        pass_cost: int | None = None,
    ) -> HFBackend:
        """Load a preset, a Hugging Face folder or a GGUF file (see :func:`llmrerank.models.resolve`).

        ``dtype="auto"`` loads bfloat16 weights where the device computes bfloat16 natively (a CPU with AMX or
        AVX512-BF16, a bf16-capable GPU), float32 elsewhere; the dtype it resolved to is ``backend.dtype``.
        ``dtype=None`` is float32 here; ``Reranker`` gives each method's own default instead (``auto`` for
        likelihood).
        ``quantize="int8"`` applies dynamic int8 quantisation to the linear layers (CPU, float32 weights).
        ``compile=True`` compiles the feed-forward blocks and norms (:func:`compile_model`, inference only) and
        builds their kernels before returning.
        The backend keeps what it was loaded with as ``options`` (a :class:`~llmrerank.options.BackendOptions`),
        so a ranker's ``config()`` can rebuild it.
        """
        from ..models import load_causal_lm
        from ..options import BackendOptions

        if dtype is None:  # a backend alone has no method to take a dtype from (Reranker gives the method's)
            dtype = "float32"
        # One check of every value, by the options table the CLI, configs and the server use too.
        options = BackendOptions(
            batch_size=batch_size, batch_tokens=batch_tokens, dtype=dtype if isinstance(dtype, str) else
            dtype_name(dtype), device=device, threads=threads, reuse_prefix=reuse_prefix, quantize=quantize,
            compile=compile, pass_cost=pass_cost,
        )
        if threads is not None:
            torch.set_num_threads(threads)
        dev = resolve_device(device)
        if quantize is not None and dev.type != "cpu":
            raise ValueError(f"quantize={quantize!r} is dynamic CPU quantisation: use device='cpu'")
        torch_dtype = weights_dtype(dtype, dev, quantize)
        lm, tokenizer, name = load_causal_lm(model, torch_dtype, dev)
        if quantize == "int8":
            lm = quantize_int8(lm)
        backend = cls(
            lm, tokenizer, batch_size=batch_size, device=dev, name=name, batch_tokens=batch_tokens,
            reuse_prefix=reuse_prefix, compile=compile, pass_cost=pass_cost,
        )
        backend.quantize = quantize
        backend.options = options
        return backend

    # --- training primitives -------------------------------------------------------------------------------

    @property
    def has_lora(self) -> bool:
        """Whether the model carries peft (LoRA) adapters."""
        return hasattr(self.model, "get_base_model")

    def add_lora(self, r: int, alpha: int, dropout: float, targets: str | Sequence[str]) -> None:
        """Freeze the model and wrap it with trainable LoRA adapters (peft) of rank ``r`` on the ``targets``
        modules (a module-name list, or peft's ``"all-linear"``)."""
        from ..extras import peft_quietly, require

        self._refuse_training_when_compiled()
        if self.has_lora:
            raise ValueError("the model already has LoRA adapters")
        peft = require("peft", "LoRA training")
        for p in self.model.parameters():
            p.requires_grad_(False)
        lora = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
        with peft_quietly():
            self.model = peft.get_peft_model(self.model, lora)

    def _refuse_training_when_compiled(self) -> None:
        if self.compiled:
            raise ValueError("this backend's model is compiled for inference (compile=True): load it without "
                             "compile to train it")

    def unfreeze(self) -> None:
        """Make every weight of the model trainable (full fine-tuning)."""
        self._refuse_training_when_compiled()
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

    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask of ``seqs``; counts the pass in the stats."""
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if len(s) == 0:
                raise ValueError("cannot score an empty token sequence")
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
        self.stats.forward_calls += 1
        self.stats.sequences += len(seqs)
        self.stats.tokens += int(mask.sum())
        self.stats.padded_tokens += ids.numel()
        return ids, mask

    def _inputs(self, seqs: Sequence[Sequence[int]], prefix: tuple[int, Any] | None = None) -> dict[str, Any]:
        """Model inputs for a pass: ids, mask and positions; after a shared prefix, only the rows' own tokens,
        with the mask covering the prefix too and a copy of its cache for every row."""
        if prefix is None:
            ids, mask = self._pad(seqs)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                    "position_ids": positions.to(self.device)}
        length, cache = prefix
        ids, mask = self._pad([s[length:] for s in seqs])
        full = torch.cat([mask.new_ones((len(seqs), length)), mask], dim=1)
        positions = (full.cumsum(-1) - 1).clamp(min=0)[:, length:]
        rows = copy.deepcopy(cache)
        rows.batch_repeat_interleave(len(seqs))
        read_only(rows)
        self.stats.reused_tokens += len(seqs) * length
        return {"input_ids": ids.to(self.device), "attention_mask": full.to(self.device),
                "position_ids": positions.to(self.device), self._cache_arg: rows}

    def _prefix_cache(self, ids: Sequence[int]) -> Any:
        """The key/value cache of a shared prefix, computed once (batch of one)."""
        out = self.model(
            input_ids=torch.as_tensor([list(ids)], dtype=torch.long, device=self.device),
            logits_to_keep=1,
            use_cache=True,
        )
        self.stats.forward_calls += 1
        self.stats.tokens += len(ids)
        self.stats.padded_tokens += len(ids)
        self.stats.reused_tokens -= len(ids)  # computed, not reused: reused counts tokens served from a cache
        return _cache_of(out)

    def plan(
        self,
        sequences: Sequence[Sequence[int]],
        limits: Sequence[int] | None = None,
        reuse: bool = True,
        fill: bool = False,
    ) -> list[Pass]:
        """The forward passes this backend runs ``sequences`` in (see :func:`~llmrerank.backends.planner.plan`);
        ``fill`` fills each pass (no pass cost)."""
        pass_cost = None if fill else self.pass_cost
        return plan(sequences, self.batch_tokens, self.batch_size, reuse and self.reuse_prefix, limits, pass_cost)

    def _run(
        self,
        sequences: Sequence[Sequence[int]],
        fn: Callable[[list[int], tuple[int, Any] | None], Any],
        grad: bool,
        limits: Sequence[int] | None = None,
        reuse: bool = True,
        fill: bool = False,
    ) -> list[Any]:
        """Apply ``fn(rows, prefix)`` to each planned pass and return its results per sequence index; with
        ``grad``, one pass of every sequence in order, autograd on and no prefix reuse."""
        if grad:
            return list(fn(list(range(len(sequences))), None))
        out: list[Any] = [None] * len(sequences)
        with torch.inference_mode():
            group, cache = None, None
            for p in self.plan(sequences, limits, reuse, fill):
                prefix = None
                if p.prefix:
                    if p.group != group:
                        cache = None  # free the previous group's cache before computing the next one
                        cache, group = self._prefix_cache(sequences[p.rows[0]][: p.prefix]), p.group
                    prefix = (p.prefix, cache)
                for i, r in zip(p.rows, fn(list(p.rows), prefix)):
                    out[i] = r
        return out

    def _forward(
        self, seqs: Sequence[Sequence[int]], keep: int, hidden: bool = False, prefix: tuple[int, Any] | None = None
    ) -> Any:
        return self.model(**self._inputs(seqs, prefix), logits_to_keep=keep, output_hidden_states=hidden,
                          use_cache=prefix is not None)

    # --- primitives -----------------------------------------------------------------------------------------

    def last_logits(
        self, sequences: Sequence[Sequence[int]], grad: bool = False, columns: Sequence[int] | None = None
    ) -> torch.Tensor:
        keep = None if columns is None else torch.as_tensor(list(columns), dtype=torch.long, device=self.device)

        def fn(idx: list[int], prefix: tuple[int, Any] | None) -> torch.Tensor:
            logits = self._forward([sequences[i] for i in idx], keep=1, prefix=prefix).logits[:, -1, :]
            return (logits if keep is None else logits[:, keep]).float()

        return _stack(self._run(sequences, fn, grad))

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

        def fn(idx: list[int], prefix: tuple[int, Any] | None) -> list[torch.Tensor]:
            longest = max(len(targets[i]) for i in idx)
            # Left padding aligns every sequence's end, so the last `longest + 1` positions hold the logits
            # that predict each target token (the final position predicts past the end and is dropped). A shared
            # prefix stops short of the prompt's last token, so those positions are all in the pass.
            logits = self._forward([seqs[i] for i in idx], keep=longest + 1, prefix=prefix).logits[:, :-1, :]
            logits = logits.float()
            logprobs = torch.log_softmax(logits, dim=-1)
            out = []
            for row, i in enumerate(idx):
                t = torch.as_tensor(list(targets[i]), device=logprobs.device)
                lp = logprobs[row, longest - len(t) :, :]
                out.append(lp.gather(-1, t[:, None]).squeeze(-1))
            return out

        return self._run(seqs, fn, grad, limits=[len(p) - 1 for p in prompts])

    def last_hidden(self, sequences: Sequence[Sequence[int]], grad: bool = False) -> torch.Tensor:
        def fn(idx: list[int], prefix: tuple[int, Any] | None) -> torch.Tensor:
            out = self._forward([sequences[i] for i in idx], keep=1, hidden=True, prefix=prefix)
            return out.hidden_states[-1][:, -1, :].float()

        return _stack(self._run(sequences, fn, grad))

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
        sampling: Sampling | None = None,
    ) -> list[list[int]]:
        """Greedy decoding with a key-value cache, batched like the other primitives; or, with ``sampling``,
        sampling at its temperature (and top-p), each sequence from its own seeded generator.

        A continuation ends after its first stop token (kept in the result) or after its own cap. Rows of a
        batch that have finished are still fed (their tokens are discarded), so a row's tokens do not depend on
        the batch it ran in, up to float rounding; a sampled row draws from its own generator only, so the same
        seed gives the same continuation alone or in any batch (up to the same rounding).
        """
        n = len(sequences)
        caps = [max_new_tokens] * n if isinstance(max_new_tokens, int) else [int(c) for c in max_new_tokens]
        if len(caps) != n:
            raise ValueError(f"{n} sequences but {len(caps)} max_new_tokens")
        if any(c < 1 for c in caps):
            raise ValueError("max_new_tokens must be at least 1")
        if sampling is not None and len(sampling.seeds) != n:
            raise ValueError(f"{n} sequences but {len(sampling.seeds)} sampling seeds")
        stops = set(self.stop_ids() if stop_ids is None else (int(t) for t in stop_ids))

        def fn(idx: list[int], prefix: None) -> list[list[int]]:
            inputs = self._inputs([sequences[i] for i in idx])
            mask, positions = inputs["attention_mask"], inputs["position_ids"]
            out = self.model(**inputs, logits_to_keep=1, use_cache=True)
            rows = [[] for _ in idx]
            done = [False] * len(idx)
            limit = max(caps[i] for i in idx)
            draw = sampling.start(idx) if sampling is not None else None
            for step in range(limit):
                logits = out.logits[:, -1, :]
                nxt = logits.argmax(-1) if draw is None else draw(logits, done)
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
                    **{self._cache_arg: _cache_of(out)},
                    logits_to_keep=1,
                    use_cache=True,
                )
                self.stats.forward_calls += 1
            self.stats.generated_tokens += sum(len(r) for r in rows)
            return rows

        # A generation pass runs one forward step per new token, so its fixed cost is that many times a prompt
        # pass's: generation fills its passes rather than cut them by the prompt pass cost.
        return self._run(sequences, fn, grad=False, reuse=False, fill=True)


@functools.cache
def _read_only_layer() -> type | None:
    """transformers' plain ``DynamicLayer`` with an ``update`` that returns the stored keys and values joined to
    the new ones and stores nothing (None where transformers has no ``DynamicLayer``)."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class ReadOnlyLayer(DynamicLayer):
        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    return ReadOnlyLayer


def read_only(cache: Any) -> None:
    """Make a prefix's cache read-only for the pass that reads it: each layer's ``update`` returns the prefix's
    keys and values joined to the pass's own, as before, but stores nothing, so a pass holds the joined keys of one
    layer at a time instead of every layer's until it ends (in float32, 360 MiB for 16 rows × 512 tokens of the
    135M). Only transformers' plain ``DynamicLayer`` is changed; any other kind of layer (a sliding window, say)
    keeps its own ``update``."""
    layer_class = _read_only_layer()
    if layer_class is None:
        return
    for layer in getattr(cache, "layers", ()):
        if type(layer) is layer_class.__base__:
            layer.__class__ = layer_class


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(rows) if rows else torch.empty(0, 0)
