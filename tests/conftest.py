import os
import sys

# Tests import the scripts (train_pretrain.py, ...) as modules, so the repo root goes on sys.path.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import pytest
import torch


_CORPUS = {}


@pytest.fixture(scope="module")  # and cached below: one corpus for the whole run
def corpus_dir(tmp_path_factory):
    """A small generated corpus with its own tokenizer, made once per test run and shared by
    the training tests."""
    if "dir" not in _CORPUS:
        from data.prepare import prepare
        out = tmp_path_factory.mktemp("corpus")
        prepare(str(out), size_mb=0.3, seed=0, vocab_size=512, prompts_mb=0.05)
        _CORPUS["dir"] = str(out)
    return _CORPUS["dir"]


_PIPELINE = {}


@pytest.fixture(scope="module")  # and cached below: one run for the whole test run
def micro_pipeline(tmp_path_factory):
    """pipeline.py run once per test run, uninterrupted, on the micro preset: its out_dir and
    report.json. Tests that change the folder work on a copy."""
    if "run" not in _PIPELINE:
        import json
        import subprocess
        out = str(tmp_path_factory.mktemp("pipeline") / "micro")
        r = subprocess.run([sys.executable, "pipeline.py", "--preset=micro", f"--out_dir={out}", "--device=cpu"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        with open(os.path.join(out, "report.json")) as f:
            _PIPELINE["run"] = out, json.load(f)
    return _PIPELINE["run"]


def stand_in_generate(model, *args, **kw):
    """In place of minift.engine.generate, which runs a real GPT: a stand-in model's own
    generate() answers (tests patch it in where the code under test calls the engine)."""
    return model.generate(*args, **kw)


def read_metrics(out_dir):
    import json
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_main(script, args):
    """A training script's main() in this process, on one thread (a model this small gains
    nothing from a second, and loses a lot on a busy machine). Starting a new Python costs
    seconds of imports (torch, then torch._dynamo with the first optimizer); the scripts' own
    command lines are run as processes where that matters (Ctrl-C, DDP, pipeline.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return script.main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)


def stop_after(steps):
    """A StopRequest that acts as if Ctrl-C came during step `steps` + 1: the loop then saves
    and raises Interrupted, exactly as after a real SIGINT (StopRequest._handle sets the flag)."""
    from minift.training import StopRequest

    class Stop(StopRequest):
        calls = 0

        def agreed(self):
            self.calls += 1
            if self.calls > steps:
                self.requested = True
            return super().agreed()
    return Stop
