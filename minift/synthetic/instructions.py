"""Verifiable instructions in the style of IFEval (Zhou et al. 2023, "Instruction-Following
Evaluation for Large Language Models"; google-research/instruction_following_eval).

Each instruction type is one declarative `Instruction` record (the registry below) holding
  * its IFEval id and kwargs names ("detectable_format:number_bullet_lists", num_bullets),
  * a few phrasings; the LAST one is held out of train (see minift/synthetic/splits.py),
  * `check(response, **kwargs) -> bool`: IFEval's checker semantics (minift/synthetic/checkers.py),
    except that sentences are counted as our stories write them and the case checks look at
    the case only (checkers.py says why),
  * `sample(rng, ctx) -> kwargs | None`: parameters scaled down for a ~1M-parameter model
    (1-5 bullets, <= 30 words, ...), or None when the type does not fit this prompt,
  * builders that edit an honest base answer until it follows the instruction, and their
    place in the canonical build order (minift/synthetic/builders.py explains the order),
plus the pairs of types that cannot be combined (CONFLICTS) and the parameter values held
out of training (HELDOUT_VALUES).
"""

import json
import re
from dataclasses import dataclass
from typing import Callable

from minift.synthetic import builders as B  # samplers and builders (how reference answers are made)
from minift.synthetic import checkers as C  # IFEval's checkers
from minift.synthetic.builders import Draft, Unsatisfiable, build_response  # noqa: F401  (re-exported)
from minift.synthetic.checkers import count_sentences, count_words, split_sentences  # noqa: F401  (re-exported)


def run_checker(check, names, response, kwargs):
    """check(response, **the kwargs it takes, by `names`): a record's kwargs may hold more."""
    return check(response, **{k: kwargs[k] for k in names})


@dataclass(frozen=True)
class Instruction:
    id: str
    templates: tuple                      # phrasings; templates[-1] is held out of train
    check: Callable[..., bool]
    kwargs: tuple = ()                    # IFEval kwargs names, passed to `check`
    sample: Callable = lambda rng, ctx: {}  # -> kwargs, or None if the type does not fit
    edit_draft: Callable | None = None    # (draft, kwargs, rng) -> None, step 1
    edit_text: Callable | None = None     # (draft, kwargs, rng) -> None, step 3, sets draft.text
    order: int = 50                       # position in the build order (see minift/synthetic/builders.py)
    fit: Callable | None = None           # count types: kwargs -> 0 exact, +1 at least, -1 less than
    slack: Callable | None = None         # count types: kwargs with a safety margin (or None)
    fields: Callable = lambda kw: kw      # kwargs -> template fields
    weight: float = 1.0                   # how often the sampler offers this type

    def describe(self, kwargs, template):
        return self.templates[template].format(**self.fields(kwargs))

    def verify(self, response, kwargs):
        return run_checker(self.check, self.kwargs, response, kwargs)


# --------------------------------------------------------------------------- the registry

HELDOUT_VALUES = {  # one value per numeric kwarg (and one end phrase) never used in train/test
    "detectable_format:number_bullet_lists": {"num_bullets": (4,)},
    "length_constraints:number_sentences": {"num_sentences": (4,)},
    "length_constraints:number_words": {"num_words": (20,)},
    "length_constraints:number_paragraphs": {"num_paragraphs": (3,)},
    "keywords:frequency": {"frequency": (2,)},
    "detectable_content:number_placeholders": {"num_placeholders": (2,)},
    "detectable_format:number_highlighted_sections": {"num_highlights": (2,)},
    "change_case:capital_word_frequency": {"capital_frequency": (2,)},
    "startend:end_checker": {"end_phrase": ("Have a nice day.",)},
}

# For the count fit (builders.build_response): which way to search, and a stricter target
# so that the reference answers leave a model room for slips. Below a limit, 2 words inside
# it. Above a minimum, a fifth more words (at least 3) and one sentence more: a model that
# copies the answers' habits stops short now and then, and only a margin over N lets such an
# answer still pass (FINDINGS.md, "SFT demonstrations", room over an "at least" count).
_exact = lambda kw: 0  # noqa: E731
_by_relation = lambda kw: 1 if kw["relation"] == "at least" else -1  # noqa: E731


