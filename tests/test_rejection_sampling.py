"""bench/rejection_sampling.py: which answers it keeps, and rounds through train_sft.py and evaluate.py."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import rejection_sampling  # noqa: E402
import train_pretrain  # noqa: E402
from data.make_sft import make_sft  # noqa: E402

RECORDS = [{"prompt": p} for p in ("a", "b", "c", "d")]
GREEDY_GOLD = [0.5, 1.0, 0.2, 1.0]              # "a" and "c" fail greedily
SAMPLES = [["a1", "a2", "a3"], ["b1", "b2", "b3"], ["c1", "c2", "c3"], ["d1", "d2", "d3"]]
SAMPLE_GOLD = [[0.5, 1.0, 1.0], [1.0, 0.0, 1.0], [0.2, 0.9, 0.5], [0.5, 0.5, 1.0]]   # "c": none perfect


def chats(rows):
    return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows]


def test_select_keeps_the_first_perfect_sample_and_repeats_greedy_failures():
    rows, stats = rejection_sampling.select(RECORDS, GREEDY_GOLD, SAMPLES, SAMPLE_GOLD, 2, 1, seed=0)
    assert chats(rows)[:2] == [("a", "a2"), ("a", "a2")]      # its first perfect sample, twice
    assert len(rows) == 3 and chats(rows)[2] in {("b", "b1"), ("d", "d3")}   # one greedy pass of two
    assert stats == {"kept": 3, "failed_kept": 1, "others_kept": 1}
    assert all(r["messages"][0]["role"] == "user" and r["messages"][1]["role"] == "assistant" for r in rows)
    rows, _ = rejection_sampling.select(RECORDS, GREEDY_GOLD, SAMPLES, SAMPLE_GOLD, 3, 0, seed=0)
    assert chats(rows) == [("a", "a2")] * 3
    rows, _ = rejection_sampling.select(RECORDS, GREEDY_GOLD, SAMPLES, SAMPLE_GOLD, 1, 10, seed=0)
    assert sorted(chats(rows)) == [("a", "a2"), ("b", "b1"), ("d", "d3")]


def test_rounds_fine_tune_on_the_kept_answers_each_from_the_last(corpus_dir, tmp_path, monkeypatch):
    pre = str(tmp_path / "pretrain")
    train_pretrain.main(["--preset=micro", "--device=cpu", f"--data_dir={corpus_dir}", f"--out_dir={pre}"])
    data = str(tmp_path / "sft")
    make_sft(data, n_train=8, n_test=4, n_heldout=4, n_rl=5)
    out = tmp_path / "rs"
    args = ["--preset=micro", "--device=cpu", f"--sft_ckpt={pre}/ckpt.pt", f"--prompts={data}/rl_prompts.jsonl",
            f"--data_dir={data}", f"--out_dir={out}", "--k=2", "--max_new_tokens=8", "--examples=4"]
    # A micro model never writes a perfect answer, so the judge here is told that every answer is:
    # each prompt's greedy answer then passes too, and its first sample is kept as one of the others.
    monkeypatch.setattr(rejection_sampling, "gold_reward", lambda *a: 1.0)
    results = rejection_sampling.main(args + ["--rounds=2"])
    assert [r["rows"] for r in results] == [5, 5] and results[0]["failed_kept"] == 0
    assert results[0]["greedy_perfect"] == results[0]["pass_at_k"] == 1.0
    assert all(0.0 <= r[split] <= 1.0 for r in results for split in ("test", "heldout"))
    prompts = [json.loads(line)["prompt"] for line in open(f"{data}/rl_prompts.jsonl")]
    kept = [json.loads(line) for line in open(out / "round1" / "data.jsonl")]
    assert sorted(r["messages"][0]["content"] for r in kept) == sorted(prompts)
    # one epoch of 5 conversations at 8 a step is one step; round 2 starts from round 1's model
    first, second = (torch.load(out / f"round{r}" / "ckpt.pt", weights_only=True) for r in (1, 2))
    assert first["step"] == second["step"] == 1
    assert first["init_from"] == f"{pre}/ckpt.pt" and second["init_from"] == str(out / "round1" / "ckpt.pt")
    assert json.loads((out / "results.json").read_text()) == results
    assert first["config"]["learning_rate"] == rejection_sampling.Config().learning_rate   # its own, not SFT's
    assert first["config"]["min_lr"] == pytest.approx(rejection_sampling.Config().learning_rate / 10)
    # a judge that passes nothing leaves nothing to learn from: a clear error, not an empty run
    monkeypatch.setattr(rejection_sampling, "gold_reward", lambda *a: 0.5)
    with pytest.raises(SystemExit, match="nothing to learn from"):
        rejection_sampling.main(args)


def test_one_round_reports_greedy_sample_and_pass_at_k_rates(micro_pipeline, tmp_path, monkeypatch):
    """Two prompts, three samples each: the shares are of prompts (greedy, pass@k) and of all
    six samples (sample_perfect), as a judge that knows each answer's score gives them."""
    out, _ = micro_pipeline
    prompts = tmp_path / "rl_prompts.jsonl"
    prompts.write_text("".join(open(os.path.join(out, "data", "sft", "rl_prompts.jsonl")).readlines()[:2]))
    gold = {"g0": 1.0, "g1": 0.5, "a": 0.0, "b": 1.0, "c": 1.0, "d": 0.2, "e": 0.0, "f": 0.9}
    monkeypatch.setattr(rejection_sampling, "generate_responses", lambda *a, **kw: ["g0", "g1"])
    sampled_with = []
    monkeypatch.setattr(rejection_sampling, "sample_answers", lambda *a, **kw: sampled_with.append(a[3:6]) or [
        ["a", "b", "c"], ["d", "e", "f"]])
    monkeypatch.setattr(rejection_sampling, "gold_reward", lambda prompt, answer, *a: gold[answer])
    cfg = rejection_sampling.Config(prompts=str(prompts), k=3, device="cpu", temperature=0.9, max_new_tokens=40)
    stats = rejection_sampling.one_round(cfg, os.path.join(out, "sft", "ckpt.pt"), str(tmp_path / "round1"), "cpu")
    assert sampled_with == [(3, 0.9, 40)]   # k samples at the configured temperature and length
    assert stats == {"kept": 1, "failed_kept": 0, "others_kept": 1, "greedy_perfect": 0.5,
                     "sample_perfect": pytest.approx(2 / 6), "pass_at_k": 0.5, "rows": 1}
    kept = [json.loads(line) for line in open(tmp_path / "round1" / "data.jsonl")]
    assert [r["messages"][1]["content"] for r in kept] == ["b"]


def test_the_others_are_a_seeded_draw():
    drawn = {seed: chats(rejection_sampling.select(RECORDS, GREEDY_GOLD, SAMPLES, SAMPLE_GOLD, 1, 1, seed)[0])[-1]
             for seed in range(20)}
    assert set(drawn.values()) == {("b", "b1"), ("d", "d3")}   # either greedy pass, as the seed falls
    assert all(chats(rejection_sampling.select(RECORDS, GREEDY_GOLD, SAMPLES, SAMPLE_GOLD, 1, 1, seed)[0])[-1] == d
               for seed, d in drawn.items())
