"""IFEval's metrics (Zhou et al. 2023, evaluation_lib.py) over our checkers.

strict  an instruction passes when the response is non-empty and its checker says yes;
loose   it passes when the checker says yes on ANY of 8 variants of the response:
        {as is, first line removed, last line removed, both removed} x {as is, "*" removed}.
        (This forgives a chatty "Sure! Here it is:" first line or a sign-off last line, and
        markdown emphasis.)
Prompt-level accuracy: the share of prompts whose instructions ALL pass.
Instruction-level accuracy: passed instructions / all instructions, pooled over prompts.

Scoring uses IFEval's own checkers (IFEVAL_CHECKERS): all 25 of IFEval's instruction ids,
plus our task:* ids. Where they differ from the registry's, which make the data and the gold
reward (minift/synthetic/checkers.py says where), IFEval's win here. language:response_language needs
langdetect; without it, it is "not checked", and english_capital/lowercase check the case alone.
An id we have no checker for is "unsupported": score() marks it None, aggregate() counts it
under "unsupported" and judges the prompt on its other ids; a prompt with no checkable id
at all is counted but not scored, and format_table says "scored N of M prompts".
"""

import functools
import statistics

from minift.synthetic import checkers as C
from minift.synthetic.instructions import REGISTRY, run_checker
from minift.synthetic.tasks import CHECKERS, TASKS, verify, without_copied_prompt

# IFEval's instruction ids (instructions_registry.py INSTRUCTION_DICT), all 25.
IFEVAL_IDS = (
    "keywords:existence", "keywords:frequency", "keywords:forbidden_words", "keywords:letter_frequency",
    "language:response_language", "length_constraints:number_sentences", "length_constraints:number_paragraphs",
    "length_constraints:number_words", "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders", "detectable_content:postscript",
    "detectable_format:number_bullet_lists", "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "detectable_format:title", "combination:two_responses",
    "combination:repeat_prompt", "startend:end_checker", "change_case:capital_word_frequency",
    "change_case:english_capital", "change_case:english_lowercase", "startend:quotation", "punctuation:no_comma")
LANGUAGE_IDS = ("language:response_language", "change_case:english_capital", "change_case:english_lowercase")


_IFEVAL_OWN = {  # IFEval's checkers where the registry's differ, and the ids the registry has not
    "length_constraints:number_sentences": (C.check_ifeval_sentences, ("num_sentences", "relation")),
    "change_case:english_capital": (C.check_english_capital, ()),
    "change_case:english_lowercase": (C.check_english_lowercase, ()),
    "detectable_format:multiple_sections": (C.check_sections, ("section_spliter", "num_sections")),
    "keywords:letter_frequency": (C.check_letter_frequency, ("letter", "let_frequency", "let_relation")),
    "length_constraints:nth_paragraph_first_word": (C.check_nth_paragraph_first_word,
                                                    ("num_paragraphs", "nth_paragraph", "first_word")),
    "language:response_language": (C.check_response_language, ("language",)),
}
IFEVAL_CHECKERS = {**CHECKERS,
                   **{iid: functools.partial(run_checker, check, names) for iid, (check, names) in _IFEVAL_OWN.items()}}


# The kwargs each checker reads, by id; repeat_prompt's prompt_to_repeat falls back to the
# prompt (tasks.verify), so it is not required.
KWARG_NAMES = {**{iid: ins.kwargs for iid, ins in REGISTRY.items()}, **{t.id: t.kwargs for t in TASKS},
               **{iid: names for iid, (_, names) in _IFEVAL_OWN.items()}}


# The type of each checker argument, as IFEval's own files give them; every other name takes a
# string. A wrong one is refused before any answer is generated (evaluation.check_checker_arguments),
# where the checker would raise a TypeError after all of them.
COUNT_KWARGS = ("capital_frequency", "frequency", "let_frequency", "nth_paragraph", "num_bullets", "num_highlights",
                "num_items", "num_paragraphs", "num_placeholders", "num_sections", "num_sentences", "num_words")
RELATION_KWARGS = ("relation", "capital_relation", "let_relation")
WORD_LIST_KWARGS = ("forbidden_words", "keywords", "words")


def kwarg_expected(name, value):
    """What the checker argument `name` takes, if `value` is not that; None if it is."""
    if name in COUNT_KWARGS:
        fits = isinstance(value, int) and not isinstance(value, bool)   # True is an int to Python
        return None if fits else "a whole number"
    if name in RELATION_KWARGS:
        return None if value in C.RELATIONS else " or ".join(f'"{r}"' for r in C.RELATIONS)
    if name in WORD_LIST_KWARGS:
        fits = isinstance(value, list) and all(isinstance(w, str) for w in value)
        return None if fits else "an array of strings"
    return None if isinstance(value, str) else "a string"


def missing_kwargs(iid, kwargs):
    """The names that id `iid`'s checker reads and `kwargs` lacks (None counts as lacking, as
    IFEval's HF export writes every name, unused ones null); [] for an id we cannot check."""
    optional = ("prompt_to_repeat",) if iid == "combination:repeat_prompt" else ()
    return [k for k in KWARG_NAMES.get(iid, ()) if kwargs.get(k) is None and k not in optional]


def checkable(iid):
    """An id scoring can judge here: it has a checker, and a language check has langdetect."""
    return iid in IFEVAL_CHECKERS and (iid != "language:response_language" or C.language_checked())

