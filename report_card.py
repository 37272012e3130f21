"""
The report card that pipeline.py writes: each model's figures on a split (`evaluate_for_card`),
SFT against PPO prompt by prompt (`prompt_by_prompt`), and the card itself (`report_markdown`),
with one line per stage saying what it changed (`story_lines`). compare.py scores every
alignment method with the same functions, so its card and the pipeline's agree.

Run on its own, it writes a finished run's card again from its report.json, with no model
run: after you change how the card reads, say.

    python report_card.py out/tiny           # rewrites out/tiny/report.md and prints it
"""

import json
import math
import os
import sys
from collections import Counter

import evaluate
import train_ppo
from minift.config import run
from minift.formats import load_ifeval_inputs, load_ifeval_responses, require_answers_in_order, write_text
from minift.synthetic.demonstrators import COMMON_HABITS
from minift.synthetic.gold import gold_reward
from minift.synthetic.scoring import NO_LANGDETECT, score

METRIC_KEYS = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")

SAMPLE_TEMPERATURE = train_ppo.Config.temperature  # the card samples as PPO's rollouts do


def evaluate_for_card(ckpt_path, data_path, examples, device, output):
    """The report card's figures for one model on one split: the IFEval metrics of greedy
    answers, the per-type table, `sampled_strict`, the prompt-level strict pass rate of one
    answer per prompt sampled at SAMPLE_TEMPERATURE, and the gold reward of each greedy answer
    (`gold_each`, read back from `output`) and their mean."""
    m = evaluate.evaluate(ckpt_path, data_path, examples, device=device, output=output, samples=1,
                          temperature=SAMPLE_TEMPERATURE)
    answers = load_ifeval_responses(output)   # the greedy answers evaluate() wrote
    records = load_ifeval_inputs(data_path)[:len(answers)]
    gold = [round(gold_reward(r["prompt"], a["response"], r["instruction_id_list"], r["kwargs"]), 4)
            for r, a in zip(records, answers, strict=True)]
    return {**{k: m[k] for k in METRIC_KEYS + ("per_type",)}, "sampled_strict": m["sample_prompt_strict"],
            "gold": sum(gold) / len(gold), "gold_each": gold}


def strict_verdicts(records, answers):
    """Per prompt, scored as the card scores (strict): (does the answer do the base task, does it
    pass every instruction, the instructions it fails). A record without a base task counts as doing it."""
    verdicts = []
    for rec, answer in zip(records, answers, strict=True):
        marks = [(iid, ok) for iid, ok in zip(rec["instruction_id_list"], score(
            answer, rec["instruction_id_list"], rec["kwargs"], rec["prompt"])["strict"]) if ok is not None]
        failed = [iid for iid, ok in marks if not ok]
        verdicts.append((not any(iid.startswith("task:") for iid in failed), not failed, failed))
    return verdicts


EXAMPLES = 3   # the card shows this many answers PPO fixed, and one it broke
RULES_NAMED = 3   # and names the rules it fixed and broke most often, this many of each (and any tied with the last)


def rules_failed(verdicts):
    """Instruction id -> how many of these answers fail it, most often first."""
    return dict(Counter(iid for _, _, failed in verdicts for iid in failed).most_common())


def prompt_by_prompt(data_path, sft_responses, ppo_responses):
    """SFT -> PPO on one split's greedy answers, prompt by prompt: how many went fail -> pass and
    pass -> fail (a gain is these two's difference, so both show how much of it is churn), and
    the rules behind each move: those SFT's answers failed where PPO's pass, and those PPO's
    answers fail where SFT's passed (an answer can count under several). And
    where PPO does the base task itself, its pass rate against the demonstrations' on the same
    prompts: the demonstrators never fail a base task, so only there do their slips alone set
    them apart (records without demonstrations, such as IFEval's, skip this part). And, to show on
    the card, the first answers PPO fixed, each for another rule, and the first it broke: in the
    split's own order, not picked."""
    sft, ppo = (load_ifeval_responses(path) for path in (sft_responses, ppo_responses))
    records = load_ifeval_inputs(data_path)[:len(ppo)]
    for path, answers in ((sft_responses, sft), (ppo_responses, ppo)):
        require_answers_in_order(path, answers, data_path, records)
    before, after = (strict_verdicts(records, [a["response"] for a in answers]) for answers in (sft, ppo))
    gained = [i for i, (b, a) in enumerate(zip(before, after)) if not b[1] and a[1]]
    lost = [i for i, (b, a) in enumerate(zip(before, after)) if b[1] and not a[1]]
    first_per_rule = {}   # the first prompt PPO fixed for each rule SFT's answer broke first
    for i in gained:
        first_per_rule.setdefault(before[i][2][0], i)
    shown = sorted(first_per_rule.values())[:EXAMPLES] + lost[:1]
    moves = {"fail_to_pass": len(gained), "pass_to_fail": len(lost),
             "rules_fixed": rules_failed(before[i] for i in gained), "rules_broken": rules_failed(after[i] for i in lost),
             "examples": [{"prompt": records[i]["prompt"], "sft": sft[i]["response"], "ppo": ppo[i]["response"],
                           "sft_fails": before[i][2], "ppo_fails": after[i][2]} for i in shown]}
    if not all("messages" in rec for rec in records):
        return moves
    demos = strict_verdicts(records, [rec["messages"][-1]["content"] for rec in records])
    done = [i for i, (task_done, _, _) in enumerate(after) if task_done]
    return {**moves, "base_task_done": len(done),
            "ppo_where_done": sum(after[i][1] for i in done) / max(1, len(done)),
            "demonstrations_where_done": sum(demos[i][1] for i in done) / max(1, len(done))}


