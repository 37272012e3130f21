"""The sentences and words that IFEval counts, without NLTK.

IFEval (google-research instruction_following_eval, instructions_util.py) counts sentences
with NLTK's Punkt splitter and its English model (`count_sentences`), and capital words
with `nltk.word_tokenize` (CapitalWordFrequencyChecker). Neither is a plain regex: Punkt
does not end a sentence after "Mr." but does after "P.S.", breaks after "!" even inside a
quote, and keeps "1. apples" together but not "1. Apples"; word_tokenize keeps "P.S" (its
sentence's period split off) and "WELL-KNOWN" as one word each but splits "CANNOT" in two.
This module re-implements the inference half of both from their published descriptions:

  * Punkt: Kiss & Strunk 2006, "Unsupervised Multilingual Sentence Boundary Detection",
    as implemented by nltk.tokenize.punkt.PunktSentenceTokenizer (NLTK 3.10): candidate
    ends, a first pass by token type, a second pass by the next token (orthographic,
    collocation and sentence-starter heuristics), then closing quotes and brackets are
    moved back onto the sentence they close.
  * word_tokenize: nltk.tokenize.destructive.NLTKWordTokenizer (the improved Penn Treebank
    tokenizer), reduced to the rules that decide which letters share a token.

The English model's abbreviation, sentence-starter and collocation lists are copied below
(they are short). Its orthographic table (20,000 words, how each was seen capitalised in
the training newswire) is not: we assume a capitalised word after an abbreviation or an
ellipsis starts a sentence only if it is a frequent sentence starter, and that one after a
single initial ("J. Bach") is a name unless it is a frequent English word (COMMON_WORDS).
tests/test_ifeval.py pins the cases we match.
"""

import re

# Punkt's English model (NLTK punkt_tab/english): abbreviations (without their final period),
# frequent sentence starters, and (word before, word after) pairs that never hold a break.
ABBREVIATIONS = frozenset("""
a.a a.c a.d a.g a.h a.m a.m.e a.s a.t adm ala ariz aug ave b.f b.v bros c c.i.t c.o.m.b c.v calif chg cie
co col colo conn corp cos ct d d.c d.h d.w dec dr e e.f e.h e.l e.m f f.g f.j feb fla fri ft g g.d g.f g.k ga
gen h h.c h.f h.m i.m.s ill inc j.b j.c j.j j.k j.p j.r jan jr k kan ky l l.a l.f l.p lt ltd m m.b.a m.d.c
m.j maj messrs mg mich minn mr mrs ms n n.c n.d n.h n.j n.m n.v n.y nev nov oct ok okla ore p p.a.m p.m pa
ph.d prof r r.a r.h r.i r.j r.k r.t rep reps s s.a s.a.y s.c s.g s.p.a s.s sen sep sept sr st sw t t.j tenn
tues u.k u.n u.s u.s.a u.s.s.r v va vs vt w w.c w.r w.va w.w wash wed wis yr""".split())
SENTENCE_STARTERS = frozenset("""according although among both but despite even he however i if in indeed
instead it many meanwhile moreover most nevertheless nonetheless nor sales separately similarly since so some
the there these they this though thus under when while yet""".split())
COLLOCATIONS = frozenset(
    [("##number##", w) for w in """abreast aes business cbot colgate commodities cooper corrections credit
     dividend financing genentech henley insider international leisure letters notable pay-fone pegasus pepper
     review rj wedgestone who zimmer""".split()]
    + [tuple(p.split("+")) for p in """b+edelman b+levine b+smith b+stewart b+wigton i+magnin i+toussie j+aron
       j+fialka j+walter o+ludcke""".split()])

# Frequent English words that the model's table has seen in lower case: after an initial
# ("Plan A. Then"), such a word starts a sentence; any other capitalised word is taken for a
# name ("J. Bach"), as Punkt takes words it has never seen in lower case.
COMMON_WORDS = frozenset("""a about above add after again against all also although always an and another answer any
are as ask at avoid be because been before begin being below between both bring but buy by call can check choose
consider could create cut did do does doing down during each eat enjoy even every few finally find first for from
further get give go had has have having he her here hers him his how however if in into is it its just keep last let
like make many may me more most much must my never next no nor not note now of off on once one only open or other our
out over own please put read remember remove return run same say second see set she should since so some start stay
step still stop such take tell than that the their them then there these they think third this those though through
thus to too try turn under until up use very wait walk was we were what when where which while who why will with
would write yes yet you your""".split())

_QUOTES = "\u2018\u2019\u201c\u201d\xab\xbb"                      # curly quotes and guillemets
_NON_WORD = rf"[)\";}}\]*:@'({{\[{_QUOTES}?!]"                   # cannot occur inside a word
_MULTI = r"(?:-{2,}|\.{2,}|(?:\.\s){2,}\.)"                       # dashes and ellipses
_WORD = re.compile(rf"""{_MULTI}
    | (?=[^(\"`{{\[:;&\#*@)}}\]\-,])\S+?(?=\s|$|{_NON_WORD}|{_MULTI}|,(?=$|\s|{_NON_WORD}|{_MULTI}))
    | \S""", re.VERBOSE)
_CANDIDATE = re.compile(rf"[.?!](?=(?P<after>{_NON_WORD}|\s+(?P<next>\S+)))")  # a possible sentence end
# closing punctuation that moves back onto the sentence it closes
_CLOSING = re.compile(rf"[\"')\]}}{_QUOTES}]+?(?:\s+|(?=--)|$)", re.MULTILINE)
_NUMBER = re.compile(r"^-?[.,]?\d[\d,.-]*\.?$")
_INITIAL = re.compile(r"[^\W\d]\.$")


