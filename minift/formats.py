"""Loaders that turn common data formats into minift's internal forms, with clear errors.

Internal forms:
  conversation     list of {"role": "user"|"assistant"|"system", "content": str}; after an optional
                   leading system message the roles alternate user/assistant, starting with user.
  preference pair  {"prompt": conversation ending with a user message, "chosen": str, "rejected": str}

Every malformed record raises DataFormatError naming the file, the line (or, for a JSON array
file, the record's 0-based index), the field, what is wrong and what was expected -- a data bug
should cost one read of the message, not an afternoon of debugging.

File detection: a ".json" file (any case) whose content starts with "[" is one JSON array of
records (the Alpaca release); anything else is JSONL (one JSON object per line, blank lines
skipped), and a JSONL file that starts with "[" is refused with a hint to rename it.
"""
import errno
import json
import math
import os
import re

_MISSING = object()  # tells "field absent" apart from "field is null"


class DataFormatError(ValueError):
    """A record in a data file is not in the expected format."""


def described(v):
    """Describe a bad value briefly: 'is missing', 'is "bot"', 'is an array of 3 items'."""
    if v is _MISSING:
        return "is missing"
    if isinstance(v, list):
        return f"is an array of {len(v)} item{'s' * (len(v) != 1)}"
    if isinstance(v, dict):
        return "is an object"
    s = json.dumps(v, ensure_ascii=False)  # JSON spelling shows the type: "5" vs 5 vs null
    return "is " + (s if len(s) <= 60 else s[:57] + '..."')


def _bad(where, field, problem, expected):
    raise DataFormatError(f"{where}: field {field} {problem}; expected {expected}")


def _str_field(obj, key, where, prefix=""):
    """obj[key], which must be a string; `prefix` locates obj inside the record for the message."""
    v = obj.get(key, _MISSING)
    if not isinstance(v, str):
        _bad(where, f'{prefix}["{key}"]' if prefix else f'"{key}"', described(v), "a string")
    return v


# ---------------------------------------------------------------- generic JSONL helpers

def _parse_jsonl(path, text):
    """Yield (1-based line number, value) for each non-blank line. Lines end at "\n" (read_text
    has turned "\r\n" and a lone "\r" into it), not at U+2028 or U+0085, which JSON strings may
    hold raw and str.splitlines() would split at."""
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                # a .json file not opening with "[" is read as JSONL: say what a .json file holds
                json_file = (" (a .json file holds one array of records, [...])"
                             if path.lower().endswith(".json") else "")
                raise DataFormatError(f"{path} line {n}: invalid JSON ({e.msg}, column {e.colno}); "
                                      f"expected one JSON value per line{json_file}") from None


def first_non_utf8(path):
    """(line, byte offset, byte value, a guess at the encoding) of a file's first byte that is
    not UTF-8, read line by line so that a big corpus never sits in memory; None if it is all
    UTF-8. Lines can be checked one at a time because no multi-byte character holds a "\n" byte."""
    offset = 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                f.seek(0)
                was = "utf-16" if f.read(2) in (b"\xff\xfe", b"\xfe\xff") else "latin1"  # a UTF-16 BOM, or a guess
                return n, offset + e.start, line[e.start], was
            offset += len(line)
    return None


def read_text(path):
    """A data file's text; one that is not UTF-8 (Latin-1, a binary file) is refused by name and line."""
    if os.path.isdir(path):
        raise DataFormatError(f"{os.fspath(path)} is a folder; expected a JSON or JSONL file")
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: tolerate a UTF-8 byte-order mark
            text = f.read()
    except UnicodeDecodeError:
        # Located in the raw bytes: utf-8-sig's offsets do not count a BOM it has dropped.
        line, offset, byte, was = first_non_utf8(path)
        raise DataFormatError(f"{os.fspath(path)} line {line}: not UTF-8 text (byte 0x{byte:02x} at offset "
                              f"{offset}); expected a UTF-8 JSON or JSONL file (convert it, e.g. iconv -f {was} "
                              "-t utf-8)") from None
    if "\x00" in text:
        raise DataFormatError(f"{os.fspath(path)}: looks binary (it holds NUL bytes); expected a JSON or JSONL file")
    return text


