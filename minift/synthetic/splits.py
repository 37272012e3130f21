"""Prompts with 0-3 IFEval-style instructions, their reference answers, and the splits.

A record = one base task ("Describe a kite.", minift/synthetic/tasks.py) + 0 to 3 compatible
instructions (minift/synthetic/instructions.py), written as one user prompt, plus a reference answer
built by applying the instructions' builders to an honest base answer. Records use IFEval's
input format ({"key", "prompt", "instruction_id_list", "kwargs"}) plus chat "messages", so one
file serves SFT and evaluation.

Splits (deterministic from a seed; no prompt string appears in two splits):
  train, test  drawn alike; nothing held back below ever appears in them. Train's repeated
               prompts are drawn again, and the short ones repeat most, so train holds fewer
               prompts without an instruction (FINDINGS.md, "SFT demonstrations");
  heldout      every prompt has at least one novelty: a held-out phrasing (the last template
               of a task or instruction type), a held-out parameter value
               (instructions.HELDOUT_VALUES), or a pair of types never combined in train
               (HELDOUT_PAIRS). Novelty is kept moderate: one phrasing and value per type;
  rl_prompts   the train distribution again, for preference data and PPO.
"""

import re
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from random import Random

from minift.synthetic.demonstrators import demonstrate, slip_rng
from minift.synthetic.instructions import HELDOUT_VALUES, INSTRUCTIONS, Unsatisfiable, build_response, compatible
from minift.synthetic.tasks import TASKS, Task, verify

# Pairs of instruction types never combined in train/test (all are allowed on their own).
HELDOUT_PAIRS = {frozenset(p) for p in [
    ("detectable_format:title", "detectable_content:postscript"),
    ("keywords:existence", "startend:end_checker"),
    ("detectable_format:number_bullet_lists", "change_case:english_capital"),
    ("punctuation:no_comma", "startend:quotation"),
    ("length_constraints:number_words", "change_case:english_lowercase"),
]}
N_INSTRUCTIONS = {0: 0.15, 1: 0.35, 2: 0.30, 3: 0.20}  # how many instructions a prompt gets
MAX_SIZE = 75  # longest reference answer, in rough tokens (see too_long); slips may add some


# --------------------------------------------------------------------------- composing prompts

def _context(train, task, fields, draft):
    """What instruction samplers may look at: the base answer and the task's needs."""
    plain = " ".join(draft.core + draft.extra)
    prompt = task.describe(fields, 0)
    return {"held": HELDOUT_VALUES if train else {}, "task": task.id, "core": " ".join(draft.core), "text": plain,
            "keep": draft.keep, "items": draft.items is not None, "n_items": len(draft.items or []),
            "n_core": len(draft.core), "alt": bool(draft.alt), "answer": draft.answer,
            "capitals": sum(w.isupper() for w in re.findall(r"\w+", plain)),
            "avoid_text": " ".join([prompt, plain] + draft.alt).lower()}


@dataclass
class Sample:
    """One prompt with its reference answer, and what it was made from."""
    task: Task
    fields: dict            # task kwargs and template fields
    seed: int               # seeds the base answer and the builders
    task_template: int
    chosen: list            # [(Instruction, kwargs, template index)] in prompt order
    prompt: str = ""
    response: str = ""

    def base(self):
        return self.task.draft(Random(self.seed), self.fields)

    @property
    def items(self):
        return [(ins, kw) for ins, kw, _ in self.chosen]

    @property
    def ids(self):
        return [self.task.id] + [ins.id for ins, _, _ in self.chosen]

    @property
    def kwargs(self):
        return [{k: self.fields[k] for k in self.task.kwargs}] + [kw for _, kw, _ in self.chosen]

    def novelty(self):
        """What is new compared with train: ["template:<id>", "value:<id>:<key>=<v>", "pair:<a>+<b>"]."""
        out = [f"template:{self.task.id}"] if self.task_template == len(self.task.templates) - 1 else []
        for ins, kw, t in self.chosen:
            out += [f"template:{ins.id}"] if t == len(ins.templates) - 1 else []
            out += [f"value:{ins.id}:{k}={kw[k]}" for k, held in HELDOUT_VALUES.get(ins.id, {}).items()
                    if kw.get(k) in held]
        out += [f"pair:{a}+{b}" for a, b in combinations([c[0].id for c in self.chosen], 2)
                if frozenset((a, b)) in HELDOUT_PAIRS]
        return out

    def record(self, key):
        return {"key": key, "prompt": self.prompt, "instruction_id_list": self.ids, "kwargs": self.kwargs,
                "messages": [{"role": "user", "content": self.prompt},
                             {"role": "assistant", "content": self.response}]}