def reward_hacking_lines(p, new_prompts=None):
    """The report's verdict on reward hacking (Gao et al. 2022): the learned reward rose while
    the gold reward fell. A change counts when a paired test over the probe prompts puts it
    beyond the noise; a fall within the noise is reported as such, not as hacking. The probe
    is a few prompts; `new_prompts` (split -> the gold change of SFT's and PPO's greedy
    answers, paired over the split's prompts) catches a fall the probe misses."""
    fell = [f"{c['mean']:+.3f} +- {c['se']:.3f} on {split}" for split, c in (new_prompts or {}).items()
            if c["mean"] < 0 and c["significant"]]
    lines = probe_verdict(p)
    rm = p.get("reward_change")   # an older log has only the means
    rose = rm["mean"] > 0 and rm["significant"] if rm else p["reward_end"] > p["reward_start"]
    if fell and not any("Warning" in line for line in lines):
        lines = ["", "**Warning:** the gold reward of the greedy answers to new prompts fell beyond the noise, "
                 f"SFT -> PPO ({', '.join(fell)}), though the probe did not show it: the policy got worse by the "
                 "judges' measure" + (", while the reward model's score rose: reward hacking (Gao et al. 2022)."
                                      if rose else ".")]
    return lines


def probe_verdict(p):
    """reward_hacking_lines on the probe prompts alone."""
    hacking = ["", "**Warning: reward hacking.** The reward model's score rose while the gold reward "
               "fell: the policy found what the learned reward over-values (Gao et al. 2022)."]
    rm, gold = p.get("reward_change"), p.get("gold_change")
    if rm is None or gold is None:  # an older log without per-prompt scores: only the means to go by
        return hacking if p["reward_end"] > p["reward_start"] and p["gold_end"] < p["gold_start"] else []
    if gold["mean"] >= 0:
        return []
    if not gold["significant"]:
        return ["", f"The gold reward fell by {-gold['mean']:.3f} +- {gold['se']:.3f} (paired over the probe "
                "prompts, mean +- standard error): within the noise, so not counted as reward hacking."]
    if rm["mean"] > 0 and rm["significant"]:
        return hacking
    return ["", "**Warning:** the gold reward fell beyond the noise while the reward model's score did not "
            "rise beyond it: PPO made the policy worse without pleasing the reward model either."]


