"""
Does the reward model prefer the answer with the rule fixed? Take the greedy answers that fail
one of the demonstrators' common habits (the P.S., the end phrase, the title, no commas), or
one of the two case rules (all capitals, all lower case), fix that one rule by hand, and score
the answer before and after with the reward model: in full, and term by term
(minift.model.ScalarModel: the head, and likelihood_weight times the answer's mean
log-probability under the reward model's own LM head).

    python bench/reward_probe.py                  # PPO's greedy test answers, from python pipeline.py
    python bench/reward_probe.py --model=sft      # SFT's
    python bench/reward_probe.py --reward_ckpt=out/rm_head/ckpt.pt   # another reward model: train_reward.py
        # --likelihood_weight=0 --out_dir=out/rm_head and the pipeline's files (FINDINGS.md, section 8)

Each fix passes its checker; the gold column is the gold reward's mean change (mostly up, but a
fix can cost another rule: a capitalised P.S. under an all-lowercase instruction). A term that
votes against the fix is one PPO must overcome: the likelihood comes from an SFT model that
copied its demonstrators, so it can vote for their habits (FINDINGS.md, section 14, has the
figures).

    python bench/reward_probe.py --held_out_pairs=true

instead asks where the reward model's held-out pair accuracy is lost: each held-out pair goes
by what sets its two answers apart in the gold reward (one checker, one flaw, or several; if
several, whether they all favour the chosen answer or the gold reward's arithmetic traded
one against another), with the reward model's accuracy in full and of the head alone.

    python bench/reward_probe.py --judges=true

asks the judges instead of the reward model, with no model at all: of the training pairs whose
two answers differ on one of the rules above (or on capital words; for the P.S., also those
that set one marker against the other), how often did the gold reward choose the answer that
keeps the rule, and when it did not, what did that answer have against it? A rule the judges
themselves vote against is one the reward model learns to vote against too.

    python bench/reward_probe.py --markers=true
    python bench/reward_probe.py --markers=true --ckpts=out/tiny/compare/ppo_gold-1337/ckpt.pt

asks whether a model can copy the postscript marker from the prompt at all: on every test and
heldout prompt that asks for a postscript, its demonstration's answer up to the postscript,
then a new line, and the model's odds of writing "P.P.S" rather than "P.S." there (each marker
scored whole), by the marker asked (SFT, PPO and the reward model's own LM head, or the
checkpoints named). A model that copies the marker scores near 1 for one and near 0 for the
other; one that does not, the same for both.
"""

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minift.checkpoint import build_model, load_checkpoint, tokenizer_for  # noqa: E402
from minift.config import cli_config, run  # noqa: E402
from minift.formats import (load_ifeval_inputs, load_ifeval_responses, load_preferences,  # noqa: E402
                            require_answers_in_order)
from minift.model import ScalarModel  # noqa: E402
from minift.training import pick_device  # noqa: E402
from minift.synthetic.gold import gold_breakdown, gold_reward  # noqa: E402
from minift.synthetic.tasks import CHECKERS  # noqa: E402
from train_reward import render, score_all  # noqa: E402


@dataclass
class Config:
    out_dir: str = "out/tiny"      # what python pipeline.py wrote
    model: str = "ppo"             # whose greedy answers: ppo or sft (<out_dir>/<model>/responses_<split>.jsonl)
    split: str = "test"
    reward_ckpt: str = ""          # default: <out_dir>/reward/ckpt.pt
    held_out_pairs: bool = False   # instead: accuracy on <out_dir>/data/prefs/val.jsonl, by what
                                   # decides each pair
    judges: bool = False           # instead: the gold reward's own votes on each rule, in the
                                   # training pairs <out_dir>/data/prefs/train.jsonl
    markers: bool = False          # instead: does each model copy the postscript marker asked for?
    ckpts: str = ""                # with --markers, comma-separated checkpoints (default: the
                                   # out_dir's sft, ppo and reward)
    device: str = "cpu"
    batch_size: int = 64


MARKERS = ("P.P.S", "P.S.")   # IFEval's two postscript markers


def postscript_line(answer):
    """The marker that opens the answer's postscript line, as a match (None without one)."""
    return re.search(r"^(P\.P\.S\.?|P\.S\.)", answer, flags=re.MULTILINE)


