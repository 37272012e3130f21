"""
Reward-model over-optimisation (Gao et al. 2022, "Scaling Laws for Reward Model
Overoptimization"): PPO pushes up the learned reward model's score (the proxy) while the
checkers' gold reward, which the reward model was trained to predict, first rises and then
falls. Gao et al. draw both against sqrt(KL) to the initial policy; so do we.

    python bench/overoptimisation.py                       # tiny: from out/tiny's SFT and reward models
    python bench/overoptimisation.py --kl_coefs=0,0.01,0.05 --iterations=80

For each KL coefficient, train_ppo.py runs against the learned reward model (--reward=model)
with a weak or no KL penalty for twice PPO's iterations, so that it travels far from the SFT
model. At every evaluation it logs the fixed probe (the test prompts, sampled from one seed:
the reward model's and the gold mean score, and each prompt's) and greedy prompt-strict on the
test prompts. This script collects those against the KL of the policy probed (the next
rollout's; the last probe has no rollout after it and takes its own iteration's) into
<out_dir>/overoptimisation.csv, with each change from the start as a paired standard error
over the probe's prompts, and with matplotlib installed draws <out_dir>/overoptimisation.png.
The runs live in <out_dir>/overoptimisation/kl_<coef>-lr_<lr>-it_<iterations>/ and resume as
train_ppo.py does: running the command again reuses what is finished.
"""

import csv
import io
import math
import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_ppo  # noqa: E402
from minift.checkpoint import build_model, load_checkpoint, tokenizer_for  # noqa: E402
from minift.config import cli_config, parse_config, print_config, run  # noqa: E402
from minift.evaluation import evaluate_records, load_eval_data  # noqa: E402
from minift.formats import read_jsonl, write_text  # noqa: E402
from minift.synthetic.scoring import paired_difference  # noqa: E402
from minift.training import pick_device  # noqa: E402

COLUMNS = ["kl_coef", "iteration", "kl", "sqrt_kl", "rm_score", "rm_change", "rm_change_se", "gold", "gold_change",
           "gold_change_se", "test_prompt_strict"]


@dataclass
class Config:
    preset: str = "tiny"             # train_ppo.py's preset; the models are read from out/<preset>/
    out_dir: str = ""                # default out/<preset>: its sft/, reward/ and data/sft/, as pipeline.py writes
    kl_coefs: str = "0,0.01"         # one PPO run for each, comma-separated
    # PPO's learning rate, twice its iterations: long enough for the gold reward to turn down
    # while the proxy keeps rising; a higher rate gets there before the first probe (FINDINGS.md,
    # "The alignment lab", over-optimisation).
    iterations: int = 72
    learning_rate: float = 2e-4
    eval_interval: int = 6           # a point of the curve every this many iterations
    eval_examples: int = 100         # probe and test prompts
    seed: int = 1337
    device: str = "auto"
    force: bool = False              # rerun every PPO run from the start


# Each passes its values to train_ppo.py over that script's preset of the same name: twice
# train_ppo's iterations at its learning rate (small: 200 at 1e-5 there).
PRESETS = {"micro": dict(iterations=2, eval_interval=1, eval_examples=8), "tiny": dict(),
           "small": dict(iterations=400, learning_rate=1e-5, eval_interval=50, eval_examples=500)}


def paired_change(each, start):
    """The mean change of per-prompt scores from the start, and its standard error (paired: the
    same prompts and random numbers, so prompt difficulty cancels; minift's paired_difference)."""
    change = paired_difference(start, each)
    return change["mean"], change["se"]


def curve_rows(kl_coef, metrics, start_prompt_strict):
    """One row per probed iteration of a run's metrics.jsonl lines. Iteration 0 (the SFT model)
    has KL 0 and the SFT model's test prompt-strict, measured by the caller."""
    probes = [m for m in metrics if "probe_gold_each" in m]
    # A line's kl is of the rollout sampled before that iteration's update: the probed policy's
    # own KL is the next iteration's (the last probe has none after it, and keeps its own).
    kl_after = {m["iteration"] - 1: m["kl"] for m in metrics if "kl" in m}
    start = probes[0]
    rows = []
    for m in probes:
        kl = max(kl_after.get(m["iteration"], m.get("kl", 0.0)), 0.0)   # a batch estimate, can dip below 0
        rm, rm_se = paired_change(m["probe_rm_each"], start["probe_rm_each"])
        gold, gold_se = paired_change(m["probe_gold_each"], start["probe_gold_each"])
        rows.append({"kl_coef": kl_coef, "iteration": m["iteration"], "kl": kl, "sqrt_kl": math.sqrt(kl),
                     "rm_score": m["probe_rm_score"], "rm_change": rm, "rm_change_se": rm_se,
                     "gold": m["probe_gold"], "gold_change": gold, "gold_change_se": gold_se,
                     "test_prompt_strict": m.get("eval_prompt_strict", start_prompt_strict if m is start else "")})
    return rows


