"""Write the instruction-tuning splits: data/generated/sft/{train,test,heldout,rl_prompts}.jsonl.

    python data/make_sft.py                      # defaults below, seed 0
    python data/make_sft.py --n_train=5000 --seed=1

    python data/make_sft.py --slip_scale=0       # perfect demonstrations: no demonstrator slips

Each line is one record {"key", "prompt", "instruction_id_list", "kwargs", "messages", "slips"}:
chat messages for SFT and, at the same time, an IFEval input record for evaluation (see
minift/synthetic/splits.py for how prompts and the splits are made). The answers are written by
simulated demonstrators who slip at the rates of minift/synthetic/demonstrators.py; "slips" lists the
instructions an answer slipped on, and the script prints the demonstrations' own pass rate,
judged by the checkers. Heldout records also list their "novelty" (what train never showed them).
"""

import argparse
import math
import os
import sys
from collections import Counter

# Run as a script from the repo root: make `import minift` work without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minift.synthetic.demonstrators import slip_table  # noqa: E402
from minift.synthetic.scoring import aggregate, score  # noqa: E402
from minift.config import HelpWithDefaults, run  # noqa: E402
from minift.formats import write_jsonl  # noqa: E402
from minift.synthetic.splits import SPLIT_SIZES, make_splits  # noqa: E402


def demo_pass_rate(records):
    """The demonstrations' own prompt-level strict accuracy, and its per-type table: each
    record's answer (its last message) judged by the checkers, as evaluate.py judges a model's."""
    scored = [score(r["messages"][-1]["content"], r["instruction_id_list"], r["kwargs"], r["prompt"])
              | {"instruction_id_list": r["instruction_id_list"]} for r in records]
    metrics = aggregate(scored)
    return metrics["prompt_strict"], metrics["per_type"]


def make_sft(out_dir="data/generated/sft", seed=0, n_train=SPLIT_SIZES["train"], n_test=SPLIT_SIZES["test"],
             n_heldout=SPLIT_SIZES["heldout"], n_rl=SPLIT_SIZES["rl_prompts"], slip_scale=1.0):
    """Generate and write the four splits; returns {"counts", "n_instructions", "types", "retries",
    "demo_pass_rate": {split: the demonstrations' prompt-strict pass rate},
    "demo_per_type": {instruction id: their pass rate on the test split}}."""
    if not (math.isfinite(slip_scale) and slip_scale >= 0):   # here, for the script and any Python caller
        raise ValueError(f"--slip_scale={slip_scale}: expected 0 (perfect demonstrations) or more")
    retries = Counter()  # why candidate prompts were resampled (see minift.synthetic.splits.sample)
    splits = make_splits(seed, {"train": n_train, "test": n_test, "heldout": n_heldout, "rl_prompts": n_rl},
                         stats=retries, slip_scale=slip_scale)
    stats = {"counts": {}, "n_instructions": {}, "types": {}, "retries": dict(retries.most_common()),
             "demo_pass_rate": {}}
    for name, records in splits.items():
        write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), records)
        stats["counts"][name] = len(records)
        if name != "rl_prompts":  # RL prompts are used without their answers
            stats["demo_pass_rate"][name], per_type = demo_pass_rate(records)
            if name == "test":
                stats["demo_per_type"] = {iid: row["strict"] for iid, row in per_type.items()}
        # How many instructions besides the base task (the first id) each prompt has.
        counts = Counter(len(r["instruction_id_list"]) - 1 for r in records)
        stats["n_instructions"][name] = dict(sorted(counts.items()))
        stats["types"][name] = dict(Counter(i for r in records for i in r["instruction_id_list"]).most_common())
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpWithDefaults)
    p.add_argument("--out_dir", default="data/generated/sft", help="where the four splits are written")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts and the demonstrators' slips")
    p.add_argument("--n_train", type=int, default=SPLIT_SIZES["train"], help="SFT demonstrations")
    p.add_argument("--n_test", type=int, default=SPLIT_SIZES["test"], help="test prompts, in train's phrasings")
    p.add_argument("--n_heldout", type=int, default=SPLIT_SIZES["heldout"],
                   help="heldout prompts, in phrasings and values train never shows")
    p.add_argument("--n_rl", type=int, default=SPLIT_SIZES["rl_prompts"],
                   help="PPO's prompts (their answers go unused)")
    p.add_argument("--slip_scale", type=float, default=1.0, help="scales every demonstrator slip rate; 0 = perfect")
    a = p.parse_args(argv)
    for name in ("n_train", "n_test", "n_heldout", "n_rl"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name}={getattr(a, name)}: expected at least 1 record")
    stats = make_sft(a.out_dir, a.seed, a.n_train, a.n_test, a.n_heldout, a.n_rl, a.slip_scale)
    for name, n in stats["counts"].items():
        print(f"{name:<11} {n:>6} records   instructions per prompt: {stats['n_instructions'][name]}")
    print("\nids in train (the task:* ids are the base tasks):")
    for iid, n in stats["types"]["train"].items():
        print(f"  {iid:<48} {n:>6}")
    print("\nresampled candidates (each record is the first candidate that passed):")
    for why, n in stats["retries"].items():
        print(f"  {n:>6}  {why}")
    print(f"\ndemonstrator habits (slip rates x {a.slip_scale:g}):\n{slip_table(a.slip_scale)}")
    print("demonstrations' own pass rate (prompt-level strict, by the checkers): "
          + ", ".join(f"{name} {rate:.1%}" for name, rate in stats["demo_pass_rate"].items()))
    print(f"\nwrote {a.out_dir}/{{train,test,heldout,rl_prompts}}.jsonl")


if __name__ == "__main__":
    run(main)
