"""Reference answers for instruction prompts: a `Draft` of the honest base answer, edited by
each instruction's builders in one canonical order (build_response), plus the samplers that
choose instruction parameters. The instruction records themselves are in
minift/synthetic/instructions.py; the checkers in minift/synthetic/checkers.py.

The order (each step sees the result of the previous ones):
  1. draft edits: add sentences that must survive (keywords, placeholders) to `Draft.tail`;
  2. count fit: choose how many optional sentences to keep (or pad) so that every count
     instruction (words, sentences, bullets, paragraphs) holds on the FINAL text;
  3. text edits, by the instruction's `order`: structure (30s: bullets, paragraphs, two
     answers) -> word removal (40s) -> highlights and CAPITAL words (45) -> wrappers (50s:
     title, P.S., end phrase, quotes, JSON, repeated prompt) -> whole-text case, commas (60s).
Case comes last so that wrappers are cased too: an upper-case answer needs an upper-case
title and P.S. (IFEval's checkers of wrappers ignore case, so nothing else breaks).
"""

import re
import zlib
from dataclasses import dataclass, field, replace
from random import Random
from typing import Callable

from minift.synthetic import world
from minift.synthetic.checkers import count_sentences, count_words

MAX_PAD = 5  # the count fit may add up to this many on-topic sentences


# --------------------------------------------------------------------------- the draft

@dataclass
class Draft:
    """A response under construction. Tasks (minift/synthetic/tasks.py) fill in the honest answer;
    instruction builders then edit it (see the module docstring for the order)."""
    core: list[str]                       # sentences the task needs; never dropped
    extra: list[str] = field(default_factory=list)  # optional sentences; the count fit may drop them
    more: Callable[[], str] = None        # writes one more on-topic sentence (padding)
    items: list[str] | None = None        # list tasks: the items, to render as bullets
    lead: str = ""                        # text before the bullets ("In the park you can find:")
    alt: list[str] = field(default_factory=list)  # a different second answer (two_responses)
    title: str = ""                       # used by detectable_format:title
    answer: str = ""                      # "yes"/"no" for yes-no questions (constrained_response)
    keep: set = field(default_factory=set)  # lower-case words that must survive edits
    tail: list[str] = field(default_factory=list)  # sentences added by instructions; kept
    pads: list[str] = field(default_factory=list)  # padding made so far (shared by copies)
    body: list[str] = field(default_factory=list)  # the sentences in use (set by the count fit)
    text: str = ""                        # the rendered response (text edits change this)

    def copy(self):
        """A copy to build on. Builders only change tail, keep, body and text, so the other lists
        are shared; `pads` on purpose: every copy pads with the same sentences."""
        return replace(self, tail=list(self.tail), keep=set(self.keep), body=[], text="")

    def use(self, n):
        """Use the first n optional sentences (padding with `more()` past the end of `extra`)."""
        while len(self.extra) + len(self.pads) < n:
            self.pads.append(self.more())
        self.body = self.core + (self.extra + self.pads)[:n] + self.tail
        self.text = " ".join(self.body)


class Unsatisfiable(Exception):
    """The sampled instructions cannot all hold on this base answer (the sampler retries)."""


def build_response(draft, items, seed=0):
    """Apply instructions [(Instruction, kwargs)] to `draft` in the canonical order and return
    the response text. Each instruction gets its own random stream, so leaving one out does
    not change what the others do (tests rely on this)."""
    items = sorted(items, key=lambda item: item[0].order)
    streams = {ins.id: Random(seed * 100003 + zlib.crc32(ins.id.encode())) for ins, _ in items}
    starts = {iid: r.getstate() for iid, r in streams.items()}

    def rng(ins):  # the instruction's stream, rewound: every finish(n) below replays the same choices
        streams[ins.id].setstate(starts[ins.id])
        return streams[ins.id]

    for ins, kw in items:
        if ins.edit_draft:
            ins.edit_draft(draft, kw, rng(ins))

    def finish(n):
        draft.use(n)
        for ins, kw in items:
            if ins.edit_text:
                ins.edit_text(draft, kw, rng(ins))
        return draft.text

    counts = sorted([(i, kw) for i, kw in items if i.fit], key=lambda c: c[0].fit(c[1]) != 0)
    if not counts:
        return finish(len(draft.extra))
    # The first (an exact count if any) decides the search direction: "less than" keeps as
    # much of the base answer as fits, "at least"/"exactly" adds as little as needed. First
    # try with a margin (a few words to spare), so the target is robust, then without.
    direction = counts[0][0].fit(counts[0][1])
    tries = range(len(draft.extra), -1, -1) if direction < 0 else range(len(draft.extra) + MAX_PAD + 1)
    for margin in (True, False):
        for n in tries:
            text = finish(n)
            if all(i.verify(text, i.slack(kw) if margin and i.slack else kw) for i, kw in counts):
                return text
    raise Unsatisfiable(", ".join(i.id for i, _ in counts))


