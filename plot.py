"""
Training curves from metrics.jsonl files.

    python plot.py out/tiny                  # every stage's metrics.jsonl under out/tiny
    python plot.py out/tiny/ppo/metrics.jsonl

With matplotlib, each metrics.jsonl gets a curves.png beside it: the training loss, and the
held-out figures at each evaluation, for pretraining (val_loss), SFT (test prompt-strict), the
reward model and DPO (val loss and accuracy, and the reward model's Spearman); the reward
model's score, the gold reward, the KL to the reference and test prompt-strict for PPO and
GRPO. Without it, a table of each curve's first and last values. matplotlib is optional:
`pip install matplotlib` for the pictures.
"""

import os
import sys

from minift.config import run
from minift.formats import read_jsonl

# What to draw, by the names the scripts log: the RL stages log the gold reward (and rm_score
# with a reward model), the others a training loss, and at each evaluation their held-out
# figures (pretraining's val_loss; the eval_ prefix of SFT's, the reward model's and DPO's).
RL_CURVES = ("rm_score", "gold", "kl", "eval_prompt_strict")
LOSS_CURVES = ("loss", "val_loss", "eval_val_loss", "accuracy", "eval_val_accuracy", "eval_spearman",
               "eval_prompt_strict")


def metrics_files(path):
    if os.path.isfile(path):
        if os.path.basename(path) != "metrics.jsonl":
            raise SystemExit(f"error: {path} is not a metrics.jsonl; pass a run's out_dir (out/tiny after python "
                             f"pipeline.py) or one stage's metrics.jsonl")
        return [path]
    found = [os.path.join(d, "metrics.jsonl") for d, _, files in sorted(os.walk(path)) if "metrics.jsonl" in files]
    if not found:
        raise SystemExit(f"error: no metrics.jsonl under {path}; pass a run's out_dir (out/tiny after python "
                         f"pipeline.py) or one metrics.jsonl")
    return found


def curves(records):
    """{metric: [(step, value)]} for the metrics this stage logs, x being the record's
    iteration or step (its line number without either)."""
    names = RL_CURVES if any("gold" in r for r in records) else LOSS_CURVES
    out = {}
    for i, r in enumerate(records):
        x = r.get("iteration", r.get("step", i))
        for name in names:
            if isinstance(r.get(name), (int, float)):
                out.setdefault(name, []).append((x, r[name]))
    return out


def table(path, found):
    lines = [path] + [f"  {name:<20} {len(points):>5} points  first {points[0][1]:>10.4f}  last {points[-1][1]:>10.4f}"
                      for name, points in found.items()]
    return "\n".join(lines)


def draw(found, png, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(found), figsize=(4.5 * len(found), 3.6), squeeze=False)
    for ax, (name, points) in zip(axes[0], found.items()):
        ax.plot(*zip(*points), "o-" if len(points) < 40 else "-", markersize=3)
        ax.set_title(name)
        ax.set_xlabel("iteration / step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip())
        raise SystemExit(0)
    if len(argv) != 1:
        raise SystemExit("error: plot.py takes one path; usage: python plot.py OUT_DIR | METRICS_JSONL")
    try:
        import matplotlib  # noqa: F401
        have_matplotlib = True
    except ImportError:
        have_matplotlib = False
    for path in metrics_files(argv[0].removeprefix("--out_dir=")):   # the other scripts' spelling works too
        found = curves(read_jsonl(path))
        if not found:
            print(f"{path}: no curves to draw")
        elif have_matplotlib:
            png = os.path.join(os.path.dirname(path), "curves.png")
            draw(found, png, os.path.dirname(os.path.abspath(path)))
            print(f"wrote {png}")
        else:
            print(table(path, found))
    if not have_matplotlib:
        print("matplotlib is not installed: the table only. `pip install matplotlib` to get pictures.")


if __name__ == "__main__":
    run(main)
