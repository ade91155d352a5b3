"""The core without extras: no module imports an optional dependency at import time, and with none importable
every module still imports and a ranker ranks."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import llmrerank
from llmrerank.extras import EXTRAS

PACKAGE = Path(llmrerank.__file__).parent
REFERENCES = ("sentence_transformers", "allrank")  # test-only reference implementations


def _import_time_nodes(tree: ast.AST):
    """The nodes that run when a module is imported: everything outside function bodies."""
    for node in ast.iter_child_nodes(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield node
            yield from _import_time_nodes(node)


def test_no_core_module_imports_an_extra_at_import_time():
    optional = {*EXTRAS, *REFERENCES}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in _import_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "require":
                names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant)]
            else:
                continue
            found += [f"{path.relative_to(PACKAGE)}:{node.lineno} {n}" for n in names if n.split(".")[0] in optional]
    assert found == []


# A fresh interpreter in which the extras and the references cannot be imported even where they are installed, as
# if they were not: every module imports and a ranker on the tiny model ranks. PyYAML stays importable, since
# huggingface_hub (a dependency of transformers) imports it itself; the test above covers llmrerank's own use.
SCRIPT = """
import importlib, json, pkgutil, sys

for name in sys.argv[2].split(","):
    sys.modules[name] = None  # makes the import fail, as if not installed
import llmrerank

for info in pkgutil.walk_packages(llmrerank.__path__, "llmrerank."):
    importlib.import_module(info.name)
ranker = llmrerank.Reranker("pointwise", model=sys.argv[1], threads=1, max_length=96)
print(json.dumps(list(ranker.rank("how do honey bees make honey", ["why does a volcano erupt", "bees"]).indices)))
"""


def test_the_core_imports_and_ranks_without_extras(tiny_model_dir):
    hidden = sorted({*EXTRAS, *REFERENCES} - {"yaml"})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_model_dir), ",".join(hidden)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(json.loads(result.stdout.strip().splitlines()[-1])) == [0, 1]
