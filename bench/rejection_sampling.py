"""
How much is in what the SFT model samples? Rejection sampling, with the checkers as the judge
and no PPO: expert iteration (Anthony et al. 2017), STaR (Zelikman et al. 2022), the
rejection-sampling fine-tuning of Llama 2 (Touvron et al. 2023).

    python bench/rejection_sampling.py               # from out/tiny's SFT model, one round
    python bench/rejection_sampling.py --rounds=2    # then sample again from the fine-tuned model

One round, from the current model:
  1. answer every RL prompt greedily, and sample K answers to it at PPO's temperature;
  2. keep, per prompt, the first sample whose gold reward is 1.0 (every instruction passes,
     no flaw);
  3. fine-tune with train_sft.py for one epoch's worth of steps on the kept answers (train_sft.py
     draws its batches at random, so an answer may come twice or not at all): each answer to a
     prompt whose greedy answer fell short `repeat_failed` times, and `others` of the rest;
  4. score the test and heldout prompts, as evaluate.py does.
Why the weighting: what the model already answers right greedily teaches it little
(FINDINGS.md, "The alignment lab", has the figures). Most of a round's time goes to sampling
K answers to each of the 2,000 RL prompts.
"""

import math
import os
import random
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate  # noqa: E402
import train_sft  # noqa: E402
from minift.checkpoint import build_model, load_checkpoint, tokenizer_for  # noqa: E402
from minift.config import cli_config, print_config, run  # noqa: E402
from minift.evaluation import generate_responses, load_scorable_option, sample_answers  # noqa: E402
from minift.formats import require_file, write_json, write_jsonl  # noqa: E402
from minift.synthetic.gold import gold_reward  # noqa: E402
from minift.training import pick_device  # noqa: E402


@dataclass
class Config:
    sft_ckpt: str = "out/tiny/sft/ckpt.pt"           # the first round's model
    prompts: str = "out/tiny/data/sft/rl_prompts.jsonl"
    data_dir: str = "out/tiny/data/sft"              # its test.jsonl and heldout.jsonl
    out_dir: str = "out/rejection"
    rounds: int = 1
    k: int = 8                      # samples per prompt
    temperature: float = 0.7        # PPO's: the answers PPO would see
    max_new_tokens: int = 96
    gen_batch_size: int = 256       # sequences generated together
    repeat_failed: int = 2          # copies of an answer to a prompt the greedy answer failed
    others: int = 480               # answers to prompts the greedy answer passed (0 = none)
    batch_size: int = 8             # SFT's conversations per step (an epoch = ceil(rows / this))
    learning_rate: float = 2e-4     # a third of SFT's last: on every kept answer alike, SFT's rate lost test
                                    # accuracy and this one did not (FINDINGS.md, "The alignment lab")
    examples: int = 500             # prompts scored per split (0 = all)
    score: bool = True              # score test and heldout after each round (compare.py scores on its own)
    seed: int = 1337
    device: str = "auto"
    preset: str = "tiny"


def select(records, greedy_gold, samples, sample_gold, repeat_failed, others, seed):
    """The fine-tuning set: chat conversations, each a prompt and its first sample scoring 1.0.
    A prompt whose greedy answer scored below 1.0 comes `repeat_failed` times; of the others,
    a seeded random `others`. Prompts with no perfect sample give nothing. Returns
    (conversations, {"kept", "failed_kept", "others_kept"})."""
    failed, passed = [], []
    for rec, g, answers, golds in zip(records, greedy_gold, samples, sample_gold):
        best = next((a for a, s in zip(answers, golds) if s >= 1.0), None)
        if best is not None:
            chat = {"messages": [{"role": "user", "content": rec["prompt"]},
                                 {"role": "assistant", "content": best}]}
            (failed if g < 1.0 else passed).append(chat)
    random.Random(seed).shuffle(passed)
    chosen = passed[:others]
    return failed * repeat_failed + chosen, {"kept": len(failed) + len(passed),
                                             "failed_kept": len(failed), "others_kept": len(chosen)}


