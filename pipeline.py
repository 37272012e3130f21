"""
The whole InstructGPT pipeline in one command, ending in a report card.

    python pipeline.py                     # tiny preset, sized for a laptop CPU (times: README.md)
    python pipeline.py --preset=small      # one GPU
    python pipeline.py --force             # redo every stage (and drop compare.py's runs on the old models)
    python pipeline.py --reference_sft     # add SFT on perfect demonstrations: the line PPO is read against
    python pipeline.py --sft_from_scratch  # add SFT from the untrained model: what pretraining adds
    python pipeline.py --slip_scale=0 --out_dir=out/tiny_perfect   # the whole pipeline without slips
    python pipeline.py --seed=2 --out_dir=out/tiny_seed2           # another draw of every training stage

The SFT demonstrations are written by simulated demonstrators who slip at documented rates
(minift/synthetic/demonstrators.py); the preference pairs are judged by the gold reward (the
checkers, with penalties for content flaws; minift/synthetic/gold.py), which never slips.

Stages, each a script you can also run on its own:
    data      data/prepare.py + data/make_sft.py   corpus, tokenizer, instruction data (demonstrators' answers)
    pretrain  train_pretrain.py                    next-token prediction on the corpus
    sft       train_sft.py                         instruction tuning, loss on answers only
    prefs     data/make_preferences.py             K sampled answers per prompt, ranked by the gold checker
    reward    train_reward.py                      Bradley-Terry reward model
    ppo       train_ppo.py                         PPO against the reward model, KL to SFT
    eval      evaluate.py                          IFEval metrics for base, SFT and PPO models, greedy and sampled

Every stage writes <out_dir>/<stage>/stage.json when its script ran to the end (Ctrl-C makes a
script save and raise Interrupted instead of returning); a re-run skips finished stages (unless
--force), an interrupted training stage resumes from its own checkpoint, and an interrupted
data, prefs or eval stage starts over. Each training stage's record holds the steps it completed
("step", or PPO's "iterations").
The report card (report_card.py) is <out_dir>/report.md, with the same numbers in <out_dir>/report.json.
"""

import json
import os
import shutil
import time
from dataclasses import dataclass

import torch

import train_ppo
import train_pretrain
import train_reward
import train_sft
from data import make_preferences
from data.make_sft import make_sft
from data.prepare import prepare
from minift.checkpoint import load_checkpoint, save_checkpoint
from minift.config import cli_config, run
from minift.formats import write_json, write_text
from minift.model import GPT, GPTConfig
from minift.synthetic.scoring import paired_difference
from minift.training import pick_device
from report_card import METRIC_KEYS, evaluate_for_card, prompt_by_prompt, report_markdown


@dataclass
class Config:
    preset: str = "tiny"      # micro (tests) | tiny (CPU) | small (one GPU)
    out_dir: str = ""         # default: out/<preset>
    force: bool = False       # delete what the pipeline wrote in out_dir (compare.py's runs too), redo every stage
    device: str = "auto"
    slip_scale: float = 1.0   # scales the demonstrators' slip rates (minift/synthetic/demonstrators.py); 0 = perfect
    reference_sft: bool = False  # also train SFT on perfect demonstrations: the line PPO's gain is read against
    sft_from_scratch: bool = False  # also train SFT from the untrained model: what pretraining adds
    seed: int = 1337          # every training stage's seed, pretraining to PPO, and the preference
                              # samples'; the corpus and the instruction splits stay the same


# Data sizes per preset; the training presets of the same name live in each script.
# The two human-data budgets, as InstructGPT set them: demonstrations are dear and judgements
# cheap, so there are more comparisons than demonstrations. tiny: 12,000 demonstrations (SFT's
# 4800 steps x 8 see each about three times) against 2,000 RL prompts x 8 sampled answers,
# ranked into more pairs than there are demonstrations; both budgets were sized to the
# pipeline's time target (FINDINGS.md, "SFT demonstrations", "Preferences and the gold reward").
DATA = {
    "micro": dict(size_mb=0.2, prompts_mb=0.05, vocab_size=512, n_train=600, n_test=20, n_heldout=20, n_rl=80,
                  eval_examples=20),
    "tiny": dict(size_mb=4.0, prompts_mb=0.5, vocab_size=2048, n_train=12000, n_test=500, n_heldout=500, n_rl=2000,
                 eval_examples=500),
    "small": dict(size_mb=200.0, prompts_mb=0.5, vocab_size=8192, n_train=100000, n_test=500, n_heldout=500,
                  n_rl=20000, eval_examples=500),
}