def peak_and_fall(rows, metrics):
    """The gold peak of a run and the paired change from it to the last probe: over-optimisation
    shows as a fall of more than two standard errors while the reward model's score rose."""
    probes = {m["iteration"]: m for m in metrics if "probe_gold_each" in m}
    peak, last = max(rows, key=lambda r: r["gold"]), rows[-1]
    fall, se = paired_change(probes[last["iteration"]]["probe_gold_each"], probes[peak["iteration"]]["probe_gold_each"])
    return peak, last, fall, se


def write_csv(path, rows):
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()})
    write_text(path, text.getvalue())


def plot(rows, path):
    """Proxy and gold against sqrt(KL), one line per KL coefficient (Gao et al., fig. 1), and
    test prompt-strict. Returns False, drawing nothing, without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for coef in dict.fromkeys(r["kl_coef"] for r in rows):
        run_rows = [r for r in rows if r["kl_coef"] == coef]
        x = [r["sqrt_kl"] for r in run_rows]
        axes[0].plot(x, [r["rm_score"] for r in run_rows], "o-", label=f"kl_coef {coef}")
        axes[1].errorbar(x, [r["gold"] for r in run_rows], yerr=[r["gold_change_se"] for r in run_rows],
                         fmt="o-", capsize=3, label=f"kl_coef {coef}")
        strict = [(a, r["test_prompt_strict"]) for a, r in zip(x, run_rows) if r["test_prompt_strict"] != ""]
        axes[2].plot(*zip(*strict), "o-", label=f"kl_coef {coef}")
    for ax, title in zip(axes, ("proxy: reward model score (probe)", "gold reward (probe, paired s.e.)",
                                "test prompt-strict (greedy)")):
        ax.set_xlabel("sqrt(KL to the SFT model), sqrt(nats)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def start_prompt_strict(sft_ckpt, eval_data, ppo_cfg, device):
    """The SFT model's greedy test prompt-strict, as train_ppo.py measures it at an evaluation:
    the curve's point at KL 0."""
    ckpt = load_checkpoint(sft_ckpt, hint="Run the pipeline first: python pipeline.py", kinds=("sft",))
    model = build_model(ckpt).to(device).eval()
    records = load_eval_data(eval_data, ppo_cfg.eval_examples)
    metrics, _ = evaluate_records(model, tokenizer_for(ckpt, sft_ckpt), records, ppo_cfg.max_new_tokens)
    return metrics["prompt_strict"]


def main(argv=None):
    cfg = cli_config(Config, PRESETS, argv)
    print_config(cfg)
    out = cfg.out_dir or os.path.join("out", cfg.preset)
    sft, reward = os.path.join(out, "sft", "ckpt.pt"), os.path.join(out, "reward", "ckpt.pt")
    prompts, eval_data = os.path.join(out, "data", "sft", "rl_prompts.jsonl"), os.path.join(out, "data", "sft", "test.jsonl")
    rows, summary = [], []
    start_strict = None
    for coef in [float(c) for c in cfg.kl_coefs.split(",")]:
        # one folder per setting, so that another learning rate or length is a new run, not a clash
        run_dir = os.path.join(out, "overoptimisation", f"kl_{coef:g}-lr_{cfg.learning_rate:g}-it_{cfg.iterations}")
        args = [f"--preset={cfg.preset}", "--reward=model", f"--sft_ckpt={sft}", f"--reward_ckpt={reward}",
                f"--prompts={prompts}", f"--eval_data={eval_data}", f"--out_dir={run_dir}", f"--kl_coef={coef}",
                f"--learning_rate={cfg.learning_rate}", f"--iterations={cfg.iterations}",
                f"--eval_interval={cfg.eval_interval}", f"--eval_examples={cfg.eval_examples}",
                f"--seed={cfg.seed}", f"--device={cfg.device}"] + (["--force"] if cfg.force else [])
        if start_strict is None:
            start_strict = start_prompt_strict(sft, eval_data, parse_config(train_ppo.Config, args, train_ppo.PRESETS),
                                               pick_device(cfg.device))
        train_ppo.main(args)
        metrics = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
        run_rows = curve_rows(coef, metrics, start_strict)
        rows += run_rows
        summary.append((coef, *peak_and_fall(run_rows, metrics)))
    csv_path = os.path.join(out, "overoptimisation.csv")
    write_csv(csv_path, rows)
    print(f"wrote {csv_path}")
    for coef, peak, last, fall, se in summary:
        first = rows[[r["kl_coef"] for r in rows].index(coef)]
        print(f"kl_coef {coef:g}: reward model {first['rm_score']:+.3f} -> {last['rm_score']:+.3f}; gold "
              f"{first['gold']:.3f}, peak {peak['gold']:.3f} at iteration {peak['iteration']} (KL {peak['kl']:.2f}), "
              f"last {last['gold']:.3f} at KL {last['kl']:.2f}: {fall:+.3f} +- {se:.3f} from the peak (paired)")
    png = os.path.join(out, "overoptimisation.png")
    if plot(rows, png):
        print(f"wrote {png}")
    else:
        print(f"matplotlib is not installed: no picture. `pip install matplotlib` and run again (the finished "
              f"runs are reused), or plot gold and rm_score against sqrt_kl from {csv_path}.")
    return rows


if __name__ == "__main__":
    run(main)