class _Token:
    def __init__(self, text):
        self.text = text
        self.type = _NUMBER.sub("##number##", text.lower())
        self.period_final = text.endswith(".")
        self.sentbreak = self.abbr = self.ellipsis = False

    def type_no_period(self):
        return self.type[:-1] if len(self.type) > 1 and self.type.endswith(".") else self.type


def _starts_sentence(tok):
    """Punkt's orthographic heuristic: True, False or None (unknown), without the table:
    a lower-case word does not start a sentence; of capitalised words we cannot tell."""
    if tok.text in tuple(";:,.!?"):
        return False
    return False if tok.text[0].islower() else None


def _annotate(tokens):
    for tok in tokens:  # first pass: by the token alone
        if tok.text in (".", "?", "!"):
            tok.sentbreak = True
        elif re.match(r"\.\.+$", tok.text):
            tok.ellipsis = True
        elif tok.period_final and not tok.text.endswith(".."):
            stem = tok.text[:-1].lower()
            tok.abbr = stem in ABBREVIATIONS or stem.split("-")[-1] in ABBREVIATIONS
            tok.sentbreak = not tok.abbr
    for tok, nxt in zip(tokens, tokens[1:]):  # second pass: by the token that follows
        if not tok.period_final:
            continue
        typ, next_typ = tok.type_no_period(), nxt.type_no_period() if nxt.sentbreak else nxt.type
        initial = bool(_INITIAL.match(tok.text))
        if (typ, next_typ) in COLLOCATIONS:
            tok.sentbreak, tok.abbr = False, True
            continue
        if (tok.abbr or tok.ellipsis) and not initial:
            if _starts_sentence(nxt) or (nxt.text[0].isupper() and next_typ in SENTENCE_STARTERS):
                tok.sentbreak = True
                continue
        if initial or typ == "##number##":
            starts = _starts_sentence(nxt)
            # "J. Bach": after an initial, an unknown capitalised word is taken for a name
            if starts is False or (starts is None and initial and nxt.text[0].isupper()
                                    and next_typ not in COMMON_WORDS):
                tok.sentbreak, tok.abbr = False, True
    return tokens


def _breaks_here(context):
    tokens = [_Token(t) for line in context.split("\n") for t in _WORD.findall(line)]
    return any(t.sentbreak for t in _annotate(tokens)[:-1])


def _candidates(text):
    """(match, context) for each possible end; of several ends in one word ("acting!!!",
    "U.S.") only the last counts. The context is that word, the end, and what follows."""
    prev_match, prev_word = None, (0, 0)
    for m in _CANDIDATE.finditer(text):
        before = text[prev_word[1]:m.start()]
        space = max((i for i, c in enumerate(before) if c.isspace()), default=0)
        word = (space + prev_word[1] + 1 if space else prev_word[0], m.start())
        if prev_match and prev_word[1] <= word[0]:
            yield prev_match, text[prev_word[0]:prev_word[1]] + prev_match.group() + prev_match.group("after")
        prev_match, prev_word = m, word
    if prev_match:
        yield prev_match, text[prev_word[0]:prev_word[1]] + prev_match.group() + prev_match.group("after")


def split_sentences(text):
    """The sentences of `text` as NLTK's Punkt (English) splits them: IFEval's count_sentences
    is len(split_sentences(text))."""
    spans, start = [], 0
    for m, context in _candidates(text):
        if _breaks_here(context):
            spans.append((start, m.end()))
            start = m.start("next") if m.group("next") else m.end()
    spans.append((start, len(text.rstrip())))
    out, shift = [], 0  # closing quotes and brackets go back onto the sentence they close
    for (a, b), following in zip(spans, spans[1:] + [None]):
        a += shift
        closing = _CLOSING.match(text, following[0], following[1]) if following else None
        if closing:
            b, shift = following[0] + len(closing.group().rstrip()), closing.end() - following[0]
        else:
            shift = 0
        if closing or text[a:b]:
            out.append(text[a:b])
    return out


# --------------------------------------------------------------------------- words

_CONTRACTIONS = [re.compile(p, re.IGNORECASE) for p in (
    r"\b(can)(not)\b", r"\b(d)('ye)\b", r"\b(gim)(me)\b", r"\b(gon)(na)\b", r"\b(got)(ta)\b", r"\b(lem)(me)\b",
    r"\b(more)('n)\b", r"\b(wan)(na)(?=\s)", r" ('t)(is)\b", r" ('t)(was)\b")]


def word_tokenize(text):
    """The words of `text` as nltk.word_tokenize splits them, as far as it decides which
    letters share a word: "P.S" (a sentence's final period goes alone), "WELL-KNOWN", "O'NEIL"
    and "U.S.A" are one word, "CANNOT" and "DON'T" two ("CAN NOT", "DO N'T"), "A,B" and "A;B"
    three. Punctuation-only tokens are
    kept in a simpler form than NLTK's (a quote stays a quote, a sentence's final period is
    split off every word-final period)."""
    text = " " + " ".join(text.split()) + " "
    text = re.sub(r"(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)", r"\1 ", text)  # an opening quote
    text = re.sub(r"([:,])([^\d])", r" \1 \2", text)                      # not inside 1,000 or 3:30
    text = re.sub(rf"([«„`\"{_QUOTES};@#$%&?!*\[\](){{}}<>\u2012-\u2015]|--|\.{{2,}}|\.(?=\s))", r" \1 ", text)
    text = re.sub(r"([^'])' ", r"\1 ' ", text)                              # a closing quote
    text = " " + " ".join(text.split()) + " "
    text = re.sub(r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 ", text)
    text = re.sub(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 ", text)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


def count_capital_words(text):
    """IFEval's CapitalWordFrequencyChecker: words (word_tokenize) with str.isupper()."""
    return sum(w.isupper() for w in word_tokenize(text))
