import os
import sys

# Tests import the scripts (train_pretrain.py, ...) as modules, so the repo root goes on sys.path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    """A small generated corpus with its own tokenizer, shared by the training tests."""
    from data.prepare import prepare
    out = tmp_path_factory.mktemp("corpus")
    prepare(str(out), size_mb=0.3, seed=0, vocab_size=512)
    return str(out)


def read_metrics(out_dir):
    import json
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]