def write_the_postscript_asked_for(answer, kw):
    """A postscript line under the wrong marker gets the right one (PPO's answers write "P.P.S"
    under both markers); an answer without one gets a postscript line."""
    marker = kw["postscript_marker"]
    line = postscript_line(answer)
    if line and line.group(0) != marker:
        return answer[:line.start()] + marker + answer[line.end():]
    return f"{answer}\n{marker} Thank you for reading."


# The four common habits (minift/synthetic/demonstrators.py, rates over one half), each fixed the
# way a careful writer would: (answer, the instruction's kwargs) -> the answer with the rule kept.
FIXES = {
    "detectable_content:postscript": write_the_postscript_asked_for,
    "startend:end_checker": lambda a, kw: f"{a.rstrip()} {kw['end_phrase']}",
    "detectable_format:title": lambda a, kw: f"<<The Answer>>\n{a}",
    "punctuation:no_comma": lambda a, kw: a.replace(",", ""),
    # Not habits: the case rules, where PPO's answers pass less often than SFT's. Does the
    # reward model push the policy away from capitals?
    "change_case:english_capital": lambda a, kw: a.upper(),
    "change_case:english_lowercase": lambda a, kw: a.lower(),
}


# Under the P.S., its own row: the answers (or pairs) where a postscript stands under the wrong marker.
MARKER_SWAP = "  of them, the two markers"


def fixed_pairs(records, answers, iid):
    """(record, answer, fixed answer) for every answer that fails instruction `iid` and passes
    it once fixed; the fix edits the answer for that rule alone (it may still cost another)."""
    pairs = []
    for rec, answer in zip(records, answers):
        if iid not in rec["instruction_id_list"]:
            continue
        kw = {k: v for k, v in (rec["kwargs"][rec["instruction_id_list"].index(iid)] or {}).items() if v is not None}
        fixed = FIXES[iid](answer, kw)
        if not CHECKERS[iid](answer, kw) and CHECKERS[iid](fixed, kw):
            pairs.append((rec, answer, fixed))
    return pairs


@torch.no_grad()
def probe(reward_model, tokenizer, records, answers, device="cpu", batch_size=64):
    """Per habit: n, how often the full reward and the head alone prefer the fix, and the mean
    change (fixed - before) of the full raw reward, of the head, of the weighted likelihood term,
    and of the gold reward. The two terms add up to the full change. After the P.S., the same
    for its answers that held a postscript under the wrong marker (MARKER_SWAP). Pairs too long for
    the reward model's context are left out, and counted in a printed line."""
    rows = {}
    for iid in FIXES:
        pairs = fixed_pairs(records, answers, iid)
        texts = [(rec["prompt"], (answer, fixed)) for rec, answer, fixed in pairs]
        pairs, seqs = fitting(reward_model, tokenizer, texts, pairs, f"{iid}: answers")
        if not pairs:
            continue
        full, head = (x.view(-1, 2) for x in full_and_head(reward_model, seqs, tokenizer, device, batch_size))
        full, head = full[:, 1] - full[:, 0], head[:, 1] - head[:, 0]              # (n,) fixed - before
        gold = torch.tensor([gold_reward(r["prompt"], f, r["instruction_id_list"], r["kwargs"])
                             - gold_reward(r["prompt"], a, r["instruction_id_list"], r["kwargs"]) for r, a, f in pairs],
                            dtype=torch.float64)
        groups = {iid: torch.ones(len(pairs), dtype=torch.bool)}
        if iid == "detectable_content:postscript":
            groups[MARKER_SWAP] = torch.tensor([postscript_line(answer) is not None for _, answer, _ in pairs])
        for label, kept in groups.items():
            if kept.any():
                rows[label] = {"n": int(kept.sum()), "full_prefers_fix": int((full[kept] > 0).sum()),
                               "head_prefers_fix": int((head[kept] > 0).sum()), "full": full[kept].mean().item(),
                               "head": head[kept].mean().item(), "likelihood": (full - head)[kept].mean().item(),
                               "gold": gold[kept].mean().item()}
    return rows


def fitting(reward_model, tokenizer, prompts_and_texts, items, what):
    """The items whose texts, each rendered after its prompt, fit the reward model's context, and
    those renderings, flat. An answer cut at max_new_tokens, or lengthened by its fix, can run
    past it, and the model cannot score it: such items are left out, as train_reward.build_groups
    leaves out pairs too long, and a line says how many."""
    block_size = reward_model.gpt.config.block_size
    rendered = [[render(tokenizer, prompt, text) for text in texts] for prompt, texts in prompts_and_texts]
    fits = [max(map(len, seqs)) <= block_size for seqs in rendered]
    if not all(fits):
        print(f"{what}: {fits.count(False)} of {len(fits)} left out, longer than the reward model's context "
              f"({block_size} tokens)")
    return ([item for item, ok in zip(items, fits) if ok],
            [ids for seqs, ok in zip(rendered, fits) if ok for ids in seqs])