# What the pipeline writes in its --out_dir (each stage's folder, the card, the run's settings), and
# what compare.py and bench/overoptimisation.py add from its models.
PIPELINE_OUTPUTS = {"data", "pretrain", "sft", "prefs", "reward", "ppo", "eval", "sft_perfect", "sft_scratch",
                    "report.json", "report.md", "pipeline.json", "compare", "compare.json", "compare.md",
                    "overoptimisation", "overoptimisation.csv", "overoptimisation.png"}


def run_stage(name, out_dir, force, fn):
    """Run fn() unless <out_dir>/<name>/stage.json says it already finished. The marker is
    written only when fn returns: an exception (Interrupted by Ctrl-C, or an error) leaves none."""
    marker = os.path.join(out_dir, name, "stage.json")
    if os.path.exists(marker) and not force:
        with open(marker) as f:
            result = json.load(f)
        print(f"== {name}: done already ({result['seconds']:.0f}s), skipping. --force to redo.")
        return result
    print(f"\n== {name}")
    if force and os.path.isdir(os.path.join(out_dir, name)):
        shutil.rmtree(os.path.join(out_dir, name))  # start the stage afresh, not from its checkpoint
    t0 = time.time()
    result = fn() or {}
    result = {"seconds": round(time.time() - t0, 1), **result}   # unless fn says what its time was (compare.py)
    write_json(marker, result)
    return result


def check_preset(out, cfg):
    """A finished stage of a run with another preset, slip scale or seed in this out_dir would be
    skipped, and its numbers reported as this run's: refuse, unless --force starts over."""
    path = os.path.join(out, "pipeline.json")
    settings = {"preset": cfg.preset, "slip_scale": cfg.slip_scale, "seed": cfg.seed}
    if os.path.exists(path) and not cfg.force:
        with open(path) as f:
            other = {"slip_scale": 1.0, "seed": 1337, **json.load(f)}   # a record from before those options
        changed = [f"--{k}={other[k]}" for k in settings if other.get(k) != settings[k]]
        if changed:
            raise SystemExit(f"error: {out} holds a run with {' '.join(changed)}; resume it with the same "
                             f"options, start over with --force, or choose another --out_dir")
    write_json(path, settings, indent=None)


