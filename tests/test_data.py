"""Tests for the story world (minift/synthetic/world.py) and data preparation (data/prepare.py)."""

import base64
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pytest

import data.prepare as prepare_module
from data.prepare import distinct_ngram_ratio, generated_documents, instruction_prompts, prepare
from minift.synthetic import world
from minift.tokenizer import load_ranks, load_tokenizer, save_ranks, train_bpe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sample():
    return world.generate_corpus(seed=123, n_bytes=200_000)


def mentions(text, word):
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


# ------------------------------------------------------------------------------------------
# world.py

def test_corpus_is_deterministic_from_the_seed():
    a = world.generate_corpus(1, 30_000)
    assert a == world.generate_corpus(1, 30_000)
    assert a != world.generate_corpus(2, 30_000)
    assert 29_000 < sum(len(d) + 1 for d in a) < 33_000


def test_closed_vocabulary(sample):
    vocab = world.vocabulary()
    assert 500 <= len(vocab) <= 1500, len(vocab)
    used = {w for doc in sample for w in world.words(doc)}
    assert used <= vocab, sorted(used - vocab)[:20]
    assert len(used) > 0.7 * len(vocab)  # and most of it is really used
    assert all(doc.isascii() for doc in sample)


def test_variety(sample):
    # The ratio falls as the text grows (FINDINGS.md section 2 gives the corpus's); a few fixed
    # templates would score under 0.1 even on this sample.
    assert distinct_ngram_ratio("\n".join(sample)) > 0.40
    assert len(set(sample)) == len(sample)  # no duplicate documents


def test_sentences_are_well_formed(sample):
    for doc in sample[:300]:
        for s in world.split_sentences(doc):
            assert re.match(r'"?[A-Z]', s), s
            assert re.search(r'[.!?]"?$', s), s
            assert "{" not in s and "  " not in s, s
            assert not re.search(r"\ba [aeiou]", s), s  # "an apple", never "a apple"


def test_story_keeps_its_hero_thing_and_length():
    rng = random.Random(0)
    kept = 0
    for i in range(300):
        hero, n = world.NAMES[i % len(world.NAMES)], 3 + i % 10
        thing = rng.choice(world.OBJECTS + world.FOODS + world.ANIMALS)
        text = world.story(rng, hero=hero, thing=thing, n_sentences=n)
        assert len(world.split_sentences(text)) == n, text
        assert mentions(text, thing) or mentions(text, world.plural(thing)), (thing, text)
        kept += len(re.findall(rf"\b{hero}\b", text)) >= 2
    assert kept >= 0.9 * 300, kept


def test_pronouns_agree_with_the_name():
    rng = random.Random(3)
    for name in world.NAMES:
        text = world.describe(rng, name, 8)  # a person description uses only the person's pronouns
        wrong = {"he", "him", "his"} if world.PRONOUN[name] == "she" else {"she", "her"}
        assert not wrong & set(world.words(text)), text


def test_a_friends_pronouns_are_the_friends():
    """In a story, {fhis} and {fhim} belong to the friend, not to the hero."""
    rng, seen = random.Random(0), 0
    for _ in range(3000):
        for name, pronoun in re.findall(r"(\w+) fell down and hurt (his|her) knee", world.story(rng)):
            seen += 1
            assert pronoun == ("her" if world.PRONOUN[name] == "she" else "his"), name
    assert seen >= 10


def test_a_story_of_any_length_is_drawn_from_3_to_12_sentences():
    rng = random.Random(0)
    assert {len(world.story_sentences(rng)) for _ in range(500)} == set(range(3, 13))


def test_sentence_about_mentions_every_kind_of_topic():
    rng = random.Random(1)
    topics = world.NAMES + world.ANIMALS + world.OBJECTS + world.FOODS + world.PLACES + world.COLORS
    for topic in topics:
        s = world.sentence_about(rng, topic)
        assert mentions(s, topic), (topic, s)
        assert len(world.split_sentences(s)) == 1, s


