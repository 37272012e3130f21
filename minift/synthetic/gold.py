"""
The gold reward: our stand-in for InstructGPT's human raters.

A reward model is trained on preferences that come from this function (data/make_preferences.py),
and PPO is then judged by it: because it is a program we can watch the policy over-optimise the
learned reward while the gold score stalls or falls (Gao et al. 2022, "Scaling Laws for Reward
Model Overoptimization", do the same with a large "gold" RM). So it must be hard to game: every
cheap trick that could raise the share of passed checkers must cost more than it gains.

    gold = 0                                            if the response is empty (or only spaces)
    gold = (0.2 + 0.8 * passed) * 0.5 ** flaws          otherwise

passed   the share of the prompt's items whose checker says yes (strict): the base task, listed
         first as "task:*", and each instruction, weighted equally (minift/synthetic/tasks.py verify).
         Ids outside the registry's CHECKERS are skipped (with none left, passed = 1). The
         base task and the topic are judged on the answer after a copied request
         (combination:repeat_prompt): the copy names the topic too.
flaws    how many of these five content flaws the response shows; each one halves the reward:
  rambling    more words than the budget: 60, plus the words of a prompt it must repeat, plus
              the minimum of a word-count instruction; doubled when two answers are asked for.
              (60 sits above nearly every reference answer's length and below what 96 sampled
              tokens can hold; FINDINGS.md, "Preferences and the gold reward".)
  repetition  more than half of its word 3-grams are repeats: a decoding loop, or one sentence
              said again and again.
  spam        a content word occurs more than 6 times (12 with two answers) beyond what a
              keywords:frequency instruction asks for: keyword stuffing.
  off-topic   of its sentences that name someone or something of the story world, under a third
              name anything from the prompt (or a thing found at a place the prompt names):
              text about something else. Sentences naming nothing ("It can hop.") or only a
              keyword an instruction asked for ("Look at the owl.") do not count either way.
  garbled     a word that neither the prompt nor anything in the story world's text generators
              could have written ("OWba", "areAMP", "bunnys"): a sampling slip. A garbled
              sample can pass every checker, and without this flaw it would then score a perfect
              1.0 (FINDINGS.md, "Preferences and the gold reward", garbled words); a human rater
              would mark it down. Numbers (digits) are always words.
Why this shape:
  * The floor of 0.2 makes any attempt beat an empty answer, which scores lowest.
  * Flaws multiply: a flawed answer scores at most 0.5, half of a clean answer that passes
    everything, so no trick beats doing the task (it can only beat answers that fail anyway).
  * Discrete levels, like a rater's grades: two answers that are equally good tie (ties carry no
    preference and are dropped), and a pair's winner is better for a nameable reason: a checker
    or a flaw (gold_breakdown lists both).
The thresholds sit above nearly all of our own reference answers (tests/test_gold.py checks a
sample of them for flaws; FINDINGS.md, "Preferences and the gold reward", counts the few that
cross one), so honest answers are almost never penalised.
"""

import ast
import inspect
import re
from collections import Counter
from functools import lru_cache

from minift.synthetic import builders, instructions, tasks, world
from minift.synthetic.instructions import split_sentences
from minift.synthetic.tasks import CHECKERS, request_to_copy, verify, without_copied_prompt

FLOOR = 0.2
BASE_BUDGET = 60        # words
MAX_REPEATED_3GRAMS = 0.5
MAX_WORD_COUNT = 6
MIN_ON_TOPIC = 1 / 3

# Function words never count as content (for spam and topic). Words of 1-2 letters are skipped too.
STOP_WORDS = set("""the and was were are has had have his her him she they them their its that
this there then than with for from into onto not but you your our can could will would did does
what when where who why how all any one two some very too also just like likes liked said say
says went go goes got get make made let lot lots day way off out see saw""".split())


def _words(text):
    return re.findall(r"\w+", text.lower())


# Plural -> singular for every noun of the story world ("mice" -> "mouse", "cherries" -> "cherry",
# "shelves" -> "shelf"): the "-s" rule below would leave "shelve" and "benche".
WORLD_NOUNS = world.OBJECTS + world.ANIMALS + world.FOODS + world.PLACES + sum(world.PLACE_THINGS.values(), [])
_SINGULAR = {world.plural(n): n for n in WORLD_NOUNS}


def _stem(word):
    """Fold plurals so that "kites" matches "kite": the world's nouns exactly, others by rule."""
    if word in _SINGULAR:
        return _SINGULAR[word]
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _content(text):
    return [_stem(w) for w in _words(text) if len(w) > 2 and w not in STOP_WORDS]


def _values(kw):
    """The words of a kwargs dict's string and list values."""
    return _content(" ".join(" ".join(v) if isinstance(v, list) else str(v) for v in (kw or {}).values()))


def _task_words(instruction_id_list, kwargs):
    """The content words of the base task's kwargs (a topic, a hero and a thing, a list...)."""
    return set(_values(kwargs[0])) if instruction_id_list and instruction_id_list[0].startswith("task:") else set()


def _kw(instruction_id_list, kwargs, iid):
    """The kwargs of instruction `iid` in this prompt, or None."""
    return next(((kw or {}) for i, kw in zip(instruction_id_list, kwargs) if i == iid), None)


def word_budget(instruction_id_list, kwargs, prompt=""):
    budget = BASE_BUDGET + len(_words(request_to_copy(instruction_id_list, kwargs, prompt)))
    words = _kw(instruction_id_list, kwargs, "length_constraints:number_words")
    if words and words.get("relation") == "at least":
        budget += words["num_words"]
    if _kw(instruction_id_list, kwargs, "combination:two_responses") is not None:
        budget *= 2
    return budget


