"""The greedy ``generate`` primitive listwise reranking adds to the transformers backend (tiny random models)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model
from llmrerank.backends.base import Backend
from llmrerank.backends.hf import HFBackend


def _sequences(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(3, 30, (n,), generator=g).tolist()
    return [torch.randint(7, 60, (length,), generator=g).tolist() for length in lengths]


def _naive_greedy(model, seq: list[int], steps: int) -> list[int]:
    """Greedy decoding the slow way: a full forward pass over the whole sequence for every new token."""
    cur, out = list(seq), []
    for _ in range(steps):
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([cur])).logits[0, -1].argmax())
        out.append(token)
        cur.append(token)
    return out


def test_generate_equals_naive_greedy_decoding(backend):
    seqs = _sequences(5)
    got = backend.generate(seqs, 6, stop_ids=[])
    for seq, tokens in zip(seqs, got):
        assert tokens == _naive_greedy(backend.model, seq, 6)


def test_per_sequence_caps_and_batch_composition(tokenizer):
    model = make_model(len(tokenizer), "llama")
    seqs = _sequences(7)
    caps = [1, 5, 3, 8, 2, 8, 4]
    one = HFBackend(model, tokenizer, batch_size=1).generate(seqs, caps, stop_ids=[])
    many = HFBackend(model, tokenizer, batch_size=7).generate(seqs, caps, stop_ids=[])
    assert one == many
    assert [len(t) for t in many] == caps


def test_stop_token_ends_a_row_and_is_kept(qwen_backend):
    seqs = _sequences(3)
    free = qwen_backend.generate(seqs, 8, stop_ids=[])
    stop = free[0][2]  # make the third token of the first row a stop token
    got = qwen_backend.generate(seqs, 8, stop_ids=[stop])
    first = free[0].index(stop)
    assert got[0] == free[0][: first + 1]
    for g, f in zip(got[1:], free[1:]):
        assert g == (f[: f.index(stop) + 1] if stop in f else f)


def test_default_stop_ids_and_accounting(tokenizer):
    b = HFBackend(make_model(len(tokenizer)), tokenizer, batch_size=4)
    assert b.stop_ids() == [tokenizer.eos_token_id]
    before = b.stats.snapshot()
    out = b.generate([[7, 8, 9], [10, 11]], 3)
    used = b.stats.since(before)
    assert used["generated_tokens"] == sum(len(t) for t in out)
    assert used["tokens"] == 5 and used["sequences"] == 2  # the prompts; generated tokens are counted apart
    assert isinstance(b, Backend)
    with pytest.raises(ValueError, match="at least 1"):
        b.generate([[7, 8]], 0)
    with pytest.raises(ValueError, match="2 sequences but 1 max_new_tokens"):
        b.generate([[7], [8]], [3])


# --- sampling (synthetic query generation) ---------------------------------------------------------------------


def _naive_sampling(model, seq: list[int], steps: int, temperature: float, top_p: float, seed: int) -> list[int]:
    """Sampling the slow way: a full forward pass a token, the nucleus cut by hand, one generator per sequence."""
    g = torch.Generator().manual_seed(seed)
    cur, out = list(seq), []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([cur])).logits[0, -1].float()
        probs = torch.softmax(logits / temperature, dim=-1)
        ranked, order = probs.sort(descending=True)
        cut = 1 + int((ranked.cumsum(0) < top_p).sum()) if top_p < 1 else len(ranked)
        token = int(order[torch.multinomial(ranked[:cut], 1, generator=g)])
        out.append(token)
        cur.append(token)
    return out


@pytest.mark.parametrize("top_p", [1.0, 0.5])
def test_sampling_equals_naive_sampling_alone_or_in_any_batch(tokenizer, top_p):
    from llmrerank.backends.base import Sampling

    model = make_model(len(tokenizer), "llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)  # a peaked distribution, so that the nucleus cut matters
    seqs = _sequences(5)
    seeds = (11, 12, 13, 14, 15)
    sampling = Sampling(temperature=2.0, seeds=seeds, top_p=top_p)
    many = HFBackend(model, tokenizer, batch_size=5).generate(seqs, 6, stop_ids=[], sampling=sampling)
    one = HFBackend(model, tokenizer, batch_size=1).generate(seqs, 6, stop_ids=[], sampling=sampling)
    assert many == one
    for seq, seed, tokens in zip(seqs, seeds, many):
        assert tokens == _naive_sampling(model, seq, 6, 2.0, top_p, seed)
    greedy = HFBackend(model, tokenizer, batch_size=5).generate(seqs, 6, stop_ids=[])
    assert many != greedy  # it does sample
    other = Sampling(temperature=2.0, seeds=(21, 22, 23, 24, 25), top_p=top_p)
    assert HFBackend(model, tokenizer, batch_size=5).generate(seqs, 6, stop_ids=[], sampling=other) != many


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"temperature": float("inf")}, "temperature must be a finite number > 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"seeds": (1, -2)}, "seeds must be integers >= 0"),
    ],
)
def test_bad_sampling_settings(given, message):
    from llmrerank.backends.base import Sampling

    with pytest.raises(ValueError, match=message):
        Sampling(**{"temperature": 0.7, "seeds": (1, 2), **given})


def test_one_seed_a_sequence(backend):
    from llmrerank.backends.base import Sampling

    with pytest.raises(ValueError, match="2 sequences but 1 sampling seeds"):
        backend.generate([[7, 8], [9, 10]], 2, sampling=Sampling(temperature=1.0, seeds=(1,)))