# --------------------------------------------------------------------------- builder helpers

# Same-kind words for substitutions ("kite" -> "ball"), from the world's word lists. The words
# in AMBIGUOUS, which have a second meaning ("a kind of food", "the light"), are never
# substituted; a few it lacks (fast, long, warm, calm, clean, fun) are, and leave an odd
# sentence in some records (FINDINGS.md, "SFT demonstrations", known flaws).
KINDS = [world.OBJECTS, world.ANIMALS, world.FOODS, world.PLACES, world.COLORS, world.SIZES, world.LOOKS,
         world.FEELS, world.EMOTIONS, world.HERO_ADJ, sorted(set(sum(world.PLACE_ADJ.values(), [])))]
AMBIGUOUS = {"kind", "light", "top", "ring", "fish", "duck", "orange", "tall", "old"}
SAME_KIND = {}
for _kind in KINDS:
    for _w in _kind:
        if _w not in AMBIGUOUS:
            SAME_KIND.setdefault(_w, [w for w in _kind if w not in AMBIGUOUS])
KEYWORD_POOL = sorted(set(world.OBJECTS + world.ANIMALS + world.FOODS))
END_PHRASES = ("Is there anything else I can help with?", "Any other questions?", "That is all.",
               "Let me know if you need more.", "Thank you for asking.", "Have a nice day.")
THING_ADJECTIVES = world.SIZES + world.LOOKS + world.COLORS  # "The kite is shiny."
PS_NOTES = ("I hope you like it.", "Thank you for reading.", "Have fun.", "See you soon.")
KEYWORD_FRAMES = ("There is also the {}.", "Do not forget the {}.", "Look at the {}.")
PLACEHOLDERS = ("Write to [name].", "Write to [name] at [place].", "Write to [name] at [place] on [day].")


