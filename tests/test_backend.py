"""The transformers backend: exact primitives, and scores that do not depend on batching."""

from __future__ import annotations

import pytest
import torch

from llmrerank.backends.hf import HFBackend, parse_dtype


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
