"""bench/bench_generate.py --sampler swaps torch.multinomial in for minift's sampler: it must
take every argument generate_stream passes, and the swap must be undone."""
import subprocess
import sys

import pytest

import minift.engine
from bench import bench_generate
from conftest import ROOT


def test_sampler_comparison_runs_both_samplers_and_restores_ours():
    ours = minift.engine.sample_next
    times = bench_generate.compare_samplers(batch=4, prompt_len=8, new_tokens=4, repeats=1)
    assert set(times) == {"sample_next", "torch.multinomial"} and all(len(t) == 1 for t in times.values())
    assert minift.engine.sample_next is ours


def test_the_swap_is_undone_when_a_run_fails(monkeypatch):
    ours = minift.engine.sample_next

    def fails_on_multinomial(*args, **kwargs):
        if minift.engine.sample_next is not ours:
            raise RuntimeError("out of memory")
    monkeypatch.setattr(bench_generate, "generate", fails_on_multinomial)
    with pytest.raises(RuntimeError, match="out of memory"):
        bench_generate.compare_samplers(batch=1, prompt_len=2, new_tokens=1, repeats=1)
    assert minift.engine.sample_next is ours


def test_an_unknown_option_stops_instead_of_running_the_default_bench():
    """--sampler=true (the --key=value spelling of the other scripts) must not time the
    KV cache in silence."""
    for args, said in ((["--sampler=true"], "unknown option --sampler=true"), (["--bogus"], "unknown option --bogus"),
                       (["--sampler", "--stopped_rows"], "one option at a time, not --sampler --stopped_rows")):
        r = subprocess.run([sys.executable, "bench/bench_generate.py", *args], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 1 and r.stderr.startswith(f"error: {said}")
        assert not r.stdout   # nothing was timed
