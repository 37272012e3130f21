"""Fidelity to Google's IFEval: NLTK's sentence and word splitting (minift/synthetic/ifeval_text.py),
the checkers the registry lacks, the language checks, and how evaluate.py reports what it
scored. The expected splits are what NLTK 3.10's Punkt (English) and word_tokenize give."""
import json

import pytest
import torch

from minift.synthetic import checkers as C
from minift.synthetic import ifeval_text as X
from minift.synthetic import scoring as S
from minift.model import GPT, GPTConfig
from minift.synthetic.scoring import aggregate, format_table, score
from minift.tokenizer import Tokenizer, save_ranks, train_bpe


@pytest.mark.parametrize("text, sentences", [
    # a numbered list: "1." before a lower-case word is not an end (Punkt's ordinal rule) ...
    ("Here are three tips:\n1. apples are red.\n2. bananas are yellow.",
     ["Here are three tips:\n1. apples are red.", "2. bananas are yellow."]),
    # ... before a capitalised word it is, and the number goes with the sentence before
    ("Tips:\n1. Eat apples\n2. Drink water", ["Tips:\n1.", "Eat apples\n2.", "Drink water"]),
    # "P.S." and "P.P.S." end a sentence of their own; without the final period they do not
    ("Thanks.\nP.S. I love you.\nP.P.S. Me too.", ["Thanks.", "P.S.", "I love you.", "P.P.S.", "Me too."]),
    ("Thanks.\nP.S I love you", ["Thanks.", "P.S I love you"]),
    # "!" ends a sentence even inside a quote; the closing quote moves back onto it
    ('"Let\'s play!" said Tom. He ran.', ['"Let\'s play!"', "said Tom.", "He ran."]),
    ('{"answer": "The kite is red. It flies."}', ['{"answer": "The kite is red.', 'It flies."}']),
    ("(Sent1.) Sent2.", ["(Sent1.)", "Sent2."]),
    # abbreviations, initials and ellipses
    ("Mr. Smith went to Washington. He did.", ["Mr. Smith went to Washington.", "He did."]),
    # after an abbreviation, a sentence starter ("so") ends the sentence only when capitalised
    ("Ask Mr. so and so.", ["Ask Mr. so and so."]),
    ("J. Bach wrote music.", ["J. Bach wrote music."]),
    ("Plan A. Then go home.", ["Plan A.", "Then go home."]),
    ("He works in the U.S. Army. It is big.", ["He works in the U.S. Army.", "It is big."]),
    ("Wait... The end.", ["Wait...", "The end."]),
    ("Hmm... maybe not.", ["Hmm... maybe not."]),
    ("It costs 3.5 dollars, e.g., a lot. Fine.", ["It costs 3.5 dollars, e.g., a lot.", "Fine."]),
    ("Very bad acting!!! I promise. Is it? Yes!", ["Very bad acting!!!", "I promise.", "Is it?", "Yes!"]),
    ("", []),
])
def test_sentences_split_as_punkt_does(text, sentences):
    assert X.split_sentences(text) == sentences


def test_capital_words_are_nltk_words():
    text = "P.S. I DON'T like the U.S.A. CANNOT WELL-KNOWN O'NEIL end."
    capitals = [w for w in X.word_tokenize(text) if w.isupper()]
    assert capitals == ["P.S", "I", "DO", "N'T", "U.S.A", "CAN", "NOT", "WELL-KNOWN", "O'NEIL"]
    assert X.count_capital_words("I'M 'HAPPY' (VERY) -- A,B;C AND/OR x.Y") == 8  # I 'M HAPPY VERY A B C AND/OR
    # "P.S." is one capital word (\w+ made it two: P, S)
    assert C.check_capital_words("Hi.\nP.S. bye", 2, "less than")
    assert not C.check_capital_words("Hi.\nP.S. bye", 2, "at least")


def test_registry_counts_story_sentences_and_scoring_counts_ifevals():
    """The data builders and the gold reward count a quote with its speech tag as one
    sentence (the registry's checker); scoring counts as IFEval does (two)."""
    ids, kw = ["length_constraints:number_sentences"], [{"num_sentences": 2, "relation": "less than"}]
    text = '"Let\'s play!" said Tom.'
    assert C.count_sentences(text) == 1 and C.check_sentences(text, 2, "less than")
    assert score(text, ids, kw)["strict"] == [False]
    assert score("1. apples are red. 2. pears are green.", ids, kw)["strict"] == [False]
    assert score("Here: 1. apples are red and pears are green.", ids, kw)["strict"] == [True]


def test_postscript_accepts_what_ifeval_accepts():
    assert C.check_postscript("Bye.\nP.P.S. One more thing.", "P.S.")  # holds "p.s."
    assert C.check_postscript("Bye. P.S. one more thing.", "P.S.")     # IFEval's regex has no "^"
    assert C.check_postscript("Bye.\np. p. s one more", "P.P.S")
    assert not C.check_postscript("Bye.\nP.S. one more", "P.P.S")
    assert not C.check_postscript("Bye.\nPS one more", "P.S.")


