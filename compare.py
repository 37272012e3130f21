"""
The alignment lab: every method starts from the same SFT model and uses the same data, and one
card compares them.

    python pipeline.py && python compare.py     # tiny preset, from out/tiny
    python compare.py --seeds=1337,2,3          # three seeds each, the spread beside the mean
    python compare.py --methods=sft,dpo         # a subset

The methods, each with its judge (what tells it a good answer from a bad one):
  sft        the SFT model as it is                                                       -
  best_of_8  8 samples per prompt, the reward model's favourite (Nakano et al. 2021)      reward model
  rejection  fine-tune on a perfect sample (of 8) per RL prompt (bench/rejection_sampling.py) gold
  dpo        train_dpo.py on the reward model's training pairs (Rafailov et al. 2023)     the pairs
  ppo        train_ppo.py against the reward model (pipeline.py's own run, for its seed)  reward model
  grpo       train_grpo.py against the reward model: PPO's judge, no critic               reward model
  ppo_gold   train_ppo.py --reward=gold                                                   gold
  grpo_gold  train_grpo.py --reward=gold (Shao et al. 2024)                               gold
The learned judges (reward model, pairs) saw the gold judge only through the pairs (from the
nine in ten RL prompts kept for training, those whose answers do not all tie); the gold
judge scores every answer exactly. That does not make it the better teacher: its scores tie
more and spread less (FINDINGS.md, section 10).

Columns: greedy prompt-strict on test and heldout (best_of_8: its favourite's), one sampled
answer's pass rate on test, how many greedy test answers went from fail to pass and from pass to
fail against the SFT model's, the gold reward of the greedy test answers, the KL to the SFT
model (nats an answer, on the test prompts) and the method's wall time. Each run sits in
<out>/compare/<method>-<seed>/ with a stage.json, so a re-run skips finished runs. The card is
<out>/compare.md, with the same numbers in <out>/compare.json.
"""

import json
import math
import os
import statistics
import time
from dataclasses import dataclass

import torch

import evaluate
import pipeline
import report_card
import train_dpo
import train_grpo
import train_ppo
from bench import rejection_sampling
from minift.checkpoint import build_model, load_checkpoint, tokenizer_for
from minift.config import cli_config, run
from minift.formats import load_ifeval_inputs, write_json, write_text
from minift.training import pick_device

METHODS = ("sft", "best_of_8", "rejection", "dpo", "ppo", "grpo", "ppo_gold", "grpo_gold")
JUDGES = {"sft": "-", "best_of_8": "reward model", "rejection": "gold", "dpo": "the pairs", "ppo": "reward model",
          "grpo": "reward model", "ppo_gold": "gold", "grpo_gold": "gold"}
BEST_OF = 8


@dataclass
class Config:
    preset: str = "tiny"
    out_dir: str = ""              # default: out/<preset>, where pipeline.py left its models and data
    methods: str = ",".join(METHODS)
    seeds: str = "1337"            # comma-separated; 1337 is the training scripts' own default
    kl_examples: int = 200         # test prompts sampled to measure the KL to the SFT model
    force: bool = False            # redo finished runs
    device: str = "auto"


@torch.no_grad()
def kl_to_sft(ckpt_path, sft_path, records, device, preset, seed=0):
    """KL(policy || SFT) in nats an answer: answers sampled from the policy at PPO's temperature
    and length for this preset, and the summed log-ratio of their tokens under the two models at
    that temperature, as PPO's penalty measures it (train_ppo.token_rewards), averaged over answers."""
    sft = load_checkpoint(sft_path)
    models = [build_model(ckpt).to(device).eval() for ckpt in (load_checkpoint(ckpt_path), sft)]
    tokenizer = tokenizer_for(sft, sft_path)
    cfg = cli_config(train_ppo.Config, train_ppo.PRESETS, [f"--preset={preset}"])   # its sampling settings
    total = 0.0
    for start in range(0, len(records), 64):
        batch = records[start:start + 64]
        generator = torch.Generator(device=device).manual_seed(seed + start)
        seq, attn, mask, _, _ = train_ppo.rollout(models[0], tokenizer, batch, cfg, generator, device)
        P = seq.size(1) - mask.size(1)
        policy_logp, sft_logp = (train_ppo.answer_logprobs(m, seq, attn, P, cfg.temperature)[0] for m in models)
        total += ((policy_logp - sft_logp) * mask).sum().item()
    return total / len(records)


def best_of_n_kl(n):
    """The KL of best-of-n sampling to the policy it samples, as usually reported: log n - (n-1)/n
    (Stiennon et al. 2020, appendix). It is an upper bound (Beirami et al. 2024), reached when
    no two samples can be the same answer; short answers that repeat make the true KL smaller."""
    return math.log(n) - (n - 1) / n


