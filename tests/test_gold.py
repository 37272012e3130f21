"""The gold reward cannot be gamed: for sampled prompts, the honest reference answer beats
keyword spam, rambling, repetition, an off-topic answer in the right format, a garbled word,
and silence."""
import re
from random import Random

import pytest

from minift.synthetic import world
from minift.synthetic.builders import Unsatisfiable, build_response
from minift.synthetic.gold import (WORLD_NOUNS, _stem, garbled_words, gold_breakdown, gold_reward, on_topic_share,
                                  repeated_3gram_share, spammed_words, word_budget, world_words)
from minift.synthetic.instructions import split_sentences
from minift.synthetic.scoring import score
from minift.synthetic.splits import sample
from minift.synthetic.tasks import verify

N = 150
NOUNS = set(world.NAMES + world.OBJECTS + world.ANIMALS + world.FOODS + world.PLACES + world.COLORS)


@pytest.fixture(scope="module")
def samples():
    rng = Random(7)
    return [sample(rng, "rl_prompts") for _ in range(N)]


def gold(s, response):
    return gold_reward(s.prompt, response, s.ids, s.kwargs)


def subject_words(kwargs):
    """The base task's words (topic, hero, thing, answer, list words) and the keywords asked for."""
    words = []
    for kw in kwargs:
        for key in ("topic", "name", "thing", "place", "answer", "words", "keywords", "keyword"):
            value = kw.get(key)
            words += value if isinstance(value, list) else [value] if isinstance(value, str) else []
    return words


def test_formula_by_hand():
    ids, kwargs = ["task:describe", "punctuation:no_comma"], [{"topic": "kite"}, {}]
    b = gold_breakdown("Describe a kite. Do not use commas.", "A kite is red, blue and light.", ids, kwargs)
    assert b["checks"] == {"task:describe": True, "punctuation:no_comma": False} and b["flaws"] == []
    assert b["reward"] == pytest.approx(0.2 + 0.8 * 0.5)
    b = gold_breakdown("Describe a kite. Do not use commas.", "The kite is red. " * 6, ids, kwargs)
    assert b["flaws"] == ["repetition"] and b["reward"] == pytest.approx(1.0 * 0.5)
    b = gold_breakdown("Describe a kite. Do not use commas.", "The kite is red. " * 20, ids, kwargs)
    assert b["flaws"] == ["rambling", "repetition", "spam"] and b["reward"] == pytest.approx(0.5 ** 3)  # per flaw
    assert gold_reward("Describe a kite.", "  ", ids, kwargs) == 0.0
    assert repeated_3gram_share("a b c a b c") == pytest.approx(1 / 4)



def test_each_threshold_sits_where_the_docstring_puts_it():
    """A flaw starts just past its limit: at the limit an answer is clean."""
    ids, kwargs, prompt = ["task:describe"], [{"topic": "kite"}], "Describe a kite."

    def flaws(response):
        return gold_breakdown(prompt, response, ids, kwargs)["flaws"]
    words = "the kite is red and it can fly up high in the sky ".split()
    assert "rambling" not in flaws(" ".join((words * 6)[:60])) and "rambling" in flaws(" ".join((words * 6)[:61]))
    assert repeated_3gram_share("kite red kite red kite red") == 0.5 and "repetition" not in flaws("kite red " * 3)
    assert "repetition" in flaws("kite red " * 3 + "kite")                   # 3 of 5 3-grams repeat
    assert repeated_3gram_share("a kite") == 0.0 and flaws("A kite.") == []   # under 3 words: nothing repeats
    assert spammed_words("kite " * 6, ids, kwargs) == [] and spammed_words("kite " * 7, ids, kwargs) == ["kite"]
    assert spammed_words("the " * 9 + "it is " * 9, ids, kwargs) == []          # function words never spam
    assert on_topic_share(prompt, "The kite is red. The pig is pink. The cow is big.", ids, kwargs) == 1 / 3
    assert flaws("The kite is red. The pig is pink. The cow is big.") == []
    assert flaws("The kite is red. The pig is pink. The cow is big. The hen is small.") == ["off_topic"]