def test_describe_mentions_the_thing():
    rng = random.Random(2)
    for thing in world.ANIMALS + world.OBJECTS + world.FOODS + world.PLACES + world.NAMES[:5]:
        n = rng.randint(1, 6)
        text = world.describe(rng, thing, n)
        assert mentions(text, thing) or mentions(text, world.plural(thing)), (thing, text)
        assert len(world.split_sentences(text)) == n, text


def test_tables_for_other_modules():
    assert all(len(v) >= 6 for v in world.PLACE_THINGS.values())
    assert set(world.PLACE_THINGS) == set(world.PLACES)
    assert set(world.PRONOUN) == set(world.NAMES) and set(world.PRONOUN.values()) == {"he", "she"}
    vocab = world.vocabulary()
    for words in (world.ANIMALS, world.OBJECTS, world.FOODS, world.PLACES, world.COLORS, world.ADJECTIVES,
                  sum(world.PLACE_THINGS.values(), [])):
        assert {w.lower() for w in words} <= vocab


# ------------------------------------------------------------------------------------------
# data/prepare.py

def read_split(out_dir, split):
    meta = json.load(open(os.path.join(out_dir, "meta.json")))
    tok = load_tokenizer(meta["tokenizer"])
    ids = np.memmap(os.path.join(out_dir, f"{split}.bin"), dtype=np.uint16, mode="r")
    assert len(ids) == meta[f"{split}_tokens"] and ids[0] == tok.eot
    return tok.decode(ids.tolist()).split("<|endoftext|>")[1:]  # the eot comes before each document


def check_roundtrip(out_dir, docs):
    """Train and val decode to exactly the expected documents: doc 1, 21, 41... are in val."""
    assert read_split(out_dir, "val") == docs[1::20]
    assert read_split(out_dir, "train") == [d for i, d in enumerate(docs) if i % 20 != 1]


def test_prepare_default_corpus(tmp_path):
    meta = prepare(str(tmp_path), size_mb=0.05, seed=0, vocab_size=300, verbose=False)
    check_roundtrip(str(tmp_path), list(generated_documents(0, 50_000)))
    for name in ("train.bin", "val.bin", "tokenizer.tiktoken", "meta.json"):
        assert (tmp_path / name).exists()
    assert meta == json.load(open(tmp_path / "meta.json"))
    assert meta["vocab_size"] == 305 and meta["val_documents"] > 0 and 0 < meta["distinct_3gram_ratio"] < 1
    assert meta["tokenizer_sha256"] == load_tokenizer(meta["tokenizer"]).identity["sha256"]
    # Reusing the tokenizer file gives the same ids.
    again = prepare(str(tmp_path / "again"), size_mb=0.05, seed=0, tokenizer=meta["tokenizer"], verbose=False)
    assert again["tokenizer_sha256"] == meta["tokenizer_sha256"] and again["train_tokens"] == meta["train_tokens"]


def test_a_prepare_stopped_between_its_renames_leaves_no_meta(tmp_path, monkeypatch):
    """The corpus files are renamed into place one at a time. Stopped between two renames, a
    re-run of prepare would otherwise find new tokens beside the old tokenizer and meta.json;
    meta.json is removed first, so train_pretrain.py asks for a fresh prepare instead."""
    prepare(str(tmp_path), size_mb=0.05, seed=0, vocab_size=300, verbose=False)
    replace, renamed = os.replace, []

    def stop_before_val_bin(src, dst):   # train.bin is renamed, then Ctrl-C
        if str(dst).endswith("val.bin"):
            raise KeyboardInterrupt
        renamed.append(os.path.basename(dst))
        replace(src, dst)
    monkeypatch.setattr(os, "replace", stop_before_val_bin)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(tmp_path), size_mb=0.05, seed=1, vocab_size=300, verbose=False)
    assert "train.bin" in renamed and not (tmp_path / "meta.json").exists()


