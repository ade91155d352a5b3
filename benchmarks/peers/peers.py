"""The peers of the throughput benchmark: other ways to score the same (query, passage) pairs with the same
causal-LM weights, timed the same way. Runs in its own virtualenv (``benchmarks/peers/setup.sh`` builds it:
transformers 4, FlagEmbedding, sentence-transformers) and never imports llmrerank.

Peers (``--peer``):

- ``flag_llm``: FlagEmbedding's ``FlagLLMReranker`` with its default prompt; ``compute_score`` once per query
  on that query's pairs; the score is the raw logit of "Yes" at the last position (``normalize=False``).
  Note that ``compute_score`` runs one extra forward pass per call on its longest batch (its batch-size
  probe); that pass is FlagEmbedding's own cost and is inside the timing (``probe_tokens`` counts it). It
  pads on the tokenizer's side (right, for SmolLM2) to a multiple of 8 and computes the logits of every
  position (and all hidden states); the two other peers keep the last position's logits only.
- ``cross_encoder``: sentence-transformers' ``CrossEncoder`` over the causal LM (its ``text-generation``
  ``Transformer`` module plus a ``LogitScore`` module on the "Yes" token: the same raw logit), with a chat
  template that renders FlagLLMReranker's layout. Its inputs are the pair texts cut, before the timing, to
  FlagLLMReranker's token budgets, so both see the same tokens (``ids_equal_to_flag`` says for how many pairs
  the token ids were checked equal).
- ``transformers_loop``: plain transformers: FlagLLMReranker's prompt rebuilt token for token, the pairs of
  a query sorted by length (longest first) and cut into batches of ``--batch-size``, left padding with
  position ids from the attention mask, ``logits_to_keep=1``, ``torch.inference_mode``; the score is the
  last-position logit of "Yes".

Passage text, for every peer: ``title + " " + text`` when the title is not empty, else ``text`` (llmrerank's
rule; BEIR's reranker joins the same way and strips the result; DL19 passages have no titles, so there it is
the text).

The timing is around the scoring calls only (model load, data load, tokenizer warm-up excluded); one warm-up
call on the first pair of the first query is made before it. Output (``--out``): the peer, the settings,
library versions, per query ``[[docid, score], ...]`` in the BM25 order, ``seconds``, ``docs_per_s``,
``prompt_tokens`` and ``tokens_per_s`` (every real token of every pair's prompt, each pair once), and the
peak resident memory.

    bash benchmarks/peers/setup.sh
    benchmarks/peers/.venv/bin/python benchmarks/peers/peers.py --peer flag_llm --model FOLDER \\
        --data ../shared/data/dl19 --queries 1 --top-k 10 --out /tmp/flag.json --dump-prompts /tmp/flag-prompts.json

Model folders written by transformers 5 (``rope_parameters`` in config.json, ``TokenizersBackend`` as the
tokenizer class) are read through a temporary folder of links whose two JSON files are rewritten in the
transformers 4 form (``rope_theta``/``rope_scaling``, ``PreTrainedTokenizerFast``); the weights are the same
files.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TQDM_DISABLE", "1")  # FlagEmbedding's progress bars would fill the log
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PEERS = ("flag_llm", "cross_encoder", "transformers_loop")


class NotSupported(Exception):
    """A peer that cannot score a causal LM in this environment (written to the JSON as ``supported: false``)."""


# FlagLLMReranker's defaults (FlagEmbedding 1.4.2, inference/reranker/decoder_only/base.py), reproduced as
# interface data for the transformers loop and the CrossEncoder template.
FLAG_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)
FLAG_QUERY_PREFIX = "A: "
FLAG_PASSAGE_PREFIX = "B: "
FLAG_SEP = "\n"


# --- data -------------------------------------------------------------------------------------------------------


def passage_text(doc: dict[str, Any]) -> str:
    """``title + " " + text`` when the title is not empty, else ``text``, nothing stripped: llmrerank's rule
    (``Document`` text with its title). BEIR's ``rerank.py`` joins the same way and then strips the result;
    DL19 has no titles and no text with outer whitespace, so there the rules agree."""
    title = doc.get("title") or ""
    return f"{title} {doc['text']}" if title else doc["text"]



def _jsonl_rows(path: Path, ids: set[str]) -> list[dict]:
    """The rows of a JSON-lines file whose ``_id`` is in ``ids``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if row["_id"] in ids:
                    rows.append(row)
    return rows