def read_jsonl(path):
    """All values of a JSONL file (blank lines skipped). An empty file gives []."""
    return [v for _, v in _parse_jsonl(os.fspath(path), read_text(path))]


def require_folder(path, option="out_dir"):
    """Refuse a file where the --option folder belongs, before any work is done, not at the
    first write."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--{option}={path} is a file, not a folder; choose another --{option}")


def write_atomically(path, write):
    """Call write(f) on a new binary file beside `path` (on its filesystem: os.replace cannot
    rename across two), fsync it, os.replace() it over `path` (atomic on POSIX and Windows),
    then fsync the folder: a crash, Ctrl-C or power cut never leaves half a file, only the old
    one or the new one. Checkpoints, data files, stage markers and reports are written this
    way; metrics.jsonl is appended to, a line at a time."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())   # on disk before the rename, or a power cut can leave an empty file
        os.replace(tmp, path)
        sync_folder(os.path.dirname(os.path.abspath(path)))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# Why a folder cannot be synced where the file in it was written and renamed all the same: a
# folder we may write but not read (EACCES on opening it), or a filesystem that does not sync
# folders (EINVAL, EBADF, ENOTSUP: some network and FUSE ones).
CANNOT_SYNC_FOLDER = {errno.EACCES, errno.EPERM, errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP,
                      errno.ENOSYS}


def sync_folder(folder):
    """fsync a folder, so that a rename in it survives a power cut (the new name is an entry in
    the folder, which the file's own fsync does not write). POSIX only: Windows cannot open a
    folder. Where the folder cannot be synced (CANNOT_SYNC_FOLDER) the rename still stands, so
    that is no error: the file is whole and in place, only its name's durability is the
    filesystem's."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno not in CANNOT_SYNC_FOLDER:
            raise


def write_json(path, obj, indent=1):
    """One JSON document, written atomically (write_atomically)."""
    write_text(path, json.dumps(obj, indent=indent))


def write_text(path, text):
    """A text file (UTF-8), written atomically (write_atomically)."""
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def write_jsonl(path, records):
    """Write one JSON object per line, atomically (write_atomically)."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _records(path):
    """[(where, record dict)] from a JSONL or JSON-array file; zero records is an error."""
    path = os.fspath(path)
    text = read_text(path)
    if path.lower().endswith(".json") and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path} line {e.lineno}: invalid JSON ({e.msg}); "
                                  "expected one JSON array of records") from None
        items = [(f"{path} record {i} (0-based index in the JSON array)", r)
                 for i, r in enumerate(data)]
    elif text.lstrip().startswith("["):  # never a JSONL file of records, which are objects
        line = text.count("\n", 0, len(text) - len(text.lstrip())) + 1
        raise DataFormatError(f"{path} line {line}: a JSON array, read as one only from a file named *.json; "
                              "expected one JSON object per line, or, if the file is one array of records, "
                              "rename it to end in .json")
    else:
        items = [(f"{path} line {n}", r) for n, r in _parse_jsonl(path, text)]
    if not items:
        raise DataFormatError(f"{path}: no records (empty file, blank lines only, or []); "
                              "expected at least one record")
    for where, r in items:
        if not isinstance(r, dict):
            raise DataFormatError(f"{where}: the record {described(r)}; expected a JSON object")
    return items


# ---------------------------------------------------------------- conversations

# (role key, text key, accepted role names -> our role) for chat messages and ShareGPT turns.
CHAT = ("role", "content", {"user": "user", "assistant": "assistant", "system": "system"})
SHAREGPT = ("from", "value", {"human": "user", "user": "user", "gpt": "assistant",
                              "assistant": "assistant", "chatgpt": "assistant", "system": "system"})


