"""Tokenizer: a byte-level BPE trainer, tiktoken export/load, special tokens, chat template + loss mask.

Training is plain Python (readable, fast enough for a few MB); encoding and decoding are done by
tiktoken (fast Rust), which we feed the merges we learned. The pipeline is:

    text --pre-split (regex)--> "words" --BPE merges--> ranks {token bytes: id} --> tiktoken.Encoding

Then we add five special tokens after the learned ranks and define the chat format (DESIGN.md):

    <|endoftext|><|user|>...user text...<|end|><|assistant|>...reply...<|end|>...

with a loss mask that is 1 only on what the assistant says (its text and its closing <|end|>).

Run as a script to train and save a tokenizer:
    python -m minift.tokenizer --input corpus.txt --vocab_size 2048 --out tokenizer.tiktoken
"""

import argparse
import base64
import codecs
import functools
import hashlib
import heapq
import os
import re
import tempfile
import time
from collections import Counter

import tiktoken

from minift.formats import write_atomically

# --------------------------------------------------------------------------------------------------
# Pre-splitting. BPE never merges across the boundaries of these pieces, so a token can hold
# " dog" or "ing" but never "dog." or "the cat". This is GPT-2's pattern, in the faster equivalent
# form that tiktoken ships for "gpt2"/"r50k_base". tiktoken runs it at encode time.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# Python's `re` has no \p{L} (letter) or \p{N} (number), so the trainer uses this translation:
#   \p{L}              -> [^\W\d_]      "word character, but not a digit or underscore"
#   \p{N}              -> \d            (decimal digits)
#   [^\s\p{L}\p{N}]    -> [^\s\w]|_     "not space, not word character" (underscore is punctuation)
# It splits printable ASCII / English text exactly like tiktoken (tested). On rare characters it
# can differ (Python counts "²" or "Ⅻ" as letters, not numbers, and the control characters
# 0x1C-0x1F as spaces). That only changes which merges get learned, never correctness: tiktoken
# does its own split at encode time and any byte string can be encoded, because all 256 single
# bytes are tokens.
_SPLIT_RE = re.compile(r"""'(?:[sdmt]|ll|ve|re)| ?[^\W\d_]++| ?\d++| ?(?:[^\s\w]|_)++|\s++$|\s+(?!\S)|\s""")

# Chat special tokens. Their ids come right after the learned ranks, in this order (DESIGN.md).
SPECIAL_TOKENS = ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>", "<|pad|>")


def pre_split(text: str) -> list[str]:
    """Split text into the pieces BPE works inside (Python mirror of SPLIT_PATTERN)."""
    return _SPLIT_RE.findall(text)


# --------------------------------------------------------------------------------------------------
# BPE training

def train_bpe(text: str, vocab_size: int, max_chars: int | None = None, verbose: bool = False) -> dict[bytes, int]:
    """Learn byte-level BPE merges. Returns tiktoken-style ranks {token bytes: id}.

    Ids 0..255 are the single bytes (rank i = bytes([i])); each merge then adds one token, so a
    lower id means "merged earlier" = higher priority, which is exactly how tiktoken uses ranks.
    Merge choice: the most frequent adjacent pair; ties go to the smallest (left id, right id),
    so training is deterministic. Stops early (fewer tokens) if the text runs out of pairs.
    `max_chars` trims the text first: merge statistics saturate after a few MB.
    """
    assert vocab_size >= 256, "vocab_size must be >= 256 (the single bytes)"
    if max_chars is not None:
        text = text[:max_chars]

    # 1) Work on unique pieces: "the" appears 100k times but is processed once, with weight 100k.
    counts = Counter(pre_split(text))
    words = [list(w.encode("utf-8")) for w in counts]  # each word as a list of token ids (bytes)
    freqs = list(counts.values())

    # 2) Pair statistics: how often each adjacent pair occurs (weighted), and in which words.
    pair_count: dict[tuple[int, int], int] = {}
    pair_words: dict[tuple[int, int], set[int]] = {}

    def add_pairs(i: int, sign: int, touched: set):
        w, f = words[i], freqs[i]
        for p in zip(w, w[1:]):
            pair_count[p] = pair_count.get(p, 0) + sign * f
            if sign > 0:  # (on removal we keep i listed: merging a word that lost the pair is a no-op)
                pair_words.setdefault(p, set()).add(i)
            touched.add(p)

    for i in range(len(words)):
        add_pairs(i, +1, set())

    # A max-heap of (-count, pair). Counts change as we merge; rather than updating entries in
    # place we push a fresh entry and skip stale ones when popped ("lazy deletion").
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)

    vocab = [bytes([i]) for i in range(256)]  # id -> bytes
    ranks = {b: i for i, b in enumerate(vocab)}  # bytes -> id
    t0 = time.time()
    while len(vocab) < vocab_size and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg_count:
            continue  # stale entry: the count changed after it was pushed
        a, b = pair
        merged = vocab[a] + vocab[b]
        # tiktoken needs unique bytes, hence the lookup; it never finds one, though. Merging left
        # to right everywhere, bytes that end up one token were merged just as if they stood
        # alone, so the same bytes always come from the same pair. That is also why tiktoken,
        # merging the lowest rank first, gives exactly these merges (tested).
        new_id = ranks.get(merged)
        if new_id is None:
            new_id = len(vocab)
            vocab.append(merged)
            ranks[merged] = new_id

        # 3) Incremental update: only the words containing the pair change. For each one, take
        # its pairs out of the statistics, merge, and put the new pairs back in.
        touched = set()
        for i in pair_words.pop(pair):
            add_pairs(i, -1, touched)
            w, out, j = words[i], [], 0
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(new_id)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            add_pairs(i, +1, touched)
        for p in touched:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
            else:  # the pair no longer occurs anywhere
                del pair_count[p]
                pair_words.pop(p, None)
        if verbose and new_id == len(vocab) - 1 and (new_id + 1) % 256 == 0:
            print(f"bpe: {len(vocab)}/{vocab_size} tokens, last {merged!r} x{-neg_count}, {time.time() - t0:.1f}s")
    return ranks