def train(method, seed, run_dir, out, common):
    """Train one method from the SFT model; returns its checkpoint's path."""
    sft, data, prefs = (os.path.join(out, p) for p in ("sft/ckpt.pt", "data/sft", "data/prefs"))
    rl = [f"--sft_ckpt={sft}", f"--reward_ckpt={out}/reward/ckpt.pt", f"--prompts={data}/rl_prompts.jsonl",
          f"--eval_data={data}/test.jsonl", f"--out_dir={run_dir}", f"--seed={seed}"]
    if method == "rejection":
        rejection_sampling.main(common + [f"--sft_ckpt={sft}", f"--prompts={data}/rl_prompts.jsonl",
                                          f"--data_dir={data}", f"--out_dir={run_dir}", f"--seed={seed}",
                                          f"--k={BEST_OF}", "--score=false"])
        return os.path.join(run_dir, "round1", "ckpt.pt")
    if method == "dpo":
        train_dpo.main(common + [f"--init_from={sft}", f"--data={prefs}/train.jsonl",
                                 f"--val_data={prefs}/val.jsonl", f"--out_dir={run_dir}", f"--seed={seed}"])
    elif method == "ppo":
        train_ppo.main(common + rl)
    elif method == "grpo":
        train_grpo.main(common + rl + ["--reward=model"])
    elif method == "ppo_gold":
        train_ppo.main(common + rl + ["--reward=gold"])
    elif method == "grpo_gold":
        train_grpo.main(common + rl + ["--reward=gold"])
    return os.path.join(run_dir, "ckpt.pt")


def one_run(method, seed, out, cfg, device):
    """Train (or, for sft and best_of_8, only sample) and score one method with one seed."""
    sft, data = os.path.join(out, "sft", "ckpt.pt"), os.path.join(out, "data", "sft")
    run_dir = os.path.join(out, "compare", f"{method}-{seed}")
    examples = pipeline.DATA[cfg.preset]["eval_examples"]
    kl_records = load_ifeval_inputs(f"{data}/test.jsonl")[:cfg.kl_examples]
    if method == "best_of_8":   # no training: the judge picks among samples at answer time
        t0 = time.time()
        scores = {split: evaluate.evaluate(sft, f"{data}/{split}.jsonl", examples, device=cfg.device, samples=BEST_OF,
                                           temperature=report_card.SAMPLE_TEMPERATURE, seed=seed,
                                           reward_ckpt=os.path.join(out, "reward", "ckpt.pt"))
                  for split in ("test", "heldout")}
        return {"seconds": round(time.time() - t0, 1), "kl": best_of_n_kl(BEST_OF),
                **{split: scores[split]["best_of_k_prompt_strict"] for split in scores}}
    reuse = reuses_pipeline_ppo(method, seed, out)
    t0 = time.time()
    if method == "sft":
        ckpt = sft
    elif reuse:
        ckpt = os.path.join(out, "ppo", "ckpt.pt")
    else:
        ckpt = train(method, seed, run_dir, out, [f"--preset={cfg.preset}", f"--device={cfg.device}"])
    seconds = time.time() - t0
    if reuse:
        with open(os.path.join(out, "ppo", "stage.json")) as f:
            seconds = json.load(f)["seconds"]
    card = {split: report_card.evaluate_for_card(ckpt, f"{data}/{split}.jsonl", examples, cfg.device,
                                              os.path.join(run_dir, f"responses_{split}.jsonl"))
            for split in ("test", "heldout")}
    row = {"seconds": 0.0 if method == "sft" else round(seconds, 1), "test": card["test"]["prompt_strict"],
           "heldout": card["heldout"]["prompt_strict"], "sampled": card["test"]["sampled_strict"],
           "gold": card["test"]["gold"], "kl": 0.0 if method == "sft" else kl_to_sft(ckpt, sft, kl_records, device, cfg.preset)}
    # Prompt by prompt against the SFT model's greedy test answers (pipeline.py's eval stage wrote
    # them): a gain is fail -> pass less pass -> fail, and the two show how much of it is churn.
    sft_answers = os.path.join(out, "sft", "responses_test.jsonl")
    if method != "sft" and os.path.exists(sft_answers):
        moves = report_card.prompt_by_prompt(f"{data}/test.jsonl", sft_answers,
                                          os.path.join(run_dir, "responses_test.jsonl"))
        row |= {key: moves[key] for key in ("fail_to_pass", "pass_to_fail")}
    return row


def pipeline_settings(out):
    """The preset, slip scale and seed that pipeline.py recorded for the run in `out`."""
    with open(os.path.join(out, "pipeline.json")) as f:
        return {"slip_scale": 1.0, "seed": 1337, **json.load(f)}   # a record from before those options


def reuses_pipeline_ppo(method, seed, out):
    """Whether pipeline.py trained exactly this run: PPO from the same SFT model, reward model
    and prompts, with the seed the pipeline ran with (pipeline.py --seed)."""
    return (method == "ppo" and seed == pipeline_settings(out)["seed"]
            and os.path.exists(os.path.join(out, "ppo", "stage.json")))


def summarise(runs):
    """{column: mean} and, with two runs or more, {column_sd: standard deviation} over seeds."""
    out = {}
    for key in ("test", "heldout", "sampled", "fail_to_pass", "pass_to_fail", "gold", "kl", "seconds"):
        values = [r[key] for r in runs if key in r]
        if values:
            out[key] = statistics.fmean(values)
            if len(values) > 1:
                out[f"{key}_sd"] = statistics.stdev(values)
    return out


