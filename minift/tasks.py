"""Base tasks from the story world, prompts with 0-3 IFEval-style instructions, and the splits.

A record = one base task ("Describe a kite.") + 0 to 3 compatible instructions
(minift/instructions.py), written as one user prompt, plus a reference answer built by
applying the instructions' builders to an honest base answer. Records use IFEval's input
format ({"key", "prompt", "instruction_id_list", "kwargs"}) plus chat "messages", so one file
serves SFT and evaluation.

The base task is itself verifiable and is listed FIRST in instruction_id_list as "task:..."
(with its own kwargs). So every prompt is scored, even one with no extra instruction, and the
gold reward can check the content too. Our scorer knows the task:* ids; IFEval's own tooling
will report them as unknown ids, which is expected.

Splits (deterministic from a seed; no prompt string appears in two splits):
  train, test  the same distribution; nothing held back below ever appears in them;
  heldout      every prompt has at least one novelty: a held-out phrasing (the last template
               of a task or instruction type), a held-out parameter value
               (instructions.HELDOUT_VALUES), or a pair of types never combined in train
               (HELDOUT_PAIRS). Novelty is kept moderate: one phrasing and value per type;
  rl_prompts   the train distribution again, for preference data and PPO.
"""

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations, cycle
from random import Random
from typing import Callable

from minift import world
from minift.instructions import (HELDOUT_VALUES, INSTRUCTIONS, REGISTRY, Draft, Unsatisfiable, build_response,
                                 compatible)

# Pairs of instruction types never combined in train/test (all are allowed on their own).
HELDOUT_PAIRS = {frozenset(p) for p in [
    ("detectable_format:title", "detectable_content:postscript"),
    ("keywords:existence", "startend:end_checker"),
    ("detectable_format:number_bullet_lists", "change_case:english_capital"),
    ("punctuation:no_comma", "startend:quotation"),
    ("length_constraints:number_words", "change_case:english_lowercase"),
]}
N_INSTRUCTIONS = {0: 0.15, 1: 0.35, 2: 0.30, 3: 0.20}  # how many instructions a prompt gets
MAX_SIZE = 75  # longest reference answer, in rough tokens (see too_long)


# --------------------------------------------------------------------------- small helpers

def _a(noun):
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _the(word):
    """How to name a topic in a prompt: "Tom", "the park", "a kite"."""
    if word in world.PRONOUN:
        return word
    return f"the {word}" if word in world.PLACE_PREP else _a(word)


@lru_cache(maxsize=None)
def _word_pattern(word):
    return re.compile(rf"\b{re.escape(word)}(s|es)?\b", re.IGNORECASE)


def _title(text):
    """Title case that leaves small words alone: "Things at the Park"."""
    small = {"a", "an", "the", "and", "at", "in", "on", "by", "of"}
    return " ".join(w if i and w in small else w[0].upper() + w[1:] for i, w in enumerate(text.split()))


def mentions(text, word):
    """Whole word, any case, plural allowed ("kite" matches "Kites" but not "kitten")."""
    return _word_pattern(word).search(text) is not None


def _contains_run(tokens, run):
    return any(tokens[i:i + len(run)] == run for i in range(len(tokens) - len(run) + 1))


# --------------------------------------------------------------------------- checkers of tasks

def check_mentions(response, **kwargs):
    """write_sentence / describe / story: every named topic appears."""
    return all(mentions(response, w) for w in kwargs.values())


def check_list_things(response, place, num_items):
    return sum(mentions(response, t) for t in world.PLACE_THINGS[place]) >= num_items


def check_answer(response, answer, wrong):
    """The answer word is there and the distractor from the text is not."""
    return mentions(response, answer) and not mentions(response, wrong)


def _list_checker(transform, ignore_case=True):
    """The transformed words appear in order, one after another (any punctuation or layout)."""
    def check(response, words):
        norm = (lambda ws: [w.lower() for w in ws]) if ignore_case else (lambda ws: ws)
        return _contains_run(norm(re.findall(r"\w+", response)), norm(transform(words)))
    return check


# --------------------------------------------------------------------------- task samplers and drafts

def sample_topic(rng, kinds):
    kind = rng.choice(kinds)
    topic = rng.choice(kind)
    return {"topic": topic, "the": _the(topic), "title": _title(_the(topic))}


