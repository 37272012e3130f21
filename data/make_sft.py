"""Write the instruction-tuning splits: data/generated/sft/{train,test,heldout,rl_prompts}.jsonl.

    python data/make_sft.py                      # defaults below, seed 0
    python data/make_sft.py --n_train=5000 --seed=1

Each line is one record {"key", "prompt", "instruction_id_list", "kwargs", "messages"}: chat
messages for SFT and, at the same time, an IFEval input record for evaluation (see
minift/splits.py for how prompts, reference answers and the splits are made). Heldout records
also list their "novelty" (what train never showed them).
"""

import argparse
import json
import os
import sys
from collections import Counter

# Run as a script from the repo root: make `import minift` work without installing it.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minift.config import run  # noqa: E402
from minift.splits import SPLIT_SIZES, make_splits  # noqa: E402

try:
    from minift.formats import write_jsonl
except ImportError:  # formats.py is optional for this script
    def write_jsonl(path, records):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def make_sft(out_dir="data/generated/sft", seed=0, n_train=SPLIT_SIZES["train"], n_test=SPLIT_SIZES["test"],
             n_heldout=SPLIT_SIZES["heldout"], n_rl=SPLIT_SIZES["rl_prompts"]):
    """Generate and write the four splits; returns {"counts", "n_instructions", "types", "retries"}."""
    retries = Counter()  # why candidate prompts were resampled (see minift.splits.sample)
    splits = make_splits(seed, {"train": n_train, "test": n_test, "heldout": n_heldout, "rl_prompts": n_rl},
                         stats=retries)
    stats = {"counts": {}, "n_instructions": {}, "types": {}, "retries": dict(retries.most_common())}
    for name, records in splits.items():
        write_jsonl(os.path.join(out_dir, f"{name}.jsonl"), records)
        stats["counts"][name] = len(records)
        # How many instructions besides the base task (the first id) each prompt has.
        counts = Counter(len(r["instruction_id_list"]) - 1 for r in records)
        stats["n_instructions"][name] = dict(sorted(counts.items()))
        stats["types"][name] = dict(Counter(i for r in records for i in r["instruction_id_list"]).most_common())
    return stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out_dir", default="data/generated/sft")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n_train", type=int, default=SPLIT_SIZES["train"])
    p.add_argument("--n_test", type=int, default=SPLIT_SIZES["test"])
    p.add_argument("--n_heldout", type=int, default=SPLIT_SIZES["heldout"])
    p.add_argument("--n_rl", type=int, default=SPLIT_SIZES["rl_prompts"])
    a = p.parse_args(argv)
    for name in ("n_train", "n_test", "n_heldout", "n_rl"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name}={getattr(a, name)}: expected at least 1 record")
    stats = make_sft(a.out_dir, a.seed, a.n_train, a.n_test, a.n_heldout, a.n_rl)
    for name, n in stats["counts"].items():
        print(f"{name:<11} {n:>6} records   instructions per prompt: {stats['n_instructions'][name]}")
    print("\nids in train (the task:* ids are the base tasks):")
    for iid, n in stats["types"]["train"].items():
        print(f"  {iid:<48} {n:>6}")
    print("\nresampled candidates (each record is the first candidate that passed):")
    for why, n in stats["retries"].items():
        print(f"  {n:>6}  {why}")
    print(f"\nwrote {a.out_dir}/{{train,test,heldout,rl_prompts}}.jsonl")


if __name__ == "__main__":
    run(main)
