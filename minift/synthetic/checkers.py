"""IFEval's checkers (Zhou et al. 2023; google-research/instruction_following_eval,
instructions.py `check_following`) as pure functions: check_*(response, **kwargs) -> bool.

Same semantics as IFEval; comments say where we differ. NLTK's sentence and word splitting
is re-implemented in minift/synthetic/ifeval_text.py. The language checks ask `langdetect`, as IFEval
does, when it is installed (it is optional); without it `language_checked()` is False and
minift/synthetic/scoring.py says so. The data builders and the gold reward use the checkers of
minift/synthetic/instructions.py's registry, which differ from IFEval's in two places: sentences are
counted as our stories write them (check_sentences), and the all-capital / all-lowercase
checks look at the case only, so that the generated data never depends on an optional
package. The empty-response rule (strict fails on "") is applied once, in minift/synthetic/scoring.py.
"""

import json
import re

from minift.synthetic import ifeval_text

RELATIONS = ("less than", "at least")  # IFEval's only two comparison relations


# --------------------------------------------------------------------------- counting helpers

def count_words(text):
    """IFEval counts \\w+ tokens (nltk RegexpTokenizer(r"\\w+"))."""
    return len(re.findall(r"\w+", text))


_PS_MARK = re.compile(r"\bp\.\s?p\.\s?s\b\.?|\bp\.\s?s\.", re.IGNORECASE)
# A sentence ends at . ! ? before a space or the end. After a closing quote it ends only if
# a non-lowercase character follows: '"Let's play!" said Tom.' is one sentence.
_SENTENCE_END = re.compile(r'[.!?]+(?:(?=\s|$)|["\u201d]+(?=$|\s+[^a-z\s]))')


def split_sentences(text):
    """Sentences as our generated answers write them, for the data builders and the gold
    reward: a quote with its speech tag ('"Let's play!" said Tom.') is one sentence, and so is
    a "P.S." line. IFEval's Punkt splits both in two (ifeval_text.split_sentences)."""
    pieces = _SENTENCE_END.split(_PS_MARK.sub("PS", text))
    return [p.strip() for p in pieces if re.search(r"\w", p)]


def count_sentences(text):
    return len(split_sentences(text))


def _holds(count, relation, threshold):
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise ValueError(f"relation must be one of {RELATIONS}, got {relation!r}")


# --------------------------------------------------------------------------- checkers

def check_keywords(response, keywords):
    # IFEval: re.search(keyword, response, IGNORECASE): a case-insensitive SUBSTRING. We escape
    # the keyword, so it is matched as written, never read as a pattern ("k.te" is not "kite").
    return all(re.search(re.escape(k), response, re.IGNORECASE) for k in keywords)


def check_frequency(response, keyword, frequency, relation):
    # Substring count too, so "cat" also counts inside "cats"; escaped, as in check_keywords.
    # IFEval strips the keyword when it builds the instruction, so "kite " asks for "kite".
    return _holds(len(re.findall(re.escape(keyword.strip()), response, re.IGNORECASE)), relation, frequency)


def check_forbidden(response, forbidden_words):
    # Whole words here (\b...\b): "kites" does not break a ban on "kite". Escaped, as in
    # check_keywords.
    return not any(re.search(rf"\b{re.escape(w)}\b", response, re.IGNORECASE) for w in forbidden_words)