def _facts(rng, topic, n):
    """n sentences describing topic, as a list."""
    return world.split_sentences(world.describe(rng, topic, n))


def _supply(make):
    """A Draft's more(): hands out sentences one at a time from batches made by make()."""
    batch = []

    def more():
        if not batch:
            batch.extend(make())
        return batch.pop(0)
    return more


def draft_sentence(rng, kw):
    t = kw["topic"]
    return Draft(core=[world.sentence_about(rng, t)], more=_supply(lambda: _facts(rng, t, 4)),
                 alt=_facts(rng, t, 1), title=kw["title"], keep={t.lower()})


def draft_describe(rng, kw):
    t = kw["topic"]
    first, *rest = _facts(rng, t, 5)
    n = rng.choice([1, 2])  # the plain answer has 2-3 sentences; the rest pad if asked for more
    return Draft(core=[first], extra=rest[:n], pads=rest[n:], more=lambda: world.sentence_about(rng, t),
                 alt=_facts(rng, t, 2), title=kw["title"], keep={t.lower()})


def sample_story(rng):
    name, thing = rng.choice(world.NAMES), rng.choice(world.OBJECTS * 2 + world.ANIMALS + world.FOODS)
    return {"name": name, "thing": thing, "a_thing": _a(thing), "title": _title(f"{name} and the {thing}")}


def draft_story(rng, kw):
    name, thing = kw["name"], kw["thing"]
    story = world.story_sentences(rng, name, thing, rng.choice([3, 4]))
    # The core is the shortest start of the story that names both the hero and the thing.
    k = next((i for i in range(1, len(story)) if all(mentions(" ".join(story[:i]), w) for w in (name, thing))),
             len(story))
    return Draft(core=story[:k], extra=story[k:], more=_supply(lambda: _facts(rng, thing, 4)),
                 alt=world.story_sentences(rng, name, thing, 3), title=kw["title"], keep={name.lower(), thing})


def sample_list_things(rng):
    place = rng.choice(world.PLACES)
    where = f"{world.PLACE_PREP[place]} the {place}"
    return {"place": place, "num_items": rng.choice([2, 3, 4, 5]), "where": where, "title": _title(f"things {where}")}


def draft_list_things(rng, kw):
    place, n, where = kw["place"], kw["num_items"], kw["where"]
    things = world.PLACE_THINGS[place]
    items = [_a(t) for t in rng.sample(things, n)]
    others = [_a(t) for t in rng.sample(things, n)]
    spare = cycle([t for t in things if _a(t) not in items])
    return Draft(core=[f"{where.capitalize()} you can find {world.word_list(items)}."],
                 more=lambda: f"There is also {_a(next(spare))}.", items=items,
                 lead=f"{where.capitalize()} you can find:", alt=[f"You can see {world.word_list(others)} {where}."],
                 title=kw["title"], keep=set(things) | {place})