def test_instructions_raise_the_limits():
    """A copied request, an "at least N words" instruction and two answers raise the word
    budget; two answers and a keyword asked for N times raise how often a word may occur."""
    repeat = {"prompt_to_repeat": "Describe a kite."}
    assert word_budget(["task:describe", "combination:repeat_prompt"], [{"topic": "kite"}, repeat]) == 60 + 3
    at_least = {"relation": "at least", "num_words": 80}
    ids = ["task:describe", "length_constraints:number_words"]
    assert word_budget(ids, [{}, at_least]) == 60 + 80
    assert word_budget(ids, [{}, {**at_least, "relation": "less than"}]) == 60
    two = (["task:describe", "combination:two_responses"], [{"topic": "kite"}, {}])
    assert word_budget(*two) == 2 * 60
    # the doubling comes last: two answers of at least 80 words each (IFEval's data combines them)
    both = ["task:describe", "length_constraints:number_words", "combination:two_responses"]
    assert word_budget(both, [{}, at_least, {}]) == 2 * (60 + 80)
    assert spammed_words("kite " * 12, *two) == [] and spammed_words("kite " * 13, *two) == ["kite"]
    freq = {"keyword": "Kites", "frequency": 3, "relation": "at least"}
    ids = ["task:describe", "keywords:frequency"]
    assert spammed_words("kite " * 9, ids, [{}, freq]) == []
    assert spammed_words("kite " * 10, ids, [{}, freq]) == ["kite"]
    assert spammed_words("kite " * 7, ids, [{}, {**freq, "relation": "less than"}]) == ["kite"]


def test_a_keyword_that_is_the_topic_still_counts_as_on_topic():
    """A keyword asked for is neutral, unless the base task is about it: then it is the topic."""
    ids = ["task:describe", "keywords:existence"]
    prompt, answer = "Describe a kite. Include the word kite.", "The kite is red. The pig is pink. The cow is big."
    assert on_topic_share(prompt, answer, ids, [{"topic": "kite"}, {"keywords": ["kite"]}]) == 1 / 3
    assert on_topic_share("Describe a hat. Include the word kite.", answer, ids,
                          [{"topic": "hat"}, {"keywords": ["kite"]}]) == 0.0   # kite neutral, pig and cow off topic


def test_ids_without_a_checker_are_skipped():
    ids, kwargs = ["task:describe", "language:response_language"], [{"topic": "kite"}, {"language": "fr"}]
    b = gold_breakdown("Describe a kite.", "A kite is red.", ids, kwargs)
    assert b["checks"] == {"task:describe": True} and b["reward"] == 1.0
    b = gold_breakdown("Say hi.", "Hi.", ["language:response_language"], [{"language": "fr"}])
    assert b["checks"] == {} and b["passed"] == 1.0 and b["reward"] == 1.0   # nothing to check: a clean answer scores 1

def test_honest_answers_are_perfect(samples):
    for s in samples:
        b = gold_breakdown(s.prompt, s.response, s.ids, s.kwargs)
        assert b["reward"] == 1.0, (s.prompt, s.response, b)


def test_keyword_spam_loses(samples):
    for s in samples:
        spam = s.response + " " + " ".join(subject_words(s.kwargs) * 15)
        assert gold(s, spam) < gold(s, s.response), (s.prompt, spam)


def test_rambling_loses(samples):
    rng = Random(0)
    for s in samples:
        nouns = [w for w in subject_words(s.kwargs) if w in NOUNS]
        long = s.response
        while len(re.findall(r"\w+", long)) <= gold_breakdown(s.prompt, long, s.ids, s.kwargs)["budget"]:
            long += " " + (world.sentence_about(rng, rng.choice(nouns)) if nouns else world.story(rng))
        b = gold_breakdown(s.prompt, long, s.ids, s.kwargs)
        assert "rambling" in b["flaws"] and b["reward"] < 1.0, (s.prompt, long)


def test_repetition_loses(samples):
    for s in samples:
        sentence = max(split_sentences(s.response), key=len)
        loop = " ".join([sentence] * 8)
        assert gold(s, loop) < gold(s, s.response), (s.prompt, loop)


def test_off_topic_answer_in_the_right_format_loses(samples):
    """Build the honest answer for ANOTHER subject of the same task with the same instructions:
    every format instruction still holds, but the answer is about something else."""
    rng, built, flagged = Random(1), 0, 0
    for s in samples:
        fields = s.task.sample(rng)
        if any(w in s.prompt for w in subject_words([{k: fields[k] for k in s.task.kwargs}])):
            continue  # the new subject happens to be in the prompt
        try:
            other = build_response(s.task.draft(Random(s.seed), fields), s.items, s.seed)
        except Unsatisfiable:
            continue
        if not all(verify(other, s.ids[1:], s.kwargs[1:], s.prompt)) or verify(other, s.ids[:1], s.kwargs[:1])[0]:
            continue  # keep answers that satisfy every format instruction but not the task (things
            # at the park can also be things in the yard: an answer, not off-topic)
        built += 1
        b = gold_breakdown(s.prompt, other, s.ids, s.kwargs)
        assert b["reward"] < gold(s, s.response), (s.prompt, other, b)
        flagged += "off_topic" in b["flaws"]
    assert built >= N // 3 and flagged >= 0.8 * built, (built, flagged)  # the rest name things of the place


