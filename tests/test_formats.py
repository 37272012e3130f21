"""Each format loads to the exact internal form; each malformed record gives a precise error."""
import errno
import json
import os
import stat

import pytest

from minift.formats import (DataFormatError, load_ifeval_inputs, load_ifeval_responses, load_preferences,
                            load_scored_answers, load_sft, read_jsonl, write_atomically, write_ifeval_responses,
                            write_json, write_jsonl)


def jsonl(tmp_path, records, name="data.jsonl"):
    """Write records (dicts, or raw strings for broken lines) as a JSONL fixture."""
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def U(text):
    return {"role": "user", "content": text}


def A(text):
    return {"role": "assistant", "content": text}


def expect_error(loader, path, *fragments):
    """The loader must raise DataFormatError naming the file and every fragment (line, field...)."""
    with pytest.raises(DataFormatError) as e:
        loader(path)
    msg = str(e.value)
    for frag in (path.name, *fragments):
        assert frag in msg, f"{frag!r} not in {msg!r}"


# ---------------------------------------------------------------- SFT

def test_sft_chat_keeps_extra_fields(tmp_path):
    rec = {"key": 3, "prompt": "hi", "instruction_id_list": [], "kwargs": [],
           "messages": [{"role": "system", "content": "be brief"}, U("hi"), A("hello")]}
    assert load_sft(jsonl(tmp_path, [rec, ""])) == [rec]  # the blank line is skipped


def test_sft_alpaca_json_array_and_jsonl(tmp_path):
    recs = [{"instruction": "Add", "input": "2+2", "output": "4"},
            {"instruction": "Greet", "input": "", "output": "Hi"},
            {"instruction": "Wave", "output": "*waves*", "id": 7}]
    want = [{"messages": [U("Add\n\n2+2"), A("4")]}, {"messages": [U("Greet"), A("Hi")]},
            {"messages": [U("Wave"), A("*waves*")], "id": 7}]
    for name in ("alpaca.json", "ALPACA.JSON"):
        array = tmp_path / name
        array.write_text(json.dumps(recs, indent=2))
        assert load_sft(array) == want
    assert load_sft(jsonl(tmp_path, recs)) == want


def test_sft_sharegpt(tmp_path):
    rec = {"id": "x", "conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q1"},
                                        {"from": "gpt", "value": "a1"}, {"from": "user", "value": "q2"},
                                        {"from": "chatgpt", "value": "a2"}]}
    assert load_sft(jsonl(tmp_path, [rec])) == [{"id": "x", "messages": [
        {"role": "system", "content": "s"}, U("q1"), A("a1"), U("q2"), A("a2")]}]


GOOD = {"messages": [U("q"), A("a")]}


@pytest.mark.parametrize("bad, fragments", [
    ('{"messages": [', ["line 2", "invalid JSON"]),
    ({"instruction": "x"}, ["line 2", '"output"', "missing"]),
    ({"instruction": "x", "output": 5}, ["line 2", '"output"', "5"]),
    ({"messages": [U("q"), {"role": "bot", "content": "a"}]}, ["line 2", '"messages"[1]["role"]', '"bot"']),
    ({"messages": [U("q"), {"role": "assistant"}]}, ["line 2", '"messages"[1]["content"]', "missing"]),
    ({"messages": [U("q"), U("q2"), A("a")]}, ["line 2", '"messages"[1]["role"]', "alternate"]),
    ({"messages": [A("a")]}, ["line 2", '"messages"[0]["role"]']),
    ({"messages": [U("q")]}, ["line 2", '"messages"', "no assistant"]),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "bing", "value": "a"}]},
     ["line 2", '"conversations"[1]["from"]', '"bing"']),
    # out of turn: the roles a ShareGPT file may use there, in its own words
    ({"conversations": [{"from": "gpt", "value": "a"}]},
     ["line 2", '"conversations"[0]["from"]', 'expected "human" or "user" here']),
    ({"text": "hello"}, ["line 2", '"text"', "Alpaca"]),
    ([1, 2], ["line 2", "JSON object"]),
    ({"messages": [U("q"), {"role": ["user"], "content": "a"}]}, ['"messages"[1]["role"]', "array"]),
])
def test_sft_malformed(tmp_path, bad, fragments):
    expect_error(load_sft, jsonl(tmp_path, [GOOD, bad]), *fragments)


def test_a_json_file_that_is_no_array_says_what_a_json_file_holds(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}, indent=2))   # pretty-printed: not JSONL
    expect_error(load_sft, path, "line 1", "invalid JSON", "a .json file holds one array of records")


