"""
Preference data for the reward model, made the InstructGPT way with a program as the rater:

    python data/make_preferences.py                  # after train_sft.py: out/sft/ckpt.pt, 2000 prompts x 8 answers
    python data/make_preferences.py --k=4 --num_prompts=0    # every RL prompt, 4 answers each
    # after pipeline.py, from its SFT model and RL prompts (T is a shell variable):
    T=out/tiny
    python data/make_preferences.py --sft_ckpt=$T/sft/ckpt.pt --prompts=$T/data/sft/rl_prompts.jsonl --out_dir=out/prefs

For each prompt of data/generated/sft/rl_prompts.jsonl the SFT model samples K answers at
PPO's temperature (sampled, not greedy: the RM must see the policy's real spread of good and
bad answers, which greedy decoding would hide). The gold reward (minift/synthetic/gold.py)
scores each answer, and every two answers of a prompt with different scores make a pair, the
higher one "chosen". InstructGPT's labelers likewise ranked K = 4..9 answers per prompt,
giving C(K,2) pairs. Ties carry no preference, so they are dropped (a human would say "about
the same").

Outputs in --out_dir (data/generated/prefs/):
  train.jsonl        pairs {"prompt", "chosen", "rejected", "group", "key", "instruction_id_list",
                     "kwargs", "chosen_score", "rejected_score"}: TRL's explicit-prompt format
                     plus extras; "group" ties together the pairs of one prompt.
  val.jsonl          the same for held-out prompts: a prompt is wholly in train or wholly in val.
  val_samples.jsonl  every held-out answer with its gold score, {"prompt", "response", "gold", "group",
                     "key"}, for the Spearman correlation between the RM and the gold reward.
"""

import os
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from itertools import combinations

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

from minift.checkpoint import (GENERATIVE, build_model, load_checkpoint, note_if_pretrained, tokenizer_for,  # noqa: E402
                               train_first)
from minift.config import cli_config, print_config, run  # noqa: E402
from minift.evaluation import load_scorable_option, sample_answers  # noqa: E402
from minift.formats import write_jsonl  # noqa: E402
from minift.synthetic.gold import gold_breakdown  # noqa: E402
from minift.training import pick_device  # noqa: E402
from train_ppo import Config as PPOConfig  # noqa: E402


@dataclass
class Config:
    sft_ckpt: str = "out/sft/ckpt.pt"
    prompts: str = "data/generated/sft/rl_prompts.jsonl"   # IFEval-style records
    out_dir: str = "data/generated/prefs"
    # Eight answers to each of the 2,000 tiny RL prompts give more comparisons than SFT has
    # demonstrations, as InstructGPT had (FINDINGS.md, "Preferences and the gold reward").
    num_prompts: int = 2000       # the first this many prompts; 0 = all
    k: int = 8                    # answers per prompt -> up to k(k-1)/2 pairs
    # PPO's sampling temperature: the reward model learns to judge the answers the policy will
    # write. A hotter sampler writes more garbled words, and pairs won on spelling teach little
    # about the instructions (FINDINGS.md, "Demonstrators who slip", the judges).
    temperature: float = PPOConfig.temperature   # PPO's sampling temperature
    max_new_tokens: int = 96
    batch_size: int = 256         # sequences generated together
    val_fraction: float = 0.1     # share of prompts held out, whole
    seed: int = 1337
    device: str = "auto"
    preset: str = "tiny"


PRESETS = {
    "micro": dict(num_prompts=96, k=4, max_new_tokens=24, batch_size=96, val_fraction=0.4),
    "tiny": dict(),
    "small": dict(num_prompts=0, k=6, max_new_tokens=128, batch_size=512),
}


def make_pairs(samples):
    """samples: dicts with "group", "response", "gold" (plus prompt fields) -> pairs.
    Every two answers of a group with different gold scores make one pair, the higher
    chosen; equal scores (identical answers included) are ties and are dropped.
    Returns (pairs, number of ties)."""
    groups = {}
    for s in samples:
        groups.setdefault(s["group"], []).append(s)
    pairs, ties = [], 0
    for group in groups.values():
        for a, b in combinations(group, 2):
            if a["gold"] == b["gold"]:
                ties += 1
                continue
            chosen, rejected = (a, b) if a["gold"] > b["gold"] else (b, a)
            pairs.append({"prompt": a["prompt"], "chosen": chosen["response"], "rejected": rejected["response"],
                          "group": a["group"], "key": a.get("key"), "instruction_id_list": a["instruction_id_list"],
                          "kwargs": a["kwargs"], "chosen_score": chosen["gold"], "rejected_score": rejected["gold"]})
    return pairs, ties


def val_groups(n_prompts, val_fraction, seed):
    """Indices of the held-out prompts: a seeded random val_fraction of them (at least one)."""
    n_val = max(1, round(n_prompts * val_fraction)) if val_fraction > 0 else 0
    return set(random.Random(seed).sample(range(n_prompts), n_val))


