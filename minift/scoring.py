"""IFEval's metrics (Zhou et al. 2023, evaluation_lib.py) over our checkers.

strict  an instruction passes when the response is non-empty and its checker says yes;
loose   it passes when the checker says yes on ANY of 8 variants of the response:
        {as is, first line removed, last line removed, both removed} x {as is, "*" removed}.
        (This forgives a chatty "Sure! Here it is:" first line or a sign-off last line, and
        markdown emphasis.)
Prompt-level accuracy: the share of prompts whose instructions ALL pass.
Instruction-level accuracy: passed instructions / all instructions, pooled over prompts.

An id we have no checker for (e.g. IFEval's language:response_language) is "unsupported":
score() marks it None, aggregate() counts it under "unsupported" and judges the prompt on its
supported ids only; a prompt with no supported id at all is counted but not scored.
"""

import statistics

from minift.tasks import CHECKERS, verify

# Student's t at 97.5% (two-sided 95%) for 1..9 degrees of freedom; 2.0 beyond (near the normal's 1.96).
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def _variants(response):
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    plain = [response] + cut
    return plain + [r.replace("*", "") for r in plain]


def score(response, instruction_id_list, kwargs, prompt=""):
    """{"strict": [True/False/None per id], "loose": [...]}; None = unsupported id."""
    strict, loose = [], []
    variants = [v for v in _variants(response) if v.strip()]  # an empty variant never passes
    for iid, kw in zip(instruction_id_list, kwargs):
        if iid not in CHECKERS:
            strict.append(None)
            loose.append(None)
            continue
        ok = lambda text: verify(text, [iid], [kw], prompt)[0]  # noqa: E731
        strict.append(bool(response.strip()) and ok(response))
        loose.append(any(ok(v) for v in variants))
    return {"strict": strict, "loose": loose}


def aggregate(scored):
    """scored: [{"strict", "loose", "instruction_id_list"}] (score() output plus the ids).
    Returns the four IFEval accuracies in [0, 1], a per-type table and unsupported counts."""
    metrics = {"n_prompts": len(scored), "unsupported": {}, "per_type": {}}
    for level in ("strict", "loose"):
        prompts_ok = prompts_n = inst_ok = inst_n = 0
        for rec in scored:
            marks = [(iid, m) for iid, m in zip(rec["instruction_id_list"], rec[level]) if m is not None]
            if marks:
                prompts_n += 1
                prompts_ok += all(m for _, m in marks)
            inst_n += len(marks)
            inst_ok += sum(m for _, m in marks)
            for iid, m in zip(rec["instruction_id_list"], rec[level]):
                if m is None:
                    if level == "strict":
                        metrics["unsupported"][iid] = metrics["unsupported"].get(iid, 0) + 1
                    continue
                row = metrics["per_type"].setdefault(iid, {"n": 0, "strict": 0, "loose": 0})
                row["n"] += level == "strict"
                row[level] += m
        metrics[f"prompt_{level}"] = prompts_ok / max(prompts_n, 1)
        metrics[f"instruction_{level}"] = inst_ok / max(inst_n, 1)
    for row in metrics["per_type"].values():
        row["strict"] /= row["n"]
        row["loose"] /= row["n"]
    return metrics


def format_table(metrics):
    """A plain-text report: the four accuracies, then one row per type."""
    lines = [f"prompts: {metrics['n_prompts']}",
             f"prompt-level      strict {metrics['prompt_strict']:.1%}   loose {metrics['prompt_loose']:.1%}",
             f"instruction-level strict {metrics['instruction_strict']:.1%}   loose {metrics['instruction_loose']:.1%}",
             "", f"{'type':<48} {'n':>5} {'strict':>7} {'loose':>7}"]
    for iid, row in sorted(metrics["per_type"].items()):
        lines.append(f"{iid:<48} {row['n']:>5} {row['strict']:>7.1%} {row['loose']:>7.1%}")
    for iid, n in sorted(metrics["unsupported"].items()):
        lines.append(f"{iid:<48} {n:>5}  (unsupported: no checker; not scored)")
    return "\n".join(lines)


def paired_difference(before, after):
    """Did a score change, or is it noise? `before` and `after` score the same items (seeds,
    prompts) twice. Returns the mean of after - before, its standard error, and whether it is
    told apart from zero at 95% by a paired t-test (Student 1908; needs two items or more).
    Pairing removes what the items differ in (a hard prompt is hard both times), so a small
    change on the same items can be beyond the noise where two unpaired means would not be."""
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    mean = statistics.fmean(diffs)
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    t = T_975.get(len(diffs) - 1, 2.0)
    return {"mean": mean, "se": se, "significant": len(diffs) > 1 and abs(mean) > t * se}