def test_reusing_the_corpus_own_tokenizer_ignores_an_older_runs_new_file(tmp_path):
    """A run killed after training its BPE leaves tokenizer.tiktoken.new. A later run with
    --tokenizer naming the corpus's own tokenizer must not rename that stale file over it: the
    ids would be one tokenizer's and the file another's, train_pretrain.py would refuse the corpus
    (meta.json's hash is the ids' tokenizer), and that tokenizer would be lost."""
    prepare(str(tmp_path), size_mb=0.02, seed=0, vocab_size=300, prompts_mb=0.01, verbose=False)
    own = tmp_path / "tokenizer.tiktoken"
    before = own.read_bytes()
    ranks = load_ranks(str(own))
    ranks[b"\x01"], ranks[b"\x02"] = ranks[b"\x02"], ranks[b"\x01"]   # another BPE of the same size
    save_ranks(str(own) + ".new", ranks)
    meta = prepare(str(tmp_path), size_mb=0.02, seed=0, tokenizer=str(own), verbose=False)
    assert own.read_bytes() == before
    assert meta["tokenizer_sha256"] == load_tokenizer(str(own)).identity["sha256"]


def test_prepare_syncs_its_files_before_renaming_them(tmp_path, monkeypatch):
    """As write_atomically does: renamed before it reaches the disk, a file can be empty after a
    power cut, beside a meta.json that describes it."""
    synced, fsync = set(), os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.add(os.fstat(fd).st_ino) or fsync(fd))
    prepare(str(tmp_path), size_mb=0.02, seed=0, vocab_size=300, prompts_mb=0.01, verbose=False)
    # ... and a tokenizer given with --tokenizer, copied beside the new corpus
    prepare(str(tmp_path / "again"), size_mb=0.02, seed=0, tokenizer=str(tmp_path / "tokenizer.tiktoken"),
            verbose=False)
    for out in (tmp_path, tmp_path / "again"):
        for name in ("train.bin", "val.bin", "tokenizer.tiktoken", "meta.json"):   # a rename keeps the inode
            assert os.stat(out / name).st_ino in synced, out / name


def test_generated_corpus_mixes_in_formatted_pieces_without_instructions():
    docs = list(generated_documents(0, 300_000, formatted_share=0.25))
    stories = set(world.generate_corpus(0, 400_000))
    pieces = [d for d in docs if d not in stories]
    assert 0.18 < len(pieces) / len(docs) < 0.32            # the share is what was asked for
    forms = {"title": "<<", "bullets": "\n* ", "postscript": "P.S.", "json": '{"', "capitals": re.compile(r"\b[A-Z]{4,}\b")}
    for name, form in forms.items():                        # the forms SFT will ask for are all there...
        assert any((form.search(d) if hasattr(form, "search") else form in d) for d in pieces), name
    # ...but never the instructions themselves: those are only for SFT
    prompts = list(instruction_prompts(0, 20_000))
    assert prompts and not any(p in d for p in prompts for d in docs)
    assert not any(re.search(r"your (answer|response)", d, re.I) for d in docs)
    assert list(generated_documents(0, 50_000, formatted_share=0.0)) == world.generate_corpus(0, 50_000)


PARAGRAPHS = ["First Citizen:\nBefore we proceed any further, hear me speak.",
              "All:\nSpeak, speak.",
              "Caf\u00e9 na\u00efve \u2014 unicode \U0001F600 survives.",
              "One more line\nand another one."]


def test_generated_shards_do_not_depend_on_the_core_count(monkeypatch):
    """Text past SHARD_BYTES comes from shards made in parallel; which process makes a shard
    must not change it. Text up to SHARD_BYTES is the one stream it always was."""
    import data.prepare
    monkeypatch.setattr(data.prepare, "SHARD_BYTES", 20_000)
    one = list(generated_documents(7, 50_000, processes=1))
    assert list(generated_documents(7, 50_000, processes=2)) == one
    head = list(generated_documents(7, 20_000))
    assert one[:len(head)] == head and len(one) > len(head) + 5
    # the first shard: stories from seed 7's stream, with formatted pieces from their own
    stories, rng, total, expected = world.iter_documents(7), random.Random("formatted/7"), 0, []
    while total < 20_000:
        expected.append(data.prepare.splits.formatted_piece(rng) if rng.random() < 0.25 else next(stories))
        total += len(expected[-1]) + 1
    assert head == expected