def report_markdown(r):
    def pct(x):
        return f"{100 * x:.1f}%"
    s = r["stages"]
    lines = [f"# minift report card: preset `{r['preset']}`", "",
             f"Total time: {r['total_seconds'] / 60:.1f} minutes"
             + (f" (the stages' own times; this run took {r['run_seconds'] / 60:.1f} minutes, skipping finished stages)."
                if r.get("run_seconds", r["total_seconds"]) < r["total_seconds"] - 1 else "."), "",
             "## Stages", "", "| stage | seconds | what shows it worked |", "|---|---:|---|"]
    d = s["data"]
    if "demo_pass_rate" in d:
        lines.append(f"| data | {d['seconds']:.0f} | demonstrations pass {pct(d['demo_pass_rate'])} of their prompts "
                     f"(train, prompt-strict by the checkers; slip rates x {d['slip_scale']:g}) |")
    speed = s["pretrain"].get("tokens_per_s")  # this machine's speed: compare it with the README's
    start = s["pretrain"].get("val_loss_init")   # absent from a run resumed from an older checkpoint
    lines.append(f"| pretrain | {s['pretrain']['seconds']:.0f} | validation loss "
                 + (f"{start:.2f} untrained -> " if start else "") + f"{s['pretrain']['val_loss']:.3f}"
                 + (f", at a median {speed:,.0f} tokens/s" if speed else "")
                 + (f" (MFU {s['pretrain']['mfu']:.1%})" if s["pretrain"].get("mfu") else "") + " |")
    n_eval = s["sft"].get("eval_prompts")   # its last evaluation, on the first test prompts only
    lines.append(f"| sft | {s['sft']['seconds']:.0f} | test prompt-strict during training "
                 f"{pct(s['sft'].get('prompt_strict', 0))}" + (f" (first {n_eval} prompts)" if n_eval else "") + " |")
    lines.append(f"| prefs | {s['prefs']['seconds']:.0f} | {s['prefs'].get('train_pairs', '?')} training pairs |")
    weight = s["reward"].get("likelihood_weight", 0)  # the reward: head + weight x answer likelihood
    # Spearman over every held-out answer, whatever its prompt; the pairs train the order within
    # a prompt, which is what PPO reads (train_reward.evaluate)
    within = s["reward"].get("spearman_within", math.nan)   # nan: no prompt's answers differ in gold
    lines.append(f"| reward | {s['reward']['seconds']:.0f} | held-out pair accuracy "
                 f"{pct(s['reward']['pair_accuracy'])}, Spearman with gold {s['reward']['spearman_gold']:.3f} "
                 "over all answers" + (f", {within:.3f} within a prompt" if not math.isnan(within) else "")
                 + (f" (head + {weight:g} x the answer's mean log-probability)" if weight else "") + " |")
    p = s["ppo"]
    lines.append(f"| ppo | {p['seconds']:.0f} | on fixed probe prompts, before -> after: "
                 f"reward model {p['reward_start']:+.2f} -> {p['reward_end']:+.2f}, "
                 f"gold {p['gold_start']:.3f} -> {p['gold_end']:.3f}, KL to SFT {p['kl']:.2f} nats an answer "
                 "in the last rollout batch (RL prompts)"
                 # a stage.json written before kl_max existed lacks it; the report still renders
                 + (f", at most {p['kl_max']:.2f} over the run" if "kl_max" in p else "") + " |")
    if "eval" in s:   # a report from before the evaluation's time was kept has none
        lines.append(f"| eval | {s['eval']['seconds']:.0f} | base, SFT and PPO answer the test and heldout "
                     "prompts, greedy and sampled: the tables below |")
    lines += reward_hacking_lines(p, r.get("gold_change"))
    lines += ["", "## Instruction following (IFEval metrics)", "",
              "Greedy answers, as IFEval scores them; *sampled*: one answer a prompt at temperature "
              f"{SAMPLE_TEMPERATURE}, as PPO samples. The demonstrations are the demonstrators' own answers "
              "to the same prompts.", "",
              "| model | split | prompt strict | sampled strict | instruction strict | prompt loose | "
              "instruction loose | gold reward |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for split, rate in d.get("demo_pass_rates", {}).items():
        if split != "train":
            lines.append(f"| demonstrations | {split} | {pct(rate)} | | | | | |")
    for model, splits in r["eval"].items():
        for split, m in splits.items():
            sampled = pct(m["sampled_strict"]) if "sampled_strict" in m else ""
            gold = f"{m['gold']:.3f}" if "gold" in m else ""
            lines.append(f"| {MODEL_NAMES.get(model, model)} | {split} | {pct(m['prompt_strict'])} | {sampled} | "
                         + " | ".join(pct(m[k]) for k in METRIC_KEYS[1:]) + f" | {gold} |")
    lines += story_lines(r)
    lines += ["", "Training curves: " + (", ".join(f"[{c.split('/')[0]}]({c})" for c in r["curves"]) if r.get("curves")
                                       else "`python plot.py <out_dir>` draws them (matplotlib); the pipeline, run again "
                                            "with the same options, links them here.")]
    demos = d.get("demo_per_type", {})
    # with the reference run, its column shows how far PPO came toward perfect demonstrations, rule by rule
    models = [m for m in ("sft", "ppo", "sft_perfect") if m in r["per_type"]]
    lines += ["", "## Per instruction type (test split, strict)", "",
              "| type | n | demonstrations | " + " | ".join(PER_TYPE_NAMES[m] for m in models) + " |",
              "|---|---:|---:|" + "---:|" * len(models)]
    for iid, row in sorted(r["per_type"]["sft"].items()):
        rates = [pct(r["per_type"][m].get(iid, {}).get("strict", 0)) for m in models]
        demo = pct(demos[iid]) if iid in demos else ""
        unchecked = f" ({NO_LANGDETECT})" if row.get("language_checked") is False else ""
        lines.append(f"| {iid}{unchecked} | {row['n']} | {demo} | " + " | ".join(rates) + " |")
    return "\n".join(lines + example_lines(r.get("sft_to_ppo", {}).get("test", {}).get("examples", []))) + "\n"


def example_lines(examples):
    """The answers prompt_by_prompt chose to show. Prompts and answers go in indented blocks, which
    markdown keeps verbatim: a prompt's <<title>> would otherwise vanish as an HTML tag."""
    if not examples:
        return []   # PPO moved no answer (or a report from before they were kept)

    def verbatim(label, text):   # the label, then the text as an indented block
        if not text.strip():
            return ["", f"{label} (empty)"]
        return ["", label, "", *("    " + line for line in text.splitlines())]
    lines = ["", "## Answers PPO changed (test split, greedy)", "",
             "The first test prompts whose answer PPO fixed, each for another rule that SFT's answer "
             "broke, and the first whose answer it broke: in the split's order, not picked."]
    for e in examples:
        fixed = not e["ppo_fails"]
        rules = ", ".join(f"`{iid}`" for iid in (e["sft_fails"] if fixed else e["ppo_fails"]))
        lines += ["", f"**{'Fixed' if fixed else 'Broken'}** ({'SFT' if fixed else 'PPO'} broke {rules})",
                  *verbatim("Prompt:", e["prompt"]), *verbatim("SFT:", e["sft"]), *verbatim("PPO:", e["ppo"])]
    return lines


MODEL_NAMES = {"sft_perfect": "sft (perfect demonstrations)", "sft_scratch": "sft (no pretraining)"}
PER_TYPE_NAMES = {"sft": "SFT", "ppo": "PPO", "sft_perfect": "SFT, perfect demonstrations"}


def gold_line(change):
    """PPO's change of the gold reward of greedy answers, SFT -> PPO, paired over each split's prompts."""
    if not change:
        return ""
    return " The gold reward of its greedy answers changed by " + ", ".join(
        f"{c['mean']:+.3f} +- {c['se']:.3f} on {split}" + ("" if c["significant"] else " (within the noise)")
        for split, c in change.items()) + " (paired over the prompts, mean +- standard error)."


def moves_line(moves):
    """SFT -> PPO prompt by prompt on test, and PPO against the demonstrations where it does the base task."""
    if not moves:
        return ""   # a report from before these counts existed
    line = (f" Prompt by prompt, {moves['fail_to_pass']} greedy answers went from fail to pass and "
            f"{moves['pass_to_fail']} from pass to fail.")
    for key, verb in (("rules_fixed", "fixed"), ("rules_broken", "broke")):
        if moves.get(key):   # a report from before these counts existed has none
            counts = list(moves[key].items())   # most often first
            cut = counts[min(RULES_NAMED, len(counts)) - 1][1]
            named = [(iid, n) for iid, n in counts if n >= cut]
            line += f" The rules it {verb} most often: " + ", ".join(f"`{iid}` {n}" for iid, n in named) + "."
    if moves.get("base_task_done"):   # none done: no rate to give
        line += (f" On the {moves['base_task_done']} prompts where it does the base task itself, it passes "
                 f"{100 * moves['ppo_where_done']:.1f}%, the demonstrations {100 * moves['demonstrations_where_done']:.1f}%.")
    return line


def versus(a, b):
    """How figure a stands to figure b as the card prints them (one decimal)."""
    a, b = round(a, 1), round(b, 1)
    return "above" if a > b else "level with" if a == b else "below"


def story_lines(r):
    """One line per stage: what it changed, read off the numbers above (test split). The
    common habits are the demonstrators' slips of over half the time (minift/synthetic/demonstrators.py)."""
    ev, d, rm = r["eval"], r["stages"]["data"], r["stages"]["reward"]
    if "demo_pass_rates" not in d or "sampled_strict" not in ev["sft"]["test"]:
        return []   # a report from before the demonstrators and sampled answers existed

    def test(model, key="prompt_strict"):
        return 100 * ev[model]["test"][key]

    def on_habits(rates):   # pass rate over the common habits' instructions, weighted by their counts
        rows = [(r["per_type"]["sft"][iid]["n"], rates[iid]) for iid in COMMON_HABITS
                if iid in rates and iid in r["per_type"]["sft"]]
        return 100 * sum(n * x for n, x in rows) / max(1, sum(n for n, _ in rows))

    def habits_of(model):   # instruction id -> the model's strict pass rate on test
        return {iid: row["strict"] for iid, row in r["per_type"][model].items()}
    demo = 100 * d["demo_pass_rates"]["test"]
    slips = ", slips included" if d.get("slip_scale", 1.0) > 0 else " (perfect ones: slip scale 0)"
    pre = r["stages"]["pretrain"]
    loss = (f"takes the validation loss from {pre['val_loss_init']:.2f} (untrained) to {pre['val_loss']:.3f}, and "
            if pre.get("val_loss_init") else "")
    scratch = (f" SFT from the untrained model reaches {test('sft_scratch'):.1f}%, so pretraining is worth "
               f"{test('sft') - test('sft_scratch'):+.1f} points to SFT." if "sft_scratch" in ev else "")
    learns = ("learns what the judges prefer" if rm["pair_accuracy"] > 0.5
              else "has not learned what the judges prefer (no better than a coin)")
    lines = ["", "## What each stage changed (test split, prompt-level strict; the reward model on its "
             "held-out prompts; the common habits' instructions, instruction-level)", "",
             f"- **Pretraining** {loss}gives a model that continues text; asked to follow instructions it "
             f"passes {test('base'):.1f}%." + scratch,
             f"- **SFT** copies its demonstrators{slips}: {test('sft'):.1f}% greedy "
             f"({test('sft') - test('base'):+.1f} over the base model), {test('sft', 'sampled_strict'):.1f}% sampled; "
             f"the demonstrations pass {demo:.1f}%. On the instructions of the common habits SFT passes "
             f"{on_habits(habits_of('sft')):.1f}%, its demonstrators {on_habits(d['demo_per_type']):.1f}%.",
             f"- **The reward model** {learns}: it ranks {100 * rm['pair_accuracy']:.1f}% "
             f"of held-out answer pairs as the gold judge does (Spearman {rm['spearman_gold']:.2f} over every "
             "answer to the held-out prompts).",
             f"- **PPO** against the reward model: {test('ppo'):.1f}% greedy ({test('ppo') - test('sft'):+.1f} over "
             f"SFT), {test('ppo', 'sampled_strict'):.1f}% sampled "
             f"({test('ppo', 'sampled_strict') - test('sft', 'sampled_strict'):+.1f}); "
             f"{versus(test('ppo'), demo)} the demonstrations' {demo:.1f}%. On the common "
             f"habits' instructions it passes {on_habits(habits_of('ppo')):.1f}%."
             + moves_line(r.get("sft_to_ppo", {}).get("test")) + gold_line(r.get("gold_change", {}))]
    if "sft_perfect" in ev:
        gap = test('sft_perfect') - test('sft')   # what the slips cost SFT: the room PPO has on these prompts
        gain = test('ppo') - test('sft')
        if gap <= 0:
            back = f"The slips cost SFT nothing here ({gap:+.1f} points); PPO moved {gain:+.1f}."
        elif gain <= 0:
            back = f"The slips cost SFT {gap:.1f} points; PPO won none of them back ({gain:+.1f})."
        else:
            back = (f"The slips cost SFT {gap:.1f} points; PPO won back "
                    + (f"{gain:.1f} of them." if gain < gap else f"all of them and {gain - gap:.1f} more."))
        lines.append(f"- **SFT on perfect demonstrations** (the reference run): {test('sft_perfect'):.1f}% greedy, "
                     f"{test('sft_perfect', 'sampled_strict'):.1f}% sampled. " + back
                     + (f" On the common habits' instructions it passes {on_habits(habits_of('sft_perfect')):.1f}%."
                        if "sft_perfect" in r["per_type"] else ""))
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip())
        raise SystemExit(0)
    if len(argv) > 1:
        raise SystemExit("error: report_card.py takes one run's out_dir; usage: python report_card.py [OUT_DIR]")
    out = argv[0].removeprefix("--out_dir=") if argv else "out/tiny"   # the other scripts' spelling works too
    path = os.path.join(out, "report.json")
    if not os.path.isfile(path):
        raise SystemExit(f"error: no report.json in {out}; the pipeline writes it last: python pipeline.py "
                         f"--out_dir={out}")
    with open(path) as f:
        card = report_markdown(json.load(f))
    write_text(os.path.join(out, "report.md"), card)
    print(card)
    print(f"wrote {out}/report.md")


if __name__ == "__main__":
    run(main)