def full_and_head(reward_model, seqs, tokenizer, device, batch_size):
    """Raw scores of rendered sequences: the full reward, and the head alone (the likelihood
    term's weight set to 0 for a second pass, then put back)."""
    weight = float(reward_model.likelihood_weight)
    full = score_all(reward_model, seqs, tokenizer, device, batch_size)
    reward_model.likelihood_weight.fill_(0.0)
    try:
        head = score_all(reward_model, seqs, tokenizer, device, batch_size)
    finally:
        reward_model.likelihood_weight.fill_(weight)
    return full, head


def what_decides(pair):
    """What sets a pair's two answers apart in the gold reward: a sorted tuple of the checks one
    answer passes and the other fails and the flaws only one has ("flaw:<name>"), and whether
    every difference favours the chosen answer (the gold reward's arithmetic need not weigh
    one against another)."""
    prompt = pair["prompt"][-1]["content"]
    chosen, rejected = (gold_breakdown(prompt, pair[side], pair["instruction_id_list"], pair["kwargs"])
                        for side in ("chosen", "rejected"))
    for_chosen = ([iid for iid, ok in chosen["checks"].items() if ok and not rejected["checks"][iid]]
                  + [f"flaw:{f}" for f in rejected["flaws"] if f not in chosen["flaws"]])
    against = ([iid for iid, ok in rejected["checks"].items() if ok and not chosen["checks"][iid]]
               + [f"flaw:{f}" for f in chosen["flaws"] if f not in rejected["flaws"]])
    return tuple(sorted(for_chosen + against)), not against


@torch.no_grad()
def held_out_accuracy(reward_model, tokenizer, pairs, device="cpu", batch_size=64):
    """Pair accuracy, in full and of the head alone, by what decides the pair: one checker or
    flaw by its name, or several, all one way or traded. {label: {"n", "full", "head"}}. Pairs
    too long for the context are left out, as train_reward.py's own accuracy leaves them out."""
    pairs, seqs = fitting(reward_model, tokenizer, [(p["prompt"], (p["chosen"], p["rejected"])) for p in pairs],
                          pairs, "held-out pairs")
    full, head = (x.view(-1, 2) for x in full_and_head(reward_model, seqs, tokenizer, device, batch_size))
    rows = {}
    right_full, right_head = (full[:, 0] > full[:, 1]).tolist(), (head[:, 0] > head[:, 1]).tolist()
    for pair, full_ok, head_ok in zip(pairs, right_full, right_head):
        names, one_way = what_decides(pair)
        if len(names) == 1:
            label = names[0]
        elif names:
            label = "several, all one way" if one_way else "several, traded"
        else:   # equal checks and flaws (a pair from a file with other gold scores)
            label = "nothing the checks tell apart"
        row = rows.setdefault(label, {"n": 0, "full": 0, "head": 0})
        row["n"], row["full"], row["head"] = row["n"] + 1, row["full"] + full_ok, row["head"] + head_ok
    return {k: {"n": r["n"], "full": r["full"] / r["n"], "head": r["head"] / r["n"]}
            for k, r in sorted(rows.items(), key=lambda kv: -kv[1]["n"])}


# The judges can be asked about any rule, fixed by hand or not: capital words ("at least 3 words
# in all capital letters") is where PPO falls furthest below SFT.
JUDGED_RULES = list(FIXES) + ["change_case:capital_word_frequency"]