@pytest.mark.parametrize("iid, kw, good, bad", [
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nA kite.\nSection 2\nA ball.", "Section 1\nA kite and a ball."),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 3},
     "SECTION 1 a SECTION 2 b SECTION 3 c", "Section 1 a Section 2 b Section 3 c"),  # case matters
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1 a SECTION 2 b SECTION 3 c", "SECTION 1 a"),                          # at least N
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "at least"},
     "A cat and a bat.", "The cat."),
    ("keywords:letter_frequency", {"letter": "Z", "let_frequency": 2, "let_relation": "less than"},
     "A zoo.", "Zig zag."),
    # exactly N paragraphs split on blank lines; the nth starts with the word (quotes and
    # punctuation dropped, any case)
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "kites"},
     "Intro.\n\n\"Kites, they fly.", "Intro.\n\nBalls bounce."),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "so"},
     "So. Yes.\n\nNo.\n\n", "So.\n\nYes.\n\nNo."),
])
def test_checkers_the_registry_lacks(iid, kw, good, bad):
    assert score(good, [iid], [kw])["strict"] == [True]
    assert score(bad, [iid], [kw])["strict"] == [False]


def test_scoring_edges_as_ifeval_judges_them():
    # loose scoring also tries the answer without its first and last lines together
    assert score('Sure:\n"A kite."\nBye!', ["startend:quotation"], [{}]) == {"strict": [False], "loose": [True]}
    # ... and each cut without its "*" too: 8 variants, not 4 plus the whole text without "*"
    assert score('Sure:\n*"A kite."*', ["startend:quotation"], [{}]) == {"strict": [False], "loose": [True]}
    assert score('"', ["startend:quotation"], [{}])["strict"] == [False]           # one quote wraps nothing
    assert score("2, 3.", ["change_case:english_lowercase"], [{}])["strict"] == [False]   # no letter to be lower
    assert score("A kite; a ball.", ["punctuation:no_comma"], [{}])["strict"] == [True]  # only commas count
    assert not C.check_two_responses("A kite.\n******\n\n******\nA ball.")        # an empty response between
    # IFEval strips a keyword and a postscript marker before use
    assert C.check_frequency("A kite.", "kite ", 1, "at least")
    assert C.check_postscript("Bye.\nP.S.hi", "P.S. ")


def test_all_25_ifeval_ids_have_a_checker():
    assert len(set(S.IFEVAL_IDS)) == 25
    assert set(S.IFEVAL_IDS) <= set(S.IFEVAL_CHECKERS)
    # each runs on IFEval-style kwargs (unused keys, nulls) without error
    kw = {"keywords": ["kite"], "keyword": "kite", "frequency": 1, "relation": "at least", "forbidden_words": ["x"],
          "letter": "k", "let_frequency": 1, "let_relation": "at least", "language": "en", "num_sentences": 1,
          "num_paragraphs": 1, "num_words": 1, "nth_paragraph": 1, "first_word": "the", "num_placeholders": 0,
          "postscript_marker": "P.S.", "num_bullets": 0, "num_highlights": 0, "section_spliter": "Section",
          "num_sections": 0, "prompt_to_repeat": "The", "end_phrase": "kite.", "capital_frequency": 1,
          "capital_relation": "less than", "starter": None}
    out = score("The kite flies high over the green park. The kite is red.", list(S.IFEVAL_IDS), [kw] * 25)
    expected_none = [] if C.language_checked() else ["language:response_language"]
    assert [i for i, m in zip(S.IFEVAL_IDS, out["strict"]) if m is None] == expected_none
    empty = score("", list(S.IFEVAL_IDS), [kw] * 25)  # strict and loose fail an empty response
    assert not any(empty["strict"]) and not any(empty["loose"])


def test_language_checks_without_langdetect(monkeypatch):
    monkeypatch.setattr(C, "langdetect", None)
    assert not C.language_checked()
    assert score("THE KITE IS RED.", ["change_case:english_capital"], [{}])["strict"] == [True]  # the case only
    out = score("Le cerf-volant est rouge.", ["language:response_language", "punctuation:no_comma"],
                [{"language": "en"}, {}])
    assert out["strict"] == [None, True]
    m = aggregate([out | {"instruction_id_list": ["language:response_language", "punctuation:no_comma"]},
                   score("A KITE.", ["change_case:english_capital"], [{}])
                   | {"instruction_id_list": ["change_case:english_capital"]}])
    table = format_table(m)
    assert "language not checked: langdetect not installed" in table.splitlines()[1]
    assert m["per_type"]["change_case:english_capital"]["language_checked"] is False
    assert "language:response_language" in table and "not scored" in table