# Student's t at 97.5% (two-sided 95%) for 1..30 degrees of freedom (t_975 goes on from there),
# rounded UP at the third decimal: a cutoff below the true one calls some noise significant.
T_975 = {1: 12.707, 2: 4.303, 3: 3.183, 4: 2.777, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.307, 9: 2.263, 10: 2.229,
         11: 2.201, 12: 2.179, 13: 2.161, 14: 2.145, 15: 2.132, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.094,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.049,
         29: 2.046, 30: 2.043}


def t_975(df):
    """Student's t at 97.5% for `df` degrees of freedom, never below the true one: the table to
    30, then for each range the true value at its start, rounded up (2.04 for 31-40: 2.0395 at
    31; 2.02 for 41-60: 2.0195 at 41; 2.00 beyond: 1.9996 at 61, the normal's 1.96 in the limit)."""
    if df in T_975:
        return T_975[df]
    return 2.04 if df <= 40 else 2.02 if df <= 60 else 2.0


def _variants(response):
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    plain = [response] + cut
    return plain + [r.replace("*", "") for r in plain]


def score(response, instruction_id_list, kwargs, prompt=""):
    """{"strict": [True/False/None per id], "loose": [...]}; None = unsupported id. A task:* id
    is judged on the answer after any copy of the request (without_copied_prompt), as the gold
    reward judges it; IFEval's own ids on the whole response, as IFEval does."""
    strict, loose = [], []
    answer = without_copied_prompt(response, instruction_id_list, kwargs, prompt)
    variants = {text: [v for v in _variants(text) if v.strip()]  # an empty variant never passes
                for text in {response, answer}}
    for iid, kw in zip(instruction_id_list, kwargs):
        if not checkable(iid):
            strict.append(None)
            loose.append(None)
            continue
        judged = answer if iid.startswith("task:") else response
        ok = lambda text: verify(text, [iid], [kw], prompt, IFEVAL_CHECKERS)[0]  # noqa: E731
        strict.append(bool(judged.strip()) and ok(judged))
        loose.append(any(ok(v) for v in variants[judged]))
    return {"strict": strict, "loose": loose}


def aggregate(scored):
    """scored: [{"strict", "loose", "instruction_id_list"}] (score() output plus the ids).
    Returns the four IFEval accuracies in [0, 1] over the prompts with a checkable id (n_scored
    of n_prompts; n_partial of them had an id we could not check), a per-type table, and the
    counts of unsupported ids."""
    metrics = {"n_prompts": len(scored), "unsupported": {}, "per_type": {}, "language_checked": C.language_checked()}
    for level in ("strict", "loose"):
        prompts_ok = prompts_n = inst_ok = inst_n = partial = 0
        for rec in scored:
            marks = [(iid, m) for iid, m in zip(rec["instruction_id_list"], rec[level]) if m is not None]
            if marks:
                prompts_n += 1
                prompts_ok += all(m for _, m in marks)
                partial += len(marks) < len(rec[level])
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
        metrics["n_scored"], metrics["n_partial"] = prompts_n, partial
    for iid, row in metrics["per_type"].items():
        row["strict"] /= row["n"]
        row["loose"] /= row["n"]
        if iid in LANGUAGE_IDS and not C.language_checked():
            row["language_checked"] = False  # the case only: the report card marks the row
    return metrics


NO_LANGDETECT = "language not checked: langdetect not installed"


def format_table(metrics):
    """A plain-text report: how many prompts were scored, the four accuracies, then one row per type."""
    n = metrics["n_prompts"]
    scored, partial = metrics.get("n_scored", n), metrics.get("n_partial", 0)
    lines = [f"scored {scored} of {n} prompts"
             + (f" ({n - scored} have no instruction we can check)" if scored < n else "")
             + (f"; {partial} scored on only some of their instructions" if partial else "")]
    if metrics.get("prompts_cut"):
        lines.append(f"warning: {metrics['prompts_cut']} of {n} prompts are longer than the "
                     f"{metrics['prompt_token_limit']} tokens the model reads before its answer; "
                     "their start was cut off")
    if any(iid in LANGUAGE_IDS for iid in {**metrics["per_type"], **metrics["unsupported"]}) \
            and not metrics.get("language_checked", True):
        lines.append(f"{NO_LANGDETECT} (pip install langdetect): english_capital/lowercase check the case only")
    if scored:
        lines += [f"prompt-level      strict {metrics['prompt_strict']:.1%}   loose {metrics['prompt_loose']:.1%}",
                  f"instruction-level strict {metrics['instruction_strict']:.1%}   "
                  f"loose {metrics['instruction_loose']:.1%}"]
    else:  # aggregate's 0.0 then stands for "nothing scored", not for failing every prompt
        lines.append("prompt-level and instruction-level: n/a (no prompt has an instruction we can check)")
    lines += ["", f"{'type':<48} {'n':>5} {'strict':>7} {'loose':>7}"]
    for iid, row in sorted(metrics["per_type"].items()):
        note = f"  ({NO_LANGDETECT})" if row.get("language_checked") is False else ""
        lines.append(f"{iid:<48} {row['n']:>5} {row['strict']:>7.1%} {row['loose']:>7.1%}{note}")
    for iid, n_ids in sorted(metrics["unsupported"].items()):
        why = NO_LANGDETECT if iid in LANGUAGE_IDS else "unsupported: no checker"
        lines.append(f"{iid:<48} {n_ids:>5}  ({why}; not scored)")
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
    t = t_975(len(diffs) - 1)
    return {"mean": mean, "se": se, "significant": len(diffs) > 1 and abs(mean) > t * se}