def test_prepare_user_file_splits_on_blank_lines(tmp_path):
    text = "\n\n".join(PARAGRAPHS) + "\n\n\n"
    path = tmp_path / "play.txt"
    path.write_text("\n" + text, encoding="utf-8")
    meta = prepare(str(tmp_path / "out"), input=str(path), vocab_size=300, verbose=False)
    check_roundtrip(str(tmp_path / "out"), PARAGRAPHS)
    assert meta["documents"] == 4 and meta["seed"] is None


def test_prepare_notes_a_text_too_small_for_its_vocabulary_or_its_validation_split(tmp_path, capsys):
    """Both would surprise later: a first loss far below ln(--vocab_size), and train_pretrain.py
    refusing an empty val.bin."""
    path = tmp_path / "one.txt"
    path.write_text("The cat sat on the mat. The dog ran.\n", encoding="utf-8")
    meta = prepare(str(tmp_path / "out"), input=str(path), vocab_size=1024)
    out = capsys.readouterr().out
    assert meta["vocab_size"] < 300 and meta["val_documents"] == 0
    assert f"note: the BPE sample gives only {meta['vocab_size'] - 5} of --vocab_size=1024 tokens" in out
    assert "note: val.bin is empty" in out and "has 1;" in out
    path.write_text("\n\n".join(PARAGRAPHS * 5), encoding="utf-8")   # 2 of 20 documents to val
    prepare(str(tmp_path / "out2"), input=str(path), vocab_size=257)
    assert "note:" not in capsys.readouterr().out


def test_prepare_user_file_with_bom_and_crlf(tmp_path):
    """Notepad's UTF-8: a byte-order mark, which is not text (read as text, it would start
    the first document), and CRLF line ends, read as plain line ends."""
    path = tmp_path / "play.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\n\n".join(PARAGRAPHS).replace("\n", "\r\n").encode("utf-8"))
    prepare(str(tmp_path / "out"), input=str(path), vocab_size=300, verbose=False)
    check_roundtrip(str(tmp_path / "out"), PARAGRAPHS)


