"""
Did my change to SFT help, or was it the seed? Train SFT with and without the change from
one pretrained checkpoint, for several seeds, score every model on the same prompts, and
print each seed's pair of runs with their difference.

    python bench/compare_sft.py --change="--learning_rate=3e-3"
    python bench/compare_sft.py --change="--max_steps=6000" --seeds=1337,2,3,4

`--change` holds any flags of train_sft.py. To test an edit to the code itself, run the
script once before the edit (`python bench/compare_sft.py` trains the unchanged arm only),
then edit and run `python bench/compare_sft.py --name=my_edit`: the unchanged runs are
reused, and the my_edit arm trains with the edited code.

Why: one SFT run is one draw. On the tiny preset the seed alone moves test prompt-strict
accuracy by several points (FINDINGS.md, section 1), more than most changes are worth. Both
arms use the same seeds, so seed s gives one *paired* difference (changed minus unchanged, same
batches drawn in the same order as far as the change allows), and the spread of those
differences is the noise to beat. The table ends with a paired t-test (Student 1908): the
change is told apart from the noise at 95% when |mean difference| exceeds
t x standard error, with t = 12.7, 4.3, 3.2, 2.8 for 2, 3, 4, 5 seeds. With three seeds
that is a large bar; that is what three seeds can tell.

Finished runs are reused (out_dir/<name>-seed<seed>/scores.json), so delete an arm's folders
after editing the code it ran. Each run is one SFT stage of the pipeline and the scoring of
2 x 500 prompts: three seeds, both arms, is six SFT stages (FINDINGS.md, "SFT training", has
the times).
"""

import json
import os
import re
import statistics
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate  # noqa: E402
import train_sft  # noqa: E402
from minift.config import cli_config, run  # noqa: E402
from minift.formats import require_file, write_json  # noqa: E402
from minift.synthetic.scoring import paired_difference  # noqa: E402

SPLITS = ("test", "heldout")


@dataclass
class Config:
    change: str = ""                               # train_sft.py flags under test, e.g. "--learning_rate=3e-3"
    name: str = ""                                 # the changed arm's name (default: made from --change)
    seeds: str = "1337,2,3"
    init_from: str = "out/tiny/pretrain/ckpt.pt"   # one pretrained model for every run
    data_dir: str = "out/tiny/data/sft"            # its train.jsonl, test.jsonl and heldout.jsonl
    examples: int = 500                            # prompts scored per split (0 = all)
    out_dir: str = "out/compare"
    preset: str = "tiny"
    device: str = "auto"


def arm_name(change):
    """'--learning_rate=3e-3 --max_steps=10' -> 'learning_rate=3e-3_max_steps=10'."""
    return re.sub(r"[^\w.=+-]+", "_", change.replace("--", " ")).strip("_") or "unchanged"


def run_arm(cfg, name, seed, flags):
    """Train (or reuse) one SFT model and score it; returns {split: prompt-strict accuracy}."""
    out = os.path.join(cfg.out_dir, f"{name}-seed{seed}")
    path = os.path.join(out, "scores.json")
    setup = {"init_from": cfg.init_from, "data_dir": cfg.data_dir, "examples": cfg.examples,
             "preset": cfg.preset, "flags": flags, "seed": seed}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved["setup"] != setup:
            raise SystemExit(f"error: {path} was made with {saved['setup']}, not {setup}. "
                             f"Delete {out} or pick another --out_dir or --name.")
        print(f"{name}, seed {seed}: reusing {path}")
        return saved["scores"]
    # Checked here, not left to train_sft.py: its hint (train_pretrain.py) writes out/pretrain, not
    # the pipeline's out/<preset>/pretrain, and the scored splits are read only after training.
    if not os.path.exists(cfg.init_from):
        raise SystemExit(f"error: no checkpoint at --init_from={cfg.init_from}; run python pipeline.py first "
                         f"(it writes out/<preset>/pretrain/ckpt.pt), or pass your pretrained checkpoint")
    for split in ("train",) + SPLITS:
        require_file(f"{cfg.data_dir}/{split}.jsonl", "data_dir", "data/make_sft.py")
    train_sft.main([f"--preset={cfg.preset}", f"--device={cfg.device}", f"--seed={seed}",
                    f"--init_from={cfg.init_from}", f"--data={cfg.data_dir}/train.jsonl",
                    "--eval_data=", f"--out_dir={out}", *flags])
    scores = {split: evaluate.evaluate(os.path.join(out, "ckpt.pt"), f"{cfg.data_dir}/{split}.jsonl",
                                       cfg.examples, device=cfg.device)["prompt_strict"] for split in SPLITS}
    write_json(path, {"setup": setup, "scores": scores})
    return scores


def paired_summary(base, changed):
    """Per split: the mean paired difference (changed - base), its standard error, and whether
    it is beyond the seed noise at 95% (paired t-test; needs two seeds or more)."""
    return {split: paired_difference([b[split] for b in base], [c[split] for c in changed]) for split in SPLITS}


def main(argv=None):
    cfg = cli_config(Config, argv=argv)
    seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    flags = cfg.change.split()
    name = cfg.name or arm_name(cfg.change)
    if name == "unchanged" and flags:
        raise SystemExit("error: --name=unchanged is the baseline's; pick another name for a change")
    base = [run_arm(cfg, "unchanged", s, []) for s in seeds]
    changed = None if name == "unchanged" else [run_arm(cfg, name, s, flags) for s in seeds]

    def pair(scores):
        return " / ".join(f"{100 * scores[s]:5.1f}" for s in SPLITS)

    def mean(runs):
        return {k: statistics.fmean(r[k] for r in runs) for k in SPLITS}
    print(f"\nSFT prompt-strict accuracy, % ({' / '.join(SPLITS)}; {cfg.examples or 'all'} prompts each)")
    if changed is None:  # only the baseline was asked for: its scores, no difference to judge
        print(f"{'seed':>6} | {'unchanged':>13}")
        for s, b in zip(seeds, base):
            print(f"{s:>6} | {pair(b):>13}")
        print(f"{'mean':>6} | {pair(mean(base)):>13}")
        return {"seeds": seeds, "unchanged": base}
    summary = paired_summary(base, changed)
    print(f"{'seed':>6} | {'unchanged':>13} | {name[:24]:>24} | difference")
    for s, b, c in zip(seeds, base, changed):
        print(f"{s:>6} | {pair(b):>13} | {pair(c):>24} | " + " / ".join(f"{100 * (c[k] - b[k]):+5.1f}" for k in SPLITS))
    print(f"{'mean':>6} | {pair(mean(base)):>13} | {pair(mean(changed)):>24} | "
          + " / ".join(f"{100 * summary[k]['mean']:+5.1f}" for k in SPLITS))
    for k in SPLITS:
        d = summary[k]
        if len(seeds) < 2:   # one difference has no spread to compare it with
            print(f"{k}: {100 * d['mean']:+.1f} points; the paired t-test needs two seeds or more (--seeds)")
            continue
        verdict = "beyond the seed noise (95%)" if d["significant"] else "within the seed noise"
        print(f"{k}: {100 * d['mean']:+.1f} +- {100 * d['se']:.1f} points (mean +- standard error): {verdict}")
    return {"seeds": seeds, "unchanged": base, name: changed, "difference": summary}


if __name__ == "__main__":
    run(main)