def load_data(folder: Path, queries: int | None, top_k: int) -> tuple[list[str], dict[str, str], dict]:
    """The first ``queries`` judged queries of ``bm25-top100.trec`` (in the file's order), their top ``top_k``
    documents (rank order) and the texts: ``(qids, {qid: query}, {qid: [(docid, passage), ...]})``."""
    judged: set[str] = set()
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as f:
        for number, line in enumerate(f):
            fields = line.split("\t")
            if number == 0 and not fields[-1].strip().lstrip("-").isdigit():
                continue  # the header: query-id corpus-id score
            if line.strip():
                judged.add(fields[0].strip())
    ranked: dict[str, list[tuple[int, str]]] = {}
    with open(folder / "bm25-top100.trec", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) != 6:
                continue
            qid, _, docid, rank, _, _ = fields
            ranked.setdefault(qid, []).append((int(rank), docid))
    qids = [q for q in ranked if q in judged]
    if queries is not None:
        qids = qids[:queries]
    run = {q: [d for _, d in sorted(ranked[q], key=lambda r: r[0])][:top_k] for q in qids}
    query_text = {r["_id"]: r["text"] for r in _jsonl_rows(folder / "queries.jsonl", set(run))}
    wanted = {d for docs in run.values() for d in docs}
    texts = {r["_id"]: passage_text(r) for r in _jsonl_rows(folder / "corpus.jsonl", wanted)}
    missing = sorted(wanted - texts.keys())
    if missing:
        raise KeyError(f"{len(missing)} candidates have no text in corpus.jsonl, e.g. {missing[:3]}")
    return qids, query_text, {q: [(d, texts[d]) for d in run[q]] for q in qids}


# --- transformers 4 view of a transformers 5 folder -------------------------------------------------------------


def v4_folder(folder: Path) -> Path:
    """``folder`` itself when transformers 4 reads it as it is, else a temporary folder of links to its files
    with config.json and tokenizer_config.json rewritten in the transformers 4 form (removed at exit)."""
    config = json.loads((folder / "config.json").read_text())
    tok_path = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_path.read_text()) if tok_path.exists() else {}
    new_config = dict(config)
    rope = new_config.pop("rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" not in config:
        new_config["rope_theta"] = rope["rope_theta"]
        extra = {k: v for k, v in rope.items() if k != "rope_theta"}
        if extra.get("rope_type", "default") != "default":
            new_config["rope_scaling"] = extra
    elif rope is not None:
        new_config["rope_parameters"] = rope
    if "dtype" in new_config and "torch_dtype" not in new_config:
        new_config["torch_dtype"] = new_config["dtype"]
    new_tok = dict(tok_config)
    if new_tok.get("tokenizer_class") == "TokenizersBackend":
        new_tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    if new_config == config and new_tok == tok_config:
        return folder
    view = Path(tempfile.mkdtemp(prefix="peers-v4-"))
    atexit.register(shutil.rmtree, view, True)
    for item in folder.iterdir():
        if item.name not in ("config.json", "tokenizer_config.json"):
            (view / item.name).symlink_to(item.resolve())
    (view / "config.json").write_text(json.dumps(new_config, indent=2))
    if tok_config:
        (view / "tokenizer_config.json").write_text(json.dumps(new_tok, indent=2))
    return view


# --- FlagLLMReranker's prompt, token for token ------------------------------------------------------------------


class FlagPrompt:
    """FlagLLMReranker's input ids for a (query, passage) pair (FlagEmbedding 1.4.2, ``compute_score`` with
    its defaults, the tokenizer's ``truncation_side`` right):

    ``[bos] + Q + S + P' + S + R`` where
    ``bos`` is the tokenizer's BOS id, present only when there is one and it differs from the pad id;
    ``Q = tok("A: " + query)[:max_length * 3 // 4]``; ``S = tok("\\n")``;
    ``P = tok("B: " + passage)[:max_length]``; ``R = tok(prompt)``; every ``tok`` without special tokens;
    ``P'`` is ``P`` cut from the right so that ``len([bos] + Q + S + P') <= max_length + len(S) + len(R)``
    (when that would take all of ``S + P`` away, nothing is cut, as in the tokenizer's ``only_second``).
    The score is the logit of ``tok("Yes")[0]`` at the last position.
    """

    def __init__(self, tokenizer: Any, max_length: int, prompt: str = FLAG_PROMPT):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.query_max_length = max_length * 3 // 4
        self.sep = tokenizer(FLAG_SEP, add_special_tokens=False)["input_ids"]
        self.prompt = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
        self.bos = [bos] if bos is not None and bos != pad else []
        self.encode_max_length = max_length + len(self.sep) + len(self.prompt)
        self.yes_id = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]

    def parts(self, query: str, passage: str) -> tuple[list[int], list[int]]:
        """The first part ``[bos] + Q`` and the cut second part ``S + P'``."""
        q = self.tokenizer(
            FLAG_QUERY_PREFIX + query, add_special_tokens=False, truncation=True, max_length=self.query_max_length
        )["input_ids"]
        p = self.tokenizer(
            FLAG_PASSAGE_PREFIX + passage, add_special_tokens=False, truncation=True, max_length=self.max_length
        )["input_ids"]
        first, second = self.bos + q, self.sep + p
        remove = len(first) + len(second) - self.encode_max_length
        if 0 < remove < len(second):
            second = second[:-remove]
        return first, second

    def ids(self, query: str, passage: str) -> list[int]:
        first, second = self.parts(query, passage)
        return first + second + self.sep + self.prompt