# --------------------------------------------------------------------------------------------------
# Save / load in tiktoken's rank-file format: one line per token, "base64(bytes) rank".

def _ranks_to_bytes(ranks: dict[bytes, int]) -> bytes:
    lines = (base64.b64encode(t) + b" " + str(r).encode() + b"\n" for t, r in sorted(ranks.items(), key=lambda x: x[1]))
    return b"".join(lines)


def save_ranks(path: str, ranks: dict[bytes, int]) -> None:
    """Write ranks as a .tiktoken file (atomically: a crash never leaves half a file)."""
    data = _ranks_to_bytes(ranks)
    write_atomically(path, lambda f: f.write(data))


def _bytes_to_ranks(data: bytes) -> dict[bytes, int]:
    ranks = {}
    for n, line in enumerate(data.splitlines(), 1):
        if line:
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
            except ValueError:  # binascii.Error is one too
                raise ValueError(f"line {n} is not \"<base64 token> <rank>\": {line[:40]!r}") from None
    return ranks


# The bytes UTF-8 text can hold: all but 0xC0, 0xC1 and 0xF5-0xFF, which no character encodes to.
UTF8_BYTES = [i for i in range(0xF5) if i not in (0xC0, 0xC1)]


def _check_ranks(ranks: dict[bytes, int]) -> None:
    """What we need and tiktoken does not check: ids 0..n-1 (the special tokens take the ids
    after them), and every byte that text can hold a token of its own (without one, encoding a
    text that holds that byte panics in tiktoken's Rust code). The 13 bytes UTF-8 never uses
    may be left out."""
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"its {len(ranks)} ranks are not the ids 0..{len(ranks) - 1}")
    missing = [i for i in UTF8_BYTES if bytes([i]) not in ranks]
    if missing:
        raise ValueError(f"{len(missing)} of the {len(UTF8_BYTES)} single bytes of UTF-8 text are not tokens "
                         f"(the first: {bytes([missing[0]])!r})")


def load_ranks(path: str) -> dict[bytes, int]:
    """Read a .tiktoken file. Same format as tiktoken.load.load_tiktoken_bpe, but we parse it
    ourselves: that function also caches local files by path in TIKTOKEN_CACHE_DIR and would
    return a stale copy after the file at the same path is retrained."""
    with open(path, "rb") as f:
        return _bytes_to_ranks(f.read())


# --------------------------------------------------------------------------------------------------
# The tokenizer used by the rest of minift

