#!/usr/bin/env bash
# Build the peers' virtualenv at benchmarks/peers/.venv from benchmarks/peers/requirements.txt (FlagEmbedding,
# sentence-transformers, mxbai-rerank, transformers 4, a CPU torch), apart from llmrerank and its transformers 5.
#
#   bash benchmarks/peers/setup.sh            # builds it, or does nothing when it is built and imports
#   PYTHON=python3.12 bash benchmarks/peers/setup.sh
#   bash benchmarks/peers/setup.sh --force    # rebuilds it from scratch
#
# Idempotent: a stamp in the venv holds the sha256 of requirements.txt; when it matches and the peers' packages
# import, nothing is done. A changed requirements.txt is installed into the existing venv; a venv that does not
# import is rebuilt.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
python="${PYTHON:-python3}"
unset PYTHONPATH  # llmrerank's source must not leak into the peers' environment

check='import torch, transformers, FlagEmbedding, sentence_transformers, peft, mxbai_rerank
from FlagEmbedding import FlagLLMReranker
from mxbai_rerank import MxbaiRerankV2
from sentence_transformers import CrossEncoder
assert transformers.__version__.startswith("4."), transformers.__version__'

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$venv"
fi

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
    && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "peers venv ready: $venv"
    exit 0
fi

"$python" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11 or newer is needed, got " + sys.version' 

if [[ -x "$venv/bin/python" ]] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    rm -rf "$venv"  # a venv whose interpreter is gone
fi
if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv"
    "$python" -m venv "$venv"
fi
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet -r "$req"
if ! "$venv/bin/python" -c "$check"; then
    echo "the peers venv at $venv does not import its packages" >&2
    exit 1
fi
echo "$want" > "$stamp"
"$venv/bin/python" -c 'import torch, transformers, FlagEmbedding, sentence_transformers as st
from importlib.metadata import version
print("peers venv ready:", "torch", torch.__version__, "| transformers", transformers.__version__,
      "| FlagEmbedding", version("FlagEmbedding"), "| sentence-transformers", st.__version__)'