# --- the peers --------------------------------------------------------------------------------------------------


class Counter:
    """Forward passes, real tokens and padded positions seen by a model (a forward pre-hook)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (real tokens, positions) per forward
        self.capture = False  # keep the ids of the last forward (for the prompt checks, never while timed)
        self.last_ids: list[list[int]] = []

    def attach(self, model: Any) -> None:
        """Count at the base model (``LlamaModel`` in ``LlamaForCausalLM``): its ``__call__`` runs the hooks even
        when the caller calls the outer model's ``forward`` directly, as sentence-transformers does."""
        model.base_model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            return
        real = int(mask.sum()) if mask is not None else ids.numel()
        self.calls.append((real, ids.numel()))
        if self.capture:
            self.last_ids = ids.tolist() if mask is None else [row[m.bool()].tolist() for row, m in zip(ids, mask)]

    def captured(self, call: Any) -> list[list[int]]:
        """The ids (padding cut) of the last forward that ``call()`` makes."""
        self.capture = True
        try:
            call()
        finally:
            self.capture = False
        return self.last_ids

    def tokens(self, skip: int = 0) -> tuple[int, int, int]:
        """(real tokens less ``skip``, positions fed with padding, forward calls)."""
        return sum(r for r, _ in self.calls) - skip, sum(n for _, n in self.calls), len(self.calls)


def dtype_of(bf16: bool) -> Any:
    import torch

    return torch.bfloat16 if bf16 else torch.float32


class FlagPeer:
    def __init__(self, folder: Path, args: argparse.Namespace):
        from FlagEmbedding import FlagLLMReranker

        self.args = args
        self.reranker = FlagLLMReranker(
            str(folder),
            use_fp16=False,
            use_bf16=args.bf16,
            devices="cpu",
            batch_size=args.batch_size,
            max_length=args.max_length,
            normalize=False,
        )
        self.tokenizer = self.reranker.tokenizer
        self.yes_id = self.reranker.yes_loc
        self.counter = Counter()
        self.counter.attach(self.reranker.model)
        self.probe_tokens = 0

    def score(self, query: str, passages: list[str]) -> list[float]:
        before = len(self.counter.calls)
        scores = self.reranker.compute_score(
            [(query, p) for p in passages],
            batch_size=self.args.batch_size,
            max_length=self.args.max_length,
            normalize=False,
        )
        self.probe_tokens += self.counter.calls[before][0]  # the first forward of a call is its probe
        return [float(s) for s in scores]

    def fed_ids(self, query: str, passage: str) -> list[int]:
        """The ids FlagLLMReranker feeds the model for one pair (a call of its own, one pair, padding cut)."""
        return self.counter.captured(
            lambda: self.reranker.compute_score(
                [(query, passage)], batch_size=1, max_length=self.args.max_length, normalize=False
            )
        )[0]

    def reset(self) -> None:
        self.counter.calls.clear()
        self.probe_tokens = 0

    def tokens(self) -> tuple[int, int, int]:
        """(real tokens of every pair once, positions fed with padding, forward calls); the probes' positions
        and calls are counted, their tokens are not (``probe_tokens``)."""
        return self.counter.tokens(skip=self.probe_tokens)


