"""Model families: a published reranker's exact prompt, answer tokens and score, by name.

Qwen3-Reranker is held to its model card's transformers example, written out below as the card writes it, on a
tiny random Qwen3 model with a packaged BPE tokenizer (SmolLM2's: its "\\n\\n" merges differently at the end of
a text than before one, so it tells apart ids read where the model writes them from the card's vocabulary ids).
"""

from __future__ import annotations

import pytest
import torch

from conftest import family_model, smollm2_tokenizer
from llmrerank.prompts import PromptRenderer, get_template
from llmrerank.prompts.families import FAMILIES, QWEN3_RERANKER, QWEN3_RERANKER_INSTRUCTION
from llmrerank.rankers.pointwise import PointwiseOptions, PointwiseRanker

# The model card's strings, as its example writes them (Qwen/Qwen3-Reranker-0.6B).
CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

PAIRS = [
    ("how long do fleas live", "Adult fleas live two to three months on a host, feeding on blood."),
    ("how long do fleas live", "Concrete floors cost 2 to 6 dollars per square foot, installed."),
    ("what is the boiling point of water", "At sea level, pure water boils at 100 degrees Celsius."),
    ("what is the boiling point of water", "The Eiffel Tower is 330 metres tall.\nIt was finished in 1889."),
]


def card_inputs(tokenizer, pairs, instruction, max_length):
    """The card's ``process_inputs``: the prefix and suffix tokenised apart, the formatted pair whole and cut."""
    prefix = tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
    texts = [f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
    body = tokenizer(
        texts,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix) - len(suffix),
    )["input_ids"]
    return [prefix + ids + suffix for ids in body]


def card_scores(model, tokenizer, inputs):
    """The card's ``compute_logits``: P(yes) under the softmax over the "no" and "yes" logits, left padded."""
    no, yes = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    width = max(map(len, inputs))
    ids = torch.tensor([[0] * (width - len(x)) + x for x in inputs])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in inputs])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -1, :]
    pair = torch.stack([logits[:, no], logits[:, yes]], dim=1)
    return torch.nn.functional.log_softmax(pair, dim=1)[:, 1].exp().tolist()


@pytest.fixture(scope="module")
def qwen3():
    """A tiny random Qwen3 model over SmolLM2's packaged tokenizer."""
    from llmrerank.backends.hf import HFBackend

    tokenizer = smollm2_tokenizer()
    model = family_model("qwen3", len(tokenizer), max_position_embeddings=2048)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # so that the answer logits differ clearly
    return model, tokenizer, HFBackend(model, tokenizer, batch_size=3, name="tiny-qwen3")


@pytest.mark.model
@pytest.mark.parametrize(
    ("instruction", "max_length"), [(None, 512), ("Find the passage that answers it", 512), (None, 100)]
)
def test_qwen3_reranker_renders_and_scores_as_its_model_card(qwen3, instruction, max_length):
    model, tokenizer, backend = qwen3
    options = {"instruction": instruction} if instruction else {}
    ranker = PointwiseRanker(backend, family="qwen3-reranker", max_length=max_length, **options)
    want_ids = card_inputs(tokenizer, PAIRS, instruction or QWEN3_RERANKER_INSTRUCTION, max_length)
    got_ids = [list(e.prompt) for q, d in PAIRS for e in ranker.encode(q, [d])]
    assert got_ids == want_ids  # token for token, the cut ones (max_length 100) included
    if max_length == 100:
        assert max(map(len, got_ids)) == 100 and ranker.encode(PAIRS[0][0], [PAIRS[0][1]])[0].truncated
    want = card_scores(model, tokenizer, want_ids)
    got = [torch.tensor(s).exp().item() for q, d in PAIRS for s in ranker.score(q, [d])]
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-4
    assert [ranker.yes_id, ranker.no_id] == tokenizer.convert_tokens_to_ids(["yes", "no"])
    # the relevance the server answers is the card's score
    ranking = ranker.rank(PAIRS[0][0], [PAIRS[0][1]])
    assert abs(ranker.relevance(ranking)[0] - want[0]) <= 1e-4


@pytest.mark.model
def test_answer_ids_read_after_the_prompt_would_differ_here(qwen3):
    """Why the family reads the vocabulary entries: after "</think>\\n\\n" this tokenizer writes " yes"."""
    _, tokenizer, backend = qwen3
    free = PointwiseRanker(backend, template=QWEN3_RERANKER, tokens=("yes", "no"))
    assert free.yes_id != tokenizer.convert_tokens_to_ids("yes")
    assert tokenizer.convert_ids_to_tokens(free.yes_id) == "\u0120yes"


def test_a_family_sets_its_options_and_is_recorded():
    options = PointwiseOptions.build({"family": "qwen3-reranker"})
    assert options.template == QWEN3_RERANKER and options.tokens == ("yes", "no")
    assert (options.answer_ids, options.normalisation, options.head) == ("vocabulary", "pair_softmax", "tokens")
    assert options.to_dict()["family"] == "qwen3-reranker"
    assert PointwiseOptions.build(options.to_dict()) == options  # what config() and trained folders rebuild
    replaced = PointwiseOptions.build({"family": "qwen3-reranker", "instruction": "Find a recipe"})
    assert replaced.template.extra["instruction"] == "Find a recipe"
    assert PointwiseOptions.build(replaced.to_dict()) == replaced
    assert get_template("qwen3-reranker", "prompt") == QWEN3_RERANKER
    assert set(FAMILIES) >= {"qwen3-reranker"}


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"family": "qwen4"}, "unknown family 'qwen4': choose one of qwen3-reranker"),
        ({"family": "qwen3-reranker", "normalisation": "logit"}, "family 'qwen3-reranker' fixes normalisation"),
        ({"family": "qwen3-reranker", "template": "yes_no"}, "fixes template"),
        ({"family": "qwen3-reranker", "tokens": "true_false"}, "fixes tokens"),
        ({"instruction": "Find it"}, "instruction applies to a template with {instruction}; 'yes_no' has none"),
    ],
)
def test_what_a_family_fixes_cannot_be_changed(given, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("{", r"\{")):
        PointwiseOptions.build(given)


def test_the_family_prompt_is_the_model_cards_text(tokenizer):
    """The verbatim template renders the card's prefix, user text and suffix, the chat template unused."""
    renderer = PromptRenderer(QWEN3_RERANKER, tokenizer, max_length=512)
    head, tail = renderer.text_around_document("what is it")
    assert head == CARD_PREFIX + f"<Instruct>: {QWEN3_RERANKER_INSTRUCTION}\n<Query>: what is it\n<Document>: "
    assert tail == CARD_SUFFIX and not renderer.use_chat
    parts = renderer.parts("what is it")
    assert parts.label == "<Document>: "  # tokenised with the document, as the card tokenises it


def test_a_document_on_its_own_line_has_no_label(tokenizer):
    parts = PromptRenderer(get_template("yes_no", "prompt"), tokenizer, max_length=512).parts("cat")
    assert parts.label == "" and parts.label_ids == ()


def test_the_command_line_names_a_family_and_refuses_what_it_fixes(tiny_model_dir, capsys):
    from conftest import TINY
    from llmrerank.cli import main

    base = ["rerank", "--data", str(TINY), "--model", str(tiny_model_dir), "--out", "/tmp/never.trec", "--quiet"]
    assert main([*base, "--family", "qwen3-reranker", "--normalisation", "logit"]) == 2
    assert "family 'qwen3-reranker' fixes normalisation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--family", "qwen4"])
    assert "invalid choice: 'qwen4'" in capsys.readouterr().err