def judges_vote(pairs):
    """Per rule of JUDGED_RULES: the pairs whose two answers differ on it (one keeps it, one
    breaks it), how many of them the gold reward decided for the keeper, and, where it chose
    the breaker, what the keeper had against it: each flaw only the keeper shows, or else that
    it passed fewer checks. After the P.S., the same for its pairs whose answers both hold a
    postscript, one under each marker (MARKER_SWAP).
    {iid: {"n", "keeper_chosen", "keeper_lost_by": Counter}}."""
    rows = {}
    for pair in pairs:
        rules = [iid for iid in JUDGED_RULES if iid in pair.get("instruction_id_list", ())]  # HH, TRL: none
        if not rules:
            continue
        prompt = pair["prompt"][-1]["content"]
        chosen, rejected = (gold_breakdown(prompt, pair[side], pair["instruction_id_list"], pair["kwargs"])
                            for side in ("chosen", "rejected"))
        for iid in rules:
            if chosen["checks"][iid] == rejected["checks"][iid]:
                continue
            lines = [postscript_line(pair[side]) for side in ("chosen", "rejected")]
            swap = iid == "detectable_content:postscript" and len({ln.group(0).rstrip(".") for ln in lines if ln}) == 2
            for label in [iid] + [MARKER_SWAP] * swap:
                row = rows.setdefault(label, {"n": 0, "keeper_chosen": 0, "keeper_lost_by": Counter()})
                row["n"] += 1
                if chosen["checks"][iid]:
                    row["keeper_chosen"] += 1
                else:
                    own_flaws = [f for f in rejected["flaws"] if f not in chosen["flaws"]]
                    row["keeper_lost_by"].update(own_flaws or ["fewer checks passed"])
    order = [label for iid in JUDGED_RULES
             for label in ([iid, MARKER_SWAP] if iid == "detectable_content:postscript" else [iid])]
    return {label: rows[label] for label in order if label in rows}


def print_judges(rows, path):
    print(f"training pairs ({path}) whose answers differ on a rule, and the judges' (gold reward's) choice;")
    print("where they chose the answer that breaks it, what the keeper had against it (a pair can count twice):")
    if not rows:
        print("  none: no pair carries these rules' instruction ids (pairs from HH-RLHF or TRL files carry none)")
        return
    print(f"  {'rule':<36} {'pairs':>5} {'keeper chosen':>13}   where the keeper lost")
    for iid, r in rows.items():
        lost_by = ", ".join(f"{why} {n}" for why, n in r["keeper_lost_by"].most_common())
        print(f"  {iid:<36} {r['n']:>5} {r['keeper_chosen'] / r['n']:>13.1%}   {lost_by}")


@torch.no_grad()
def marker_odds(model, tokenizer, records, device="cpu"):
    """{marker asked: mean probability of "P.P.S" over the two markers}, over the records that ask
    for a postscript. Each is scored where the postscript begins: the prompt and its
    demonstration's answer up to the postscript (the whole answer, if the demonstrator forgot
    it); then each marker on a new line, as the demonstrators write it, its probability the
    product over its tokens, and p("P.P.S") / (p("P.P.S") + p("P.S.")). "P.S." holds a period
    that "P.P.S" lacks, so whatever a model writes after "P.P.S" counts for it (a negligible
    lean: FINDINGS.md, "One postscript for both markers"). Also {marker asked: how many records}."""
    odds = {}
    for rec in records:
        ids = rec["instruction_id_list"]
        if "detectable_content:postscript" not in ids or "messages" not in rec:
            continue
        asked = rec["kwargs"][ids.index("detectable_content:postscript")]["postscript_marker"]
        body = rec["messages"][-1]["content"].split("\nP.")[0]
        context = tokenizer.render_prompt(rec["messages"][:-1]) + tokenizer.encode(body)
        logp = []   # log p(new line, then the marker | context): the new line's share cancels in the odds
        for marker in MARKERS:
            written = tokenizer.encode("\n" + marker)
            logits = model(torch.tensor([context + written], device=device))[0][0].float()   # (T, V)
            predicted = logits[len(context) - 1:-1].log_softmax(-1)                      # (len(written), V)
            logp.append(predicted.gather(1, torch.tensor(written, device=device)[:, None]).sum().item())
        odds.setdefault(asked, []).append(torch.tensor(logp).softmax(0)[0].item())
    return {m: sum(v) / len(v) for m, v in sorted(odds.items())}, {m: len(v) for m, v in odds.items()}


def print_held_out(rows):
    n = sum(r["n"] for r in rows.values())
    print(f"held-out pairs by what decides them ({n} pairs), and the reward model's accuracy on them:")
    print(f"  {'what decides the pair':<46} {'pairs':>5} {'share':>6} {'full':>6} {'head':>6} {'points lost':>11}")
    for label, r in rows.items():
        print(f"  {label:<46} {r['n']:>5} {r['n'] / n:>6.1%} {r['full']:>6.1%} {r['head']:>6.1%} "
              f"{100 * r['n'] * (1 - r['full']) / n:>11.1f}")
    right_full, right_head = (sum(r["n"] * r[key] for r in rows.values()) / n for key in ("full", "head"))
    print(f"  {'all':<46} {n:>5} {1:>6.1%} {right_full:>6.1%} {right_head:>6.1%} {100 * (1 - right_full):>11.1f}")