class LoopPeer:
    def __init__(self, folder: Path, args: argparse.Namespace):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.args = args
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype_of(args.bf16)).eval()
        self.prompt = FlagPrompt(self.tokenizer, args.max_length)
        self.yes_id = self.prompt.yes_id
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.real = self.positions = self.calls = 0
        self.torch = torch

    def score(self, query: str, passages: list[str]) -> list[float]:
        torch = self.torch
        seqs = [self.prompt.ids(query, p) for p in passages]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        scores = [0.0] * len(seqs)
        with torch.inference_mode():
            for start in range(0, len(order), self.args.batch_size):
                batch = order[start : start + self.args.batch_size]
                width = max(len(seqs[i]) for i in batch)
                ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, width - len(seqs[i]) :] = torch.tensor(seqs[i])
                    mask[row, width - len(seqs[i]) :] = 1
                positions = (mask.cumsum(1) - 1).clamp(min=0)
                out = self.model(
                    input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1, use_cache=False
                )
                yes = out.logits[:, -1, self.yes_id].float().tolist()
                for row, i in enumerate(batch):
                    scores[i] = yes[row]
                self.real += int(mask.sum())
                self.positions += ids.numel()
                self.calls += 1
        return scores

    def reset(self) -> None:
        self.real = self.positions = self.calls = 0

    def tokens(self) -> tuple[int, int, int]:
        return self.real, self.positions, self.calls


def cross_encoder_template(bos: str, prompt: str = FLAG_PROMPT) -> str:
    """A chat template that renders FlagLLMReranker's layout from the ``query`` and ``document`` messages that
    CrossEncoder makes of a pair: ``bos + "A: " + query + "\\n" + "B: " + document + "\\n" + prompt`` (the texts
    it gets are already cut to FlagLLMReranker's budgets, see ``CrossEncoderPeer.cut``)."""
    lit = json.dumps  # a JSON string is a Jinja string literal

    def role(name: str, prefix: str) -> str:
        return (
            f"{{% for m in messages if m['role'] == '{name}' %}}{{{{ {lit(prefix)} }}}}"
            "{% if m['content'] is string %}{{ m['content'] }}{% else %}{{ m['content'][0]['text'] }}{% endif %}"
            "{% endfor %}"
        )

    return (
        f"{{{{ {lit(bos)} }}}}"
        + role("query", FLAG_QUERY_PREFIX)
        + f"{{{{ {lit(FLAG_SEP)} }}}}"
        + role("document", FLAG_PASSAGE_PREFIX)
        + f"{{{{ {lit(FLAG_SEP + prompt)} }}}}"
    )