def test_prepare_names_the_line_that_is_not_utf8(tmp_path):
    """Past the decoder's first block, whose offsets count from the block, not the file."""
    path = tmp_path / "book.txt"
    path.write_bytes(b"An ASCII line of the book.\n" * 3000 + "Le gar\u00e7on.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"book\.txt line 3001 is not UTF-8 text \(byte 0xe7\)"):
        prepare(str(tmp_path / "out"), input=str(path), vocab_size=300, verbose=False)


def test_tokenizer_is_trained_on_the_training_documents_only(tmp_path):
    """The val documents (the 2nd, 22nd, ...) stay unseen by the BPE as by the model. Each
    document repeats a word of its own, so leaving one out, or adding one, changes the merges."""
    words = ["zebra", "quokka", "narwhal", "axolotl", "wombat", "pangolin", "okapi", "tapir", "dingo", "ibex",
             "lemur", "gecko", "kiwi", "yak", "vole", "bison", "civet", "dhole", "eland", "fossa", "genet", "hyrax"]
    docs = [f"The {w} " * (5 + i) + "sat." for i, w in enumerate(words)]
    (tmp_path / "zoo.txt").write_text("\n\n".join(docs))
    prepare(str(tmp_path / "out"), input=str(tmp_path / "zoo.txt"), vocab_size=320, verbose=False)
    train = [d for i, d in enumerate(docs) if i % 20 != 1]
    assert load_ranks(str(tmp_path / "out" / "tokenizer.tiktoken")) == train_bpe("\n".join(train), 320)


def test_prepare_folder_and_endoftext_markers(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    stories = ["Tom had a ball.\n\nHe liked it.", "Mia saw a cat.", "The end came."]
    (folder / "a.txt").write_text("<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n")  # blank lines inside stay
    (folder / "b.txt").write_text("\n\n".join(PARAGRAPHS))
    (folder / "notes.md").write_text("not a .txt file: ignored")
    prepare(str(tmp_path / "out"), input=str(folder), vocab_size=300, verbose=False)
    check_roundtrip(str(tmp_path / "out"), stories + PARAGRAPHS)


def test_prepare_cuts_long_documents(tmp_path):
    lines = [f"line {i}" + " word" * 150 for i in range(200)]  # ~150 KB, no blank line
    (tmp_path / "long.txt").write_text("\n".join(lines))
    meta = prepare(str(tmp_path / "out"), input=str(tmp_path / "long.txt"), vocab_size=300, verbose=False)
    assert meta["documents"] >= 2 and meta["val_documents"] == 1
    docs = read_split(str(tmp_path / "out"), "train")
    docs.insert(1, read_split(str(tmp_path / "out"), "val")[0])
    assert "\n".join(docs) == "\n".join(lines)


def test_a_document_is_cut_only_once_longer_than_the_limit(tmp_path, monkeypatch):
    """At the next line end after the limit: a document of exactly MAX_DOC_CHARS stays whole."""
    monkeypatch.setattr(prepare_module, "MAX_DOC_CHARS", 10)
    (tmp_path / "t.txt").write_text("aaaaaaaaa\nb\ncc\n")   # the first line, its newline counted, is 10
    assert list(prepare_module.file_documents(tmp_path / "t.txt")) == ["aaaaaaaaa\nb", "cc"]


def test_bpe_learns_from_the_first_bpe_mb_of_training_documents_only(tmp_path):
    """The tokenizer must see neither the val documents (doc 1) nor text past --bpe_mb (doc 3),
    which still go into the corpus."""
    docs = [("the cat sat on the mat. " * 10).strip(), ("qwv " * 100).strip(),
            ("the dog ran to the log. " * 10).strip(), ("jkx " * 100).strip()]
    (tmp_path / "t.txt").write_text("\n\n".join(docs))
    out = str(tmp_path / "out")
    prepare(out, input=str(tmp_path / "t.txt"), vocab_size=300, bpe_mb=300e-6, verbose=False)  # docs 0 and 2
    learned = [t for t in load_ranks(os.path.join(out, "tokenizer.tiktoken")) if len(t) > 1]
    assert b" the" in learned and not any(set(t) & set(b"qwvjkx") for t in learned)
    check_roundtrip(out, docs)


def test_instruction_prompts_train_the_bpe_but_stay_out_of_the_corpus(tmp_path):
    metas = [prepare(str(tmp_path / str(mb)), size_mb=0.02, seed=0, vocab_size=300, prompts_mb=mb, verbose=False)
             for mb in (0, 0.02)]
    assert metas[0]["tokenizer_sha256"] != metas[1]["tokenizer_sha256"]
    for mb in (0, 0.02):
        check_roundtrip(str(tmp_path / str(mb)), list(generated_documents(0, 20_000)))


def test_gpt2_tokenizer(tmp_path):
    try:
        load_tokenizer("gpt2")
    except RuntimeError:  # the error itself: test_tokenizer.py's test_gpt2_without_cache_fails_fast_and_clearly
        pytest.skip("GPT-2's files are not in tiktoken's cache, and minift never downloads them")
    meta = prepare(str(tmp_path), size_mb=0.01, tokenizer="gpt2", verbose=False)
    assert meta["tokenizer"] == "gpt2" and meta["vocab_size"] > 50000


def test_prepare_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        prepare(str(tmp_path / "out"), input=missing, verbose=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        prepare(str(tmp_path / "out"), input=str(tmp_path / "empty"), verbose=False)
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(ValueError, match="blank.txt"):
        prepare(str(tmp_path / "out"), input=str(tmp_path / "blank.txt"), verbose=False)
    # With a tokenizer given, the empty stream is found only after the token files are opened:
    # nothing is renamed into place, and nothing half-made is left behind
    (tmp_path / "tok.tiktoken").write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n"
                                                   for i in range(256)))
    with pytest.raises(ValueError, match="no text found in .*blank.txt"):
        prepare(str(tmp_path / "out2"), input=str(tmp_path / "blank.txt"),
                tokenizer=str(tmp_path / "tok.tiktoken"), verbose=False)
    assert os.listdir(tmp_path / "out2") == []


def test_script_runs_from_the_repo_root(tmp_path):
    out = subprocess.run([sys.executable, "data/prepare.py", "--size_mb", "0.02", "--prompts_mb", "0.02",
                          "--vocab_size", "300", "--out_dir", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "distinct 3-gram ratio" in out.stdout and "documents" in out.stdout
    assert (tmp_path / "train.bin").exists()