def compare_markdown(results, preset, seeds):
    def cell(row, key, scale=100, digits=1, suffix=""):
        if key not in row:
            return ""
        sd = f" +- {scale * row[key + '_sd']:.{digits}f}" if f"{key}_sd" in row else ""
        return f"{scale * row[key]:.{digits}f}{sd}{suffix}"
    lines = [f"# minift alignment lab: preset `{preset}`", "",
             f"Every method starts from the same SFT model; {len(seeds)} seed(s) each ({', '.join(seeds)})"
             + (", mean +- standard deviation." if len(seeds) > 1 else "."), "",
             "| method | judge | test | heldout | sampled (test) | fail -> pass | pass -> fail | gold (test) "
             "| KL to SFT (nats) | seconds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, row in results.items():
        if "test" not in row:
            lines.append(f"| {method} | {JUDGES[method]} | skipped: {row['runs'][0].get('skipped', '')} "
                         "| | | | | | | |")
            continue
        scored = sum("test" in run for run in row["runs"])   # a skipped seed leaves the mean to the others
        name = method if method == "sft" or scored == len(seeds) else f"{method} ({scored} of {len(seeds)} seeds)"
        lines.append(f"| {name} | {JUDGES[method]} | {cell(row, 'test')} | {cell(row, 'heldout')} | "
                     f"{cell(row, 'sampled')} | {cell(row, 'fail_to_pass', 1, 0)} | "
                     f"{cell(row, 'pass_to_fail', 1, 0)} | "
                     f"{cell(row, 'gold', 1, 3)} | {cell(row, 'kl', 1, 2)} | "
                     f"{cell(row, 'seconds', 1, 0)} |")
    lines += ["", "test, heldout: greedy prompt-level strict accuracy (%); best_of_8: the reward model's favourite "
              f"of {BEST_OF} samples at temperature {report_card.SAMPLE_TEMPERATURE}, and its KL the best-of-n formula "
              f"log n - (n-1)/n. sampled: one answer a prompt at that temperature. fail -> pass, pass -> fail: "
              "greedy test answers whose verdict changed from the SFT model's. gold: the gold reward of the "
              "greedy test answers. KL to SFT: nats an answer, one answer sampled at that temperature to each of "
              "the first --kl_examples test prompts. seconds: training time (ppo: pipeline.py's PPO stage when reused; best_of_8: "
              "evaluate.py's run on both splits: greedy answers, then the samples and their judging)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    cfg = cli_config(Config, argv=argv)
    methods, seeds = [m.strip() for m in cfg.methods.split(",")], [s.strip() for s in cfg.seeds.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if not cfg.methods.strip():
        raise SystemExit(f"error: --methods is empty; choose from {', '.join(METHODS)}")
    if unknown:
        raise SystemExit(f"error: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if not all(s.isdigit() for s in seeds):
        raise SystemExit(f"error: --seeds={cfg.seeds}: expected whole numbers separated by commas, like 1337,2,3")
    out = cfg.out_dir or os.path.join("out", cfg.preset)
    for need in ("pipeline.json", "sft/ckpt.pt", "reward/ckpt.pt", "data/prefs/train.jsonl", "data/sft/test.jsonl"):
        if not os.path.exists(os.path.join(out, need)):
            where = f" --out_dir={out}" if cfg.out_dir else ""
            raise FileNotFoundError(f"{os.path.join(out, need)} not found: run the pipeline first: "
                                    f"python pipeline.py --preset={cfg.preset}{where}")
    # Every method trains with this preset's settings from the pipeline's models and data.
    made_with = pipeline_settings(out)["preset"]
    if made_with != cfg.preset:
        raise SystemExit(f"error: {out} holds a pipeline run of preset {made_with}; "
                         f"run python compare.py --preset={made_with}" + (f" --out_dir={out}" if cfg.out_dir else ""))
    device = pick_device(cfg.device)
    results = {}
    for method in methods:
        runs = []
        for seed in (seeds[:1] if method == "sft" else seeds):   # the SFT model has no seed of its own
            try:
                runs.append(pipeline.run_stage(f"{method}-{seed}", os.path.join(out, "compare"), cfg.force,
                                               lambda: one_run(method, int(seed), out, cfg, device)))
            except SystemExit as e:
                # Rejection sampling may find no perfect sample to learn from: a result, not an
                # error. Any other error is the user's to see.
                if method != "rejection" or "nothing to learn from" not in str(e):
                    raise
                print(f"{method}, seed {seed}: skipped: {e}")
                runs.append({"skipped": str(e)})
        results[method] = {**summarise(runs), "runs": runs}
    report = {"preset": cfg.preset, "seeds": seeds, "methods": results}
    write_json(os.path.join(out, "compare.json"), report)
    card = compare_markdown(results, cfg.preset, seeds)
    write_text(os.path.join(out, "compare.md"), card)
    print(card)
    print(f"wrote {out}/compare.md and {out}/compare.json")
    return report


if __name__ == "__main__":
    run(main)
