"""The transformers backend: exact primitives, and scores that do not depend on batching."""

from __future__ import annotations

import pytest
import torch

from llmrerank.backends.hf import HFBackend, parse_dtype
from llmrerank.backends.planner import plan_batches

FILL = 10**9  # a pass cost that makes the planner fill every pass


def _sequences(n: int = 16) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 40, (n,), generator=g).tolist()
    return [torch.randint(7, 60, (length,), generator=g).tolist() for length in lengths]


def _full_logits(backend: HFBackend, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return backend.model(input_ids=torch.tensor([seq])).logits[0]


def test_last_logits_equal_unpadded_forward(backend):
    seqs = _sequences(6)
    got = backend.last_logits(seqs)
    assert got.shape == (6, backend.model.config.vocab_size)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(got[i], _full_logits(backend, s)[-1], atol=1e-4, rtol=1e-4)


def test_target_logprobs_equal_hand_computed(backend):
    prompts = _sequences(5)
    targets = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19], [20, 21]]
    got = backend.target_logprobs(prompts, targets)
    for p, t, lp in zip(prompts, targets, got):
        logprobs = torch.log_softmax(_full_logits(backend, p + t), dim=-1)
        expected = torch.stack([logprobs[len(p) - 1 + k, tok] for k, tok in enumerate(t)])
        torch.testing.assert_close(lp, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("primitive", ["last_logits", "last_hidden"])
def test_batch_composition_does_not_change_results(tokenizer, primitive):
    from conftest import make_model

    seqs = _sequences(16)
    model = make_model(len(tokenizer))
    one = getattr(HFBackend(model, tokenizer, batch_size=1), primitive)(seqs)
    sixteen = getattr(HFBackend(model, tokenizer, batch_size=16), primitive)(seqs)
    torch.testing.assert_close(one, sixteen, atol=1e-4, rtol=1e-4)


def test_target_logprobs_batch_invariant(tokenizer):
    from conftest import make_model

    model = make_model(len(tokenizer), "llama")
    prompts = _sequences(16)
    targets = [list(range(7, 7 + 1 + i % 5)) for i in range(16)]
    one = HFBackend(model, tokenizer, batch_size=1).target_logprobs(prompts, targets)
    many = HFBackend(model, tokenizer, batch_size=16).target_logprobs(prompts, targets)
    for a, b in zip(one, many):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_grad_mode_is_differentiable(qwen_backend):
    out = qwen_backend.last_logits(_sequences(3), grad=True)
    assert out.requires_grad
    out[:, 5].sum().backward()
    assert qwen_backend.model.lm_head.weight.grad is not None
    qwen_backend.model.zero_grad(set_to_none=True)


def test_stats_count_real_tokens(tokenizer):
    from conftest import make_model

    b = HFBackend(make_model(len(tokenizer)), tokenizer, batch_size=2)
    b.last_logits([[7, 8, 9], [7], [7, 8]])
    assert b.stats.tokens == 6
    assert b.stats.sequences == 3
    assert b.stats.forward_calls == 2
    assert b.stats.padded_tokens == 3 * 2 + 1 * 1


def test_bad_inputs(qwen_backend):
    with pytest.raises(ValueError, match="empty token sequence"):
        qwen_backend.last_logits([[7, 8], []])
    with pytest.raises(ValueError, match="2 prompts but 1 targets"):
        qwen_backend.target_logprobs([[7], [8]], [[9]])
    with pytest.raises(ValueError, match="target sequence is empty"):
        qwen_backend.target_logprobs([[7]], [[]])
    with pytest.raises(ValueError, match="a prompt is empty"):
        qwen_backend.target_logprobs([[]], [[7]])
    with pytest.raises(ValueError, match="unknown dtype"):
        parse_dtype("float8")
    with pytest.raises(ValueError, match="batch_size"):
        HFBackend(qwen_backend.model, qwen_backend.tokenizer, batch_size=0)


def test_load_in_bfloat16_scores_close_to_float32(tiny_model_dir):
    seqs = _sequences(4)
    b32 = HFBackend.load(str(tiny_model_dir), dtype="float32", device="cpu")
    b16 = HFBackend.load(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert next(b16.model.parameters()).dtype == torch.bfloat16
    out16 = b16.last_logits(seqs)
    assert out16.dtype == torch.float32  # scores come back as float32 whatever the model's dtype
    torch.testing.assert_close(out16, b32.last_logits(seqs), atol=0.5, rtol=0.05)
    with pytest.raises(ValueError, match="threads"):
        HFBackend.load(str(tiny_model_dir), threads=0)


def _shared_prefix_prompts() -> list[list[int]]:
    """Prompts as a query-first template makes them: per query a 30-token head, then a document, then a tail;
    two queries, interleaved, plus one prompt that shares nothing."""
    g = torch.Generator().manual_seed(2)
    heads = [torch.randint(7, 60, (30,), generator=g).tolist() for _ in range(2)]
    out = []
    for i in range(12):
        doc = torch.randint(7, 60, (int(torch.randint(1, 25, (1,), generator=g)),), generator=g).tolist()
        out.append([*heads[i % 2], *doc, 5, 6])
    out.append([8, 9, 10])
    return out


@pytest.mark.parametrize("primitive", ["last_logits", "last_hidden"])
def test_a_reused_prefix_gives_the_scores_of_the_plain_path(backend, primitive):
    seqs = _shared_prefix_prompts()
    plain = HFBackend(backend.model, backend.tokenizer, batch_size=4, reuse_prefix=False)
    reused = HFBackend(backend.model, backend.tokenizer, batch_size=4)
    passes = reused.plan(seqs)
    assert {p.prefix for p in passes} == {0, 30}  # the two heads; the odd prompt runs alone
    torch.testing.assert_close(getattr(reused, primitive)(seqs), getattr(plain, primitive)(seqs), atol=1e-4, rtol=0)
    assert (reused.stats.tokens + reused.stats.reused_tokens) == plain.stats.tokens == sum(len(s) for s in seqs)
    # 12 prompts in 2 groups of 6 share 30 tokens: each group computes its prefix once and reuses it 5 times
    assert reused.stats.reused_tokens == 2 * 5 * 30


def test_a_pass_reads_the_prefix_cache_without_keeping_its_own_keys(backend):
    """A pass after a shared prefix joins its keys to the prefix's in every layer but stores none of them: the
    cache holds the prefix alone when the pass ends, and the logits are the plain path's."""
    every = _shared_prefix_prompts()
    seqs = [s for s in every if s[:30] == every[0][:30]]  # one group: the prompts of one head
    reused = HFBackend(backend.model, backend.tokenizer, batch_size=8)
    assert {p.prefix for p in reused.plan(seqs)} == {30}
    with torch.inference_mode():
        cache = reused._prefix_cache(seqs[0][:30])
        inputs = reused._inputs(seqs, (30, cache))
        rows = inputs[reused._cache_arg]
        logits = backend.model(**inputs, logits_to_keep=1, use_cache=True).logits[:, -1, :]
    assert rows.get_seq_length() == 30 and all(layer.keys.shape[-2] == 30 for layer in rows.layers)
    assert cache.get_seq_length() == 30  # the group's own cache is untouched for its next pass
    plain = HFBackend(backend.model, backend.tokenizer, batch_size=8, reuse_prefix=False)
    torch.testing.assert_close(logits.float(), plain.last_logits(seqs), atol=1e-4, rtol=0)


def test_a_reused_prefix_gives_the_target_logprobs_of_the_plain_path(backend):
    prompts = _shared_prefix_prompts()
    targets = [list(range(7, 8 + i % 4)) for i in range(len(prompts))]
    plain = HFBackend(backend.model, backend.tokenizer, batch_size=5, reuse_prefix=False)
    reused = HFBackend(backend.model, backend.tokenizer, batch_size=5)
    for a, b in zip(reused.target_logprobs(prompts, targets), plain.target_logprobs(prompts, targets)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert reused.stats.reused_tokens > 0


def test_a_prefix_never_takes_a_target_token(backend):
    # every prompt is the same 40 tokens: the shared prefix stops one short of the prompt, not of the sequence
    prompts = [list(range(10, 50))] * 4
    targets = [[7, 8, 9], [7, 8], [9], [8, 7, 9, 9]]
    reused = HFBackend(backend.model, backend.tokenizer)
    got = reused.target_logprobs(prompts, targets)
    assert {p.prefix for p in reused.plan([[*p, *t] for p, t in zip(prompts, targets)], [39] * 4)} == {39}
    for p, t, lp in zip(prompts, targets, got):
        logprobs = torch.log_softmax(_full_logits(backend, p + t), dim=-1)
        expected = torch.stack([logprobs[len(p) - 1 + k, tok] for k, tok in enumerate(t)])
        torch.testing.assert_close(lp, expected, atol=1e-4, rtol=1e-4)


def test_token_budget_passes_give_the_same_scores_and_count_padding(tokenizer):
    from conftest import make_model

    model = make_model(len(tokenizer))
    seqs = _sequences(16)
    # a pass cost this large fills every pass (the fewest passes), as a GPU's default does
    by_count = HFBackend(model, tokenizer, batch_size=16, reuse_prefix=False, pass_cost=FILL)
    by_tokens = HFBackend(model, tokenizer, batch_size=16, batch_tokens=64, reuse_prefix=False, pass_cost=FILL)
    torch.testing.assert_close(by_tokens.last_logits(seqs), by_count.last_logits(seqs), atol=1e-4, rtol=1e-4)
    assert by_count.stats.forward_calls == 1 and by_tokens.stats.forward_calls > 1
    assert by_tokens.stats.tokens == by_count.stats.tokens == sum(len(s) for s in seqs)
    lengths = sorted((len(s) for s in seqs), reverse=True)
    assert by_count.stats.padded_tokens == 16 * lengths[0]  # one pass, padded to the longest
    assert by_tokens.stats.padded_tokens < by_count.stats.padded_tokens  # smaller passes waste less padding


def test_backend_budgets_must_be_positive(tokenizer, backend):
    with pytest.raises(ValueError, match="batch_tokens must be at least 1"):
        HFBackend(backend.model, tokenizer, batch_tokens=0)


def test_auto_dtype_is_bfloat16_exactly_where_the_device_computes_it_natively(tiny_model_dir):
    from llmrerank import Reranker
    from llmrerank.backends.hf import native_bf16

    expected = torch.bfloat16 if native_bf16("cpu") else torch.float32
    assert parse_dtype("auto", "cpu") == expected
    ranker = Reranker("likelihood", model=str(tiny_model_dir), dtype="auto", device="cpu")
    assert next(ranker.backend.model.parameters()).dtype == expected
    assert ranker.backend.dtype == str(expected).removeprefix("torch.")
    assert ranker.config()["backend"]["dtype"] == "auto"  # the config rebuilds "auto", wherever it runs
    assert parse_dtype("float32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="unknown dtype 'fp8': choose one of auto, float32"):
        parse_dtype("fp8")


def test_int8_quantisation_replaces_the_linear_layers_and_keeps_scores_close(tiny_model_dir):
    from llmrerank import Reranker

    plain = Reranker("likelihood", model=str(tiny_model_dir), dtype="float32", max_length=64)
    int8 = Reranker("likelihood", model=str(tiny_model_dir), quantize="int8", max_length=64)
    assert int8.backend.dtype == "float32" and int8.backend.quantize == "int8"
    modules = list(int8.backend.model.modules())
    assert not any(type(m) is torch.nn.Linear for m in modules)  # every nn.Linear became a quantised one
    assert any(type(m).__name__ == "Linear" and "quantized" in type(m).__module__ for m in modules)
    docs = ["how do bees make honey", "the cat sat on the mat", "bees and honey"]
    a, b = plain.score("honey bees", docs), int8.score("honey bees", docs)
    assert a != b and max(abs(x - y) for x, y in zip(a, b)) < 0.5  # int8 rounding moves the scores a little
    assert int8.config()["backend"]["quantize"] == "int8"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"quantize": "int4"}, "unknown quantize 'int4' for backend: choose one of int8"),
        ({"quantize": "int8", "dtype": "bfloat16"}, "quantize='int8' needs float32 weights"),
        ({"reuse_prefix": 1}, "reuse_prefix must be"),
        ({"batch_tokens": 0}, "batch_tokens must be"),
        ({"threads": 0}, "threads must be at least 1"),
        ({"compile": True, "quantize": "int8"}, "compile does not combine with quantize='int8': choose one"),
        ({"compile": "yes"}, "compile must be"),
    ],
)
def test_bad_speed_options_are_refused_before_a_model_loads(given, message):
    from llmrerank import Reranker

    with pytest.raises((ValueError, TypeError), match=message):
        Reranker("likelihood", model="/nonexistent/folder", **given)


