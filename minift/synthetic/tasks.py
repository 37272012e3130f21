"""Base tasks from the story world: what a prompt asks before any instruction is added.

Each task ("Describe a kite.", "Reverse this list: ...") has a few phrasings (the last is held
out of train), a sampler of its parameters, a draft of an honest base answer (which the
instruction builders then edit, minift/synthetic/instructions.py), and a checker. The task is itself
verifiable and is listed FIRST in a record's instruction_id_list as "task:..." (with its own
kwargs). So every prompt is scored, even one with no extra instruction, and the gold reward
can check the content too. Our scorer knows the task:* ids (CHECKERS, verify below); IFEval's
own tooling does not, and stops at the first one: drop them before scoring our files with it.

minift/synthetic/splits.py composes prompts from a task plus 0-3 instructions, and makes the splits.
"""

import re
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import cycle
from typing import Callable

from minift.synthetic import world
from minift.synthetic.instructions import REGISTRY, Draft, run_checker


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
    """The word with -s or -es, or its plural as the story world spells it (cherries, mice)."""
    plural = re.escape(world.plural(word.lower()))
    return re.compile(rf"\b(?:{re.escape(word)}(?:s|es)?|{plural})\b", re.IGNORECASE)


def _title(text):
    """Title case that leaves small words alone: "Things at the Park"."""
    small = {"a", "an", "the", "and", "at", "in", "on", "by", "of"}
    return " ".join(w if i and w in small else w[0].upper() + w[1:] for i, w in enumerate(text.split()))


def mentions(text, word):
    """Whole word, any case, plural allowed ("kite" matches "Kites" but not "kitten"; "cherry"
    matches "cherries", "mouse" "mice")."""
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
    """The transformed words appear in order, one after another, whatever the punctuation,
    layout or numbering between them: "1. fox 2. drum" and "* fox (1/2)" both hold fox, drum."""
    def check(response, words):
        norm = (lambda ws: [w.lower() for w in ws]) if ignore_case else (lambda ws: ws)
        return _contains_run(norm(re.findall(r"[^\W\d_]+", response)), norm(transform(words)))
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
    # Listed in the world's own order (PLACE_THINGS), not shuffled: then each thing has a usual
    # successor, and greedy decoding walks the list instead of repeating its likeliest item
    # ("a shell, a shell, a shell"; FINDINGS.md, "The corpus and the tokenizer").
    items = [_a(things[i]) for i in sorted(rng.sample(range(len(things)), n))]
    others = [_a(t) for t in rng.sample(things, n)]
    spare = cycle([t for t in things if _a(t) not in items])
    return Draft(core=[f"{where.capitalize()} you can find {world.word_list(items)}."],
                 more=lambda: f"There is also {_a(next(spare))}.", items=items,
                 lead=f"{where.capitalize()} you can find:", alt=[f"You can see {world.word_list(others)} {where}."],
                 title=kw["title"], keep=set(things) | {place})


def sample_question(rng):
    """A two-sentence text about two children and a question about one of them; the
    distractor, which the answer must not mention, is the other child's fact, or for a
    yes-no question the wrong verdict. "pads" are true, on-topic sentences for answers that
    must be longer."""
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
        # The reply first repeats the sentence of the text that holds the answer ("Max has a
        # green camera."), and a yes-no verdict comes after it ("... so the answer is no.").
        # Copying a span is the look-up a small transformer learns first (an induction head:
        # find the name, copy what followed it); re-wording the fact ("Max's camera is
        # green") or saying yes or no before looking is harder (FINDINGS.md, "SFT
        # demonstrations"). Colours stay weak: the keyword filler ("The muffin is black.")
        # pairs things with random colours.
        fact = f"{n1} has {_a(c1)} {thing}"
        if kind == "color":
            q, answer, wrong, reply = f"What color is {n1}'s {thing}?", c1, c2, f"{fact}."
        else:
            yes = rng.random() < 0.5
            q = f"Is {n1}'s {thing} {c1 if yes else c2}?"
            answer, wrong = ("yes", "no") if yes else ("no", "yes")
            reply = f"{fact} so the answer is {answer}."
    short = f"The answer is {answer}."
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


def draft_list_op(transform, title, work=None):
    """A list task's answer: "Here they are: <the transformed list>.", after a line of worked
    steps when `work` (words -> str) gives one: a scratchpad (Nye et al. 2021, "Show Your Work")."""
    def draft(rng, kw):
        answer = transform(kw["words"])
        steps = work(kw["words"]) if work else ""
        # "Here they are: pie, ..." rather than "pie, ...": after the colon every word has its
        # leading space, the same BPE token as in the prompt's list (see builders.spaced).
        # With bullets (render_bullets) the steps become the lead line above the items.
        return Draft(core=([steps] if steps else []) + ["Here they are: " + ", ".join(answer) + "."],
                     more=lambda: "That is the list.", items=answer, lead=steps, title=title,
                     keep={w.lower() for w in answer})
    return draft