def test_json_array_error_names_record_index(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "a", "output": None}]))
    expect_error(load_sft, path, "record 1", "JSON array", '"output"', "null")


def test_bom_and_crlf_keep_line_numbers(tmp_path):
    """Windows editors save UTF-8 with a byte-order mark and CRLF line ends: both load, and an
    error still names the line an editor shows."""
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n\r\n" + b'{"messages": 5}\r\n')
    expect_error(load_sft, path, "line 3", '"messages"', "5")
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\r\n")
    assert load_sft(path) == [GOOD]


@pytest.mark.parametrize("data, fragments", [
    # Latin-1 on line 3, after a BOM: the offset counts the BOM's 3 bytes
    (b"\xef\xbb\xbf" + b'{"a": 1}\n' * 2 + '{"a": "gar\u00e7on"}\n'.encode("latin-1"),
     ["line 3", "not UTF-8", "byte 0xe7 at offset 31", "iconv -f latin1"]),
    ('{"a": 1}\n'.encode("utf-16"), ["line 1", "not UTF-8", "iconv -f utf-16"]),   # PowerShell's "> file"
    ('{"a": 1}\n'.encode("utf-16-le"), ["looks binary", "NUL"]),                   # the same without a BOM
], ids=["latin1-after-bom", "utf16", "utf16-without-bom"])
def test_text_that_is_not_utf8(tmp_path, data, fragments):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    expect_error(load_sft, path, *fragments)


def test_a_folder_given_as_a_data_file_says_so(tmp_path):
    expect_error(load_sft, tmp_path, str(tmp_path), "is a folder; expected a JSON or JSONL file")


@pytest.mark.parametrize("text, line", [("[" + json.dumps(GOOD) + "]", 1),
                                        ("\n[\n  " + json.dumps(GOOD) + "\n]\n", 2)], ids=["one-line", "indented"])
def test_json_array_in_a_jsonl_file_says_to_rename_it(tmp_path, text, line):
    """Only a *.json file is read as one array; a .jsonl one that holds an array is told so,
    with the rename that fixes it, not "invalid JSON" or "the record is an array"."""
    path = tmp_path / "alpaca.jsonl"
    path.write_text(text)
    expect_error(load_sft, path, f"line {line}", "JSON array", "rename", ".json")


@pytest.mark.parametrize("text", ["", "\n  \n", "[]"])
def test_empty_files(tmp_path, text):
    path = tmp_path / "empty.json"
    path.write_text(text)
    for loader in (load_sft, load_preferences, load_ifeval_inputs, load_ifeval_responses):
        expect_error(loader, path, "no records")


# ---------------------------------------------------------------- preferences

def test_preferences_trl_forms(tmp_path):
    recs = [{"prompt": "q", "chosen": "good", "rejected": "bad"},
            {"prompt": [U("q")], "chosen": [A("good")], "rejected": [A("bad")]},
            {"prompt": [U("q")], "chosen": [U("q"), A("good")], "rejected": [A("bad")]},
            {"chosen": [U("q0"), A("a0"), U("q"), A("good")], "rejected": [U("q0"), A("a0"), U("q"), A("bad")]}]
    got = load_preferences(jsonl(tmp_path, recs))
    assert got[:3] == [{"prompt": [U("q")], "chosen": "good", "rejected": "bad"}] * 3
    assert got[3] == {"prompt": [U("q0"), A("a0"), U("q")], "chosen": "good", "rejected": "bad"}


def test_preferences_hh(tmp_path):
    head = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke."
    rec = {"chosen": head + "\n\nAssistant: Why did the chicken...", "rejected": head + "\n\nAssistant: No."}
    assert load_preferences(jsonl(tmp_path, [rec])) == [{
        "prompt": [U("Hi there"), A("Hello!"), U("Tell me a joke.")],
        "chosen": "Why did the chicken...", "rejected": "No."}]
    # spaces around a turn, at either end, are the transcript's layout, not the text
    rec = {"chosen": "\n\nHuman: hi \n\nAssistant: good \n", "rejected": "\n\nHuman: hi \n\nAssistant: bad"}
    assert load_preferences(jsonl(tmp_path, [rec])) == [{"prompt": [U("hi")], "chosen": "good", "rejected": "bad"}]


