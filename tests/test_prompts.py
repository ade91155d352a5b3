"""Templates as data; truncation cuts only the document."""

from __future__ import annotations

import json
import re

import pytest

from llmrerank.prompts import (
    PRP,
    RANKGPT,
    RANKZEPHYR_PARAPHRASE,
    YES_NO,
    ComparisonTemplate,
    ListwiseTemplate,
    PromptRenderer,
    PromptTemplate,
    PromptTooLongError,
    RenderedPassages,
    builtin_names,
    fit_passages,
    get_template,
    load_template,
)
from llmrerank.types import Document

LONG_DOC = Document(" ".join(["honey bees make honey"] * 100))


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_truncation_cuts_only_the_document(tokenizer):
    r = PromptRenderer(YES_NO, tokenizer, max_length=80)
    parts = r.parts("why does a volcano erupt")
    ids = r.render("why does a volcano erupt", LONG_DOC, parts)
    assert len(ids) == 80
    assert tuple(ids[: len(parts.head)]) == parts.head
    assert tuple(ids[-len(parts.tail) :]) == parts.tail  # the instruction and answer suffix survive
    tail_text = tokenizer.decode(parts.tail)
    assert "Answer yes or no" in tail_text and "<|assistant|>" in tail_text
    assert "why does a volcano erupt" in tokenizer.decode(parts.head)
    doc_ids, cut = r.document_ids(LONG_DOC, parts)
    assert cut and doc_ids == _ids(tokenizer, LONG_DOC.text)[: 80 - len(parts.head) - len(parts.tail)]


def test_short_document_is_not_cut(tokenizer):
    r = PromptRenderer(YES_NO, tokenizer, max_length=512)
    parts = r.parts("q")
    doc_ids, cut = r.document_ids(Document("honey bees"), parts)
    assert not cut and doc_ids == _ids(tokenizer, "honey bees")


def test_fixed_parts_longer_than_max_length_raise(tokenizer):
    r = PromptRenderer(YES_NO, tokenizer, max_length=20)
    with pytest.raises(PromptTooLongError, match="max_length=20"):
        r.parts("why does a volcano erupt")


def test_likelihood_target_counts_towards_the_budget(tokenizer):
    tmpl = get_template("query_likelihood")
    r = PromptRenderer(tmpl, tokenizer, max_length=40)
    parts = r.parts("how do honey bees make honey")
    assert parts.target == tuple(_ids(tokenizer, "how do honey bees make honey"))
    assert len(r.render("x", LONG_DOC, parts)) + len(parts.target) == 40


def test_plain_rendering_without_chat_template():
    from conftest import make_tokenizer

    tok = make_tokenizer(chat=False)
    r = PromptRenderer(YES_NO, tok, max_length=512)
    assert not r.use_chat
    text = tok.decode(r.render("q", Document("honey"), r.parts("q")))
    assert "<|user|>" not in text and "honey" in text


def test_title_format(tokenizer):
    tmpl = PromptTemplate(name="t", user="{query} {document}", title_format="{title} : {text}")
    assert tmpl.document_text(Document("body", title="head")) == "head : body"
    assert tmpl.document_text(Document("body")) == "body"
    assert YES_NO.document_text(Document("body", title="head")) == "head\nbody"


def test_template_validation():
    with pytest.raises(ValueError, match="exactly once"):
        PromptTemplate(name="x", user="{query}")
    with pytest.raises(ValueError, match=r"must contain \{query\}"):
        PromptTemplate(name="x", user="{document}")
    with pytest.raises(ValueError, match="must not show the query"):
        PromptTemplate(name="x", user="{query} {document}", target="{query}")
    with pytest.raises(ValueError, match="unknown prompt template field"):
        PromptTemplate.from_dict({"user": "{query} {document}", "sytem": "typo"})
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        get_template("nope")


def test_load_template_from_toml_and_json(tmp_path):
    toml = tmp_path / "mine.toml"
    toml.write_text('system = "Be brief."\nuser = """Q: {query}\nD: {document}\nRelevant?"""\nassistant = "Answer:"\n')
    t = load_template(toml)
    assert (t.name, t.system, t.assistant) == ("mine", "Be brief.", "Answer:")
    js = tmp_path / "ql.json"
    js.write_text('{"user": "{document}", "target": "{query}", "chat": false}')
    assert load_template(js).target == "{query}" and load_template(js).chat is False
    bad = tmp_path / "bad.toml"
    bad.write_text("user = ")
    with pytest.raises(ValueError, match="cannot parse"):
        load_template(bad)
    with pytest.raises(FileNotFoundError):
        load_template(tmp_path / "missing.toml")