def _message(m, where, field, keys=CHAT):
    role_key, text_key, role_map = keys
    if not isinstance(m, dict):
        _bad(where, field, described(m), f'an object with "{role_key}" and "{text_key}"')
    role = m.get(role_key, _MISSING)
    if not isinstance(role, str) or role not in role_map:  # (a list is unhashable: test type first)
        _bad(where, f'{field}["{role_key}"]', described(role), "one of " + ", ".join(role_map))
    return {"role": role_map[role], "content": _str_field(m, text_key, where, field)}


def _conversation(items, where, field, keys=CHAT):
    """Validate a message list and return it in our form (role/content only)."""
    if not isinstance(items, list) or not items:
        _bad(where, field, described(items), "a non-empty array of messages")
    msgs = [_message(m, where, f"{field}[{i}]", keys) for i, m in enumerate(items)]
    start = 1 if msgs[0]["role"] == "system" else 0
    for i in range(start, len(msgs)):
        want = ("user", "assistant")[(i - start) % 2]
        if msgs[i]["role"] != want:
            role_key, _, role_map = keys
            spellings = " or ".join(f'"{name}"' for name, role in role_map.items() if role == want)  # the file's words
            _bad(where, f'{field}[{i}]["{role_key}"]', described(items[i][role_key]),
                 f'{spellings} here (after an optional leading system message, roles alternate '
                 'user/assistant starting with user)')
    return msgs


def load_sft(path):
    """SFT records {"messages": conversation, **other fields kept}. Format, per record:
    has "messages" -> chat; has "conversations" -> ShareGPT; has "instruction" -> Alpaca."""
    out = []
    for where, rec in _records(path):
        rest = dict(rec)
        if "messages" in rec:
            msgs = _conversation(rest.pop("messages"), where, '"messages"')
        elif "conversations" in rec:
            msgs = _conversation(rest.pop("conversations"), where, '"conversations"', SHAREGPT)
        elif "instruction" in rec:
            user = _str_field(rec, "instruction", where)
            extra = rec.get("input", "")  # optional; Alpaca leaves it "" for most records
            if not isinstance(extra, str):
                _bad(where, '"input"', described(extra), "a string (or the field left out)")
            if extra:
                user += "\n\n" + extra
            msgs = [{"role": "user", "content": user},
                    {"role": "assistant", "content": _str_field(rec, "output", where)}]
            for k in ("instruction", "input", "output"):
                rest.pop(k, None)
        else:
            fields = ", ".join(f'"{k}"' for k in rec) or "none"
            raise DataFormatError(f'{where}: unknown SFT record (fields: {fields}); expected "messages" '
                                  '(chat), "conversations" (ShareGPT) or "instruction"+"output" (Alpaca)')
        if not any(m["role"] == "assistant" for m in msgs):
            _bad(where, '"messages"' if "messages" in rec else '"conversations"',
                 "has no assistant message", "at least one assistant reply to train on")
        out.append({"messages": msgs, **rest})
    return out


# ---------------------------------------------------------------- preference pairs

def _reply(v, where, key, prompt):
    """The final assistant reply from `v`: a string, [assistant message], or prompt + [assistant message]."""
    if isinstance(v, str):
        return v
    if not isinstance(v, list) or not v:
        _bad(where, f'"{key}"', described(v), "a string or an array of messages ending with the assistant reply")
    if len(v) == 1:
        msg = _message(v[0], where, f'"{key}"[0]')
    else:  # a full conversation: its turns before the reply must be exactly the prompt
        msgs = _conversation(v, where, f'"{key}"')
        if msgs[:-1] != prompt:
            _bad(where, f'"{key}"', "has turns before its final reply that differ from the prompt",
                 "the prompt's messages, then one assistant reply")
        msg = msgs[-1]
    if msg["role"] != "assistant":
        _bad(where, f'"{key}"[{len(v) - 1}]["role"]', described(msg["role"]), '"assistant" (the final reply)')
    return msg["content"]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _hh_transcript(text, where, key):
    """Parse an Anthropic HH transcript into (prompt messages, final assistant reply)."""
    parts = _HH_TURN.split(text)  # ["", "Human", " hi", "Assistant", " hello", ...]
    if parts[0].strip() or len(parts) < 3:
        _bad(where, f'"{key}"', 'does not start with a "\\n\\nHuman:" turn',
             'an HH transcript "\\n\\nHuman: ...\\n\\nAssistant: ..."')
    speakers = parts[1::2]
    for i, s in enumerate(speakers):
        if s != ("Human", "Assistant")[i % 2]:
            _bad(where, f'"{key}"', f"turn {i + 1} is {s}", "turns alternating Human/Assistant")
    if speakers[-1] != "Assistant":
        _bad(where, f'"{key}"', "ends with a Human turn", 'a final "\\n\\nAssistant:" reply')
    msgs = [{"role": "user" if s == "Human" else "assistant", "content": t.strip()}
            for s, t in zip(speakers, parts[2::2])]
    return msgs[:-1], msgs[-1]["content"]