def check_end(response, end_phrase):
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def check_quotation(response):
    value = response.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def check_title(response):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def check_bullets(response, num_bullets):
    # As IFEval: lines starting with "*" and then anything but a second "*" ("**bold**" does
    # not count, "*Tom* ran." does), or with "-"; exactly N of them.
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def check_json(response):
    value = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        value = value.removeprefix(fence)
    try:
        json.loads(value.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def check_postscript(response, postscript_marker):
    # IFEval's regexes have no "^": the marker may stand anywhere, so a "P.P.S." line also
    # satisfies "P.S." (it holds "p.s."). Our builders start a line with the marker. IFEval
    # strips the marker first, as here.
    postscript_marker = postscript_marker.strip()
    if postscript_marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:  # escaped, unlike IFEval, so that a "." in another marker means a full stop
        pattern = r"\s*" + re.escape(postscript_marker.lower()) + r".*$"
    return bool(re.search(pattern, response.lower(), flags=re.MULTILINE))


def check_placeholders(response, num_placeholders):
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def check_no_comma(response):
    return "," not in response


def check_capital(response):
    # The case alone (the registry's check); IFEval's also asks langdetect: check_english_capital.
    return response.isupper()


def check_lowercase(response):
    return response.islower()


def check_words(response, num_words, relation):
    return _holds(count_words(response), relation, num_words)


def check_sentences(response, num_sentences, relation):
    # Our count (split_sentences), which the builders fit; IFEval's is check_ifeval_sentences.
    return _holds(count_sentences(response), relation, num_sentences)


def check_ifeval_sentences(response, num_sentences, relation):
    """IFEval's NumberOfSentences: sentences as NLTK's Punkt splits them."""
    return _holds(len(ifeval_text.split_sentences(response)), relation, num_sentences)


def check_repeat(response, prompt_to_repeat):
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def check_highlights(response, num_highlights):
    spans = re.findall(r"\*[^\n\*]*\*", response)
    doubles = re.findall(r"\*\*[^\n\*]*\*\*", response)
    found = sum(1 for s in spans if s.strip("*").strip())
    found += sum(1 for s in doubles if s.removeprefix("**").removesuffix("**").strip())
    return found >= num_highlights


def check_paragraphs(response, num_paragraphs):
    paragraphs = re.split(r"\s?\*\*\*\s?", response)
    count = len(paragraphs)
    for i, p in enumerate(paragraphs):
        if not p.strip():
            if i in (0, len(paragraphs) - 1):
                count -= 1  # a divider at the very start or end is forgiven
            else:
                return False  # an empty paragraph in the middle is not
    return count == num_paragraphs


def check_two_responses(response):
    parts = response.split("******")
    valid = []
    for i, part in enumerate(parts):
        if part.strip():
            valid.append(part.strip())
        elif i not in (0, len(parts) - 1):
            return False
    return len(valid) == 2 and valid[0] != valid[1]


CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def check_constrained(response):
    return any(option in response.strip() for option in CONSTRAINED_OPTIONS)


def check_capital_words(response, capital_frequency, capital_relation):
    # Words as nltk.word_tokenize splits them: "P.S." is one capital word, not two.
    return _holds(ifeval_text.count_capital_words(response), capital_relation, capital_frequency)


# --------------------------------------------------------------------------- IFEval's ids the registry lacks

def check_sections(response, section_spliter, num_sections):
    """At least N sections, each opened by "<Spliter> <n>" ("SECTION 1"). The spliter is
    escaped, unlike IFEval's, so it is matched as written ("SECTION*" is not a pattern)."""
    return len(re.split(rf"\s?{re.escape(section_spliter.strip())}\s?\d+\s?", response)) - 1 >= num_sections


def check_letter_frequency(response, letter, let_frequency, let_relation):
    """The letter's count in the lower-cased response meets the relation. An unknown relation
    raises, as in IFEval, whose build_description rejects it before check_following could read
    it as "at least"."""
    return _holds(response.lower().count(letter.strip().lower()), let_relation, let_frequency)


def check_nth_paragraph_first_word(response, num_paragraphs, nth_paragraph, first_word):
    """Exactly N paragraphs split on blank lines ("\\n\\n"), and the nth starts with the word
    (lower-cased, leading quotes dropped, cut at the first . , ? ! ' or ")."""
    paragraphs = response.split("\n\n")
    count = sum(1 for p in paragraphs if p.strip())
    if nth_paragraph > count or not paragraphs[nth_paragraph - 1].strip():
        return False  # (IFEval indexes the split with the empty pieces still in it)
    word = paragraphs[nth_paragraph - 1].split()[0].lstrip("'").lstrip('"')
    first = re.match(r"[^.,?!'\"]*", word).group().lower()
    return count == num_paragraphs and first == first_word.lower()


# --------------------------------------------------------------------------- language (optional langdetect)

try:
    import langdetect  # IFEval's language detector; optional here
    langdetect.DetectorFactory.seed = 0  # deterministic verdicts (IFEval leaves it unseeded)
except ImportError:
    langdetect = None


def language_checked():
    """Whether the language checks below can run: langdetect is installed."""
    return langdetect is not None


def _in_language(text, language):
    # IFEval: langdetect.detect(text) == language, and text it cannot detect counts as followed.
    try:
        return langdetect.detect(text) == language
    except langdetect.LangDetectException:
        return True


def check_response_language(response, language):
    return _in_language(response, language)


def check_english_capital(response):
    """IFEval's english_capital: all upper case AND detected as English (case only without langdetect)."""
    return response.isupper() and (langdetect is None or _in_language(response, "en"))


def check_english_lowercase(response):
    return response.islower() and (langdetect is None or _in_language(response, "en"))