def _compile_cases() -> tuple[list[list[int]], list[list[int]]]:
    """Prompts of every pass shape compile meets: two queries' shared heads (a prefix pass of one row, then rows
    after it), prompts that share nothing, a one-token prompt; and a target for each."""
    prompts = [*_shared_prefix_prompts(), *_sequences(6), [9]]
    return prompts, [list(range(7, 8 + i % 3)) for i in range(len(prompts))]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_compile_keeps_every_primitive_and_the_model_as_it_was(tokenizer, arch):
    from conftest import make_model

    prompts, targets = _compile_cases()
    eager = HFBackend(make_model(len(tokenizer), arch), tokenizer, batch_size=4)
    model = make_model(len(tokenizer), arch)  # the same weights (same seed), compiled
    names = list(model.state_dict())
    compiled = HFBackend(model, tokenizer, batch_size=4, compile=True)
    # each of the 2 layers' MLP and its 2 RMS norms, and the final norm; compiled in place: the same modules,
    # names and weights (a trained adapter or a checkpoint still loads into them)
    assert compiled.compiled == 2 * 3 + 1 and compiled.compile_seconds > 0
    assert list(model.state_dict()) == names
    kinds = {type(m).__name__ for m in model.modules() if m._compiled_call_impl is not None}
    assert kinds == {f"{'Qwen2' if arch == 'qwen2' else 'Llama'}{k}" for k in ("MLP", "RMSNorm")}
    torch.testing.assert_close(compiled.last_logits(prompts), eager.last_logits(prompts), atol=1e-4, rtol=0)
    torch.testing.assert_close(compiled.last_hidden(prompts), eager.last_hidden(prompts), atol=1e-4, rtol=0)
    for a, b in zip(compiled.target_logprobs(prompts, targets), eager.target_logprobs(prompts, targets)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert compiled.generate(prompts[:5], 6) == eager.generate(prompts[:5], 6)
    assert compiled.stats.reused_tokens == eager.stats.reused_tokens > 0  # the same passes, prefixes included


def test_compile_builds_every_shape_kind_at_load(tokenizer):
    """Dynamic shapes still treat a size of one apart: the warm-up at load covers one row and one token too, so
    decoding steps compile nothing more."""
    from torch._dynamo.utils import counters

    from conftest import make_model

    torch._dynamo.reset()
    counters.clear()
    backend = HFBackend(make_model(len(tokenizer), "llama"), tokenizer, compile=True)
    built = counters["stats"]["unique_graphs"]
    assert built > 0
    backend.generate([[7, 8, 9], [10, 11, 12, 13, 14]], 4)  # passes of 2 rows × 5, then 2 × 1 decoding steps
    backend.generate([[7, 8, 9]], 3)  # 1 × 3, then 1 × 1
    assert counters["stats"]["unique_graphs"] == built


def test_a_compiled_backend_refuses_to_train(tokenizer):
    from conftest import make_model

    backend = HFBackend(make_model(len(tokenizer), "llama"), tokenizer, compile=True)
    for step in (lambda: backend.add_lora(4, 8, 0.0, "all-linear"), backend.unfreeze):
        with pytest.raises(ValueError, match=r"compiled for inference \(compile=True\): load it without compile"):
            step()
    assert not backend.has_lora


def test_compile_without_a_working_cxx_compiler_fails_at_load_naming_the_cause(tokenizer):
    """A CPU without a C++ compiler: inductor cannot build the kernels. The error comes at load (two small passes
    run there), names the cause and the way out, and leaves the model uncompiled."""
    import torch._inductor.config as inductor

    from conftest import make_model
    from llmrerank.backends.hf import CompileError
    from llmrerank.cli import FAILED, describe_error

    model = make_model(len(tokenizer), "llama")
    before = model(input_ids=torch.tensor([[7, 8, 9]])).logits
    torch._dynamo.reset()  # no compiled code of an earlier test may serve the passes
    no_compiler = {"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False, "autotune_local_cache": False}
    with inductor.patch(no_compiler), pytest.raises(CompileError) as failed:
        HFBackend(model, tokenizer, compile=True)
    message = str(failed.value)
    assert message.startswith("torch.compile could not build kernels for this model (InductorError: ")
    assert "/nonexistent/c++" in message and "on cpu it needs a working C++ compiler" in message
    assert message.endswith("install them, or load the model without compile")
    assert describe_error(failed.value) == (message, FAILED)  # the CLI prints it as one line, exit 1
    assert all(m._compiled_call_impl is None for m in model.modules())
    torch.testing.assert_close(model(input_ids=torch.tensor([[7, 8, 9]])).logits, before)


def test_a_model_without_mlp_or_rms_norm_modules_cannot_compile(tokenizer):
    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, input_ids, **kwargs):
            raise AssertionError("not reached")

    with pytest.raises(ValueError, match="compile found no feed-forward or RMS norm modules in Bare"):
        HFBackend(Bare(), tokenizer, compile=True)


def test_compile_is_an_option_every_entry_point_rebuilds(tiny_model_dir):
    from llmrerank import Reranker

    docs = ["how do bees make honey", "the cat sat on the mat", "bees and honey"]
    eager = Reranker("likelihood", model=str(tiny_model_dir), max_length=64, dtype="float32")
    compiled = Reranker("likelihood", model=str(tiny_model_dir), max_length=64, dtype="float32", compile=True)
    assert compiled.backend.compiled == 7 and eager.backend.compiled == 0
    assert compiled.score("honey bees", docs) == pytest.approx(eager.score("honey bees", docs), abs=1e-4)
    config = compiled.config()
    assert config["backend"]["compile"] is True and eager.config()["backend"]["compile"] is False
    again = Reranker.from_config(config)
    assert again.backend.compiled == 7


def test_the_pass_cost_defaults_to_the_devices_and_cuts_padding_without_changing_scores(tokenizer):
    from conftest import make_model
    from llmrerank.backends.hf import PASS_COST

    model = make_model(len(tokenizer))
    seqs = _sequences(16)
    cut = HFBackend(model, tokenizer, batch_size=16, reuse_prefix=False)  # CPU float32: its measured pass cost
    filled = HFBackend(model, tokenizer, batch_size=16, reuse_prefix=False, pass_cost=FILL)
    assert cut.pass_cost == PASS_COST[("cpu", "float32")] == 40
    torch.testing.assert_close(cut.last_logits(seqs), filled.last_logits(seqs), atol=1e-4, rtol=1e-4)
    # lengths 3 to 39: one pass of 16 rows pads every row to the longest; at 40 tokens a pass, the planner cuts
    # the sorted lengths where that padding costs more
    assert filled.stats.forward_calls == 1 and cut.stats.forward_calls > 1
    assert cut.stats.padded_tokens < filled.stats.padded_tokens
    expected = [len(p) for p in plan_batches([len(s) for s in seqs], 8192, 16, pass_cost=40)]
    assert [len(p.rows) for p in cut.plan(seqs, reuse=False)] == expected
    # generation steps through every pass once per new token: it fills its passes whatever the pass cost
    cut.stats.forward_calls = 0
    assert cut.generate(seqs, 2) == filled.generate(seqs, 2) and cut.stats.forward_calls == 2
    assert HFBackend(model.to(torch.bfloat16), tokenizer).pass_cost == 250  # bfloat16 passes cost more tokens
    with pytest.raises(ValueError, match="pass_cost must be at least 0"):
        HFBackend(model, tokenizer, pass_cost=-1)
    with pytest.raises(TypeError, match=r"pass_cost must be an int or None \(the device's\), got 2.5"):
        HFBackend(model, tokenizer, pass_cost=2.5)
    # a backend built by hand keeps the pass cost it was given in its ranker's config (None: the device's)
    from llmrerank.rankers.base import backend_options

    assert backend_options(filled)["pass_cost"] == FILL and "pass_cost" not in backend_options(cut)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_head_gets_a_contiguous_slice_so_a_frozen_model_scores_as_a_trainable_one(tokenizer, dtype):
    # A model whose weights need no gradient (a merged adapter, a frozen LoRA base) used to get its head's input as
    # a strided slice, which torch multiplies by copying the head's weight for every row (seconds a pass): the
    # backend makes the slice contiguous, and the scores are those of the same model with trainable weights.
    from conftest import make_model

    frozen = make_model(len(tokenizer)).to(dtype)
    trainable = make_model(len(tokenizer)).to(dtype)
    for p in frozen.parameters():
        p.requires_grad_(False)
    seen: list[bool] = []
    backend = HFBackend(frozen, tokenizer)
    frozen.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    HFBackend(frozen, tokenizer)  # a second backend on the same model adds no second hook
    assert len(frozen.get_output_embeddings()._forward_pre_hooks) == 2
    prompts = _sequences(6)
    targets = [[10, 11, 12], [13], [14, 15], [16, 17, 18, 19], [20, 21], [22]]
    atol = 1e-4 if dtype == torch.float32 else 2e-2
    for a, b in zip(backend.target_logprobs(prompts, targets), HFBackend(trainable, tokenizer).target_logprobs(
        prompts, targets
    )):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    torch.testing.assert_close(backend.last_logits(prompts), HFBackend(trainable, tokenizer).last_logits(prompts),
                               atol=atol, rtol=0)
    assert seen and all(seen)


def test_a_huge_document_is_cut_to_max_length_and_scored_within_the_pass_budget(tiny_model_dir):
    """A document of over a million characters costs what any document past ``max_length`` costs: its prompt is
    cut (keeping the document's start), every pass stays within the budget, and its score is that of its cut."""
    from llmrerank import Reranker

    words = "honey bees make honey from flower nectar".split()
    huge = " ".join(words[i % len(words)] for i in range(250_000))
    head = " ".join(words[i % len(words)] for i in range(200))  # its first 200 words, already past the cut
    docs = [huge, head, "why does a volcano erupt", "the cat sat on the mat"]
    assert len(huge) > 1_000_000
    ranker = Reranker("pointwise", model=str(tiny_model_dir), dtype="float32", max_length=96, batch_size=4,
                      batch_tokens=192)
    prompts = [e.prompt for e in ranker.encode("how do bees make honey", docs)]
    assert max(len(p) for p in prompts) == 96 and prompts[0] == prompts[1]
    for p in ranker.backend.plan(prompts):
        assert len(p.rows) <= 4 and len(p.rows) * max(len(prompts[i]) - p.prefix for i in p.rows) <= 192
    scores = ranker.score("how do bees make honey", docs)
    assert scores[0] == pytest.approx(scores[1], abs=1e-5) and all(s == s for s in scores)