def _prompt(p, where):
    """A record's "prompt": a string (one user message) or a conversation ending with a user message."""
    if not isinstance(p, (str, list)):
        _bad(where, '"prompt"', described(p), "a string or a non-empty array of messages")
    prompt = [{"role": "user", "content": p}] if isinstance(p, str) else _conversation(p, where, '"prompt"')
    if prompt[-1]["role"] != "user":
        _bad(where, f'"prompt"[{len(prompt) - 1}]["role"]', described(prompt[-1]["role"]),
             '"user" (the prompt must end with a user message)')
    return prompt


def _number(rec, key, where):
    """rec[key], a finite number: Python's json reads NaN and Infinity, which would slip past
    every comparison (NaN < x is False) and poison a mean or a ranking."""
    v = rec.get(key, _MISSING)
    try:
        finite = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        _bad(where, f'"{key}"', described(v), "a number (a finite one: not NaN or Infinity)")
    return v


def _check_scores(rec, where):
    """A pair's optional gold scores (make_preferences.py writes them): both or neither, numbers,
    and the chosen answer's no lower than the rejected one's, or the two would teach opposite things."""
    if "chosen_score" in rec or "rejected_score" in rec:
        chosen, rejected = _number(rec, "chosen_score", where), _number(rec, "rejected_score", where)
        if chosen < rejected:
            _bad(where, '"chosen_score"', f"is {chosen}, below \"rejected_score\" {rejected}",
                 "the chosen answer to score at least as high as the rejected one")


def _id_list(rec, where):
    """rec["instruction_id_list"]: an array of instruction ids, as IFEval writes it."""
    ids = rec.get("instruction_id_list", _MISSING)
    if not isinstance(ids, list):
        _bad(where, '"instruction_id_list"', described(ids), 'an array of instruction ids like "keywords:existence"')
    for i, x in enumerate(ids):
        if not isinstance(x, str):
            _bad(where, f'"instruction_id_list"[{i}]', described(x), "a string")
    return ids


def load_preferences(path):
    """Preference pairs {"prompt", "chosen", "rejected", **other fields kept}. Format, per record:
    has "prompt" -> TRL explicit (prompt: string or messages; chosen/rejected: string, [assistant
    message] or prompt + [assistant message]); no "prompt" and "chosen" a string -> Anthropic HH
    transcript; no "prompt" and "chosen" a list -> TRL implicit prompt (shared turns = prompt)."""
    out = []
    for where, rec in _records(path):
        chosen = rec.get("chosen", _MISSING)
        rejected = rec.get("rejected", _MISSING)
        for key, v in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(v, (str, list)):
                _bad(where, f'"{key}"', described(v), "a string or an array of messages")
        if "prompt" in rec:
            prompt = _prompt(rec["prompt"], where)
        elif isinstance(chosen, str):
            if not isinstance(rejected, str):
                _bad(where, '"rejected"', described(rejected), 'an HH transcript string, like "chosen"')
            prompt, chosen = _hh_transcript(chosen, where, "chosen")
            prompt_r, rejected = _hh_transcript(rejected, where, "rejected")
            if prompt_r != prompt:
                _bad(where, '"rejected"', "has turns before its final Assistant reply that differ from "
                     '"chosen"', "both transcripts to share every turn but the last")
        else:  # TRL implicit prompt: chosen = prompt + [reply]; _reply() checks the reply's role
            prompt = _conversation(chosen, where, '"chosen"')[:-1]
        chosen, rejected = _reply(chosen, where, "chosen", prompt), _reply(rejected, where, "rejected", prompt)
        _check_scores(rec, where)
        if "instruction_id_list" in rec:
            _id_list(rec, where)
        rest = {k: v for k, v in rec.items() if k not in ("prompt", "chosen", "rejected")}
        out.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, **rest})
    return out