def main(argv=None):
    cfg = cli_config(Config, argv=argv)
    if cfg.preset not in DATA:
        raise SystemExit(f"error: unknown preset {cfg.preset!r}; choose from {', '.join(DATA)}")
    out = cfg.out_dir or os.path.join("out", cfg.preset)
    pick_device(cfg.device)   # a device this machine lacks stops the run now, not after the data stage
    if cfg.force:
        # Every stage, the lab's runs and the cards came from the run being replaced. All go
        # before the first stage starts: a --force run stopped early must leave no old stage
        # marked done for the next run to skip. Only in a folder that holds nothing else: in the
        # repository itself (--out_dir=.) the data/ package would go with them.
        entries = os.listdir(out) if os.path.isdir(out) else []
        foreign = sorted(n for n in entries if n.split(".tmp")[0] not in PIPELINE_OUTPUTS)  # .tmp: a cut write
        if foreign:
            raise SystemExit(f"error: --force deletes a pipeline's outputs in --out_dir={out}, which also holds "
                             f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}, not written by a "
                             "pipeline; choose another --out_dir, or move those out of it")
        for name in entries:
            if os.path.isdir(os.path.join(out, name)):
                shutil.rmtree(os.path.join(out, name))
            else:
                os.remove(os.path.join(out, name))
    check_preset(out, cfg)
    data = DATA[cfg.preset]
    corpus, sft_data, prefs = (os.path.join(out, "data", d) for d in ("corpus", "sft", "prefs"))
    ckpt = {s: os.path.join(out, s, "ckpt.pt") for s in ("pretrain", "sft", "reward", "ppo")}
    common = [f"--preset={cfg.preset}", f"--device={cfg.device}", f"--seed={cfg.seed}"]
    t_start = time.time()
    stages = {}

    sizes = {k: data[k] for k in ("n_train", "n_test", "n_heldout", "n_rl")}

    def data_stage():
        meta = prepare(corpus, size_mb=data["size_mb"], vocab_size=data["vocab_size"], prompts_mb=data["prompts_mb"])
        made = make_sft(sft_data, slip_scale=cfg.slip_scale, **sizes)
        return {"corpus_tokens": meta.get("train_tokens"), "documents": meta.get("documents"),
                "slip_scale": cfg.slip_scale, "demo_pass_rate": made["demo_pass_rate"]["train"],
                "demo_pass_rates": made["demo_pass_rate"], "demo_per_type": made["demo_per_type"]}
    stages["data"] = run_stage("data", out, cfg.force, data_stage)

    stages["pretrain"] = run_stage("pretrain", out, cfg.force, lambda: train_pretrain.main(
        common + [f"--data_dir={corpus}", f"--out_dir={os.path.dirname(ckpt['pretrain'])}"]))
    stages["sft"] = run_stage("sft", out, cfg.force, lambda: train_sft.main(
        common + [f"--init_from={ckpt['pretrain']}", f"--data={sft_data}/train.jsonl",
                  f"--eval_data={sft_data}/test.jsonl", f"--out_dir={os.path.dirname(ckpt['sft'])}"]))
    stages["prefs"] = run_stage("prefs", out, cfg.force, lambda: make_preferences.main(
        common + [f"--sft_ckpt={ckpt['sft']}", f"--prompts={sft_data}/rl_prompts.jsonl", f"--out_dir={prefs}"]))
    stages["reward"] = run_stage("reward", out, cfg.force, lambda: reward_summary(train_reward.main(
        common + [f"--init_from={ckpt['sft']}", f"--data={prefs}/train.jsonl", f"--val_data={prefs}/val.jsonl",
                  f"--val_samples={prefs}/val_samples.jsonl", f"--out_dir={os.path.dirname(ckpt['reward'])}"])))

    def ppo_stage():
        train_ppo.main(common + [f"--sft_ckpt={ckpt['sft']}", f"--reward_ckpt={ckpt['reward']}",
                                 f"--prompts={sft_data}/rl_prompts.jsonl", f"--eval_data={sft_data}/test.jsonl",
                                 f"--out_dir={os.path.dirname(ckpt['ppo'])}"])
        return ppo_summary(os.path.dirname(ckpt["ppo"]))
    stages["ppo"] = run_stage("ppo", out, cfg.force, ppo_stage)

    def card_figures(model):   # greedy and sampled, on both splits
        print(f"evaluating {model}: greedy and sampled answers to the test and heldout prompts", flush=True)
        return {split: evaluate_for_card(ckpt[model], f"{sft_data}/{split}.jsonl", data["eval_examples"],
                                         cfg.device, os.path.join(out, model, f"responses_{split}.jsonl"))
                for split in ("test", "heldout")}

    def eval_stage():
        # Greedy answers, as IFEval scores them, and one answer sampled at PPO's temperature per
        # prompt: RL moves samples first, and a policy's samples are what it is trained on.
        figures = {"base" if model == "pretrain" else model: card_figures(model) for model in ("pretrain", "sft", "ppo")}
        # SFT -> PPO prompt by prompt, from the greedy answers card_figures just wrote
        figures["sft_to_ppo"] = {split: prompt_by_prompt(f"{sft_data}/{split}.jsonl", *(
            os.path.join(out, model, f"responses_{split}.jsonl") for model in ("sft", "ppo")))
            for split in ("test", "heldout")}
        return figures
    evals = run_stage("eval", out, cfg.force, eval_stage)

    # Two optional SFT runs, each changing one thing and evaluated as the card's models are.
    def extra_sft(name, init_from, train_data):
        ckpt[name] = os.path.join(out, name, "ckpt.pt")
        trained = train_sft.main(common + [f"--init_from={init_from}", f"--data={train_data}",
                                           f"--eval_data={sft_data}/test.jsonl",
                                           f"--out_dir={os.path.join(out, name)}"])
        return {**trained, "eval": card_figures(name)}

    if cfg.reference_sft:  # perfect demonstrations of the same prompts
        perfect_data = os.path.join(out, "data", "sft_perfect")

        def reference_stage():
            make_sft(perfect_data, slip_scale=0.0, **sizes)
            return extra_sft("sft_perfect", ckpt["pretrain"], f"{perfect_data}/train.jsonl")
        stages["sft_perfect"] = run_stage("sft_perfect", out, cfg.force, reference_stage)
    if cfg.sft_from_scratch:  # the same demonstrations, from the pretrained model's initial weights

        def scratch_stage():
            untrained = os.path.join(out, "sft_scratch", "untrained.pt")
            save_untrained(ckpt["pretrain"], untrained)
            return extra_sft("sft_scratch", untrained, f"{sft_data}/train.jsonl")
        stages["sft_scratch"] = run_stage("sft_scratch", out, cfg.force, scratch_stage)
    evals = {**evals, **{name: stages[name]["eval"] for name in ("sft_perfect", "sft_scratch") if name in stages}}

    # total_seconds adds up the stages' own times (stage.json), so a pipeline finished over
    # several runs still reports what it cost; run_seconds is this run alone.
    report = {"preset": cfg.preset, "total_seconds": round(sum(v["seconds"] for v in stages.values())
                                                           + evals["seconds"], 1),
              "run_seconds": round(time.time() - t_start, 1),
              "stages": {**{k: {key: x for key, x in v.items() if key != "eval"} for k, v in stages.items()},
                         "eval": {"seconds": evals["seconds"]}},
              "eval": {m: {s: {k: v for k, v in evals[m][s].items() if k in METRIC_KEYS + ("sampled_strict", "gold")}
                           for s in ("test", "heldout")} for m in evals if m not in ("seconds", "sft_to_ppo")},
              # PPO's change of the gold reward of greedy answers to new prompts, paired prompt by
              # prompt (an eval stage from before gold_each existed has none)
              "gold_change": {s: paired_difference(evals["sft"][s]["gold_each"], evals["ppo"][s]["gold_each"])
                              for s in ("test", "heldout") if "gold_each" in evals["ppo"][s]},
              "per_type": {m: evals[m]["test"]["per_type"] for m in ("sft", "ppo", "sft_perfect") if m in evals},
              "sft_to_ppo": evals.get("sft_to_ppo", {}),   # an eval stage from before it existed has none
              # the training curves, when plot.py has drawn them (a re-run of the pipeline links them)
              "curves": [f"{stage}/curves.png" for stage in ("pretrain", "sft", "reward", "ppo", "sft_perfect",
                                                             "sft_scratch")
                         if os.path.exists(os.path.join(out, stage, "curves.png"))]}
    write_json(os.path.join(out, "report.json"), report)
    write_text(os.path.join(out, "report.md"), report_markdown(report))
    print(report_markdown(report))
    print(f"wrote {out}/report.md and {out}/report.json")
    return report