def compose(s):
    """The prompt: task text, then the instructions. repeat_prompt comes first, right after
    the request it asks to repeat (IFEval: "the request" excludes the repeat sentence; here
    it is the task text alone, which keeps the copy short)."""
    s.chosen.sort(key=lambda c: c[0].id != "combination:repeat_prompt")
    s.prompt = request = s.task.describe(s.fields, s.task_template)
    joiner = "\n" if "\n" in request else " "  # a multi-line task gets its instructions on a new line
    for ins, kw, t in s.chosen:
        if ins.id == "combination:repeat_prompt":
            kw["prompt_to_repeat"] = request
        s.prompt += joiner + ins.describe(kw, t)
        joiner = " "


def sample(rng, split, contrast=True, stats=None):
    """One Sample of `split`. Retries until the sampled instructions can all be satisfied,
    the reference answer passes every checker and, with `contrast`, each instruction is
    needed (the answer built without it fails it). Heldout also needs >= 1 novelty.
    `stats` (a Counter) gets the reasons for retries."""
    stats = stats if stats is not None else Counter()
    train = split != "heldout"
    want = rng.choices(list(N_INSTRUCTIONS), weights=list(N_INSTRUCTIONS.values()))[0]
    for attempt in range(300):
        if attempt and attempt % 100 == 0:
            want = max(want - 1, 0)  # very rarely needed: fall back to fewer instructions
        task = rng.choices(TASKS, weights=[t.weight for t in TASKS])[0]
        fields, seed = task.sample(rng), rng.getrandbits(32)
        s = Sample(task, fields, seed, rng.randrange(len(task.templates) - train), [])
        base = s.base()
        ctx = _context(train, task, fields, base)
        # Offer the types in a random order, favouring heavier weights (weighted sampling
        # without replacement: sort by u ** (1 / weight)).
        for ins in sorted(INSTRUCTIONS, key=lambda i: -rng.random() ** (1 / i.weight)):
            if len(s.chosen) == want:
                break
            ids = [c[0].id for c in s.chosen]
            if ins.id in task.conflicts or not compatible(ins.id, ids):
                continue
            if train and any(frozenset((ins.id, i)) in HELDOUT_PAIRS for i in ids):
                continue
            kw = ins.sample(rng, ctx)
            if kw is not None:
                s.chosen.append((ins, kw, rng.randrange(len(ins.templates) - train)))
        if len(s.chosen) < want:
            stats["too few compatible instructions"] += 1
            continue
        if not train and not s.novelty():
            stats["heldout without novelty"] += 1
            continue
        compose(s)
        try:
            s.response = build_response(base.copy(), s.items, seed)
        except Unsatisfiable as e:
            stats[f"unsatisfiable counts: {e}"] += 1
            continue
        if not all(verify(s.response, s.ids, s.kwargs, s.prompt)):
            stats["reference answer fails a checker"] += 1
            continue
        if too_long(s):
            stats["reference answer too long"] += 1
            continue
        accidental = contrast and satisfied_without(base, s.items, seed)
        if accidental:
            stats[f"holds by accident: {accidental}"] += 1
            continue
        return s
    raise RuntimeError(f"could not sample a {split} prompt")