PAIR = {"prompt": "q", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize("bad, fragments", [
    ({"prompt": "q", "chosen": "a"}, ['"rejected"', "missing"]),
    ({"prompt": "q", "chosen": 1, "rejected": "b"}, ['"chosen"', "1"]),
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, ['"prompt" is 5', "a string or a non-empty array"]),
    ({"prompt": [U("q"), A("a")], "chosen": "a", "rejected": "b"}, ['"prompt"[1]["role"]', "user"]),
    ({"prompt": [U("q")], "chosen": [U("q")], "rejected": "b"}, ['"chosen"[0]["role"]', "assistant"]),
    ({"prompt": [U("q")], "chosen": [U("other"), A("a")], "rejected": "b"}, ['"chosen"', "differ"]),
    # a conversation that goes on past the prompt is no answer to it
    ({"prompt": [U("q")], "chosen": [U("q"), A("x"), U("y"), A("good")], "rejected": "b"}, ['"chosen"', "differ"]),
    ({"chosen": [U("q"), A("a")], "rejected": [U("p"), A("b")]}, ['"rejected"', "differ"]),
    ({"chosen": [U("q"), A("a"), U("q2")], "rejected": [U("q"), A("b")]}, ['"chosen"[2]["role"]', "assistant"]),
    ({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi\n\nAssistant: b"}, ['"chosen"', "ends with a Human turn"]),
    ({"chosen": "hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}, ['"chosen"', "does not start"]),
    ({"chosen": "Intro\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
     ['"chosen"', "does not start"]),
    ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: yo\n\nAssistant: b"},
     ['"rejected"', "differ"]),
    ({"chosen": "\n\nHuman: a\n\nHuman: b\n\nAssistant: c", "rejected": "\n\nHuman: b\n\nAssistant: d"},
     ['"chosen"', "turn 2"]),
    ({**PAIR, "chosen_score": "0.9", "rejected_score": 0.5}, ['"chosen_score"', '"0.9"', "a number"]),
    ({**PAIR, "chosen_score": 0.9}, ['"rejected_score"', "missing"]),
    ({**PAIR, "chosen_score": True, "rejected_score": 0}, ['"chosen_score"', "true", "a number"]),
    # json reads NaN and Infinity; NaN < x is False, so a NaN passed the order check below
    ({**PAIR, "chosen_score": float("nan"), "rejected_score": 0.5}, ['"chosen_score"', "NaN", "finite"]),
    ({**PAIR, "chosen_score": 0.9, "rejected_score": float("-inf")}, ['"rejected_score"', "-Infinity", "finite"]),
    ({**PAIR, "chosen_score": 10 ** 400, "rejected_score": 0}, ['"chosen_score"', "finite"]),
    ({**PAIR, "chosen_score": 0.2, "rejected_score": 0.5}, ['"chosen_score"', "below", "at least as high"]),
    ({**PAIR, "instruction_id_list": "punctuation:no_comma"}, ['"instruction_id_list"', "an array"]),
])
def test_preferences_malformed(tmp_path, bad, fragments):
    expect_error(load_preferences, jsonl(tmp_path, [PAIR, PAIR, bad]), "line 3", *fragments)


def test_preferences_with_tied_scores_load(tmp_path):
    """The chosen answer scores *no lower* than the rejected one: a tie (some human-rated sets
    have them) is not an error."""
    rec = {**PAIR, "chosen_score": 0.5, "rejected_score": 0.5}
    assert load_preferences(jsonl(tmp_path, [rec])) == [{**rec, "prompt": [U("q")]}]


def test_scored_answers(tmp_path):
    """make_preferences.py's val_samples: a prompt string becomes one user message, as in pairs."""
    recs = [{"prompt": "q", "response": "a", "gold": 0.5, "group": 3},
            {"prompt": [U("q0"), A("a0"), U("q")], "response": "b", "gold": 1}]
    got = load_scored_answers(jsonl(tmp_path, recs))
    assert got == [{**recs[0], "prompt": [U("q")]}, recs[1]]
    expect_error(load_scored_answers, jsonl(tmp_path, [recs[0], {"prompt": "q", "response": "a"}]),
                 "line 2", '"gold"', "missing", "a number")
    expect_error(load_scored_answers, jsonl(tmp_path, [{"prompt": [U("q"), A("a")], "response": "b", "gold": 1}]),
                 "line 1", '"prompt"[1]["role"]', "user")
    expect_error(load_scored_answers, jsonl(tmp_path, [{"prompt": "q", "response": "a", "gold": float("nan")}]),
                 "line 1", '"gold"', "NaN")


# ---------------------------------------------------------------- IFEval

IFE = {"key": 1000, "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
       "prompt": "Write a poem.", "kwargs": [{}, {"relation": "less than", "num_words": 50}]}


def test_ifeval_inputs(tmp_path):
    recs = [IFE, {**IFE, "key": "k2", "messages": [U("x"), A("y")]}]
    assert load_ifeval_inputs(jsonl(tmp_path, recs)) == recs


@pytest.mark.parametrize("bad, fragments", [
    ({**IFE, "kwargs": [{}]}, ['"kwargs"', "2 objects"]),
    ({**IFE, "kwargs": [{}, 3]}, ['"kwargs"[1]', "object"]),
    ({**IFE, "instruction_id_list": ["a", 2], "kwargs": [{}, {}]}, ['"instruction_id_list"[1]']),
    ({**IFE, "key": True}, ['"key"']),
    ({k: v for k, v in IFE.items() if k != "prompt"}, ['"prompt"', "missing"]),
])
def test_ifeval_inputs_malformed(tmp_path, bad, fragments):
    expect_error(load_ifeval_inputs, jsonl(tmp_path, [IFE, bad]), "line 2", *fragments)


def test_ifeval_responses_round_trip(tmp_path):
    recs = [{"prompt": "Write a poem.", "response": "Roses — red\nviolets, blue", "extra": 1},
            {"prompt": "p2", "response": ""}]
    path = tmp_path / "out" / "responses.jsonl"  # the parent directory is created
    write_ifeval_responses(path, recs)
    assert load_ifeval_responses(path) == [{"prompt": r["prompt"], "response": r["response"]} for r in recs]
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    expect_error(load_ifeval_responses, jsonl(tmp_path, [{"prompt": "p"}]), "line 1", '"response"')


def test_read_write_jsonl(tmp_path):
    path = tmp_path / "x.jsonl"
    # U+2028 and U+0085 are line breaks to str.splitlines(), and JSON strings hold them raw
    write_jsonl(tmp_path / "breaks.jsonl", [{"text": "one\u2028two\x85three"}])
    assert read_jsonl(tmp_path / "breaks.jsonl") == [{"text": "one\u2028two\x85three"}]
    write_jsonl(path, [{"a": 1}, [2], "é"])
    assert read_jsonl(path) == [{"a": 1}, [2], "é"]
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(DataFormatError, match=r"x\.jsonl line 3: invalid JSON"):
        read_jsonl(path)


def test_write_atomically_syncs_then_renames_and_keeps_the_old_file(tmp_path, monkeypatch):
    """A write stopped half-way leaves the old file and no temporary one; a finished one is on
    disk (fsync) before it takes the file's name, or a power cut could leave an empty file, and
    its folder is synced after, or a power cut could undo the rename."""
    path = tmp_path / "x.json"
    write_json(path, {"old": 1})

    def stopped(f):
        f.write(b'{"new": ')
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, stopped)
    assert json.loads(path.read_text()) == {"old": 1} and os.listdir(tmp_path) == ["x.json"]
    events, fsync, replace, synced_sizes = [], os.fsync, os.replace, []

    def recording_fsync(fd):
        events.append("fsync")
        if stat.S_ISREG(os.fstat(fd).st_mode):   # what the file held when synced: all of it, flushed
            synced_sizes.append(os.fstat(fd).st_size)
        return fsync(fd)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", lambda src, dst: events.append("replace") or replace(src, dst))
    write_json(path, {"new": 2})
    assert events == ["fsync", "replace", "fsync"] and json.loads(path.read_text()) == {"new": 2}   # file, folder
    assert synced_sizes == [path.stat().st_size]



@pytest.mark.parametrize("where, code", [("open", errno.EACCES),   # a folder we may write but not read
                                         ("fsync", errno.ENOTSUP), ("fsync", errno.EBADF), ("fsync", errno.EINVAL)])
def test_a_folder_that_cannot_be_synced_does_not_fail_a_finished_write(tmp_path, monkeypatch, where, code):
    """The file is synced and renamed before its folder is synced: a folder we may not read, or a
    filesystem that syncs no folders, leaves the new file whole and in place, so no error; a disk
    error (EIO) still is one."""
    real = getattr(os, where)

    def refusing(error):
        def call(target, *args):
            folder = os.path.isdir(target) if where == "open" else stat.S_ISDIR(os.fstat(target).st_mode)
            if folder:
                raise OSError(error, os.strerror(error))
            return real(target, *args)
        return call
    monkeypatch.setattr(os, where, refusing(code))
    write_json(tmp_path / "x.json", {"new": 2})
    assert json.loads((tmp_path / "x.json").read_text()) == {"new": 2} and os.listdir(tmp_path) == ["x.json"]
    monkeypatch.setattr(os, where, refusing(errno.EIO))
    with pytest.raises(OSError, match=os.strerror(errno.EIO)):
        write_json(tmp_path / "y.json", {})