def save_untrained(pretrain_path, path):
    """The pretrained model's architecture and tokenizer at the weights it started from
    (train_pretrain.py seeds torch with its --seed, then builds the GPT), as a checkpoint SFT
    can start from."""
    pretrained = load_checkpoint(pretrain_path, kinds=("pretrain",))
    torch.manual_seed(pretrained["config"]["seed"])
    model = GPT(GPTConfig(**pretrained["model_config"]))
    save_checkpoint(path, {**pretrained, "model": model.state_dict(), "step": 0, "optimizer": {}, "metrics": {}})


def reward_summary(metrics):
    """The report's names for the reward model's held-out numbers."""
    return {"pair_accuracy": metrics["val_accuracy"], "spearman_gold": metrics["spearman"], **metrics}


def ppo_summary(out_dir):
    """The PPO stage's headline numbers, from its metrics.jsonl. Reward-model score and gold
    reward, start and end, are the fixed probe's (train_ppo.py's probe(): same prompts, same
    random draws) before the first update and after the last; the rollout batches' first and
    last means are kept beside them."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        log = [json.loads(line) for line in f]
    steps, probes = [m for m in log if m["iteration"] > 0], [m for m in log if "probe_gold" in m]
    first, last = steps[0], steps[-1]
    # The change of each probe score, paired prompt by prompt, with its standard error: is it
    # beyond the noise of the probe's sampled answers (train_ppo.py --eval_examples)? (Logs
    # written before the per-prompt lists lack it.)
    change = {f"{name}_change": paired_difference(probes[0][each], probes[-1][each])
              for name, each in (("reward", "probe_rm_each"), ("gold", "probe_gold_each"))
              if each in probes[0] and each in probes[-1]}
    # "kl" is the last rollout batch's mean KL; "kl_max" the largest batch mean over the run, the
    # figure to hold against a KL budget (it varies with the prompts from batch to batch).
    return {**change, "kl": last["kl"], "kl_max": max(m["kl"] for m in steps),
            "reward_start": probes[0]["probe_rm_score"], "reward_end": probes[-1]["probe_rm_score"],
            "gold_start": probes[0]["probe_gold"], "gold_end": probes[-1]["probe_gold"],
            "batch_reward_first": first["rm_score"], "batch_reward_last": last["rm_score"],
            "batch_gold_first": first["gold"], "batch_gold_last": last["gold"], "iterations": last["iteration"],
            "end_rate": last["end_rate"], "length_start": first["length"], "length_end": last["length"],
            "approx_kl": last["approx_kl"], "clipfrac": last["clipfrac"]}


if __name__ == "__main__":
    run(main)