def sample_question(rng):
    """A two-sentence text about two children and a question about one of them; the other
    child's fact is the distractor that the answer must not mention. "pads" are true, on-topic
    sentences for answers that must be longer."""
    n1, n2 = rng.sample(world.NAMES, 2)
    kind = rng.choice(["color", "place", "pet", "food", "yesno", "yesno"])
    if kind == "place":
        p1, p2 = rng.sample(world.PLACES, 2)
        text = f"{n1} went to the {p1}. {n2} went to the {p2}."
        q, answer, wrong, reply = f"Where did {n1} go?", p1, p2, f"{n1} went to the {p1}."
        pads = [f"The {p1} was {world.PLACE_ADJ[p1][0]}.", f"{n1} played {world.PLACE_PREP[p1]} the {p1}."]
    elif kind == "pet":
        a1, a2 = rng.sample(world.ANIMALS, 2)
        text = f"{n1} has a pet {a1}. {n2} has a pet {a2}."
        q, answer, wrong, reply = f"What pet does {n1} have?", a1, a2, f"{n1} has a pet {a1}."
        pads = [f"The {a1} is {world.ANIMAL_INFO[a1]['size']}.", f"{n1} plays with the {a1}."]
    elif kind == "food":
        f1, f2 = rng.sample(world.FOODS, 2)
        text = f"{n1} ate {_a(f1)}. {n2} ate {_a(f2)}."
        q, answer, wrong, reply = f"What did {n1} eat?", f1, f2, f"{n1} ate {_a(f1)}."
        pads = [f"The {f1} was {world.FOOD_INFO[f1]['tastes'][0]}.", f"{n1} liked the {f1}."]
    else:
        thing = rng.choice(world.OBJECTS)
        c1, c2 = rng.sample(world.COLORS, 2)
        text = f"{n1} has {_a(c1)} {thing}. {n2} has {_a(c2)} {thing}."
        pads = [f"{n1} likes the {thing}.", f"{n1} plays with the {thing}."]
        if kind == "color":
            q, answer, wrong, reply = f"What color is {n1}'s {thing}?", c1, c2, f"{n1}'s {thing} is {c1}."
        else:
            yes = rng.random() < 0.5
            q = f"Is {n1}'s {thing} {c1 if yes else c2}?"
            answer, wrong = ("yes", "no") if yes else ("no", "yes")
            reply = f"{answer.capitalize()}, {n1}'s {thing} is {c1}."
    short = f"{answer.capitalize()}, it is {c1}." if kind == "yesno" else f"The answer is {answer}."
    pads += [f"{n1} was happy.", "That is what the text says.", f"{n2} was there too."]
    return {"answer": answer, "wrong": wrong, "text": text, "question": q, "reply": reply, "short": short,
            "pads": pads}


def draft_question(rng, kw):
    return Draft(core=[kw["reply"]], pads=list(kw["pads"]), more=lambda: "That is my answer.", alt=[kw["short"]],
                 title="The Answer", answer=kw["answer"] if kw["answer"] in ("yes", "no") else "",
                 keep=set(world.words(kw["text"] + " " + kw["question"])) | {kw["answer"], kw["wrong"]})


def sample_word_list(rng, low, high, ordered=False):
    """low-high distinct words; for sorting, never already in order (the prompt would hold the answer)."""
    while True:
        words = rng.sample(world.OBJECTS + world.ANIMALS + world.FOODS, rng.randint(low, high))
        if not ordered or words != sorted(words):
            return {"words": words, "list": ", ".join(words)}


def draft_list_op(transform, title):
    def draft(rng, kw):
        answer = transform(kw["words"])
        return Draft(core=[", ".join(answer) + "."], more=lambda: "That is the list.", items=answer,
                     title=title, keep={w.lower() for w in answer})
    return draft


REVERSE = lambda ws: ws[::-1]  # noqa: E731
SORT = sorted
UPPER = lambda ws: [w.upper() for w in ws]  # noqa: E731


@dataclass(frozen=True)
class Task:
    id: str
    templates: tuple            # templates[-1] is held out of train
    check: Callable
    kwargs: tuple               # the checker's kwargs (the record's kwargs for this id)
    sample: Callable            # rng -> kwargs and template fields
    draft: Callable             # (rng, fields) -> Draft: the honest base answer
    weight: float = 1.0
    conflicts: frozenset = frozenset()

    def describe(self, fields, template):
        return self.templates[template].format(**fields)


_NOT_FOR_LISTS = frozenset({"length_constraints:number_words", "length_constraints:number_sentences",
                            "length_constraints:number_paragraphs", "combination:two_responses"})
_CASE = frozenset({"change_case:english_capital", "change_case:english_lowercase",
                   "change_case:capital_word_frequency"})
_THINGS = [world.OBJECTS, world.ANIMALS, world.FOODS]

