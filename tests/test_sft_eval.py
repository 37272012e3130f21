"""SFT's data path (render + mask + batches), a few SFT steps through the real script,
evaluate.py on its output, and the whole pipeline on the micro preset."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, read_metrics
from minift.model import GPTConfig
from minift.tokenizer import Tokenizer, train_bpe
from train_sft import get_batch, length_order, render_dataset

MESSAGES = [{"role": "user", "content": "Name a pet."}, {"role": "assistant", "content": "A cat."}]


def test_sft_batch_targets_only_the_answer_and_end_token():
    tok = Tokenizer.from_ranks(train_bpe("Name a pet. A cat. A dog. " * 50, 300))
    examples, dropped = render_dataset([{"messages": MESSAGES}], tok, block_size=64)
    assert dropped == 0
    x, y = get_batch(examples, length_order(examples), 2, tok.pad, torch.Generator().manual_seed(0), "cpu",
                     block_size=64)
    ids = examples[0][0]
    answer = tok.encode("A cat.")
    # inputs are the conversation minus its last token, right-padded to a multiple of 16;
    # targets are -1 except the answer + <|end|>
    n = len(ids) - 1
    assert x.shape[1] == 16 * -(-n // 16)
    assert x[0, :n].tolist() == ids[:-1] and set(x[0, n:].tolist()) <= {tok.pad}
    learned = [t for t in y[0].tolist() if t != -1]
    assert learned == answer + [tok.end]
    # the target sits one position before the token it predicts
    first = y[0].tolist().index(answer[0])
    assert x[0, first].item() == tok.assistant


def test_length_buckets_cut_padding_and_reach_every_example():
    """Batches come from a window of similar lengths: far less padding than drawing at
    random, yet every example, the shortest and longest included, still comes up."""
    examples = [([7] * n, [0] * n) for n in range(10, 210)]   # lengths 10..209
    order = length_order(examples)
    gen = torch.Generator().manual_seed(0)
    seen, padded, real = set(), 0, 0
    for _ in range(300):
        x, _ = get_batch(examples, order, 8, 0, gen, "cpu", block_size=256, window=16)
        lengths = (x == 7).sum(dim=1)
        assert x.shape[1] % 16 == 0 and x.shape[1] - 16 < lengths.max()   # rounded up, no further
        padded += 8 * int(lengths.max())   # the padding that length buckets control
        real += int(lengths.sum())
        seen.update(int(n) + 1 for n in lengths)   # each row's example length
    assert real / padded > 0.9          # random batches of 8 from 10..209 fill only ~60%
    assert seen == set(range(10, 210))  # every example was drawn at least once


def test_overlong_conversations_are_dropped_and_counted():
    tok = Tokenizer.from_ranks(train_bpe("Name a pet. A cat. " * 50, 300))
    long = [{"role": "user", "content": "pet " * 100}, {"role": "assistant", "content": "A cat."}]
    examples, dropped = render_dataset([{"messages": MESSAGES}, {"messages": long}], tok, block_size=64)
    assert len(examples) == 1 and dropped == 1


def test_pipeline_micro_end_to_end(micro_pipeline, tmp_path):
    """Every stage through the real scripts on the micro preset; the report has every key."""
    out, report = micro_pipeline
    assert report["preset"] == "micro" and report["total_seconds"] > 0
    assert set(report["stages"]["pretrain"]) >= {"seconds", "val_loss"}
    assert report["stages"]["pretrain"]["tokens_per_s"] > 0  # the machine's speed, for comparing times
    assert "seconds" in report["stages"]["sft"]
    assert set(report["stages"]["reward"]) >= {"seconds", "pair_accuracy", "spearman_gold"}
    assert report["stages"]["reward"]["likelihood_weight"] == 2.0  # train_reward.py's default, reported
    assert set(report["stages"]["ppo"]) >= {"seconds", "kl", "reward_start", "reward_end", "gold_start", "gold_end"}
    assert report["stages"]["ppo"]["kl_max"] >= report["stages"]["ppo"]["kl"]  # the largest batch KL of the run
    # the probe's change, paired prompt by prompt (per-prompt scores are rounded to 4 decimals)
    ppo = report["stages"]["ppo"]
    assert set(ppo["gold_change"]) == {"mean", "se", "significant"}
    assert abs(ppo["gold_change"]["mean"] - (ppo["gold_end"] - ppo["gold_start"])) < 1e-3
    for model in ("base", "sft", "ppo"):
        for split in ("test", "heldout"):
            m = report["eval"][model][split]
            assert set(m) == {"prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose"}
            assert all(0.0 <= v <= 1.0 for v in m.values())
    with open(os.path.join(out, "report.md")) as f:
        assert "tokens/s" in f.read()
    # SFT was evaluated during training, and its metrics log has the accuracy
    assert any("eval_prompt_strict" in m for m in read_metrics(os.path.join(out, "sft")))
    # IFEval-format responses were written for external scoring
    with open(os.path.join(out, "sft", "responses_test.jsonl")) as f:
        assert set(json.loads(f.readline())) == {"prompt", "response"}
    # a second run skips every finished stage
    r = subprocess.run([sys.executable, "pipeline.py", "--preset=micro", f"--out_dir={out}", "--device=cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.count("done already") == 7, r.stdout[-2000:]
    # ... and its report still adds up the stages' own times, not just this quick run's
    with open(os.path.join(out, "report.json")) as f:
        again = json.load(f)
    assert again["total_seconds"] == report["total_seconds"] > again["run_seconds"]


def test_reward_hacking_needs_changes_beyond_the_noise():
    """The report calls it reward hacking only when a paired test over the probe prompts puts
    both changes beyond the noise: the learned reward up, the gold reward down."""
    from pipeline import reward_hacking_lines
    from minift.scoring import paired_difference
    before = [0.2, 0.6, 1.0, 0.6, 0.2, 1.0]
    fell = paired_difference(before, [x - 0.1 for x in before])      # every prompt 0.1 lower
    assert fell["mean"] == pytest.approx(-0.1) and fell["se"] == pytest.approx(0) and fell["significant"]
    noisy = paired_difference(before, [0.2, 0.6, 1.0, 0.6, 0.2, 0.6])  # one prompt lower, the rest equal
    assert noisy["mean"] == pytest.approx(-0.4 / 6) and not noisy["significant"]
    rose = paired_difference(before, [x + 0.3 for x in before])
    base = {"reward_start": 0.0, "reward_end": 0.3, "gold_start": 0.6, "gold_end": 0.5}
    assert "reward hacking" in " ".join(reward_hacking_lines({**base, "reward_change": rose, "gold_change": fell}))
    text = " ".join(reward_hacking_lines({**base, "reward_change": rose, "gold_change": noisy}))
    assert "within the noise" in text and "Warning" not in text
    flat = paired_difference(before, before)  # no change at all
    assert "made the policy worse" in " ".join(reward_hacking_lines({**base, "reward_change": flat, "gold_change": fell}))
    assert reward_hacking_lines({**base, "reward_change": rose, "gold_change": rose}) == []
    assert "reward hacking" in " ".join(reward_hacking_lines(base))  # an older log: the means decide


def test_second_turn_evaluation_asks_after_another_records_exchange():
    """evaluate.py --earlier_turn: each prompt is asked after ANOTHER record's prompt and
    reference answer, rendered as one conversation through the chat template."""
    from minift.evaluation import earlier_exchanges, evaluate_records
    tok = Tokenizer.from_ranks(train_bpe("Name a pet. A cat. Name a toy. A ball. " * 50, 300))
    records = [{"prompt": p, "instruction_id_list": [], "kwargs": [],
                "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
               for p, a in [("Name a pet.", "A cat."), ("Name a toy.", "A ball."), ("Name a pet.", "A dog.")]]
    earlier = earlier_exchanges(records)
    assert earlier == earlier_exchanges(records)  # deterministic
    for i, turns in enumerate(earlier):             # another record's exchange, never its own
        assert turns in [r["messages"] for k, r in enumerate(records) if k != i]

    class Recorder:  # a stand-in model that records the prompts it is asked to continue
        config = GPTConfig(block_size=256)
        training = False
        asked = []

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def generate(self, prompts, max_new_tokens, **kw):
            Recorder.asked += prompts
            return [[tok.end] for _ in prompts]
    evaluate_records(Recorder(), tok, records, earlier=earlier)
    expected = [tok.render_prompt(e + [{"role": "user", "content": r["prompt"]}]) for e, r in zip(earlier, records)]
    assert sorted(Recorder.asked) == sorted(expected)
    with pytest.raises(ValueError, match="messages"):
        earlier_exchanges([{"prompt": "Name a pet."}, {"prompt": "Name a toy."}])


def test_sampled_pass_rates_count_answers_and_prompts():
    """evaluate.py --samples: a sample's pass rate is over all sampled answers, pass@k over
    prompts (any of its k answers passes), best-of-k over each prompt's highest-judged answer;
    prompts with no checkable instruction are skipped."""
    from minift.evaluation import pass_rates, sampled_pass_rates
    assert pass_rates([[True, False], [False, False], [True, True]]) == (0.5, pytest.approx(2 / 3))
    tok = Tokenizer.from_ranks(train_bpe("<<A title>> Name a pet. A cat. No title here. " * 50, 300))
    titled, plain = "<<A title>> A cat.", "No title here."
    # "Name a pet." passes with its first sample only, "Name a toy." never, "Name a cup." always
    plan = {"Name a pet.": [titled, plain], "Name a toy.": [plain, plain], "Name a cup.": [titled, titled],
            "Name a hat.": [titled, titled]}
    records = [{"prompt": p, "instruction_id_list": ["detectable_format:title"], "kwargs": [{}]} for p in plan]
    records[-1]["instruction_id_list"] = ["language:response_language"]   # no checker: skipped

    class Planned:  # a stand-in model: the planned answers of each prompt, in turn
        config = GPTConfig(block_size=256)
        training = False
        seen = {}

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def generate(self, prompts, max_new_tokens, temperature=0.0, **kw):
            assert temperature == 0.7 and kw["generator"] is not None   # sampled, not greedy
            out = []
            for ids in prompts:
                p = next(p for p in plan if tok.render_prompt([{"role": "user", "content": p}]) == ids)
                n = Planned.seen[p] = Planned.seen.get(p, -1) + 1
                out.append(tok.encode(plan[p][n]) + [tok.end])
            return out
    m = sampled_pass_rates(Planned(), tok, records, k=2, temperature=0.7)
    assert m["sample_prompt_strict"] == 0.5 and m["pass_at_k"] == pytest.approx(2 / 3) and m["samples"] == 2
    assert "best_of_k_prompt_strict" not in m

    def judge_by_length(longer_is_better):   # a stand-in reward model: it scores by length
        def judge(recs, answers):
            assert [r["prompt"] for r in recs] == list(plan) and all(len(a) == 2 for a in answers)
            return [[len(a) if longer_is_better else -len(a) for a in group] for group in answers]
        return judge
    Planned.seen = {}   # the same answers again
    m = sampled_pass_rates(Planned(), tok, records, 2, 0.7, judge=judge_by_length(True))
    assert m["best_of_k_prompt_strict"] == pytest.approx(2 / 3)   # picks the titled answer to "pet"
    Planned.seen = {}
    m = sampled_pass_rates(Planned(), tok, records, 2, 0.7, judge=judge_by_length(False))
    assert m["best_of_k_prompt_strict"] == pytest.approx(1 / 3)   # picks the plain one: only "cup" passes