def n_of(count, word):
    """3, "word" -> "3 words"."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def spaced(words):
    """["egg", "car"] -> "egg and car", written bare as IFEval writes keywords.

    Why no quotes: our BPE splits ` "egg"` into ` "`, `e`, `gg`, `"`, while the answer says
    ` egg`, one token. Copying a word the prompt names is then a spelling puzzle that a
    1M-parameter model never solves. Bare, the prompt holds
    the very token the answer needs; tests/test_instructions.py checks this for every type."""
    return " and ".join(words)


def _match_case(new, old):
    if old.isupper() and len(old) > 1:
        return new.upper()
    return new.capitalize() if old[0].isupper() else new


def _replace_word(draft, word, keep_first, rng, avoid):
    """Replace whole-word `word` (after its first `keep_first` uses) by a word of the same
    kind that the text does not use yet, fixing "a"/"an" in front of it."""
    text = draft.text
    used = set(world.words(text))
    options = [w for w in SAME_KIND[word] if w not in avoid and w not in draft.keep and w not in used]
    if not options:
        raise Unsatisfiable(f"no word to put in place of {word!r}")
    new, seen = rng.choice(options), 0

    def swap(m):
        nonlocal seen
        seen += 1
        return m.group() if seen <= keep_first else _match_case(new, m.group())
    text = re.sub(rf"\b{re.escape(word)}\b", swap, text, flags=re.IGNORECASE)
    article = lambda m: m[1] + ("n" if new[0] in "aeiou" else "") + " " + m[2]  # noqa: E731
    draft.text = re.sub(rf"\b([Aa])n? ({new})\b", article, text, flags=re.IGNORECASE)


def mark_words(draft, count, fmt, min_len):
    """Rewrite the first `count` words of >= min_len letters with fmt ("*{}*" or upper)."""
    draft.text = re.sub(rf"\b[A-Za-z]{{{min_len},}}\b", lambda m: fmt(m.group()), draft.text, count=count)


def _core_words(ctx):
    """World words (with a same-kind substitute) in the core of the base answer."""
    return sorted({w for w in world.words(ctx["core"]) if w in SAME_KIND})


def _removable(ctx):
    """Words a ban could target: in the core answer, not needed by the task."""
    return [w for w in _core_words(ctx) if w not in ctx["keep"]]


def held(ctx, iid, key):
    """Values of a kwarg this split must not use (instructions.HELDOUT_VALUES in train/test)."""
    return ctx["held"].get(iid, {}).get(key, ())


def pick(rng, ctx, iid, key, values):
    """Choose a value, leaving out the held-back ones."""
    values = [v for v in values if v not in held(ctx, iid, key)]
    return rng.choice(values) if values else None


# --------------------------------------------------------------------------- samplers & builders

def sample_keywords(rng, ctx):
    fresh = [w for w in KEYWORD_POOL if w not in ctx["avoid_text"]]
    return {"keywords": rng.sample(fresh, 1 if rng.random() < 0.7 else 2)}


def add_keywords(d, kw, rng):
    d.keep.update(kw["keywords"])
    if len(kw["keywords"]) == 1:
        d.tail.append(rng.choice(KEYWORD_FRAMES).format(kw["keywords"][0]))
    else:
        d.tail.append("There is the {} and the {}.".format(*kw["keywords"]))


def sample_forbidden(rng, ctx):
    words = _removable(ctx)
    if not words:
        return None
    return {"forbidden_words": sorted(rng.sample(words, 2 if len(words) > 1 and rng.random() < 0.3 else 1))}


def remove_forbidden(d, kw, rng):
    for w in kw["forbidden_words"]:
        _replace_word(d, w, 0, rng, kw["forbidden_words"])


def sample_frequency(rng, ctx):
    core = ctx["core"].lower()
    repeated = [w for w in _removable(ctx) if len(re.findall(re.escape(w), core)) >= 2]
    if repeated and rng.random() < 0.5:  # "less than": the base answer must say it too often
        word = rng.choice(repeated)
        n = pick(rng, ctx, "keywords:frequency", "frequency", [2, 3])
        if n and len(re.findall(re.escape(word), core)) >= n:
            return {"keyword": word, "frequency": n, "relation": "less than"}
    n = pick(rng, ctx, "keywords:frequency", "frequency", [1, 2, 3])
    # Either a word the answer is about (in its core) or a new one.
    text = ctx["text"].lower()
    topics = [w for w in _core_words(ctx) if w in ctx["keep"] and len(re.findall(re.escape(w), text)) < n]
    fresh = [w for w in KEYWORD_POOL if w not in ctx["avoid_text"]]
    word = rng.choice(topics) if topics and rng.random() < 0.5 else rng.choice(fresh)
    return {"keyword": word, "frequency": n, "relation": "at least"}


def add_frequency(d, kw, rng):
    if kw["relation"] != "at least":
        return
    d.keep.add(kw["keyword"])
    have = len(re.findall(re.escape(kw["keyword"]), " ".join(d.core + d.tail), re.IGNORECASE))
    for _ in range(kw["frequency"] - have):
        d.tail.append(f"The {kw['keyword']} is {rng.choice(THING_ADJECTIVES)}.")


def cut_frequency(d, kw, rng):
    if kw["relation"] == "less than":
        _replace_word(d, kw["keyword"], kw["frequency"] - 1, rng, [kw["keyword"]])


def add_placeholders(d, kw, rng):
    d.tail.append(PLACEHOLDERS[kw["num_placeholders"] - 1])


def sample_words(rng, ctx):
    """"less than N" must cut the base answer but leave room for its core; "at least N" must
    need more than the base answer. IFEval's range (100-500 words) is scaled to 5-30."""
    core, full = count_words(ctx["core"]), count_words(ctx["text"])
    options = [("less than", n) for n in (10, 15, 20, 25, 30) if core + 4 <= n <= full]
    options += [("at least", n) for n in (5, 10, 15, 20, 25, 30) if n > full + 2]
    options = [o for o in options if o[1] not in held(ctx, "length_constraints:number_words", "num_words")]
    if not options:
        return None
    relation, n = rng.choice(options)
    return {"num_words": n, "relation": relation}