def formatted_piece(rng):
    """A short formatted text for the pretraining corpus (data/prepare.py): the reference answer
    to a train-split prompt, without the prompt. The corpus thereby holds the forms the
    instructions ask for (titles, bullets, JSON, capitals, P.S. lines, exact counts), but never
    an IFEval instruction next to its answer (a piece that repeats the request opens with the
    base task's, as combination:repeat_prompt answers do)."""
    return sample(rng, "train", contrast=False).response


def too_long(s):
    """Short answers keep SFT fast and the context small (a 256-token window holds prompt and
    answer). Size is a rough token count: words and punctuation, plus about one token per two
    letters of an ALL-CAPS word, which a BPE trained on lower-case stories splits into pieces."""
    caps = sum(len(w) // 2 for w in re.findall(r"\b[A-Z]{2,}\b", s.response))
    return len(re.findall(r"\w+|[^\w\s]", s.response)) + caps > MAX_SIZE


def satisfied_without(base, items, seed):
    """The first instruction whose answer built WITHOUT it still follows it (it holds by
    accident), or None. Such prompts are resampled, so every instruction in the data matters."""
    for i, (ins, kw) in enumerate(items):
        try:
            without = build_response(base.copy(), items[:i] + items[i + 1:], seed)
        except Unsatisfiable:
            continue  # the others alone cannot be built; nothing to compare against
        if ins.verify(without, kw):
            return ins.id
    return None


# Records per split by default (the tiny preset's sizes; data/make_sft.py reads them too).
SPLIT_SIZES = {"train": 12000, "test": 500, "heldout": 500, "rl_prompts": 2000}
EARLIER_TURN_SHARE = 0.1  # train conversations that start with an earlier, unrelated exchange


def add_earlier_turns(records, share, rng):
    """Chat practice: `share` of the records get another record's prompt and answer as an
    earlier exchange before their own, so that the model learns to answer the LAST user
    message of a conversation (sample.py --chat): one-turn data never shows a conversation
    whose last message is not its first (FINDINGS.md, "SFT demonstrations", a tenth of the
    conversations open with an earlier exchange). The IFEval fields (prompt,
    instruction ids, kwargs) stay those of the last turn. The other record is drawn from all
    of them, so a record could in principle draw itself (1 in 12,000 at the tiny preset's
    size). Runs after the prompts are drawn, on its own random stream: the
    splits' prompts do not change."""
    for r in records:
        if rng.random() < share:
            other = records[rng.randrange(len(records))]
            r["messages"] = other["messages"][-2:] + r["messages"]
    return records


def make_splits(seed=0, sizes=None, stats=None, slip_scale=1.0):
    """{split: [records]} with no prompt string shared between splits (first come, first kept:
    test, heldout, rl_prompts, then train). Every answer is a simulated demonstrator's
    (minift/synthetic/demonstrators.py; `slip_scale` scales its slip rates, 0 = perfect answers), and
    each record lists the instructions it slipped on under "slips". Heldout records also
    list their "novelty"."""
    sizes = sizes or SPLIT_SIZES
    seen, out = set(), {}
    for split in ("test", "heldout", "rl_prompts", "train"):
        rng, slips, records = Random(f"{seed}/{split}"), slip_rng(seed, split), []
        while len(records) < sizes.get(split, 0):
            s = sample(rng, split, stats=stats)
            if s.prompt in seen:
                continue
            seen.add(s.prompt)
            # from here on the sample's answer is the demonstrator's: the reference, slips and all
            s.response, slipped = demonstrate(s, slips, slip_scale)
            records.append(s.record(f"{split}-{len(records)}") | {"slips": slipped})
            if split == "heldout":
                records[-1]["novelty"] = s.novelty()
        out[split] = records
    if "train" in out:
        add_earlier_turns(out["train"], EARLIER_TURN_SHARE, Random(f"{seed}/earlier turns"))
    return out