# The worked steps. The checkers only look for the finished list, so steps are allowed, and
# they turn a look-up the tiny model fails into ones it can do (FINDINGS.md, "SFT demonstrations"):
# * Reversing: in the prompt ("snail, spider, key") the word before "key" is two tokens back,
#   behind a comma. Copied once without commas, it is the token just before, and the reversed
#   list walks that copy backwards.
# * Upper-casing: ` turtle` -> ` T`,`UR`,`TLE` is a spelling the model must recall per word.
#   Right next to its word ("turtle is TURTLE") the recall has the word just before it to
#   go on, not one somewhere in the prompt list. The final list must still copy the capitals
#   past the "frog is" in between.
# Sorting has no steps: with them ("By first letter: p pie, s shovel") the model still lost
# track of which pairs it had used (FINDINGS.md, "SFT demonstrations", steps that did not help).
def reverse_steps(words):
    return "From the start: " + " ".join(words) + "."


def uppercase_steps(words):
    return "Word by word: " + ", ".join(f"{w} is {w.upper()}" for w in words) + "."


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
         draft_list_op(REVERSE, "Reversed List", reverse_steps), weight=0.6, conflicts=_NOT_FOR_LISTS),
    Task("task:sort_list",
         ("Sort these words in alphabetical order: {list}.", "Put these words in ABC order: {list}.",
          "Write these words sorted from A to Z: {list}.", "Arrange these words alphabetically: {list}."),
         _list_checker(SORT), ("words",), lambda rng: sample_word_list(rng, 3, 4, ordered=True),
         draft_list_op(SORT, "Sorted List"), weight=0.3, conflicts=_NOT_FOR_LISTS),
    Task("task:uppercase_list",
         ("Write these words in capital letters: {list}.", "Make these words uppercase: {list}.",
          "Change these words to all capital letters: {list}.", "Shout these words in capitals: {list}."),
         _list_checker(UPPER, ignore_case=False), ("words",), lambda rng: sample_word_list(rng, 3, 5),
         draft_list_op(UPPER, "Big Letters", uppercase_steps), weight=0.3, conflicts=_NOT_FOR_LISTS | _CASE),
]
TASK_REGISTRY = {t.id: t for t in TASKS}

# Every id we can check: instruction types and base tasks.
CHECKERS = {**{i: ins.verify for i, ins in REGISTRY.items()},
            **{t.id: partial(run_checker, t.check, t.kwargs) for t in TASKS}}


def request_to_copy(instruction_id_list, kwargs, prompt=""):
    """The text combination:repeat_prompt asks the answer to open with: its prompt_to_repeat,
    or the prompt itself where that is missing or null (as in IFEval's HF export); "" when
    the prompt does not ask for a copy."""
    for iid, kw in zip(instruction_id_list, kwargs):
        if iid == "combination:repeat_prompt":
            return (kw or {}).get("prompt_to_repeat") or prompt
    return ""


def without_copied_prompt(response, instruction_id_list, kwargs, prompt=""):
    """The response minus a leading copy of the request that combination:repeat_prompt asked
    for: what a task:* id is judged on, by the evaluation and the gold reward alike. The copy
    names the topic and can even read as an answer ("Tell me a story about Tom."), so it must
    not count as doing the task."""
    copy = request_to_copy(instruction_id_list, kwargs, prompt).strip()
    text = response.strip()
    return text[len(copy):] if copy and text.lower().startswith(copy.lower()) else response


def verify(response, instruction_id_list, kwargs, prompt="", checkers=CHECKERS):
    """[checker passes?] per id. Unknown ids raise KeyError (minift/synthetic/scoring.py counts them).
    kwargs entries that are None (as in IFEval's HF export) are dropped; repeat_prompt falls
    back to the prompt when prompt_to_repeat is missing (request_to_copy). `checkers`: id ->
    (response, kwargs) -> bool; minift/synthetic/scoring.py passes IFEval's own (IFEVAL_CHECKERS)."""
    out = []
    for iid, kw in zip(instruction_id_list, kwargs):
        kw = {k: v for k, v in (kw or {}).items() if v is not None}
        if iid == "combination:repeat_prompt":
            kw["prompt_to_repeat"] = request_to_copy([iid], [kw], prompt)
        out.append(bool(checkers[iid](response, kw)))
    return out
