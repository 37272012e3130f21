"""Checkers, builders, splits and scoring of the instruction-following data (IFEval-style)."""

import re
from collections import Counter
from itertools import combinations
from random import Random

import pytest

from minift.synthetic import instructions as I
from minift.synthetic import splits as S
from minift.synthetic import tasks as T
from minift.synthetic.scoring import LANGUAGE_IDS, aggregate, format_table, score
from minift.tokenizer import pre_split


def check(iid, response, **kw):
    return T.verify(response, [iid], [kw])[0]


# --------------------------------------------------------------------------- checkers by hand

@pytest.mark.parametrize("iid, kw, good, bad", [
    # keywords: case-insensitive SUBSTRING (IFEval uses re.search)
    ("keywords:existence", {"keywords": ["sun", "kite"]}, "The SUNNY day. A Kite!", "The sun is hot."),
    # forbidden: whole words only, any case
    ("keywords:forbidden_words", {"forbidden_words": ["kite"]}, "I like kites and kittens.", "A KITE flies."),
    ("keywords:frequency", {"keyword": "cat", "frequency": 3, "relation": "at least"}, "cat Cat cats", "cat cat"),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "a cat", "cat and cats"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, '"Ok. any other questions?"  \n',
     "Any other questions? Yes."),
    ("startend:quotation", {}, '  "The kite."\n', 'The "kite".'),
    ("detectable_format:title", {}, "<<My Kite>>\nIt is red.", "<< >> and <<a\nb>>"),
    ("detectable_format:number_bullet_lists", {"num_bullets": 3}, "Hi:\n* a\n- b\n  * c", "* a\n**b**\n* c"),
    ("detectable_format:json_format", {}, '```json\n{"answer": "red"}\n```', '{"answer": red}'),
    # IFEval's postscript regex has no "^": mid-line counts, and a P.P.S. line holds "p.s." too
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\np.s. bye", "Hi.\nPS: bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\nP.P.S. bye", "Hi.\nP. S bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi. P.S. bye", "Hi.\nP.P.S bye"),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi.\nP.P.S. bye", "Hi.\nP.S. bye"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "To [name] at [place].", "To [name]."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "To [a] at [b] on [c].", "[To name]"),
    ("punctuation:no_comma", {}, "A kite and a ball.", "A kite, a ball."),
    ("change_case:english_capital", {}, "THE KITE IS RED.", "THE KITE IS Red."),
    ("change_case:english_lowercase", {}, "the kite is red.", "the kite is Red."),
    ("change_case:english_lowercase", {}, "2 kites, 3 balls.", "2, 3."),   # str.islower: no letters, no pass
    ("length_constraints:number_words", {"num_words": 4, "relation": "less than"}, "one, two... three!",
     "one two three four"),
    ("length_constraints:number_words", {"num_words": 4, "relation": "at least"}, "Tom's red kite", "red kite"),
    # a quote's "!" followed by a lower-case word does not end the sentence; neither does P.S.
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     '"Let\'s play!" said Tom. He ran.', "One. Two! Three?"),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
     "It is red.\nP.S. I like it.", "P.S. I like it."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Describe a kite."}, "describe a KITE.\nA kite.",
     "Sure! Describe a kite."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "A *red* **kite**.", "A * * kite *x"),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\nOne.\n***\nTwo.\n", "One.\n***\n***\nTwo."),
    ("combination:two_responses", {}, "A kite.\n******\nA red kite.", "A kite.\n******\nA kite."),
    ("detectable_format:constrained_response", {}, "My answer is no.", "my answer is no."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "The KITE is RED.", "The KITE is red."),
    # base tasks
    ("task:write_sentence", {"topic": "kite"}, "Two Kites flew.", "A kitten sat."),
    ("task:describe", {"topic": "cherry"}, "Cherries are red.", "Cherryies are red."),
    ("task:describe", {"topic": "mouse"}, "Mice are small.", "A moose is big."),
    ("task:write_story", {"name": "Tom", "thing": "ball"}, "Tom had a ball.", "Tom had a bat."),
    ("task:list_things", {"place": "park", "num_items": 2}, "* a tree\n* a bench", "a tree and a car"),
    ("task:answer_question", {"answer": "red", "wrong": "blue"}, "Tom's kite is red.", "Red or blue."),
    ("task:answer_question", {"answer": "yes", "wrong": "no"}, "Yes, it is.", "No."),
    ("task:reverse_list", {"words": ["cat", "dog", "egg"]}, '{"answer": "Egg, dog, cat."}', "cat, dog, egg"),
    # numbering between the items is layout: the run is still egg, dog, cat
    ("task:reverse_list", {"words": ["cat", "dog", "egg"]}, "* egg (1/3)\n* dog (2/3)\n* cat (3/3)",
     "1. egg 2. dog 3. egg 4. cat"),
    ("task:sort_list", {"words": ["dog", "cat", "egg"]}, "* cat\n* dog\n* egg", "dog, cat, egg"),
    ("task:uppercase_list", {"words": ["cat", "dog"]}, "CAT, DOG.", "Cat, Dog."),
    # edges IFEval's own checkers decide so: more highlights than asked pass, a divider at either
    # end opens or closes no paragraph, a quote must close, three answers are not two, "[]" is a
    # placeholder, and the copy is found after leading white space
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "A *red* *kite* *flies*.",
     "A *red* kite."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "One.\n***\nTwo.\n***",
     "One.\n***\nTwo.\n***\nThree."),
    ("startend:quotation", {}, '"The kite."', '"The kite.'),
    ("combination:two_responses", {}, "A.\n******\nB.", "A.\n******\nB.\n******\nC."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [] at [].", "Dear []."),
    ("detectable_format:constrained_response", {}, "Tom thinks so. My answer is yes.", "Tom thinks so. Yes."),
    ("change_case:english_capital", {}, "THE KITE.", "2, 3."),   # str.isupper: no letters, no pass
    ("combination:repeat_prompt", {"prompt_to_repeat": "Describe a kite."}, "\n Describe a kite. A kite.",
     "A kite. Describe a kite."),
])
def test_checker(iid, kw, good, bad):
    assert check(iid, good, **kw)
    assert not check(iid, bad, **kw)