def sample_sentences(rng, ctx):
    core, full = count_sentences(ctx["core"]), count_sentences(ctx["text"])
    options = [("less than", n) for n in (2, 3, 4, 5) if core < n <= full]
    options += [("at least", n) for n in (2, 3, 4, 5) if n > full]
    options = [o for o in options if o[1] not in held(ctx, "length_constraints:number_sentences", "num_sentences")]
    if not options:
        return None
    relation, n = rng.choice(options)
    return {"num_sentences": n, "relation": relation}


def sample_bullets(rng, ctx):
    if ctx["items"]:  # a list task: one bullet per item
        n = ctx["n_items"]
        return None if n in held(ctx, "detectable_format:number_bullet_lists", "num_bullets") else {"num_bullets": n}
    n = pick(rng, ctx, "detectable_format:number_bullet_lists", "num_bullets",
             [k for k in (1, 2, 3, 4, 5) if k >= ctx["n_core"]])
    return None if n is None else {"num_bullets": n}


def counted(parts):
    """["A frog.", "A fish."] -> ["A frog. (1/2)", "A fish. (2/2)"]: every bullet point or
    paragraph ends by saying which of how many it is. Why: asked for exactly n, the SFT model
    lost count, often repeating the last one (FINDINGS.md, "SFT demonstrations", bullet points
    and paragraphs that count themselves), and copying a number and adding one is easier than
    counting one's own lines. With the counter, "how many so far?" becomes a copy of n from
    the prompt and one more than the previous counter, and "stop now?" is read off the tokens
    just written: "(n/n)" ends the list. A scratchpad, like the worked steps of list tasks
    (Nye et al. 2021), placed at the end of the line, where the model decides whether another
    one follows: there the counter is among the last tokens written, which at the start of
    the line it is not (FINDINGS.md, "SFT demonstrations").
    The bullet and paragraph checkers count lines and dividers, so the counters change none of
    their verdicts. Word and sentence counts do see them: "(1/2)" is two more words, and
    IFEval's sentence splitter reads it as the start of the next sentence; the builders fit
    those counts with the counters in place."""
    return [f"{p} ({k}/{len(parts)})" for k, p in enumerate(parts, 1)]


def render_bullets(d, kw, rng):
    if d.items:  # the list sentence becomes a lead line and one bullet per item
        rest = d.body[len(d.core):]
        d.text = "\n".join(([d.lead] if d.lead else []) + [f"* {x}" for x in counted(d.items)]
                           + ([" ".join(rest)] if rest else []))
    else:
        d.text = "\n".join(f"* {s}" for s in counted(d.body))


def render_paragraphs(d, kw, rng):
    d.text = "\n***\n".join(counted(d.body))


def render_two(d, kw, rng):
    d.text = " ".join(d.body) + "\n******\n" + " ".join(d.alt)


def wrap(fmt):
    def edit(d, kw, rng):
        d.text = fmt(d, kw)
    return edit


def quote(d, kw, rng):
    """The whole answer in double quotes. IFEval counts a bullet point only where "*" opens
    the line, so a quote mark in front of the first bullet would hide it (and the count fit
    would add one more); an answer that opens with a bullet gets its quote on a line of its own."""
    d.text = f'"\n{d.text}"' if d.text.startswith("* ") else f'"{d.text}"'


def add_postscript(d, kw, rng):
    d.text = f"{d.text}\n{kw['postscript_marker']} {rng.choice(PS_NOTES)}"


def sample_marker(rng, ctx):
    return {"postscript_marker": rng.choice(["P.S.", "P.P.S"])}


def when(test):
    """A sampler with no kwargs that applies only when test(ctx) holds."""
    return lambda rng, ctx: {} if test(ctx) else None


def count_sampler(iid, key, values, relation=None):
    def sample(rng, ctx):
        n = pick(rng, ctx, iid, key, values)
        if n is None:
            return None
        return {key: n} if relation is None else {key: n, relation[0]: relation[1]}
    return sample