def one_round(cfg, ckpt_path, out, device):
    """Sample, judge and select from the model at ckpt_path; write out/data.jsonl."""
    ckpt = load_checkpoint(ckpt_path, hint="Train the SFT model first: python pipeline.py")
    tokenizer = tokenizer_for(ckpt, ckpt_path)
    model = build_model(ckpt).to(device).eval()
    records = load_scorable_option(cfg.prompts, "prompts")

    def gold(rec, answer):
        return gold_reward(rec["prompt"], answer, rec["instruction_id_list"], rec["kwargs"])
    greedy = generate_responses(model, tokenizer, [r["prompt"] for r in records], cfg.max_new_tokens,
                                cfg.gen_batch_size)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    samples = sample_answers(model, tokenizer, records, cfg.k, cfg.temperature, cfg.max_new_tokens,
                             cfg.gen_batch_size, generator)
    greedy_gold = [gold(r, a) for r, a in zip(records, greedy)]
    sample_gold = [[gold(r, a) for a in answers] for r, answers in zip(records, samples)]
    rows, stats = select(records, greedy_gold, samples, sample_gold, cfg.repeat_failed, cfg.others, cfg.seed)
    n = len(records)
    stats |= {"greedy_perfect": sum(g >= 1.0 for g in greedy_gold) / n,
              "sample_perfect": sum(s >= 1.0 for golds in sample_gold for s in golds) / (n * cfg.k),
              "pass_at_k": sum(max(golds) >= 1.0 for golds in sample_gold) / n, "rows": len(rows)}
    write_jsonl(os.path.join(out, "data.jsonl"), rows)
    return stats


def main(argv=None):
    cfg = cli_config(Config, argv=argv)
    print_config(cfg)
    device = pick_device(cfg.device)
    if cfg.score:   # read after minutes of sampling and training: check them first
        for split in ("test", "heldout"):
            require_file(f"{cfg.data_dir}/{split}.jsonl", "data_dir", "data/make_sft.py")
    current, results = cfg.sft_ckpt, []
    for r in range(1, cfg.rounds + 1):
        out = os.path.join(cfg.out_dir, f"round{r}")
        stats = one_round(cfg, current, out, device)
        print(f"round {r}, on the RL prompts: greedy answers scoring 1.0 {stats['greedy_perfect']:.1%}, "
              f"samples {stats['sample_perfect']:.1%}, prompts with one such sample of {cfg.k} "
              f"{stats['pass_at_k']:.1%}; {stats['failed_kept']} greedy-failed prompts kept")
        if not stats["rows"]:
            raise SystemExit(f"error: nothing to learn from: {stats['kept']} prompts of {cfg.prompts} have a sample "
                             f"of {current} scoring 1.0, {stats['failed_kept']} of them failed greedily, and "
                             f"--others={cfg.others}")
        # One epoch, from a fresh optimizer (hence a short warm-up), and never resumed: a
        # rerun with other flags must not pick up the last run's model from the same folder.
        train_sft.main([f"--preset={cfg.preset}", f"--device={cfg.device}", f"--seed={cfg.seed}",
                        f"--init_from={current}", f"--data={out}/data.jsonl", "--eval_data=", f"--out_dir={out}",
                        f"--batch_size={cfg.batch_size}", f"--max_steps={math.ceil(stats['rows'] / cfg.batch_size)}",
                        f"--learning_rate={cfg.learning_rate}", f"--min_lr={cfg.learning_rate / 10}",
                        "--warmup_steps=10", "--force"])
        current = os.path.join(out, "ckpt.pt")
        if not cfg.score:
            results.append(stats)
            continue
        stats |= {split: evaluate.evaluate(current, f"{cfg.data_dir}/{split}.jsonl", cfg.examples,
                                           device=cfg.device)["prompt_strict"] for split in ("test", "heldout")}
        print(f"round {r}: test {stats['test']:.1%}, heldout {stats['heldout']:.1%} prompt-strict")
        results.append(stats)
    write_json(os.path.join(cfg.out_dir, "results.json"), results)
    return results


if __name__ == "__main__":
    run(main)