def test_a_query_that_contains_a_placeholder_stays_text(tokenizer):
    r = PromptRenderer(YES_NO, tokenizer, max_length=512)
    parts = r.parts("why {document} honey")
    ids = r.render("why {document} honey", Document("volcano"), parts)
    text = tokenizer.decode(ids)
    assert text.count("volcano") == 1 and "honey" in tokenizer.decode(parts.head)


def test_template_field_types_are_checked():
    with pytest.raises(ValueError, match="field 'chat' must be bool, got str"):
        PromptTemplate.from_dict({"user": "{query} {document}", "chat": "false"})
    with pytest.raises(ValueError, match="field 'user' must be str, got int"):
        PromptTemplate.from_dict({"user": 5})
    with pytest.raises(ValueError, match="title_format may only use"):
        PromptTemplate(name="t", user="{query} {document}", title_format="{title}: {body}")
    t = PromptTemplate(name="t", user="{query} {document}")
    assert t.document_text(Document("a {text} b", title="{title}")) == "{title}\na {text} b"


# --- what the kinds share (prompts.base) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, name, cls",
    [
        ("prompt", "yes_no", PromptTemplate),
        ("listwise", "rankgpt", ListwiseTemplate),
        ("comparison", "prp", ComparisonTemplate),
    ],
)
def test_one_registry_serves_every_kind(tmp_path, kind, name, cls):
    builtin = get_template(name, kind=kind)
    assert isinstance(builtin, cls) and builtin.name == name and name in builtin_names(kind)
    assert get_template(builtin, kind=kind) is builtin
    again = get_template(builtin.to_dict(), kind=kind)
    assert again == builtin and type(again) is cls
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({k: v for k, v in builtin.to_dict().items() if k != "name"}))
    assert get_template(str(f), kind=kind) == cls(**{**builtin.to_dict(), "name": "mine"})
    with pytest.raises(
        ValueError, match=re.escape(f"unknown {kind} template 'nope': give one of {builtin_names(kind)}")
    ):
        get_template("nope", kind=kind)


def test_the_registry_keeps_kinds_apart():
    with pytest.raises(ValueError, match=r"unknown listwise template 'yes_no'"):
        get_template("yes_no", kind="listwise")
    with pytest.raises(TypeError, match="a prompt template is a PromptTemplate.*not ListwiseTemplate"):
        get_template(RANKGPT)
    with pytest.raises(ValueError, match="unknown template kind 'pointwize'"):
        get_template("yes_no", kind="pointwize")
    assert builtin_names("prompt") == [
        "bge-reranker-v2-gemma", "mxbai-rerank-v2", "query_likelihood", "qwen3-reranker", "rankllama", "true_false",
        "yes_no",
    ]
    listwise = ["first", "rankgpt", "rankvicuna", "rankzephyr", "rankzephyr-paraphrase"]
    assert builtin_names("listwise") == listwise and builtin_names("comparison") == ["prp", "setwise"]


def test_every_kind_shows_a_titled_document_the_same_way():
    doc = Document("a {text} b", title="{title}")
    shown = "{title}\na {text} b"
    assert YES_NO.document_text(doc) == RANKZEPHYR_PARAPHRASE.document_text(doc) == PRP.document_text(doc) == shown
    assert PRP.document_text(Document("body")) == "body"


def test_fit_passages_on_a_hand_computed_case():
    pieces = [[1, 2], [3], [4]]  # 4 fixed tokens around two passages
    passages = [[10, 11, 12, 13, 14], [20, 21, 22]]
    # passage_tokens=4 alone would give 4 + 3 + 4 = 11 > 10, so the 6 tokens of room are shared: 3 each
    got = fit_passages(pieces, passages, passage_tokens=4, max_length=10)
    assert got.ids == (1, 2, 10, 11, 12, 3, 20, 21, 22, 4) and got.truncated == 1 and got.passage_budget == 3
    # with room to spare the budget is passage_tokens; reserve counts as fixed
    assert fit_passages(pieces, passages, 4, 100) == RenderedPassages((1, 2, 10, 11, 12, 13, 3, 20, 21, 22, 4), 1, 4)
    assert fit_passages(pieces, passages, 4, 12, reserve=2).passage_budget == 3
    with pytest.raises(
        PromptTooLongError, match=r"the x prompt without its 2 passages is 9 tokens \(t\), .*max_length=10; go"
    ):
        fit_passages(pieces, passages, 4, 10, reserve=5, what="x prompt", about="t", hint="go")
    with pytest.raises(ValueError, match="2 passages need 3 pieces"):
        fit_passages(pieces[:2], passages, 4, 10)