def test_empty_response_fails_everything_strictly():
    kw = {"forbidden_words": ["x"], "num_words": 5, "relation": "less than", "num_sentences": 3,
          "keyword": "x", "frequency": 1, "capital_frequency": 1, "capital_relation": "less than"}
    # Some checkers alone pass an empty answer (nothing forbidden, fewer than 5 words): IFEval's
    # rule that an empty response follows no instruction is scoring's, not theirs.
    for iid in ("keywords:forbidden_words", "punctuation:no_comma", "length_constraints:number_words"):
        assert T.verify("", [iid], [kw])[0], iid
    for iid in T.CHECKERS:
        out = score("", [iid], [kw])
        assert out["strict"] == [False] and out["loose"] == [False], iid


def test_a_yes_no_answer_is_true_to_the_text():
    """The checker looks for the verdict's word; whether it is the true one is the task's to get right."""
    rng, seen = Random(0), 0
    for _ in range(300):
        q = T.sample_question(rng)
        asked = re.fullmatch(r"Is (\w+)'s (\w+) (\w+)\?", q["question"])
        if asked:
            name, thing, colour = asked.groups()
            true = re.search(rf"\b{name} has an? {colour} {thing}\.", q["text"]) is not None
            assert q["answer"] == ("yes" if true else "no"), q
            seen += 1
    assert seen >= 50