def print_markers(cfg):
    """--markers: marker_odds for each checkpoint, over the test and heldout prompts."""
    paths = ([p.strip() for p in cfg.ckpts.split(",") if p.strip()] or
             [os.path.join(cfg.out_dir, name, "ckpt.pt") for name in ("sft", "ppo", "reward")])
    records = [rec for split in ("test", "heldout")
               for rec in load_ifeval_inputs(os.path.join(cfg.out_dir, "data", "sft", f"{split}.jsonl"))]
    device = pick_device(cfg.device)
    print('where a postscript begins, the odds of the marker "P.P.S" rather than "P.S.", each scored whole')
    print("(test and heldout prompts that ask for a postscript; a model that copies the marker asked for")
    print("scores near 0 under P.S. and near 1 under P.P.S):")
    rows = {}
    for path in paths:
        ckpt = load_checkpoint(path, hint="Run: python pipeline.py (it writes sft, ppo and reward), or python "
                                          "compare.py (compare/<method>-<seed>/ckpt.pt)")
        reward = ckpt.get("kind") == "reward"   # its LM head: the reward's likelihood term
        model = build_model(ckpt, ScalarModel).gpt if reward else build_model(ckpt)
        rows[path], counts = marker_odds(model.to(device).eval(), tokenizer_for(ckpt, path),
                                         records, device)
        print(f"  {path:<48} " + "  ".join(f"asked {m}: {p:.2f} ({counts[m]} prompts)" for m, p in rows[path].items()))
    return rows


def main(argv=None):
    cfg = cli_config(Config, argv=argv)
    if cfg.markers:
        return print_markers(cfg)
    reward_ckpt = cfg.reward_ckpt or os.path.join(cfg.out_dir, "reward", "ckpt.pt")
    answers_path = os.path.join(cfg.out_dir, cfg.model, f"responses_{cfg.split}.jsonl")
    pairs_path = os.path.join(cfg.out_dir, "data", "prefs", "train.jsonl" if cfg.judges else "val.jsonl")
    needed = pairs_path if cfg.held_out_pairs or cfg.judges else answers_path
    if not os.path.exists(needed):
        what = "pairs" if cfg.held_out_pairs or cfg.judges else "answers"
        raise SystemExit(f"error: no {what} at {needed}. Run: python pipeline.py --out_dir={cfg.out_dir}")
    if cfg.judges:
        rows = judges_vote(load_preferences(pairs_path))
        print_judges(rows, pairs_path)
        return rows
    ckpt = load_checkpoint(reward_ckpt, hint=f"Run: python pipeline.py --out_dir={cfg.out_dir}", kinds=("reward",))
    tokenizer = tokenizer_for(ckpt, reward_ckpt)
    device = pick_device(cfg.device)
    reward_model = build_model(ckpt, ScalarModel).to(device).eval()
    if cfg.held_out_pairs:
        rows = held_out_accuracy(reward_model, tokenizer, load_preferences(pairs_path), device, cfg.batch_size)
        print_held_out(rows)
        return rows
    responses = load_ifeval_responses(answers_path)
    data_path = os.path.join(cfg.out_dir, "data", "sft", f"{cfg.split}.jsonl")
    records = load_ifeval_inputs(data_path)[:len(responses)]
    require_answers_in_order(answers_path, responses, data_path, records)
    rows = probe(reward_model, tokenizer, records, [a["response"] for a in responses], device, cfg.batch_size)
    print(f"{cfg.model}'s greedy {cfg.split} answers that fail a common habit or a case rule, fixed by hand; "
          f"reward model {reward_ckpt} (likelihood weight {float(reward_model.likelihood_weight):g}). Mean change, fixed - before:")
    print(f"  {'rule':<32} {'n':>4} {'reward prefers fix':>19} {'head alone':>11} {'reward':>7} {'head':>6} "
          f"{'likelihood':>11} {'gold':>6}")
    for iid, r in rows.items():
        print(f"  {iid:<32} {r['n']:>4} {r['full_prefers_fix']:>13} of {r['n']:<3} {r['head_prefers_fix']:>5} of "
              f"{r['n']:<3} {r['full']:>+7.2f} {r['head']:>+6.2f} {r['likelihood']:>+11.2f} {r['gold']:>+6.3f}")
    return rows


if __name__ == "__main__":
    run(main)