def repeated_3gram_share(text):
    """The share of word 3-grams that already occurred earlier in the text (0 for < 3 words)."""
    words = _words(text)
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def spammed_words(response, instruction_id_list, kwargs):
    """Content words used more often than allowed: 6 (12 with two answers) on top of what a
    keywords:frequency "at least" instruction asks for."""
    allowed = MAX_WORD_COUNT * (2 if _kw(instruction_id_list, kwargs, "combination:two_responses") is not None else 1)
    wanted = Counter()
    freq = _kw(instruction_id_list, kwargs, "keywords:frequency")
    if freq and freq.get("relation") == "at least":
        wanted[_stem(freq["keyword"].lower())] = freq["frequency"]
    return sorted(w for w, n in Counter(_content(response)).items() if n > allowed + wanted[w])


# The nouns of the story world: who and what a sentence can be about.
NOUNS = {_stem(w.lower()) for w in world.NAMES + world.OBJECTS + world.ANIMALS + world.FOODS + world.PLACES
         + [t for things in world.PLACE_THINGS.values() for t in things]}


def topic_nouns(prompt, instruction_id_list, kwargs):
    """The world nouns the prompt names (the topic, a story's hero, the text of a question,
    the keywords, ...), plus the things found at a place it names."""
    words = set(_content(prompt)) | _task_words(instruction_id_list, kwargs)
    for place in [w for w in words if w in world.PLACE_THINGS]:
        words.update(_stem(t) for t in world.PLACE_THINGS[place])
    return words & NOUNS


def requested_keywords(instruction_id_list, kwargs):
    """Words that keywords instructions ask for, unless the base task is about them: they say
    nothing about being on topic ("Look at the owl." in an answer about a kite)."""
    words = set()
    for iid, kw in zip(instruction_id_list, kwargs):
        if iid in ("keywords:existence", "keywords:frequency"):
            words.update(_values({k: v for k, v in (kw or {}).items() if k in ("keywords", "keyword")}))
    return words - _task_words(instruction_id_list, kwargs)


def on_topic_share(prompt, response, instruction_id_list, kwargs):
    """Of the sentences that name someone or something of the world, the share that names
    something from the prompt. Sentences naming nothing ("It can hop.", "That is all.") or
    only a requested keyword ("Look at the owl.") are neutral. 1.0 if no sentence is left."""
    skip = requested_keywords(instruction_id_list, kwargs)
    topic = topic_nouns(prompt, instruction_id_list, kwargs) - skip
    named = [nouns for nouns in (set(_content(s)) & NOUNS - skip for s in split_sentences(response)) if nouns]
    return sum(bool(nouns & topic) for nouns in named) / len(named) if named else 1.0


@lru_cache(maxsize=1)
def world_words():
    """Every word the story world's text can hold, lower-cased: the stories' vocabulary
    (world.vocabulary, which tests/test_data.py checks against generated documents) plus the
    words of every string literal, docstrings left out, in the modules that write prompts and
    answers ("Here they are:", "P.S.", "Word by word"). Read from the source, so a word added to
    a template is known at once; tests/test_gold.py checks that sampled reference answers use
    no other word."""
    words = {part for word in world.vocabulary() for part in re.findall(r"[a-z]+", word)}  # "tom's"
    for module in (tasks, builders, instructions):
        tree = ast.parse(inspect.getsource(module))
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                words.update(re.findall(r"[a-z]+", node.value.lower()))  # "soft_fur" is two words
    return frozenset(words)


def garbled_words(prompt, response):
    """The response's words that are not words of the story world or the prompt."""
    known = world_words() | {w.lower() for w in re.findall(r"[A-Za-z]+", prompt)}
    return [w for w in re.findall(r"[A-Za-z]+", response) if w.lower() not in known]


def gold_breakdown(prompt, response, instruction_id_list, kwargs):
    """Every part of the gold reward, for logging and for tests: the per-item checks, the
    flaws found, and the reward itself."""
    items = [(iid, kw) for iid, kw in zip(instruction_id_list, kwargs) if iid in CHECKERS]
    answer = without_copied_prompt(response, instruction_id_list, kwargs, prompt)  # what the task is judged on
    empty = not response.strip()
    checks = [not empty and verify(answer if iid.startswith("task:") else response, [iid], [kw], prompt)[0]
              for iid, kw in items]
    n_words = len(_words(response))
    budget = word_budget(instruction_id_list, kwargs, prompt)
    flaws = {"rambling": n_words > budget,
             "repetition": repeated_3gram_share(response) > MAX_REPEATED_3GRAMS,
             "spam": bool(spammed_words(response, instruction_id_list, kwargs)),
             "off_topic": on_topic_share(prompt, answer, instruction_id_list, kwargs) < MIN_ON_TOPIC,
             "garbled": bool(garbled_words(prompt, response))}
    flaws = [name for name, bad in flaws.items() if bad and not empty]
    passed = sum(checks) / len(checks) if checks else 1.0
    reward = 0.0 if empty else (FLOOR + (1 - FLOOR) * passed) * 0.5 ** len(flaws)
    return {"reward": reward, "passed": passed, "checks": dict(zip([i for i, _ in items], checks)),
            "flaws": flaws, "empty": empty, "words": n_words, "budget": budget}


def gold_reward(prompt, response, instruction_id_list, kwargs):
    """The gold reward of one response, in [0, 1]; see the top of this file."""
    return gold_breakdown(prompt, response, instruction_id_list, kwargs)["reward"]