def test_an_at_least_word_count_asks_for_more_than_the_answer_holds():
    """With room to spare (more than 2 words past the base answer), so that the builder must
    add sentences and the count is something the answer has to reach."""
    from minift.synthetic import builders as B
    rng = Random(0)
    ctx = {"core": "The kite is red.", "text": "The kite is red. It can fly high.", "held": {}}   # 9 words
    drawn = [B.sample_words(rng, ctx) for _ in range(200)]
    at_least = {kw["num_words"] for kw in drawn if kw["relation"] == "at least"}
    assert at_least and min(at_least) > 9 + 2


def test_a_substituted_word_takes_the_article_it_needs():
    """"a kite" -> "an umbrella": the article in front follows the new word's first letter."""
    from minift.synthetic import builders as B
    draft = B.Draft(core=[], text="Tom has a kite. A kite flies.")
    avoid = set(B.SAME_KIND["kite"]) - {"umbrella"}   # leave umbrella the only choice
    B._replace_word(draft, "kite", 0, Random(0), avoid)
    assert draft.text == "Tom has an umbrella. An umbrella flies."


def test_sentence_counting():
    assert I.count_sentences('"Let\'s play!" said Tom. He ran away.') == 2
    assert I.count_sentences('{"answer": "The kite is red. It flies."}') == 2
    assert I.count_sentences("<<Kite>>\nThe kite is red.\nP.P.S I like it.") == 2
    assert I.count_sentences("It is red.\nP.P.S. I like it.") == 2   # the marker's own period ends nothing
    assert I.count_words("Tom's kite, red!") == 4  # IFEval's \w+ tokens: Tom, s, kite, red


# --------------------------------------------------------------------------- conflicts and registry

def test_registry_shape():
    assert len(I.INSTRUCTIONS) >= 18
    for ins in I.INSTRUCTIONS:
        assert len(ins.templates) >= 3 and len(set(ins.templates)) == len(ins.templates), ins.id
    for task in T.TASKS:
        assert len(task.templates) >= 3, task.id
    for a, bs in I.CONFLICTS.items():
        assert a in bs and all(a in I.CONFLICTS[b] for b in bs), a  # symmetric, reflexive
    assert "change_case:english_lowercase" in I.CONFLICTS["change_case:english_capital"]
    assert "combination:two_responses" in I.CONFLICTS["detectable_format:json_format"]


# --------------------------------------------------------------------------- generated data

@pytest.fixture(scope="module")
def samples():
    """~2,000 samples from every split, with why candidates were resampled."""
    out, stats = [], Counter()
    for split, n in (("train", 1100), ("test", 300), ("heldout", 300), ("rl_prompts", 300)):
        rng = Random(f"test/{split}")
        out += [(split, S.sample(rng, split, stats=stats)) for _ in range(n)]
    return out, stats


def test_builders_get_the_reference_right_and_the_filters_rarely_act(samples):
    """The sampler drops a candidate whose reference fails a checker or holds an instruction
    by accident; these are safety nets, so the builders must get both right on their own."""
    samples, stats = samples
    for _, s in samples:
        assert I.build_response(s.base(), s.items, s.seed) == s.response  # deterministic
        # Scoring (IFEval's path, with loose variants) agrees with the builders' checkers
        # (langdetect, when installed, calls a few short all-capital answers another language,
        # as IFEval's own check would: scoring's verdict on them, not a fault of the reference)
        marks = score(s.response, s.ids, s.kwargs, s.prompt)["strict"]
        assert all(m for iid, m in zip(s.ids, marks) if iid not in LANGUAGE_IDS)
    def dropped(why):
        return sum(n for reason, n in stats.items() if reason.startswith(why))
    assert dropped("reference answer fails a checker") < 0.03 * len(samples), stats
    assert dropped("holds by accident") < 0.1 * len(samples), stats


def test_an_instruction_that_holds_by_accident_is_caught():
    s = S.sample(Random("accident"), "train")
    nothing_to_forbid = (I.REGISTRY["keywords:forbidden_words"], {"forbidden_words": ["zebra"]})  # this sample has none
    assert S.satisfied_without(s.base(), s.items + [nothing_to_forbid], s.seed) == "keywords:forbidden_words"