class Tokenizer:
    """A tiktoken.Encoding plus our special-token ids and the chat template."""

    def __init__(self, enc: tiktoken.Encoding, name: str):
        missing = [s for s in SPECIAL_TOKENS if s not in enc.special_tokens_set]
        if missing:
            raise ValueError(f"encoding {enc.name!r} lacks special tokens {missing}")
        self.enc, self.name = enc, name
        self.n_vocab = enc.n_vocab  # including the specials: the model's embedding size
        self.eot, self.user, self.assistant, self.end, self.pad = (enc.encode_single_token(s) for s in SPECIAL_TOKENS)
        # Where generated text ends: <|end|> closes a reply, <|endoftext|> a whole text (what a
        # pretrained model, which never saw <|end|>, writes when its text is over).
        self.stops = (self.end, self.eot)

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], name: str | None = None) -> "Tokenizer":
        """Our own BPE: specials get ids len(ranks) + 0..4."""
        _check_ranks(ranks)
        name = name or f"minift-bpe-{len(ranks)}"
        specials = {s: len(ranks) + i for i, s in enumerate(SPECIAL_TOKENS)}
        enc = tiktoken.Encoding(name, pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
        return cls(enc, name)

    @functools.cached_property
    def identity(self) -> dict:
        """Stored in checkpoints: a model only makes sense with the exact id mapping it was
        trained with. The hash covers everything that defines that mapping."""
        h = hashlib.sha256(_ranks_to_bytes(self.enc._mergeable_ranks))
        h.update(self.enc._pat_str.encode())
        h.update(repr(sorted(self.enc._special_tokens.items())).encode())
        return {"name": self.name, "n_vocab": self.n_vocab, "sha256": h.hexdigest()}

    def to_record(self) -> dict:
        """identity plus everything that rebuilds the tokenizer (ranks in the .tiktoken text,
        the split pattern, the specials): every checkpoint carries it, ~25 KB for our 2048-token
        BPE, so a checkpoint copied to another machine needs no tokenizer file beside it."""
        return {**self.identity, "pat_str": self.enc._pat_str, "specials": dict(self.enc._special_tokens),
                "ranks": _ranks_to_bytes(self.enc._mergeable_ranks).decode("ascii")}

    @classmethod
    def from_record(cls, record: dict) -> "Tokenizer":
        enc = tiktoken.Encoding(record["name"], pat_str=record["pat_str"], special_tokens=record["specials"],
                                mergeable_ranks=_bytes_to_ranks(record["ranks"].encode("ascii")))
        return cls(enc, record["name"])

    def encode(self, text: str) -> list[int]:
        """Plain text to ids. Special-token strings are encoded as ordinary text: a user typing
        "<|end|>" must not be able to end a turn (the same idea as SQL-injection safety)."""
        return self.enc.encode_ordinary(text)

    def decode(self, ids) -> str:
        """Ids to text; special tokens decode to their strings; invalid UTF-8 becomes U+FFFD."""
        return self.enc.decode(list(ids))

    # -- chat template ------------------------------------------------------------------------

    def render_conversation(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        """Conversation -> (ids, mask); mask[i] = 1 where the model is trained to predict ids[i].

        A "system" message has no token of its own (the roles are only user and assistant): its content
        is prepended to the next user message followed by "\\n\\n". After that, turns must
        alternate user, assistant, user, ... starting with the user.
        """
        ids, mask = [self.eot], [0]
        for role, content in _fold_system(messages):
            if role == "user":
                part = [self.user] + self.encode(content) + [self.end]
                ids += part
                mask += [0] * len(part)
            else:  # the role token is given (mask 0), the reply and its <|end|> are learned (mask 1)
                reply = self.encode(content) + [self.end]
                ids += [self.assistant] + reply
                mask += [0] + [1] * len(reply)
        return ids, mask

    def render_prompt(self, messages: list[dict]) -> list[int]:
        """Conversation ending with a user message -> ids ending in <|assistant|>: the model's cue
        to write a reply (generation then stops at <|end|>)."""
        if not messages or messages[-1].get("role") != "user":
            raise ValueError("render_prompt: the last message must be from the user")
        return self.render_conversation(messages)[0] + [self.assistant]


def _fold_system(messages: list[dict]) -> list[tuple[str, str]]:
    """Validate messages and merge system messages into the following user message."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("a conversation must be a non-empty list of messages")
    turns, system = [], None
    for k, m in enumerate(messages):
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"message {k}: unknown role {role!r} (expected 'system', 'user' or 'assistant')")
        if not isinstance(content, str):
            raise ValueError(f"message {k}: content must be a string, got {type(content).__name__}")
        if system is not None and role != "user":
            raise ValueError(f"message {k}: a system message must be followed by a user message")
        if role == "system":
            system = content
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(f"message {k}: expected role {expected!r}, got {role!r} "
                             "(turns must alternate, starting with the user)")
        if system is not None:
            content, system = system + "\n\n" + content, None
        turns.append((role, content))
    if system is not None:
        raise ValueError("the conversation ends with a system message")
    return turns


class StreamDecoder:
    """Turn tokens into text one at a time, for streaming generation.

    A token can end in the middle of a multi-byte UTF-8 character (an emoji is 4 bytes and may
    span tokens), so we cannot decode each token on its own. Python's incremental UTF-8 decoder
    holds back incomplete bytes until the character is complete.

        sd = StreamDecoder(tok)
        for t in generated: print(sd.push(t), end="", flush=True)
        print(sd.flush())
    """

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self.tok.enc.decode_single_token_bytes(token_id))

    def flush(self) -> str:
        """Emit whatever is left (an incomplete character becomes U+FFFD, like decode())."""
        return self._utf8.decode(b"", final=True)


# --------------------------------------------------------------------------------------------------
# Loading by spec: a .tiktoken path (our BPE), or "gpt2"

# GPT-2's files and their sha256, as in tiktoken_ext/openai_public.py. tiktoken caches each URL at
# <cache dir>/sha1(url); we check those files ourselves so that we never trigger a download.
_GPT2_FILES = {
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe":
        "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json":
        "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def _tiktoken_cache_dir() -> str:
    """The same lookup tiktoken.load.read_file_cached does."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _load_gpt2() -> Tokenizer:
    cache_dir = _tiktoken_cache_dir()
    for url, sha in _GPT2_FILES.items():
        path = os.path.join(cache_dir, hashlib.sha1(url.encode()).hexdigest())
        ok = cache_dir != "" and os.path.isfile(path)
        if ok:
            with open(path, "rb") as f:
                ok = hashlib.sha256(f.read()).hexdigest() == sha
        if not ok:
            raise RuntimeError(
                f"GPT-2 tokenizer files are not in the tiktoken cache ({cache_dir or 'caching disabled'!s}; "
                f"missing or corrupt: {url.rsplit('/', 1)[1]}) and minift never downloads them.\n"
                "To use it: on a machine with internet run\n"
                "    TIKTOKEN_CACHE_DIR=./tiktoken_cache python -c \"import tiktoken; tiktoken.get_encoding('gpt2')\"\n"
                "copy ./tiktoken_cache here and set TIKTOKEN_CACHE_DIR to it.\n"
                "Or use the default: minift's own BPE tokenizer (a .tiktoken file made by data/prepare.py).")
    base = tiktoken.get_encoding("gpt2")
    # GPT-2 already has <|endoftext|> = 50256; the four chat tokens go right after it.
    specials = dict(base._special_tokens)
    for i, s in enumerate(SPECIAL_TOKENS[1:]):
        specials[s] = base.n_vocab + i
    enc = tiktoken.Encoding("gpt2-minift", pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks,
                            special_tokens=specials)
    return Tokenizer(enc, "gpt2-minift")


def load_tokenizer(spec: str) -> Tokenizer:
    """spec: "gpt2" (needs tiktoken's local cache) or a path to a .tiktoken rank file."""
    if spec == "gpt2":
        return _load_gpt2()
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"tokenizer file {spec!r} not found (data/prepare.py writes one), or use 'gpt2'")
    try:
        return Tokenizer.from_ranks(load_ranks(spec))
    except ValueError as e:  # a truncated copy, or another kind of file
        raise ValueError(f"tokenizer file {spec!r} is not a whole .tiktoken rank file: {e}. Re-run data/prepare.py "
                         "(or python -m minift.tokenizer --input corpus.txt --out tok.tiktoken) to write one") from None


# --------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Train a byte-level BPE tokenizer and save it as .tiktoken")
    ap.add_argument("--input", required=True, help="UTF-8 text file")
    ap.add_argument("--vocab_size", type=int, default=2048, help="tokens incl. the 256 bytes (specials come on top)")
    ap.add_argument("--out", required=True, help="output .tiktoken path")
    ap.add_argument("--max_chars", type=int, default=None, help="train on at most this many characters")
    args = ap.parse_args()
    with open(args.input, encoding="utf-8") as f:
        text = f.read()
    t0 = time.time()
    ranks = train_bpe(text, args.vocab_size, max_chars=args.max_chars, verbose=True)
    dt = time.time() - t0
    save_ranks(args.out, ranks)
    tok = load_tokenizer(args.out)
    n_tokens = len(tok.encode(text))
    print(f"trained {len(ranks)} tokens (+{len(SPECIAL_TOKENS)} specials) in {dt:.1f}s -> {args.out}")
    print(f"compression: {len(text.encode('utf-8')) / n_tokens:.2f} bytes/token on {args.input}")