def test_every_world_noun_and_its_plural_stem_alike():
    """Topic and spam match words by stem: "two benches" names the bench a task asked about."""
    assert {"bench", "shelf", "leaf", "mouse", "cherry"} <= set(WORLD_NOUNS)
    assert [n for n in WORLD_NOUNS if _stem(n) != n or _stem(world.plural(n)) != n] == []


def test_reference_answers_use_only_world_words():
    """The garbled flaw must never fire on what the generators write, in any split; the corpus's
    documents come from the same word lists and templates."""
    rng = Random(11)
    for split in ("train", "test", "heldout", "rl_prompts"):
        for _ in range(300):
            s = sample(rng, split)
            assert garbled_words(s.prompt, s.response) == [], (split, s.prompt, s.response)
    for _ in range(200):
        doc = world.document(rng)
        assert garbled_words("", doc) == [], doc


def test_garbled_words_are_found():
    # Slips from the SFT model's temperature-1 samples (FINDINGS.md, "Preferences and the gold reward").
    answer = "A deer is a big animal. OWba Tomatoes areAMP. <|user|>oiders are animals. Two bunnys."
    assert garbled_words("Describe a deer.", answer) == ["OWba", "areAMP", "user", "oiders", "bunnys"]
    assert garbled_words("Describe a Zorp.", "The Zorp has 3 legs. Max's kite is red.") == []  # prompt words, digits
    assert {"kite", "kites", "mice", "turtle"} <= world_words() and "owba" not in world_words()
    assert not {"kwargs", "checkers", "docstring"} & world_words()   # the modules' docstrings are not story text


def test_a_garbled_word_loses(samples):
    flagged = 0
    for s in samples:
        word = max(re.findall(r"[A-Za-z]+", s.response), key=len)
        slip = word + word[-1]  # "kite" -> "kitee": one letter too many, as sampling slips are
        if slip.lower() in world_words() or slip.lower() in s.prompt.lower():
            continue
        b = gold_breakdown(s.prompt, s.response.replace(word, slip, 1), s.ids, s.kwargs)
        assert "garbled" in b["flaws"] and b["reward"] < gold(s, s.response), (s.prompt, slip, b)
        flagged += 1
    assert flagged >= 0.9 * len(samples)


def test_copying_the_request_is_not_an_answer():
    ids = ["task:describe", "combination:repeat_prompt"]
    kwargs = [{"topic": "kite"}, {"prompt_to_repeat": "Describe a kite."}]
    prompt = "Describe a kite. First repeat the request word for word without change, then give your answer."
    honest = gold_breakdown(prompt, "Describe a kite. A kite is light and it can fly.", ids, kwargs)
    copy_only = gold_breakdown(prompt, "Describe a kite. The pig is pink. Pigs live on a farm.", ids, kwargs)
    assert honest["reward"] == 1.0
    assert not copy_only["checks"]["task:describe"] and "off_topic" in copy_only["flaws"]
    # a null prompt_to_repeat (IFEval's HF export) means the prompt itself, for the copy that
    # is cut off before the task is judged and for the word budget, as for the checker
    null = [kwargs[0], {"prompt_to_repeat": None}]
    story = "Once upon a time a kite flew over the hill."
    for answer in (prompt + " " + story, prompt + " The pig is pink. Pigs live on a farm."):
        assert gold_breakdown(prompt, answer, ids, null) == gold_breakdown(prompt, answer, ids, [kwargs[0], {
            "prompt_to_repeat": prompt}])
    assert word_budget(ids, null, prompt) == 60 + len(prompt.split())
    assert score(prompt, ids, null, prompt)["strict"] == [False, True]   # the copy alone does no task


def test_empty_scores_lowest(samples):
    for s in samples[:30]:
        games = [s.response + " " + " ".join(subject_words(s.kwargs) * 15), " ".join([s.response] * 8), "ok", "."]
        assert gold(s, "") == 0.0 < min(gold(s, g) for g in games)