def test_reference_answers_clear_an_at_least_count_with_room(samples):
    """A model that imitates the references stops short now and then, so "at least N words
    (sentences)" answers aim past N (instructions._word_margin, _sentence_margin); only when
    the other instructions leave no room does the builder settle for exactly enough."""
    samples, _ = samples
    cleared = Counter()
    for _, s in samples:
        for ins, kw in s.items:
            if ins.slack and kw.get("relation") == "at least":
                cleared[ins.id, ins.verify(s.response, ins.slack(kw))] += 1
    for iid in ("length_constraints:number_words", "length_constraints:number_sentences"):
        assert cleared[iid, True] >= 20 and cleared[iid, True] >= 0.9 * (cleared[iid, True] + cleared[iid, False]), cleared
    assert I.REGISTRY["length_constraints:number_words"].slack({"num_words": 30, "relation": "at least"})["num_words"] == 36
    assert I.REGISTRY["length_constraints:number_words"].slack({"num_words": 10, "relation": "less than"})["num_words"] == 8
    assert I.REGISTRY["length_constraints:number_sentences"].slack({"num_sentences": 3, "relation": "at least"})["num_sentences"] == 4


def test_prompt_mix(samples):
    samples, _ = samples
    counts = Counter(len(s.chosen) for _, s in samples)
    assert set(counts) == {0, 1, 2, 3} and counts[3] > 0.12 * len(samples)
    used = Counter(i for _, s in samples for i in s.ids)
    assert all(used[i] > 0 for i in I.REGISTRY), set(I.REGISTRY) - set(used)
    assert all(used[t.id] > 0 for t in T.TASKS)
    for _, s in samples:
        ids = [ins.id for ins, _, _ in s.chosen]
        assert all(b not in I.CONFLICTS[a] for a, b in combinations(ids, 2)), ids
        assert not set(ids) & s.task.conflicts
        assert len(s.prompt.split()) <= 90 and len(s.response.split()) <= 100


def _words_to_copy(iid, kw):
    """The words of the prompt that an answer must repeat (or, for forbidden words, avoid)."""
    if iid in ("keywords:existence", "keywords:forbidden_words"):
        return kw.get("keywords") or kw["forbidden_words"]
    if iid == "keywords:frequency":
        return [kw["keyword"]]
    if iid == "startend:end_checker":
        return kw["end_phrase"].split()[:1]
    if iid in ("task:reverse_list", "task:sort_list"):
        return kw["words"]
    return []


def test_words_to_copy_are_the_same_tokens_in_prompt_and_answer(samples):
    """A keyword, list item or end phrase the answer must copy appears in the prompt as the
    same BPE piece (" egg"), never quoted ('"egg"' pre-splits to '"', 'egg'): see builders.spaced."""
    samples, _ = samples
    seen = Counter()
    for _, s in samples:
        for iid, kw in zip(s.ids, s.kwargs):
            for w in _words_to_copy(iid, kw):
                piece = " " + w
                assert piece in pre_split(s.prompt), (iid, w, s.prompt)
                # (An end phrase may start a new line, so its first word has no space there.)
                if iid not in ("keywords:forbidden_words", "startend:end_checker"):
                    # lower(): answers in capital letters count too
                    assert piece.lower() in pre_split(s.response.lower()), (iid, w, s.response)
                seen[iid] += 1
    assert len(seen) == 6, seen  # existence, forbidden, frequency, end phrase, reverse, sort