# ---------------------------------------------------------------- IFEval input / output

def load_ifeval_inputs(path):
    """IFEval input records {"key", "instruction_id_list", "prompt", "kwargs", **extra}, validated."""
    out = []
    for where, rec in _records(path):
        key = rec.get("key", _MISSING)
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            _bad(where, '"key"', described(key), "an integer or a string")
        _str_field(rec, "prompt", where)
        ids, kwargs = _id_list(rec, where), rec.get("kwargs", _MISSING)
        if not isinstance(kwargs, list) or len(kwargs) != len(ids):
            _bad(where, '"kwargs"', described(kwargs),
                 f'an array of {len(ids)} objects, one per entry of "instruction_id_list"')
        for i, x in enumerate(kwargs):
            if not isinstance(x, dict):
                _bad(where, f'"kwargs"[{i}]', described(x), "an object of keyword arguments")
        out.append(rec)
    return out


def require_file(path, option, made_by, hint=""):
    """Stop the script with one line naming --option if the file it names does not exist, and
    say which script makes it (`hint` is added, such as how to do without the file)."""
    if not os.path.exists(path):
        raise SystemExit(f"error: no file at --{option}={path}; make it with {made_by}, or after python "
                         f"pipeline.py pass its copy under out/<preset>/data/" + (f"; {hint}" if hint else ""))


def load_ifeval_option(path, option, hint=""):
    """IFEval records named by a script's --option, read and checked before any training. A
    missing file, or conversations without instructions (Alpaca, ShareGPT: nothing the
    checkers can score), stop the script with a message that names the option; `hint` is
    added to it (such as how to do without the file)."""
    require_file(path, option, "data/make_sft.py", hint)
    hint = f"; {hint}" if hint else ""
    try:
        return load_ifeval_inputs(path)
    except DataFormatError as e:
        raise DataFormatError(f"{e}. --{option} takes IFEval records (key, prompt, instruction_id_list, kwargs), "
                              f"as data/make_sft.py writes{hint}") from None


def write_ifeval_responses(path, records):
    """Write {"prompt", "response"} JSONL, the file IFEval's evaluator reads."""
    write_jsonl(path, ({"prompt": r["prompt"], "response": r["response"]} for r in records))


def load_scored_answers(path):
    """Answers with their gold scores, {"prompt", "response", "gold", "group"?} (make_preferences.py's
    val_samples.jsonl): the prompt a string or a conversation, as in preference pairs."""
    out = []
    for where, rec in _records(path):
        _str_field(rec, "response", where)
        _number(rec, "gold", where)
        out.append({**rec, "prompt": _prompt(rec.get("prompt", _MISSING), where)})
    return out


def require_answers_in_order(answers_path, answers, data_path, records):
    """Answers pair with their prompts by position: refuse a responses file that does not answer
    `records` one by one, in order (another split, or scored with another --max_examples)."""
    if len(answers) != len(records) or any(a["prompt"] != r["prompt"] for a, r in zip(answers, records)):
        raise DataFormatError(f"{answers_path} does not answer the first {len(records)} prompts of {data_path} in "
                              f"order; write it again with python evaluate.py --input={data_path}")


def load_ifeval_responses(path):
    """Read {"prompt", "response"} records (extra fields kept)."""
    out = []
    for where, rec in _records(path):
        _str_field(rec, "prompt", where)
        _str_field(rec, "response", where)
        out.append(rec)
    return out