class CrossEncoderPeer:
    def __init__(self, folder: Path, args: argparse.Namespace):
        import torch
        from sentence_transformers import CrossEncoder
        from transformers import AutoTokenizer

        try:  # sentence-transformers 5.x: a causal LM behind CrossEncoder
            from sentence_transformers.base.modules import Transformer
            from sentence_transformers.cross_encoder.modules.logit_score import LogitScore
        except ImportError as e:
            import sentence_transformers

            raise NotSupported(
                f"sentence-transformers {sentence_transformers.__version__} has no LogitScore module: its "
                f"CrossEncoder only loads sequence-classification heads, not a causal LM's yes logit ({e})"
            ) from None

        self.args = args
        self.torch = torch
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.prompt = FlagPrompt(tokenizer, args.max_length)
        self.tokenizer = tokenizer
        self.yes_id = self.prompt.yes_id
        bos = tokenizer.decode(self.prompt.bos) if self.prompt.bos else ""
        template = cross_encoder_template(bos)
        # room for the whole FlagLLMReranker prompt, so CrossEncoder cuts nothing itself
        budget = self.prompt.encode_max_length + len(self.prompt.sep) + len(self.prompt.prompt) + 8
        transformer = Transformer(
            str(folder),
            transformer_task="text-generation",
            max_seq_length=budget,
            model_kwargs={"dtype": dtype_of(args.bf16)},
            processor_kwargs={"chat_template": template},
        )
        self.model = CrossEncoder(
            modules=[transformer, LogitScore(true_token_id=self.yes_id)],
            device="cpu",
            activation_fn=torch.nn.Identity(),
        )
        self.model.eval()
        self.transformer = transformer
        self.counter = Counter()
        self.counter.attach(transformer.model)
        self.checked = self.equal = 0

    def cut(self, query: str, passage: str) -> tuple[str, str]:
        """The query and passage as texts whose tokens are FlagLLMReranker's cut parts (prefixes removed)."""
        first, second = self.prompt.parts(query, passage)
        q = self.tokenizer.decode(first[len(self.prompt.bos) :], clean_up_tokenization_spaces=False)
        p = self.tokenizer.decode(second[len(self.prompt.sep) :], clean_up_tokenization_spaces=False)
        return q[len(FLAG_QUERY_PREFIX) :], p[len(FLAG_PASSAGE_PREFIX) :]

    def prepare(self, query: str, passages: list[str]) -> list[tuple[str, str]]:
        return [self.cut(query, p) for p in passages]

    def score(self, query: str, pairs: list[tuple[str, str]]) -> list[float]:
        scores = self.model.predict(
            pairs, batch_size=self.args.batch_size, show_progress_bar=False, convert_to_numpy=True
        )
        return [float(s) for s in scores]

    def check_ids(self, query: str, passage: str) -> tuple[list[int], list[int]]:
        """(ids CrossEncoder feeds for the cut pair, FlagLLMReranker's ids) for one pair."""
        fed = self.counter.captured(
            lambda: self.model.predict([self.cut(query, passage)], batch_size=1, show_progress_bar=False)
        )[0]
        return fed, self.prompt.ids(query, passage)

    def reset(self) -> None:
        self.counter.calls.clear()

    def tokens(self) -> tuple[int, int, int]:
        return self.counter.tokens()