def test_worked_steps_put_each_word_next_to_what_it_needs():
    """The steps before a reversed list hold the words as neighbouring BPE pieces (in the
    prompt a comma sits between them), and the steps before upper-cased words put each
    spelling right after its word: the look-ups tasks.py's comment promises."""
    words = ["snail", "spider", "key"]
    assert pre_split("Reverse this list: " + ", ".join(words))[-5:] == [" snail", ",", " spider", ",", " key"]
    pieces = pre_split(T.reverse_steps(words))
    start = pieces.index(" snail")
    assert pieces[start:start + 3] == [" snail", " spider", " key"]
    assert " snail is SNAIL, spider is SPIDER, key is KEY." in T.uppercase_steps(words)
    # ... and the finished list stays a run the checker finds, after the steps
    answer = T.TASK_REGISTRY["task:reverse_list"].draft(Random(0), {"words": words}).core
    assert answer == [T.reverse_steps(words), "Here they are: key, spider, snail."]


def test_bullets_and_paragraphs_count_themselves(samples):
    """Each bullet point or paragraph of a reference answer ends with "(k/n)", k = 1..n, so
    that the model can stop at "(n/n)" instead of counting (builders.counted)."""
    samples, _ = samples
    seen = Counter()
    for _, s in samples:
        for iid, kw in zip(s.ids, s.kwargs):
            if iid == "detectable_format:number_bullet_lists":
                parts, n = [line for line in s.response.split("\n") if line.startswith("* ")], kw["num_bullets"]
            elif iid == "length_constraints:number_paragraphs":
                parts, n = s.response.split("\n***\n"), kw["num_paragraphs"]
            else:
                continue
            counters = [re.findall(r"\((\d)/(\d)\)", p) for p in parts]
            assert counters == [[(str(k), str(n))] for k in range(1, n + 1)], s.response
            seen[iid] += 1
    assert min(seen.values()) >= 20 and len(seen) == 2, seen


def test_quoted_bullet_lists_show_every_bullet(samples):
    """IFEval counts a bullet point only where "*" opens the line. A quote mark in front of
    the first one would hide it, and the count fit would add a bullet the checker cannot
    see, teaching n + 1 bullets for "exactly n" (builders.quote)."""
    samples, _ = samples
    seen = 0
    for _, s in samples:
        if {"startend:quotation", "detectable_format:number_bullet_lists"} <= set(s.ids):
            n = s.kwargs[s.ids.index("detectable_format:number_bullet_lists")]["num_bullets"]
            assert sum(line.lstrip('"').startswith("* ") for line in s.response.split("\n")) == n, s.response
            seen += 1
    assert seen >= 10, seen


# --------------------------------------------------------------------------- splits

def _pattern(template):
    """A held-out template as a regex; its {fields} match anything."""
    parts = re.split(r"\{\w+\}", template)
    return re.compile("(?s)" + ".+?".join(re.escape(p) for p in parts))


def _novelty(rec):
    """Recomputed from the record alone: held-out phrasing, value or pair."""
    ids, kwargs, prompt = rec["instruction_id_list"], rec["kwargs"], rec["prompt"]
    task = T.TASK_REGISTRY[ids[0]]
    found = ["template"] if _pattern(task.templates[-1]).match(prompt) else []
    for iid, kw in zip(ids[1:], kwargs[1:]):
        ins = I.REGISTRY[iid]
        if ins.describe(kw, len(ins.templates) - 1) in prompt:
            found.append("template")
        found += ["value" for key, held in I.HELDOUT_VALUES.get(iid, {}).items() if kw.get(key) in held]
    found += ["pair" for p in combinations(ids[1:], 2) if frozenset(p) in S.HELDOUT_PAIRS]
    return found


