"""Pointwise and likelihood rankers on tiny random models: exact values against hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from llmrerank import Document, Reranker
from llmrerank.prompts import PromptTemplate
from llmrerank.rankers import LikelihoodRanker, PointwiseRanker

QUERY = "how do honey bees make honey"
DOCS = [
    "honey bees make honey from flower nectar",
    "why does a volcano erupt",
    "the cat sat on the mat",
    "sourdough bread rise",
]


def _logits_of_text(backend, text: str) -> torch.Tensor:
    ids = backend.tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return backend.model(input_ids=torch.tensor([ids])).logits[0]


def _chat_prompt(tokenizer, template: PromptTemplate, query: str, doc: str) -> str:
    user = template.user.replace("{query}", query).replace("{document}", doc)
    messages = [{"role": "system", "content": template.system}] if template.system else []
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + template.assistant


def test_pair_softmax_equals_hand_computed_log_sigmoid(backend):
    ranker = PointwiseRanker(backend)
    tok = backend.tokenizer
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    scores = ranker.score(QUERY, DOCS)
    for doc, got in zip(DOCS, scores):
        z = _logits_of_text(backend, _chat_prompt(tok, ranker.template, QUERY, doc))[-1]
        expected = math.log(1 / (1 + math.exp(-(z[yes] - z[no]).item())))
        assert got == pytest.approx(expected, abs=1e-5)


def test_all_normalisations_match_their_formulas(qwen_backend):
    tok = qwen_backend.tokenizer
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    variants = PointwiseRanker(qwen_backend).score_variants(QUERY, DOCS)
    for i, doc in enumerate(DOCS):
        z = _logits_of_text(qwen_backend, _chat_prompt(tok, PointwiseRanker(qwen_backend).template, QUERY, doc))[-1]
        assert variants["yes_logit"][i] == pytest.approx(z[yes].item(), abs=1e-4)
        assert variants["vocab_softmax"][i] == pytest.approx(torch.log_softmax(z, -1)[yes].item(), abs=1e-5)
        assert variants["pair_softmax"][i] == pytest.approx(torch.log_softmax(z[[yes, no]], -1)[0].item(), abs=1e-5)
    # one ranker per normalisation gives the same numbers as the one-pass variants
    for name, values in variants.items():
        assert PointwiseRanker(qwen_backend, normalisation=name).score(QUERY, DOCS) == pytest.approx(values, abs=1e-5)


def test_true_false_tokens_and_custom_pair(qwen_backend):
    tok = qwen_backend.tokenizer
    ranker = PointwiseRanker(qwen_backend, tokens="true_false", normalisation="yes_logit")
    assert ranker.template.name == "true_false"
    assert (ranker.yes_id, ranker.no_id) == (tok.convert_tokens_to_ids("true"), tok.convert_tokens_to_ids("false"))
    custom = PointwiseRanker(qwen_backend, tokens=("relevant", "no"))
    assert custom.yes_id == tok.convert_tokens_to_ids("relevant")


def test_query_likelihood_equals_hand_computed_mean_logprob(backend):
    ranker = LikelihoodRanker(backend)
    tok = backend.tokenizer
    query_ids = tok(QUERY, add_special_tokens=False)["input_ids"]
    scores = ranker.score(QUERY, DOCS)
    for doc, got in zip(DOCS, scores):
        prompt = _chat_prompt(tok, ranker.template, QUERY, doc)
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        logprobs = torch.log_softmax(_logits_of_text(backend, prompt + " " + QUERY), -1)
        per_token = [logprobs[n_prompt - 1 + k, t].item() for k, t in enumerate(query_ids)]
        assert got == pytest.approx(sum(per_token) / len(per_token), abs=1e-5)
    summed = LikelihoodRanker(backend, reduction="sum").score(QUERY, DOCS)
    assert summed == pytest.approx([s * len(query_ids) for s in scores], abs=1e-4)


def test_rank_orders_by_score_and_keeps_ties_in_input_order(qwen_backend):
    ranker = PointwiseRanker(qwen_backend)
    docs = [DOCS[2], DOCS[0], DOCS[2], DOCS[1], DOCS[2]]  # three identical documents tie exactly
    scores = ranker.score(QUERY, docs)
    ranking = ranker.rank(QUERY, docs)
    assert list(ranking.scores) == sorted(scores, reverse=True)
    assert [scores[i] for i in ranking.indices] == list(ranking.scores)
    tied = [i for i in ranking.indices if i in (0, 2, 4)]
    assert tied == [0, 2, 4]
    assert ranking.ids is None
    with_ids = ranker.rank(QUERY, [Document(d, id=f"d{i}") for i, d in enumerate(docs)])
    assert with_ids.ids == tuple(f"d{i}" for i in with_ids.indices)
    assert with_ids.metadata["tokens"] > 0


def test_rank_many_equals_rank_per_query(qwen_backend):
    ranker = LikelihoodRanker(qwen_backend)
    queries = [QUERY, "why does a volcano erupt", "how does sourdough bread rise"]
    lists = [DOCS, DOCS[1:], DOCS[:2]]
    many = ranker.rank_many(queries, lists)
    for q, docs, r in zip(queries, lists, many):
        single = ranker.rank(q, docs)
        assert r.indices == single.indices
        assert r.scores == pytest.approx(single.scores, abs=1e-5)


def test_score_tensor_is_the_inference_score_with_gradients(qwen_backend):
    for ranker in (PointwiseRanker(qwen_backend), LikelihoodRanker(qwen_backend)):
        t = ranker.score_tensor(QUERY, DOCS)
        assert t.requires_grad
        assert t.detach().tolist() == pytest.approx(ranker.score(QUERY, DOCS), abs=1e-5)
        t.sum().backward()
        qwen_backend.model.zero_grad(set_to_none=True)
    logit = PointwiseRanker(qwen_backend, normalisation="logit").score_tensor(QUERY, DOCS)
    assert torch.nn.functional.logsigmoid(logit).tolist() == pytest.approx(
        PointwiseRanker(qwen_backend).score(QUERY, DOCS), abs=1e-5
    )


def test_titles_are_rendered_before_the_text(qwen_backend):
    ranker = LikelihoodRanker(qwen_backend)
    with_title = ranker.score(QUERY, [Document("make honey", title="honey bees")])
    as_text = ranker.score(QUERY, ["honey bees\nmake honey"])
    assert with_title == pytest.approx(as_text, abs=1e-6)


def test_empty_and_bad_inputs(qwen_backend):
    ranker = PointwiseRanker(qwen_backend)
    assert ranker.score(QUERY, []) == []
    assert len(ranker.rank(QUERY, [])) == 0
    with pytest.raises(TypeError, match="position 1"):
        ranker.score(QUERY, ["ok", 3])
    with pytest.raises(TypeError, match="query must be a str"):
        ranker.score(None, ["ok"])
    with pytest.raises(TypeError, match="not a single string"):
        ranker.score(QUERY, "a string")
    with pytest.raises(ValueError, match="2 queries but 1 candidate lists"):
        ranker.rank_many([QUERY, QUERY], [DOCS])
    with pytest.raises(ValueError, match="unknown normalisation"):
        PointwiseRanker(qwen_backend, normalisation="softmax")
    with pytest.raises(ValueError, match="not single known tokens"):
        PointwiseRanker(qwen_backend, tokens=("honey bees", "no"))  # two tokens
    with pytest.raises(ValueError, match="unknown reduction"):
        LikelihoodRanker(qwen_backend, reduction="max")
    with pytest.raises(ValueError, match="no target"):
        LikelihoodRanker(qwen_backend, template="yes_no")
    with pytest.raises(ValueError, match="query-likelihood template"):
        PointwiseRanker(qwen_backend, template="query_likelihood")


def test_registry_factory(qwen_backend):
    r = Reranker("likelihood", backend=qwen_backend, max_length=64, reduction="sum")
    assert isinstance(r, LikelihoodRanker) and r.max_length == 64 and r.reduction == "sum"
    with pytest.raises(ValueError, match="unknown method 'listwize'"):
        Reranker("listwize", backend=qwen_backend)
    with pytest.raises(TypeError, match="unknown option.*normalisation"):
        Reranker("likelihood", backend=qwen_backend, normalisation="yes_logit")
    with pytest.raises(TypeError, match="existing backend"):
        Reranker("pointwise", backend=qwen_backend, dtype="bfloat16")
    d = r.describe()
    assert d["method"] == "likelihood" and d["template"]["name"] == "query_likelihood"


def test_dense_head_scores_the_hidden_state_at_an_appended_eos(qwen_backend, tmp_path):
    ranker = PointwiseRanker(qwen_backend, head="dense")
    tok = qwen_backend.tokenizer
    with pytest.raises(ValueError, match="untrained"):
        ranker.score(QUERY, DOCS)
    trained = ranker.score_tensor(QUERY, DOCS)  # training may call the untrained head
    assert trained.requires_grad
    with torch.no_grad():
        ranker.dense.linear.weight.mul_(3.0)
        ranker.dense.linear.bias.fill_(0.25)
    ranker.dense.save(tmp_path / "head.safetensors")
    loaded = PointwiseRanker(qwen_backend, head="dense", head_weights=tmp_path / "head.safetensors")
    assert loaded.dense.trained and loaded.options.head == "dense"
    assert "tokens" not in loaded.describe() and "normalisation" not in loaded.describe()
    assert "head_weights" not in loaded.describe() and loaded.config()["options"]["head_weights"] == str(
        tmp_path / "head.safetensors"
    )
    with pytest.raises(ValueError, match="score_variants .* needs head='tokens'"):
        loaded.score_variants(QUERY, DOCS)
    scores = loaded.score(QUERY, DOCS)
    w, b = ranker.dense.linear.weight[0], ranker.dense.linear.bias[0]
    for doc, got in zip(DOCS, scores):
        ids = tok(_chat_prompt(tok, loaded.template, QUERY, doc), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = qwen_backend.model(input_ids=torch.tensor([[*ids, tok.eos_token_id]]), output_hidden_states=True)
        expected = (out.hidden_states[-1][0, -1] @ w + b).item()
        assert got == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="only apply to head='dense'"):
        PointwiseRanker(qwen_backend, head_weights=tmp_path / "head.safetensors")
    with pytest.raises(ValueError, match="unknown head"):
        PointwiseRanker(qwen_backend, head="mlp")


def test_a_cut_prompt_keeps_the_appended_eos_within_max_length(qwen_backend):
    long_doc = " ".join(["honey bees"] * 200)
    dense = PointwiseRanker(qwen_backend, head="dense", max_length=64)
    (encoded,) = dense.encode(QUERY, [long_doc])
    assert encoded.truncated and len(encoded.prompt) == 64 and encoded.prompt[-1] == qwen_backend.tokenizer.eos_token_id
    (plain,) = PointwiseRanker(qwen_backend, max_length=64).encode(QUERY, [long_doc])
    assert len(plain.prompt) == 64 and plain.prompt[:-1] != encoded.prompt[:-1]  # one document token less


def test_an_unknown_answer_word_is_refused(qwen_backend):
    with pytest.raises(ValueError, match="'zzz' not single known tokens"):
        PointwiseRanker(qwen_backend, tokens=("yes", "zzz"))


def test_one_helper_builds_rankings_and_one_checks_scores_are_finite():
    from llmrerank.rankers.base import check_finite
    from llmrerank.types import make_ranking

    docs = [Document("a", id="x"), Document("b", id="y"), Document("c", id="z")]
    r = make_ranking([2, 0, 1], docs, metadata={"tokens": 3})
    assert (r.indices, r.scores, r.ids, r.metadata) == ((2, 0, 1), (3.0, 2.0, 1.0), ("z", "x", "y"), {"tokens": 3})
    assert make_ranking([1, 0], [Document("a"), Document("b", id="y")], [0.5, 0.25]).ids is None
    assert make_ranking([], []).indices == ()
    assert check_finite(torch.tensor([1.0, -2.0])).tolist() == [1.0, -2.0]
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(FloatingPointError, match="1 non-finite scores"):
            check_finite(torch.tensor([0.0, bad]))
