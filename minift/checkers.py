"""IFEval's checkers (Zhou et al. 2023; google-research/instruction_following_eval,
instructions.py `check_following`) as pure functions: check_*(response, **kwargs) -> bool.

Same semantics as IFEval; comments say where we differ (no NLTK, no langdetect: our world is
small, English-only text). The empty-response rule (strict fails on "") is applied once, in
minift/scoring.py, not here.
"""

import json
import re

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
    """IFEval uses NLTK's punkt; this small splitter agrees with it on our simple English.
    A "P.S." marker is not a sentence end; a piece with no word in it is not a sentence."""
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
    # IFEval: re.search(keyword, response, IGNORECASE): a case-insensitive SUBSTRING.
    return all(re.search(re.escape(k), response, re.IGNORECASE) for k in keywords)


def check_frequency(response, keyword, frequency, relation):
    # Substring count too, so "cat" also counts inside "cats".
    return _holds(len(re.findall(re.escape(keyword), response, re.IGNORECASE)), relation, frequency)


def check_forbidden(response, forbidden_words):
    # Whole words here (\b...\b): "kites" does not break a ban on "kite".
    return not any(re.search(rf"\b{re.escape(w)}\b", response, re.IGNORECASE) for w in forbidden_words)


def check_end(response, end_phrase):
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def check_quotation(response):
    value = response.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def check_title(response):
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", response))


def check_bullets(response, num_bullets):
    # Lines starting with "* " (but not "**") or "-" count; exactly N of them.
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
    # As in our IFEval note: a line starts with the marker. IFEval's own regex has no "^",
    # so it also accepts the marker mid-line; our builders always start a line with it.
    if postscript_marker == "P.P.S":
        pattern = r"^\s*p\.\s?p\.\s?s.*$"
    elif postscript_marker == "P.S.":
        pattern = r"^\s*p\.\s?s\..*$"
    else:
        pattern = r"^\s*" + re.escape(postscript_marker.lower()) + r".*$"
    return bool(re.search(pattern, response.lower(), flags=re.MULTILINE))


def check_placeholders(response, num_placeholders):
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def check_no_comma(response):
    return "," not in response


def check_capital(response):
    # IFEval also asks langdetect for "en"; our closed world is English-only, so we skip it.
    return response.isupper()


def check_lowercase(response):
    return response.islower()


def check_words(response, num_words, relation):
    return _holds(count_words(response), relation, num_words)


def check_sentences(response, num_sentences, relation):
    return _holds(count_sentences(response), relation, num_sentences)


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
    # IFEval tokenizes with nltk.word_tokenize; \w+ runs give the same count on our text.
    capitals = [w for w in re.findall(r"\w+", response) if w.isupper()]
    return _holds(len(capitals), capital_relation, capital_frequency)