def test_splits_disjoint_and_heldout_novel():
    splits = S.make_splits(seed=5, sizes={"train": 1500, "test": 200, "heldout": 200, "rl_prompts": 200})
    prompts = {name: {r["prompt"] for r in recs} for name, recs in splits.items()}
    for a, b in combinations(prompts, 2):
        assert not prompts[a] & prompts[b], (a, b)
    for name in ("train", "test", "rl_prompts"):
        for rec in splits[name]:
            assert _novelty(rec) == [], (name, rec["prompt"])
    for rec in splits["heldout"]:
        assert _novelty(rec), rec["prompt"]
        # the record's own "novelty", as make_sft.py writes it, says the same
        assert sorted(n.split(":")[0] for n in rec["novelty"]) == sorted(_novelty(rec)), rec["prompt"]
    kinds = Counter(k for rec in splits["heldout"] for k in set(_novelty(rec)))
    assert kinds["template"] and kinds["value"] and kinds["pair"], kinds
    assert S.make_splits(seed=5, sizes={"test": 20}) == S.make_splits(seed=5, sizes={"test": 20})
    # A tenth of train conversations open with an earlier exchange (chat practice). It is
    # another train record's, so no test or heldout prompt reaches training that way either,
    # and a record's own prompt and answer are always its last two messages.
    train_users = {m["content"] for r in splits["train"] for m in r["messages"] if m["role"] == "user"}
    assert train_users == prompts["train"]
    assert all(r["messages"][-2] == {"role": "user", "content": r["prompt"]} for r in splits["train"])
    assert 0.07 < sum(len(r["messages"]) == 4 for r in splits["train"]) / len(splits["train"]) < 0.13
    assert all(len(r["messages"]) == 2 for name in ("test", "heldout", "rl_prompts") for r in splits[name])
    rec = splits["test"][0]
    assert set(rec) == {"key", "prompt", "instruction_id_list", "kwargs", "messages", "slips"}
    assert rec["messages"][0] == {"role": "user", "content": rec["prompt"]}
    assert rec["instruction_id_list"][0].startswith("task:")


# --------------------------------------------------------------------------- scoring

def test_strict_versus_loose():
    ids, kws = ["startend:quotation", "startend:end_checker"], [{}, {"end_phrase": "Any other questions?"}]
    out = score('Sure!\n"The kite is red. Any other questions?"', ids, kws)
    assert out == {"strict": [False, True], "loose": [True, True]}  # first line removed
    out = score("* A red kite. Any other questions?\nBye!", ["startend:end_checker"], kws[1:])
    assert out == {"strict": [False], "loose": [True]}  # last line removed
    out = score("*Tom* has a kite.", ["detectable_format:number_bullet_lists"], [{"num_bullets": 0}])
    assert out == {"strict": [False], "loose": [True]}  # IFEval reads "*Tom" as a bullet; loose drops "*"


def test_aggregate_and_unsupported():
    recs = [
        {"instruction_id_list": ["a:x", "b:y"], "strict": [True, False], "loose": [True, True]},
        {"instruction_id_list": ["a:x"], "strict": [True], "loose": [True]},
        {"instruction_id_list": ["custom:unknown", "b:y"], "strict": [None, False],
         "loose": [None, False]},
        {"instruction_id_list": ["custom:unknown"], "strict": [None], "loose": [None]},
    ]
    m = aggregate(recs)
    assert m["prompt_strict"] == pytest.approx(1 / 3) and m["prompt_loose"] == pytest.approx(2 / 3)
    assert m["instruction_strict"] == pytest.approx(2 / 4) and m["instruction_loose"] == pytest.approx(3 / 4)
    assert m["unsupported"] == {"custom:unknown": 2}
    assert m["per_type"]["b:y"] == {"n": 2, "strict": 0.0, "loose": 0.5}
    assert "custom:unknown" in format_table(m)
    # score() marks ids without a checker as None instead of dropping them
    out = score("hello", ["custom:unknown", "punctuation:no_comma"], [{}, {}])
    assert out == {"strict": [None, True], "loose": [None, True]}


def test_ifeval_style_kwargs_with_nulls():
    # IFEval's HF export fills unused kwargs with None; they must be ignored.
    kw = {"num_bullets": None, "end_phrase": "bye", "keywords": None}
    assert score("ok bye", ["startend:end_checker"], [kw])["strict"] == [True]