def test_language_checks_with_langdetect():
    pytest.importorskip("langdetect")
    assert C.language_checked()
    ids = ["language:response_language"]
    assert score("Le chat est noir et le chien est blanc. Ils jouent dans le jardin.", ids,
                 [{"language": "fr"}])["strict"] == [True]
    assert score("The cat is black and the dog is white. They play in the garden.", ids,
                 [{"language": "fr"}])["strict"] == [False]
    assert not C.check_english_capital("DER HUND IST SCHWARZ UND DIE KATZE IST WEISS. SIE SPIELEN IM GARTEN.")
    assert C.check_english_capital("THE CAT IS BLACK AND THE DOG IS WHITE. THEY PLAY IN THE GARDEN.")


def test_a_copied_request_does_not_do_the_task():
    """With repeat_prompt, the task is judged on what follows the copy, as the gold reward judges
    it: the copy names the topic, and alone it would pass "tell me a story about Tom and a kite";
    IFEval's own ids still read the whole response."""
    ids = ["task:write_story", "combination:repeat_prompt", "punctuation:no_comma"]
    request = "Tell me a story about Tom and a kite."
    kwargs = [{"name": "Tom", "thing": "kite"}, {"prompt_to_repeat": request}, {}]
    assert score(request, ids, kwargs)["strict"] == [False, True, True]
    assert score(request + "\n(copy) done.", ids, kwargs)["loose"] == [False, True, True]
    assert score(request + "\nTom flew his red kite.", ids, kwargs)["strict"] == [True, True, True]
    assert score(request + "\nTom, his kite.", ids, kwargs)["strict"] == [True, True, False]


def test_scored_n_of_m_prompts():
    recs = [{"instruction_id_list": ["punctuation:no_comma"], "strict": [True], "loose": [True]},
            {"instruction_id_list": ["custom:unknown"], "strict": [None], "loose": [None]},
            {"instruction_id_list": ["custom:unknown", "punctuation:no_comma"], "strict": [None, False],
             "loose": [None, False]}]
    m = aggregate(recs)
    assert (m["n_prompts"], m["n_scored"], m["n_partial"]) == (3, 2, 1)
    assert m["prompt_strict"] == pytest.approx(1 / 2)
    assert format_table(m).splitlines()[0] == ("scored 2 of 3 prompts (1 have no instruction we can check); "
                                               "1 scored on only some of their instructions")
    table = format_table(aggregate(recs[1:2])).splitlines()
    assert table[:2] == ["scored 0 of 1 prompts (1 have no instruction we can check)",
                         "prompt-level and instruction-level: n/a (no prompt has an instruction we can check)"]


def test_evaluate_reports_scored_prompts_and_cut_prompts(tmp_path, capsys):
    """evaluate.py on a tiny IFEval input: a prompt with only an unknown id is counted but not
    scored, and a prompt longer than the model's context is counted and warned about."""
    import evaluate
    text = "Write a short poem about a kite. Do not use any commas. " * 20
    tok_path = str(tmp_path / "tok.tiktoken")
    save_ranks(tok_path, train_bpe(text, 300))
    tok = Tokenizer.from_ranks(train_bpe(text, 300))
    config = GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=1, n_head=1, n_embd=16)
    torch.manual_seed(0)
    ckpt = str(tmp_path / "ckpt.pt")
    torch.save({"kind": "sft", "model": GPT(config).state_dict(), "model_config": config.__dict__,
                "tokenizer": {"path": tok_path, **tok.identity}}, ckpt)
    records = [
        {"key": 1, "prompt": "Write a short poem about a kite.", "instruction_id_list": ["punctuation:no_comma"],
         "kwargs": [{}]},
        {"key": 2, "prompt": "Write a poem.", "instruction_id_list": ["custom:unknown"], "kwargs": [{}]},
        {"key": 3, "prompt": "Do not use any commas. " * 10, "instruction_id_list": ["punctuation:no_comma"],
         "kwargs": [{}]},
    ]
    path = tmp_path / "input.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = evaluate.main([f"--ckpt={ckpt}", f"--input={path}", "--max_new_tokens=8", "--device=cpu",
                             f"--out_dir={tmp_path / 'eval'}"])
    out = capsys.readouterr().out
    assert (metrics["n_prompts"], metrics["n_scored"], metrics["prompts_cut"]) == (3, 2, 1)
    assert "scored 2 of 3 prompts (1 have no instruction we can check)" in out
    assert "warning: 1 of 3 prompts are longer than the 56 tokens the model reads before its answer" in out
    assert "custom:unknown" in out and "unsupported: no checker" in out


def test_a_json_answer_may_sit_in_white_space_around_its_fence():
    """IFEval strips the answer before it looks for the fence."""
    assert C.check_json('\n```json\n{"answer": "red"}\n```\n')
    assert not C.check_json('\n```json\n{"answer": red}\n```\n')