def _word_margin(kw):
    n = kw["num_words"]
    return {**kw, "num_words": n + max(3, n // 5) if kw["relation"] == "at least" else n - 2}


def _sentence_margin(kw):
    return {**kw, "num_sentences": kw["num_sentences"] + (kw["relation"] == "at least")}


INSTRUCTIONS = [
    Instruction(
        "keywords:existence",
        ("Include the {keyword} {words} in the response.", "Your answer must contain the {word} {words}.",
         "Make sure to use the {word} {words}.", "Mention {words} somewhere in your answer."),
        C.check_keywords, ("keywords",), B.sample_keywords, edit_draft=B.add_keywords,
        fields=lambda kw: {"words": B.spaced(kw["keywords"]), "word": "words" if len(kw["keywords"]) > 1 else "word",
                           "keyword": "keywords" if len(kw["keywords"]) > 1 else "keyword"}),
    Instruction(
        "keywords:forbidden_words",
        ("Do not include the {word} {words} in the response.", "Do not use the {word} {words}.",
         "Avoid the {word} {words}.", "Never say {words} in your answer."),
        C.check_forbidden, ("forbidden_words",), B.sample_forbidden, edit_text=B.remove_forbidden, order=40, weight=1.5,
        fields=lambda kw: {"words": B.spaced(kw["forbidden_words"]),
                           "word": "words" if len(kw["forbidden_words"]) > 1 else "word"}),
    Instruction(
        "keywords:frequency",
        ("In your response, the word {keyword} should appear {relation} {times}.",
         "Use the word {keyword} {relation} {times}.", "The word {keyword} must appear {relation} {times}.",
         "Say {keyword} {relation} {times} in your answer."),
        C.check_frequency, ("keyword", "frequency", "relation"), B.sample_frequency,
        edit_draft=B.add_frequency, edit_text=B.cut_frequency, order=41,
        fields=lambda kw: {**kw, "times": B.n_of(kw["frequency"], "time")}),
    Instruction(
        "detectable_content:number_placeholders",
        ("The response must contain at least {n} in square brackets, such as [address].",
         "Include at least {n} in square brackets, like [name].", "Use at least {n} in square brackets.",
         "Leave at least {n} to fill in, written in square brackets like [name]."),
        C.check_placeholders, ("num_placeholders",),
        B.count_sampler("detectable_content:number_placeholders", "num_placeholders", [1, 2, 3]),
        edit_draft=B.add_placeholders,
        fields=lambda kw: {"n": B.n_of(kw["num_placeholders"], "placeholder")}),
    Instruction(
        "length_constraints:number_words",
        ("Answer with {relation} {num_words} words.", "Your response should contain {relation} {num_words} words.",
         "Use {relation} {num_words} words.", "Write {relation} {num_words} words in total."),
        C.check_words, ("num_words", "relation"), B.sample_words, fit=_by_relation, slack=_word_margin),
    Instruction(
        "length_constraints:number_sentences",
        ("Your response should contain {relation} {num_sentences} sentences.",
         "Answer in {relation} {num_sentences} sentences.", "Write {relation} {num_sentences} sentences.",
         "Use {relation} {num_sentences} sentences in your answer."),
        C.check_sentences, ("num_sentences", "relation"), B.sample_sentences, fit=_by_relation,
        slack=_sentence_margin),
    Instruction(
        "detectable_format:number_bullet_lists",
        ("Your answer must contain exactly {n} in markdown, such as: * This is a point.",
         "Use exactly {n}.", "Answer with exactly {n} that start with * or -.",
         "Format the answer as a list of exactly {n} in markdown."),
        C.check_bullets, ("num_bullets",), B.sample_bullets, edit_text=B.render_bullets, order=30, fit=_exact,
        fields=lambda kw: {"n": B.n_of(kw["num_bullets"], "bullet point")}),
    Instruction(
        "length_constraints:number_paragraphs",
        ("There should be {n}, separated with the markdown divider: ***",
         "Write {n} separated by ***.", "Split your answer into {n} with *** between them.",
         "Your answer needs {n}, divided by the marker ***."),
        C.check_paragraphs, ("num_paragraphs",),
        lambda rng, ctx: B.count_sampler("length_constraints:number_paragraphs", "num_paragraphs",
                                       [n for n in (2, 3, 4) if n >= ctx["n_core"]])(rng, ctx),
        edit_text=B.render_paragraphs, order=31, fit=_exact,
        fields=lambda kw: {"n": B.n_of(kw["num_paragraphs"], "paragraph")}),
    Instruction(
        "combination:two_responses",
        ("Give two different responses, separated by 6 asterisk symbols: ******.",
         "Give two different answers separated by ******.",
         "Write two different responses and put ****** between them.",
         "Provide two distinct answers, divided by six asterisks (******)."),
        C.check_two_responses, (), B.when(lambda ctx: ctx["alt"]), edit_text=B.render_two, order=32),
    Instruction(
        "detectable_format:constrained_response",
        ("Answer with one of the following options: ('My answer is yes.', 'My answer is no.', "
         "'My answer is maybe.')", 'Answer with "My answer is yes.", "My answer is no." or "My answer is maybe."',
         'Reply only with "My answer is yes.", "My answer is no." or "My answer is maybe."',
         'Choose one: "My answer is yes.", "My answer is no.", "My answer is maybe."'),
        C.check_constrained, (), B.when(lambda ctx: ctx["answer"] in ("yes", "no")),
        edit_text=B.wrap(lambda d, kw: f"My answer is {d.answer}."), order=33, weight=30),
    Instruction(
        "detectable_format:number_highlighted_sections",
        ("Highlight at least {n} in your answer with markdown, i.e. *highlighted section*.",
         "Highlight at least {n} with asterisks, like *this*.", "Mark at least {n} of your answer as *highlighted*.",
         "Use *stars* to highlight at least {n}."),
        C.check_highlights, ("num_highlights",),
        B.count_sampler("detectable_format:number_highlighted_sections", "num_highlights", [1, 2, 3]),
        edit_text=lambda d, kw, rng: B.mark_words(d, kw["num_highlights"], "*{}*".format, 3), order=45,
        fields=lambda kw: {"n": B.n_of(kw["num_highlights"], "section")}),
    Instruction(
        "change_case:capital_word_frequency",
        ("In your response, words with all capital letters should appear {relation} {times}.",
         "Use {relation} {words} in all capital letters.", "Write {relation} {words} in CAPITALS.",
         "Put {relation} {words} in all caps."),
        C.check_capital_words, ("capital_frequency", "capital_relation"),
        # Only "at least" (our answers have few capital words for "less than" to cut), and
        # more than the base answer has already ("I" counts).
        lambda rng, ctx: B.count_sampler("change_case:capital_word_frequency", "capital_frequency",
                                       [n for n in (1, 2, 3) if n > ctx["capitals"]],
                                       ("capital_relation", "at least"))(rng, ctx),
        edit_text=lambda d, kw, rng: B.mark_words(d, kw["capital_frequency"], str.upper, 3), order=46, weight=0.7,
        fields=lambda kw: {"relation": kw["capital_relation"], "times": B.n_of(kw["capital_frequency"], "time"),
                           "words": B.n_of(kw["capital_frequency"], "word")}),
    Instruction(
        "detectable_format:title",
        ("Your answer must contain a title in double angular brackets, such as <<poem of joy>>.",
         "Give your answer a title in double angular brackets like <<my title>>.",
         "Include a title inside << and >>.", "Add a title wrapped in <<double angle brackets>>."),
        C.check_title, edit_text=B.wrap(lambda d, kw: f"<<{d.title}>>\n{d.text}"), order=50),
    Instruction(
        "detectable_content:postscript",
        ("At the end of your response, add a postscript starting with {postscript_marker}",
         "Add a postscript that starts with {postscript_marker} at the end.",
         "Include a postscript starting with {postscript_marker}",
         "Write a note at the bottom that begins with {postscript_marker}"),
        C.check_postscript, ("postscript_marker",), B.sample_marker, edit_text=B.add_postscript, order=51),
    Instruction(
        "startend:end_checker",
        # Bare after a colon, not quoted, for the reason given at builders.spaced.
        ("Finish your response with this exact phrase: {end_phrase}",
         "End your response with: {end_phrase}", "Your last words must be: {end_phrase}",
         "Close your answer with the phrase: {end_phrase}"),
        C.check_end, ("end_phrase",),
        lambda rng, ctx: {"end_phrase": B.pick(rng, ctx, "startend:end_checker", "end_phrase", B.END_PHRASES)},
        edit_text=B.wrap(lambda d, kw: d.text + ("\n" if "\n" in d.text else " ") + kw["end_phrase"]), order=52),
    Instruction(
        "startend:quotation",
        ("Wrap your entire response with double quotation marks.", "Put your whole answer inside double quotes.",
         "Your answer must start and end with a double quote.", "Enclose the response in quotation marks."),
        C.check_quotation, sample=B.when(lambda ctx: not C.check_quotation(ctx["text"])),
        edit_text=B.quote, order=55),
    Instruction(
        "detectable_format:json_format",
        ("Entire output should be wrapped in JSON format.", "Answer in JSON format.",
         "Give your whole answer as JSON.", "Return the response as valid JSON."),
        C.check_json, edit_text=B.wrap(lambda d, kw: json.dumps({"answer": d.text})), order=56),
    Instruction(
        "combination:repeat_prompt",
        ("First repeat the request word for word without change, then give your answer.",
         "Before you answer, repeat the request exactly.",
         "Start by copying the request word for word, then answer it.",
         "Say the request again exactly as written, then respond."),
        # prompt_to_repeat is everything before this sentence; minift/synthetic/splits.py fills it in.
        C.check_repeat, ("prompt_to_repeat",), lambda rng, ctx: {"prompt_to_repeat": None},
        edit_text=B.wrap(lambda d, kw: f"{kw['prompt_to_repeat']}\n{d.text}"), order=57),
    Instruction(
        "change_case:english_capital",
        ("Your entire response should be in all capital letters.",
         "Write your whole answer in capital letters.", "Use only capital letters in your answer.",
         "Respond in all caps."),
        # Weight 0.5: spelling every word in capitals is hard under a BPE learned on lower-case text.
        C.check_capital, edit_text=B.wrap(lambda d, kw: d.text.upper()), order=60, weight=0.5),
    Instruction(
        "change_case:english_lowercase",
        ("Your entire response should be in lowercase letters. No capital letters are allowed.",
         "Write your whole answer in lowercase letters.", "Do not use any capital letters.",
         "Respond only in small letters."),
        C.check_lowercase, sample=B.when(lambda ctx: re.search("[A-Z]", ctx["core"])),
        edit_text=B.wrap(lambda d, kw: d.text.lower()), order=61),
    Instruction(
        "punctuation:no_comma",
        ("In your entire response, refrain from the use of any commas.", "Do not use any commas.",
         "Write without commas.", "Your answer must not contain a single comma."),
        # Only where the core answer has a comma to drop: otherwise it would hold by accident.
        C.check_no_comma, sample=B.when(lambda ctx: "," in ctx["core"]),
        edit_text=B.wrap(lambda d, kw: d.text.replace(",", "")), order=62),
]
REGISTRY = {ins.id: ins for ins in INSTRUCTIONS}

# Pairs that cannot be combined: IFEval's INSTRUCTION_CONFLICTS (instructions_registry.py)
# for the types we have, plus our own (marked). Made symmetric below.
_ALL = set(REGISTRY)
_CONFLICTS = {
    "change_case:english_capital": {"change_case:english_lowercase"},
    "startend:quotation": {"detectable_format:title"},
    "length_constraints:number_paragraphs": {"length_constraints:number_sentences",
                                             "detectable_format:number_bullet_lists"},  # ours: both re-render
    "detectable_format:constrained_response": _ALL,
    "detectable_format:json_format": _ALL - {"keywords:forbidden_words", "keywords:existence"},
    "combination:two_responses": _ALL - {"keywords:forbidden_words", "keywords:existence",
                                         "detectable_format:title", "punctuation:no_comma"},
    "combination:repeat_prompt": _ALL - {"keywords:existence", "detectable_format:title", "punctuation:no_comma"},
    # ours: IFEval's regexes read "* *word*" bullets and highlights into each other
    "detectable_format:number_highlighted_sections": {"detectable_format:number_bullet_lists"},
    # ours: "P.S." counts as one capital word, so a postscript moves the count by itself
    "change_case:capital_word_frequency": {"change_case:english_capital", "change_case:english_lowercase",
                                           "detectable_content:postscript"},
}
CONFLICTS = {i: {i} for i in REGISTRY}
for _a, _bs in _CONFLICTS.items():
    for _b in _bs:
        CONFLICTS[_a].add(_b)
        CONFLICTS[_b].add(_a)


def compatible(iid, chosen):
    return not any(iid in CONFLICTS[c] for c in chosen)
