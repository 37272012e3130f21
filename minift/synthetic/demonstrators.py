"""Simulated demonstrators who slip, the way people writing demonstrations do.

InstructGPT's case for RLHF: demonstrations are expensive and imperfect, while judging two
answers is cheaper and more reliable, so a policy trained on judgements can rise above its
demonstrators (Ouyang et al. 2022; Stiennon et al. 2020 found RLHF summaries preferred to the
human references they started from). Our reference answers are perfect by construction
(minift/synthetic/splits.py), which leaves RL nothing to choose. So the answers SFT learns from
are written by demonstrators with habits: for each instruction a prompt carries, the
demonstrator slips with that instruction's rate in HABITS below, and the answer is rebuilt with
the slip (the instruction forgotten, a bullet or paragraph too many, or a length on the wrong
side of its limit). The checkers, and so the gold judge, see every slip: a slipped answer fails
the instruction it slipped on.

A few habits are common, over half the time for their instruction, so the SFT model's greedy
answer inherits them; the rest are rare, so most demonstrations of their instructions are
right (what they cost SFT: FINDINGS.md, section 14). The prompts themselves never change,
only their answers: the splits stay the same, and `scale=0` gives the perfect demonstrations
back (`python pipeline.py --slip_scale=0`).
"""

from dataclasses import dataclass
from random import Random

from minift.synthetic.builders import Unsatisfiable, build_response


@dataclass(frozen=True)
class Habit:
    rate: float          # how often the demonstrator slips on this instruction, when asked for it
    slip: str            # what the slip is, in words
    edit: str = "forget"  # "forget": the instruction left out; else the kwarg changed (see slipped_kwargs)


# Every rate in one table. The four common habits (over 0.5) are format rules a writer in a
# hurry drops; a model that copies them slips the same way by default, yet samples the right
# form often enough for RL to find it. A count slip adds one bullet or paragraph; a length slip
# lands on the wrong side of its limit ("at least 20 words" answered in fewer), as people miscount.
HABITS = {
    "detectable_content:postscript": Habit(0.65, "forgets the P.S."),
    "startend:end_checker": Habit(0.65, "does not end with the phrase asked for"),
    "punctuation:no_comma": Habit(0.6, "writes a comma where none was allowed"),
    "detectable_format:title": Habit(0.6, "forgets the title"),
    "detectable_format:number_bullet_lists": Habit(0.25, "one bullet point too many", "num_bullets"),
    "length_constraints:number_sentences": Habit(0.25, "too many sentences (or too few)", "relation"),
    "length_constraints:number_words": Habit(0.2, "too many words (or too few)", "relation"),
    "length_constraints:number_paragraphs": Habit(0.2, "one paragraph too many", "num_paragraphs"),
    "startend:quotation": Habit(0.2, "forgets the quotes"),
    "change_case:english_lowercase": Habit(0.2, "leaves capital letters in"),
    "keywords:existence": Habit(0.15, "forgets a keyword"),
    "keywords:frequency": Habit(0.15, "uses the word too few (or too many) times"),
    "keywords:forbidden_words": Habit(0.15, "uses a forbidden word"),
    "detectable_content:number_placeholders": Habit(0.15, "forgets the placeholders"),
    "detectable_format:number_highlighted_sections": Habit(0.15, "forgets the highlights"),
    "change_case:capital_word_frequency": Habit(0.15, "forgets the capital words"),
    "change_case:english_capital": Habit(0.1, "does not write in capitals"),
    "detectable_format:json_format": Habit(0.1, "forgets the JSON"),
    "combination:repeat_prompt": Habit(0.1, "does not repeat the request"),
    "combination:two_responses": Habit(0.1, "gives one answer"),
    "detectable_format:constrained_response": Habit(0.1, "answers in its own words"),
}
# The common habits, at the unscaled rates: slipped on over half the time.
COMMON_HABITS = [iid for iid, habit in HABITS.items() if habit.rate > 0.5]


def slipped_kwargs(habit, kw):
    """The kwargs a slip builds to: a count one too many, or the other side of a limit."""
    if habit.edit == "relation":
        return {**kw, "relation": "less than" if kw["relation"] == "at least" else "at least"}
    return {**kw, habit.edit: kw[habit.edit] + 1}


def demonstrate(sample, rng, scale=1.0):
    """The demonstrator's answer to `sample` (a minift.synthetic.splits.Sample whose reference answer is
    built): for each instruction, one draw from `rng` decides a slip with probability
    min(1, rate * scale). The draws are made whatever the scale, so a smaller scale slips on a
    subset of the same instructions. Returns (answer, [ids slipped on])."""
    draws = [rng.random() for _ in sample.items]
    slips = [ins.id for (ins, _), u in zip(sample.items, draws)
             if ins.id in HABITS and u < min(1.0, HABITS[ins.id].rate * scale)]
    if not slips:
        return sample.response, []
    items = [(ins, slipped_kwargs(HABITS[ins.id], kw) if ins.id in slips else kw) for ins, kw in sample.items
             if ins.id not in slips or HABITS[ins.id].edit != "forget"]
    forgotten = [(ins, kw) for ins, kw in sample.items if ins.id not in slips]
    answer = sample.response  # if no slipped version can be built, the demonstrator gets it right
    for attempt in (items, forgotten):  # a count the base answer cannot reach: forget it instead
        try:
            answer = build_response(sample.base(), attempt, sample.seed)
            break
        except Unsatisfiable:
            continue
    # Keep only the slips the checkers can see (a slip that still passes is no slip).
    return answer, [ins.id for ins, kw in sample.items if ins.id in slips and not ins.verify(answer, kw)]


def slip_table(scale=1.0):
    """The habits as a printable table (data/make_sft.py prints it)."""
    rows = [f"  {'instruction':<48} {'rate':>5}  slip"]
    rows += [f"  {iid:<48} {min(1.0, h.rate * scale):>5.2f}  {h.slip}" for iid, h in HABITS.items()]
    return "\n".join(rows)


def slip_rng(seed, split):
    """The slips' own random stream, apart from the prompts': slips never change a prompt."""
    return Random(f"{seed}/{split}/slips")