# --- running ----------------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "tokenizers",
        "FlagEmbedding",
        "sentence-transformers",
        "peft",
        "accelerate",
        "numpy",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def peak_memory() -> dict[str, float]:
    """``ru_maxrss`` (on Linux it can hold the parent's size at the fork that started this process) and
    ``VmHWM`` (this program's own peak since its exec) in MiB."""
    out = {"ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["vmhwm_mib"] = round(int(line.split()[1]) / 1024, 1)
    out["peak_rss_mib"] = out.get("vmhwm_mib", out["ru_maxrss_mib"])
    return out


def dump_prompts(peer: Any, name: str, query: str, passages: list[str], path: Path) -> dict[str, Any]:
    """The ids FlagLLMReranker feeds the model for the first three pairs (when the peer is flag_llm: captured
    from its forward calls; else this file's rebuild of them), with the decoded text of the first."""
    prompt = FlagPrompt(peer.tokenizer, peer.args.max_length)
    pairs = []
    for passage in passages[:3]:
        ids = peer.fed_ids(query, passage) if name == "flag_llm" else prompt.ids(query, passage)
        pairs.append([query, passage, ids])
    rebuilt_equal = [p[2] == prompt.ids(query, p[1]) for p in pairs]
    data = {
        "source": "captured from FlagLLMReranker's forward calls" if name == "flag_llm" else "rebuilt (FlagPrompt)",
        "pairs": pairs,
        "yes_id": prompt.yes_id,
        "yes_token": peer.tokenizer.convert_ids_to_tokens(prompt.yes_id),
        "bos_ids": prompt.bos,
        "sep_ids": prompt.sep,
        "prompt_ids": prompt.prompt,
        "query_max_length": prompt.query_max_length,
        "encode_max_length": prompt.encode_max_length,
        "rebuilt_equal": rebuilt_equal,
        "prompt_text_decoded": peer.tokenizer.decode(
            pairs[0][2], skip_special_tokens=False, clean_up_tokenization_spaces=False
        ),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    return {"dumped": str(path), "rebuilt_equal": rebuilt_equal}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    settings = {
        "model": str(args.model),
        "data": str(args.data),
        "queries": args.queries,
        "top_k": args.top_k,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "bf16": args.bf16,
        "dtype": "bfloat16" if args.bf16 else "float32",
        "device": "cpu",
        "passage_text": 'title + " " + text if title else text',
    }
    result: dict[str, Any] = {"peer": args.peer, "settings": settings, "versions": versions()}
    qids, queries, run_docs = load_data(args.data, args.queries, args.top_k)
    folder = v4_folder(args.model)
    result["settings"]["model_view"] = "as is" if folder == args.model else "transformers 4 view (links)"

    start = time.perf_counter()
    peer = {"flag_llm": FlagPeer, "transformers_loop": LoopPeer, "cross_encoder": CrossEncoderPeer}[args.peer](
        folder, args
    )
    result["load_seconds"] = time.perf_counter() - start
    result["yes_id"] = peer.yes_id
    extra: dict[str, Any] = {}

    first_q = qids[0]
    first_passages = [t for _, t in run_docs[first_q]]
    if args.dump_prompts:
        extra["dump_prompts"] = dump_prompts(peer, args.peer, queries[first_q], first_passages, args.dump_prompts)
    if args.peer == "cross_encoder":
        checks = [peer.check_ids(queries[first_q], p) for p in first_passages[:3]]
        extra["ids_equal_to_flag"] = f"{sum(a == b for a, b in checks)}/{len(checks)}"
        inputs = {q: peer.prepare(queries[q], [t for _, t in run_docs[q]]) for q in qids}  # untimed: the cut
    else:
        inputs = {q: [t for _, t in run_docs[q]] for q in qids}
    peer.score(queries[first_q], inputs[first_q][:1])  # warm-up, untimed
    peer.reset()

    scores: dict[str, list[list[Any]]] = {}
    seconds = 0.0
    for q in qids:
        start = time.perf_counter()
        got = peer.score(queries[q], inputs[q])
        seconds += time.perf_counter() - start
        scores[q] = [[d, s] for (d, _), s in zip(run_docs[q], got)]
    real, positions, calls = peer.tokens()
    docs = sum(len(v) for v in scores.values())
    if args.peer == "cross_encoder":
        all_checks = [peer.check_ids(queries[q], t) for q in qids for _, t in run_docs[q]] if args.check_all else []
        if all_checks:
            extra["ids_equal_to_flag_all"] = f"{sum(a == b for a, b in all_checks)}/{len(all_checks)}"
    if args.peer == "flag_llm":
        extra["probe_tokens"] = peer.probe_tokens
    result.update(
        {
            "supported": True,
            "qids": qids,
            "seconds": seconds,
            "docs": docs,
            "docs_per_s": docs / seconds,
            "prompt_tokens": real,
            "tokens_per_s": real / seconds,
            "padded_positions": positions,
            "forward_calls": calls,
            **extra,
            **peak_memory(),
            "scores": scores,
        }
    )
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", choices=PEERS, required=True)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 weights (FlagLLMReranker: use_bf16=True)")
    ap.add_argument("--model", type=Path, required=True, help="a Hugging Face causal-LM folder")
    ap.add_argument("--data", type=Path, required=True, help="a BEIR folder with bm25-top100.trec")
    ap.add_argument("--queries", type=int, default=None, help="the first N judged queries of the run")
    ap.add_argument("--top-k", type=int, default=100)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", type=Path, required=True, help="the result JSON")
    ap.add_argument(
        "--dump-prompts",
        type=Path,
        default=None,
        help="write FlagLLMReranker's token ids for the first 3 pairs of the first query here",
    )
    ap.add_argument(
        "--check-all",
        action="store_true",
        help="cross_encoder: check every pair's token ids against FlagLLMReranker's (untimed)",
    )
    args = ap.parse_args(argv)
    if "llmrerank" in sys.modules:
        raise RuntimeError("the peers must not import llmrerank")
    try:
        result = run(args)
    except NotSupported as e:
        result = {"peer": args.peer, "supported": False, "error": [str(e)], "versions": versions()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if result.get("supported"):
        print(
            f"{args.peer}: {result['docs']} docs in {result['seconds']:.2f} s, {result['docs_per_s']:.1f} docs/s, "
            f"{result['tokens_per_s']:.0f} tokens/s, peak RSS {result['peak_rss_mib']:.0f} MiB"
        )
    else:
        print(f"{args.peer}: not supported: {result['error'][0]}")


if __name__ == "__main__":
    main()
