"""Templates as data; truncation cuts only the document."""

from __future__ import annotations

import pytest

from llmrerank.prompts import (
    YES_NO,
    PromptRenderer,
    PromptTemplate,
    PromptTooLongError,
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