TASKS = [
    Task("task:write_sentence",
         ("Write a sentence about {the}.", "Tell me something about {the}.", "Say one thing about {the}.",
          "Give me one sentence on the topic of {the}."),
         check_mentions, ("topic",), lambda rng: sample_topic(rng, _THINGS + [world.PLACES, world.NAMES]),
         draft_sentence),
    Task("task:write_story",
         ("Write a short story about {name} and {a_thing}.", "Tell me a story about {name} and {a_thing}.",
          "Write a little story where {name} has {a_thing}.", "Can you make up a tale about {name} and {a_thing}?"),
         check_mentions, ("name", "thing"), sample_story, draft_story),
    Task("task:describe",
         ("Describe {the}.", "Tell me what {the} is like.", "Write a description of {the}.",
          "What can you tell me about {the}?"),
         check_mentions, ("topic",), lambda rng: sample_topic(rng, _THINGS + [world.PLACES]), draft_describe),
    Task("task:list_things",
         ("List {num_items} things you can find {where}.", "Name {num_items} things that are {where}.",
          "What are {num_items} things you can see {where}?", "Tell me {num_items} things you might find {where}."),
         check_list_things, ("place", "num_items"), sample_list_things, draft_list_things),
    Task("task:answer_question",
         ("Read the text and answer the question.\nText: {text}\nQuestion: {question}",
          "{text} {question}", "Here is a short text: {text} Now answer: {question}",
          "Answer the question about this text. {text} Question: {question}"),
         # Repeating the prompt would repeat the distractor too.
         check_answer, ("answer", "wrong"), sample_question, draft_question, weight=1.2,
         conflicts=frozenset({"combination:repeat_prompt"})),
    Task("task:reverse_list",
         ("Reverse this list: {list}.", "Write these words in reverse order: {list}.",
          "Put this list backwards: {list}.", "Say these words from last to first: {list}."),
         _list_checker(REVERSE), ("words",), lambda rng: sample_word_list(rng, 3, 5),
         draft_list_op(REVERSE, "Reversed List"), weight=0.6, conflicts=_NOT_FOR_LISTS),
    Task("task:sort_list",
         ("Sort these words in alphabetical order: {list}.", "Put these words in ABC order: {list}.",
          "Write these words sorted from A to Z: {list}.", "Arrange these words alphabetically: {list}."),
         _list_checker(SORT), ("words",), lambda rng: sample_word_list(rng, 3, 4, ordered=True),
         draft_list_op(SORT, "Sorted List"), weight=0.3, conflicts=_NOT_FOR_LISTS),
    Task("task:uppercase_list",
         ("Write these words in capital letters: {list}.", "Make these words uppercase: {list}.",
          "Change these words to all capital letters: {list}.", "Shout these words in capitals: {list}."),
         _list_checker(UPPER, ignore_case=False), ("words",), lambda rng: sample_word_list(rng, 3, 5),
         draft_list_op(UPPER, "Big Letters"), weight=0.3, conflicts=_NOT_FOR_LISTS | _CASE),
]
TASK_REGISTRY = {t.id: t for t in TASKS}

# Every id we can check: instruction types and base tasks.
CHECKERS = {**{i: ins.verify for i, ins in REGISTRY.items()},
            **{t.id: (lambda task: lambda response, kw: task.check(response, **{k: kw[k] for k in task.kwargs}))(t)
               for t in TASKS}}


def verify(response, instruction_id_list, kwargs, prompt=""):
    """[checker passes?] per id. Unknown ids raise KeyError (minift/scoring.py counts them).
    kwargs entries that are None (as in IFEval's HF export) are dropped; repeat_prompt falls
    back to the prompt when prompt_to_repeat is missing."""
    out = []
    for iid, kw in zip(instruction_id_list, kwargs):
        kw = {k: v for k, v in (kw or {}).items() if v is not None}
        if iid == "combination:repeat_prompt":
            kw.setdefault("prompt_to_repeat", prompt)
        out.append(bool(CHECKERS[iid](response, kw)))
    return out


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
    an instruction next to its answer."""
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


def make_splits(seed=0, sizes=None, stats=None):
    """{split: [records]} with no prompt string shared between splits (first come, first kept:
    test, heldout, rl_prompts, then train). Heldout records also list their "novelty"."""
    sizes = sizes or {"train": 20000, "test": 500, "heldout": 500, "rl_prompts": 2000}
    seen, out = set(), {}
    for split in ("test", "heldout", "rl_prompts", "train"):
        rng, records = Random(f"{seed}/{split}"), []
        while len(records) < sizes.get(split, 0):
            s = sample(rng, split, stats=stats)
            if s.prompt in seen:
                continue
            seen.add(s.prompt)
            records.append(s.record(f"{split}-{len(records)}"))
            if split == "heldout":
                records[-1]["novelty"] = s.novelty()
        out[split] = records
    return out