def held_out_prompts(records, val_fraction, seed):
    """(the distinct prompts, those whose answers go to val). Drawn among distinct prompts, so one
    that a file repeats never lands in both splits (without repeats, val_groups' draw by position)."""
    distinct = list(dict.fromkeys(rec["prompt"] for rec in records))
    return distinct, {distinct[i] for i in val_groups(len(distinct), val_fraction, seed)}


def make_preferences(model, tokenizer, records, k=8, temperature=0.7, max_new_tokens=96, batch_size=256,
                     val_fraction=0.1, seed=1337, device="cpu"):
    """Sample, score and pair. Returns (train pairs, val pairs, val samples, stats)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    # The answers end where PPO's rollouts end, at <|end|> only, so the judges rank answers like
    # PPO's. The reward model reads each one re-rendered and closed by <|end|>: one cut off at
    # max_new_tokens (rare) it reads closed, where PPO scores it open, less missing_eos_penalty.
    answers = sample_answers(model, tokenizer, records, k, temperature, max_new_tokens, batch_size, generator,
                             stop_tokens=(tokenizer.end,))
    _, held_out = held_out_prompts(records, val_fraction, seed)
    train, val, flaws = [], [], Counter()
    for g, (rec, group) in enumerate(zip(records, answers)):
        for response in group:
            gold = gold_breakdown(rec["prompt"], response, rec["instruction_id_list"], rec["kwargs"])
            flaws.update(gold["flaws"])
            (val if rec["prompt"] in held_out else train).append(
                {"prompt": rec["prompt"], "response": response, "gold": gold["reward"], "group": g,
                 "key": rec.get("key"), "instruction_id_list": rec["instruction_id_list"], "kwargs": rec["kwargs"]})
    train_pairs, train_ties = make_pairs(train)
    val_pairs, val_ties = make_pairs(val)
    everything = train + val
    n_comparisons = len(train_pairs) + len(val_pairs) + train_ties + val_ties
    stats = {"prompts": len(records), "samples": len(everything), "train_pairs": len(train_pairs),
             "val_pairs": len(val_pairs), "tie_rate": (train_ties + val_ties) / max(1, n_comparisons),
             "mean_gold": sum(s["gold"] for s in everything) / max(1, len(everything)),
             "perfect_share": sum(s["gold"] >= 1 for s in everything) / max(1, len(everything)),
             "flaw_rate": {f: n / max(1, len(everything)) for f, n in sorted(flaws.items())}}
    val_samples = [{k_: s[k_] for k_ in ("prompt", "response", "gold", "group", "key")} for s in val]
    return train_pairs, val_pairs, val_samples, stats


def main(argv=None):
    cfg = cli_config(Config, PRESETS, argv)
    print_config(cfg)
    if cfg.k < 2:
        raise ValueError(f"--k={cfg.k} gives no pairs: a pair compares two answers to one prompt; use --k=2 or more")
    device = pick_device(cfg.device)
    ckpt = load_checkpoint(cfg.sft_ckpt, hint=train_first("sft", "train_sft.py"), kinds=GENERATIVE,
                           option="sft_ckpt")
    tokenizer = tokenizer_for(ckpt, cfg.sft_ckpt)
    note_if_pretrained(ckpt, cfg.sft_ckpt, "sft_ckpt")
    model = build_model(ckpt).to(device).eval()
    records = load_scorable_option(cfg.prompts, "prompts")   # the gold judge reads them after all the sampling
    if cfg.num_prompts:
        records = records[:cfg.num_prompts]
    distinct, held_out = held_out_prompts(records, cfg.val_fraction, cfg.seed)
    if len(held_out) == len(distinct):
        raise ValueError(f"--val_fraction={cfg.val_fraction} holds out all {len(distinct)} prompts of {cfg.prompts}, "
                         f"leaving none for train.jsonl; lower it or use more prompts (--num_prompts)")
    t0 = time.time()
    train, val, val_samples, stats = make_preferences(
        model, tokenizer, records, cfg.k, cfg.temperature, cfg.max_new_tokens, cfg.batch_size,
        cfg.val_fraction, cfg.seed, device)
    stats["sampling_seconds"] = round(time.time() - t0, 1)
    for name, rows in (("train", train), ("val", val), ("val_samples", val_samples)):
        write_jsonl(os.path.join(cfg.out_dir, f"{name}.jsonl"), rows)
    print(f"{stats['prompts']} prompts x {cfg.k} answers in {stats['sampling_seconds']}s: {stats['train_pairs']} train "
          f"pairs, {stats['val_pairs']} val pairs, {len(val_samples)} val samples -> {cfg.out_dir}")
    print(f"tie rate {stats['tie_rate']:.1%} (dropped), mean gold {stats['mean_gold']:.3f}, "
          f"perfect answers {stats['perfect_share']:.1%}, flaws: " +
          (", ".join(f"{f} {r:.1%}" for f, r in stats["flaw_rate"].items()) or "none"))
    return stats


if __name__ == "__main__":
    run(main)
