"""Prepare pretraining data: documents -> tokenizer -> train.bin / val.bin.

    python data/prepare.py                          # generated story world: 4 MB, seed 1337
    python data/prepare.py --size_mb 500            # much bigger, for GPU runs (streams: memory stays small)
    python data/prepare.py --input shakespeare.txt  # any text file, or a folder of *.txt files
    python data/prepare.py --input stories/ --tokenizer gpt2

Writes into --out_dir (default data/generated/corpus):
    train.bin, val.bin   every document as [<|endoftext|>, its tokens...], back to back, as uint16
                         (read them with np.memmap(path, dtype=np.uint16, mode="r"))
    tokenizer.tiktoken   the BPE we trained (not written with --tokenizer gpt2)
    meta.json            sizes, token counts, tokenizer spec and hash, timings, distinct-3-gram ratio

Documents. The default corpus is minift/synthetic/world.py's stories. A user text file (UTF-8; a
byte-order mark is dropped) is split into documents on `<|endoftext|>` markers if its first
million characters hold one (TinyStories uses them), otherwise on blank lines (paragraphs; a
Shakespeare speech). A document longer than 64,000 characters is cut at the next line end, so
even a file without blank lines gives many documents. Every 20th document (the 2nd, 22nd, ...)
goes to val.bin: ~5%, deterministic, and spread over the whole text. The sample sizes below
(--bpe_mb, --prompts_mb) count characters, a byte each in the generated stories.

Streaming. Documents are produced, tokenized and appended to the .bin files in chunks of ~1 MB,
so a corpus of hundreds of millions of tokens never sits in memory as Python ints. Only the
tokenizer's training sample (the first --bpe_mb MB of training text) is held at once.
"""

import argparse
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
import os
import random
import re
import sys
import time
from collections import deque
from itertools import chain
from pathlib import Path

# Run as `python data/prepare.py` from the repo root: Python then puts data/ (not the root) on
# sys.path, so `import minift` would fail. Adding the root fixes it; importing it is unaffected.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from minift.synthetic import splits, world  # noqa: E402
from minift.config import HelpWithDefaults, run  # noqa: E402
from minift.formats import first_non_utf8, require_folder, write_atomically, write_json  # noqa: E402
from minift.tokenizer import load_tokenizer, save_ranks, train_bpe  # noqa: E402

EOT_MARKER = "<|endoftext|>"
VAL_EVERY = 20  # document i goes to val when i % VAL_EVERY == 1
MAX_DOC_CHARS = 64_000
CHUNK_BYTES = 1_000_000  # tokenize and write this much text at a time
NGRAM_SAMPLE_CHARS = 1_000_000  # the distinct-3-gram ratio depends on sample size: fix it
SHARD_BYTES = 8_000_000  # generated text is made in shards of this size, in parallel (generated_documents)


# --------------------------------------------------------------------------------------------------
# Document sources: each is a generator of strings.

def generated_documents(seed: int, n_bytes: int, formatted_share: float = 0.25, processes: int | None = None):
    """The story world's documents until about n_bytes of text, made SHARD_BYTES at a time over
    `processes` worker processes (default: one per core) when there is more than one shard.

    Shard 0 is seed's own stream and shard k > 0 the stream of seed "<seed>/<k>", each cut at
    SHARD_BYTES, so the text depends on the seed and the size only, never on the core count, and
    every corpus of up to SHARD_BYTES (the tiny preset's 4 MB) is the one sequential stream it
    always was. The shards run in parallel because the text is generated in Python, one
    document at a time, which makes the small preset's 200 MB slow on one core (FINDINGS.md,
    "The corpus and the tokenizer")."""
    sizes = [min(SHARD_BYTES, n_bytes - start) for start in range(0, n_bytes, SHARD_BYTES)]
    jobs = [(seed if k == 0 else f"{seed}/{k}", size, formatted_share) for k, size in enumerate(sizes)]
    processes = min(processes or os.cpu_count() or 1, len(jobs))
    if processes <= 1:
        for job in jobs:
            yield from _shard_documents(*job)
        return
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pending = deque()  # shards handed out, taken back in order; a few ahead, so memory stays small
        for job in jobs:
            pending.append(pool.apply_async(_shard_documents_list, (job,)))
            if len(pending) > processes:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()


def _shard_documents(seed, n_bytes: int, formatted_share: float):
    """One shard: a share of formatted pieces among the stories, until about n_bytes of text.

    A share of the documents are short *formatted* pieces: a titled description, a bullet list, a
    note in capitals, a JSON record, a letter with a P.S. (minift.synthetic.splits.formatted_piece). Web text,
    which real models pretrain on, is full of such forms; without them our base model would meet a
    `<<title>>` or an ALL-CAPS word for the first time during SFT, and a few minutes of SFT are
    too little to learn how to write them AND when to. The pieces carry no instructions, so the
    base model still does not know when to use which form: that is what SFT teaches."""
    stories = world.iter_documents(seed)
    rng = random.Random(f"formatted/{seed}")
    total = 0
    while total < n_bytes:
        doc = splits.formatted_piece(rng) if rng.random() < formatted_share else next(stories)
        yield doc
        total += len(doc) + 1


def _shard_documents_list(job):
    return list(_shard_documents(*job))


def instruction_prompts(seed: int, n_bytes: int):
    """Instruction prompts in the style of the SFT data (train-split templates and values only),
    about n_bytes of them. They are added to the tokenizer's training text, never to the corpus:
    a BPE that has seen "Your answer must contain a title" spends few tokens on prompts."""
    rng = random.Random(f"prompts/{seed}")
    total = 0
    while total < n_bytes:
        prompt = splits.sample(rng, "train", contrast=False).prompt
        yield prompt
        total += len(prompt) + 1


def input_files(path: str) -> list[Path]:
    """A file, or all *.txt files under a folder (sorted, so the order is reproducible)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--input {path!r} does not exist")
    files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
    if not files:
        raise ValueError(f"--input {path!r} is a folder without any *.txt file")
    return files


def file_documents(path: Path):
    """Split one text file into documents, streaming it line by line (see the module docstring).
    Text that is not UTF-8 (Latin-1, say) or looks binary is refused, naming the file and line:
    decoded with replacement characters it would train a tokenizer and a model on garbage."""
    with open(path, "rb") as f:
        if b"\x00" in f.read(1_000_000):
            raise ValueError(f"{path} looks binary (it holds NUL bytes); --input takes UTF-8 text files")
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not text
            by_marker = EOT_MARKER in f.read(1_000_000)
        yield from _split_documents(path, by_marker)
    except UnicodeDecodeError:
        line, _, byte, was = first_non_utf8(path)
        raise ValueError(f"{path} line {line} is not UTF-8 text (byte 0x{byte:02x}); convert it, "
                         f"e.g. iconv -f {was} -t utf-8") from None


def _split_documents(path, by_marker):
    doc, size = [], 0
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            for k, piece in enumerate(line.split(EOT_MARKER) if by_marker else [line]):
                if k > 0:  # a marker ends the document
                    yield from _emit(doc)
                    size = 0
                doc.append(piece)
                size += len(piece)
                blank_line = not by_marker and not piece.strip()
                if blank_line or size > MAX_DOC_CHARS:
                    yield from _emit(doc)
                    size = 0
    yield from _emit(doc)


def _emit(doc: list[str]):
    """Yield the collected lines as one document (unless it is empty) and start a new one."""
    text = "".join(doc).strip()
    doc.clear()
    if text:
        yield text


# --------------------------------------------------------------------------------------------------
# Helpers

def distinct_ngram_ratio(text: str, n: int = 3) -> float:
    """Distinct word n-grams / all word n-grams: 1.0 = nothing repeats; near 0 = a few templates."""
    words = re.findall(r"\w+(?:'\w+)?", text.lower())
    grams = list(zip(*(words[i:] for i in range(n))))
    return len(set(grams)) / max(1, len(grams))


class _Timed:
    """Wrap an iterator and add up the seconds spent inside it (generation time is interleaved
    with tokenizing, so we time it this way)."""

    def __init__(self, it):
        self.it, self.seconds = iter(it), 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.seconds += time.perf_counter() - t0


def _chunks(docs, n_bytes):
    """Group documents into lists of about n_bytes of text."""
    chunk, size = [], 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc)
        if size >= n_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


# --------------------------------------------------------------------------------------------------

def prepare(out_dir: str, input: str | None = None, size_mb: float = 4.0, seed: int = 1337,
            vocab_size: int = 2048, tokenizer: str | None = None, bpe_mb: float = 8.0,
            formatted_share: float = 0.25, prompts_mb: float = 0.5, verbose: bool = True) -> dict:
    """Build train.bin, val.bin, tokenizer.tiktoken and meta.json in out_dir; returns the meta.

    input: None = generate size_mb MB (10^6 bytes) of story-world text from `seed`; else a text
    file or folder (size_mb is then ignored: all of it is used).
    tokenizer: None = train a BPE of vocab_size tokens (plus 5 specials) on the first bpe_mb MB
    of training text (plus, for the generated corpus, prompts_mb MB of instruction prompts);
    "gpt2" = tiktoken's GPT-2 encoding; a path = an existing .tiktoken file.
    formatted_share: the share of generated documents that are formatted pieces.
    """
    log = print if verbose else (lambda *a, **k: None)
    check_options(size_mb=size_mb, vocab_size=vocab_size, bpe_mb=bpe_mb, formatted_share=formatted_share,
                  prompts_mb=prompts_mb)
    t_start = time.perf_counter()
    require_folder(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if input is None:
        source = f"generated (minift.synthetic.world, seed {seed})"
        docs = _Timed(generated_documents(seed, int(size_mb * 1e6), formatted_share))
    else:
        source = os.path.abspath(input)
        docs = _Timed(chain.from_iterable(file_documents(p) for p in input_files(input)))

    # 1) Tokenizer. To train one we need a sample first: read documents until we have bpe_mb MB
    # of training text, keep them, and tokenize them later like the rest of the stream.
    head: list[str] = []
    staged = None  # the tokenizer file this run wrote beside its final name (not an older run's)
    t_tok = time.perf_counter()
    if tokenizer is None:
        sample, size = [], 0
        for i, doc in enumerate(docs):
            head.append(doc)
            if i % VAL_EVERY != 1:  # train on training documents only
                sample.append(doc)
                size += len(doc)
            if size >= bpe_mb * 1e6:
                break
        if not head:
            raise ValueError(f"no text found in {input!r}")
        t_tok = time.perf_counter()
        if input is None:
            sample += instruction_prompts(seed, int(prompts_mb * 1e6))
        ranks = train_bpe("\n".join(sample or head), vocab_size)
        if len(ranks) < vocab_size:   # no pair of neighbours is left within a word to merge
            log(f"note: the BPE sample gives only {len(ranks)} of --vocab_size={vocab_size} tokens: each of its "
                f"words is one token already, so a larger --vocab_size adds nothing; only text with more "
                f"distinct words would")
        tok_spec = os.path.join(out_dir, "tokenizer.tiktoken")
        staged = tok_spec + ".new"
        save_ranks(staged, ranks)
        tok = load_tokenizer(staged)
    elif tokenizer == "gpt2":
        tok, tok_spec = load_tokenizer("gpt2"), "gpt2"  # offline this raises a clear error
    else:
        tok_spec = os.path.join(out_dir, "tokenizer.tiktoken")
        tok = load_tokenizer(tokenizer)
        if tok.n_vocab > 65536:  # a check, not an assert: python -O would write wrapped ids
            raise ValueError(f"--tokenizer {tokenizer} has {tok.n_vocab} tokens, and the token files hold uint16 "
                             "ids (at most 65536); use a smaller tokenizer, or train one (leave out --tokenizer)")
        if os.path.abspath(tokenizer) != os.path.abspath(tok_spec):  # keep a copy beside the data
            staged = tok_spec + ".new"
            with open(tokenizer, "rb") as f:
                ranks_file = f.read()
            write_atomically(staged, lambda out: out.write(ranks_file))
    tokenizer_seconds = time.perf_counter() - t_tok
    log(f"tokenizer: {tok.name}, {tok.n_vocab} tokens (incl. specials), {tokenizer_seconds:.2f}s")

    # 2) Tokenize everything in chunks and append to the .bin files. Each document becomes
    # [eot] + tokens: <|endoftext|> *before* a document tells the model "a new text starts here".
    counts = {"train": [0, 0, 0], "val": [0, 0, 0]}  # documents, tokens, bytes
    ngram_sample, ngram_chars = [], 0
    paths = {s: os.path.join(out_dir, f"{s}.bin") for s in counts}
    files = {s: open(p + ".tmp", "wb") for s, p in paths.items()}
    t_enc, n_docs, next_report = 0.0, 0, 50e6
    # tiktoken's encode_ordinary_batch, with a pool we shut down ourselves: on Ctrl-C its own
    # pool waited for every queued document (a hang on a big chunk); ours drops them.
    pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))
    finished = False
    try:
        for chunk in _chunks(chain(head, docs), CHUNK_BYTES):
            t0 = time.perf_counter()
            ids = list(pool.map(tok.enc.encode_ordinary, chunk))  # tiktoken, in Rust
            parts = {"train": [], "val": []}
            for doc, doc_ids in zip(chunk, ids):
                split = "val" if n_docs % VAL_EVERY == 1 else "train"
                parts[split] += [[tok.eot], doc_ids]
                c = counts[split]
                c[0], c[1], c[2] = c[0] + 1, c[1] + len(doc_ids) + 1, c[2] + len(doc.encode("utf-8"))
                n_docs += 1
                if ngram_chars < NGRAM_SAMPLE_CHARS:
                    ngram_sample.append(doc)
                    ngram_chars += len(doc)
            for split, p in parts.items():
                if p:
                    np.fromiter(chain.from_iterable(p), dtype=np.uint16).tofile(files[split])
            t_enc += time.perf_counter() - t0
            done = counts["train"][2] + counts["val"][2]
            if done >= next_report:  # a sign of life on big corpora
                log(f"  ... {n_docs:,} documents, {done / 1e6:.0f} MB tokenized")
                next_report += 50e6
        for f in files.values():  # on disk before the renames below, as write_atomically does
            f.flush()
            os.fsync(f.fileno())
        finished = n_docs > 0
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        for f in files.values():
            f.close()
        if not finished:  # half-made files are of no use: leave the previous corpus, and nothing else
            for leftover in [p + ".tmp" for p in paths.values()] + ([staged] if staged else []):
                if os.path.exists(leftover):
                    os.remove(leftover)
    if n_docs == 0:
        raise ValueError(f"no text found in {input!r}")
    # Only complete files get the real names, the tokenizer with them: one interrupted before
    # this point leaves the previous corpus and its tokenizer whole, and matching. The files
    # are renamed one by one, so meta.json goes first and comes back last: a run stopped
    # between two renames leaves no meta.json, and train_pretrain.py asks for a new prepare
    # instead of reading new tokens with an old tokenizer.
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        os.remove(meta_path)
    for split, p in paths.items():
        os.replace(p + ".tmp", p)
    if staged:
        os.replace(staged, tok_spec)

    # 3) Stats and meta.json
    ratio = distinct_ngram_ratio("\n".join(ngram_sample))
    total_bytes = counts["train"][2] + counts["val"][2]
    meta = {
        "source": source, "seed": seed if input is None else None,
        "tokenizer": tok_spec, "tokenizer_file": None if tok_spec == "gpt2" else "tokenizer.tiktoken",
        "tokenizer_name": tok.name, "tokenizer_sha256": tok.identity["sha256"],
        "vocab_size": tok.n_vocab, "eot": tok.eot, "dtype": "uint16",
        "documents": n_docs, "train_documents": counts["train"][0], "val_documents": counts["val"][0],
        "train_tokens": counts["train"][1], "val_tokens": counts["val"][1],
        "bytes": total_bytes, "bytes_per_token": round(total_bytes / max(1, counts["train"][1] + counts["val"][1]), 3),
        "distinct_3gram_ratio": round(ratio, 4),
        "distinct_3gram_sample_chars": ngram_chars,
        "seconds": {"generate_or_read": round(docs.seconds, 2), "tokenizer": round(tokenizer_seconds, 2),
                    "tokenize": round(t_enc, 2), "total": round(time.perf_counter() - t_start, 2)},
    }
    write_json(meta_path, meta, indent=2)

    s = meta["seconds"]
    log(f"source:     {source}")
    log(f"size:       {total_bytes / 1e6:.2f} MB in {n_docs} documents "
        f"({meta['train_documents']} train / {meta['val_documents']} val)")
    log(f"tokens:     {meta['train_tokens']:,} train / {meta['val_tokens']:,} val "
        f"({meta['bytes_per_token']} bytes/token, vocab {tok.n_vocab})")
    if not meta["val_documents"]:   # train_pretrain.py refuses an empty val.bin; say so now
        log(f"note: val.bin is empty: the 2nd, 22nd, ... document goes to it, and the text has {n_docs}; "
            f"blank lines separate documents")
    log(f"distinct 3-gram ratio: {ratio:.3f} (on the first {meta['distinct_3gram_sample_chars'] / 1e6:.2f}M "
        "characters; 1.0 = no word triple repeats)")
    log(f"seconds:    text {s['generate_or_read']}, tokenizer training {s['tokenizer']}, "
        f"tokenizing {s['tokenize']}, total {s['total']}")
    log(f"wrote {out_dir}/: train.bin val.bin meta.json" + ("" if tok_spec == "gpt2" else " tokenizer.tiktoken"))
    return meta


def check_options(size_mb, vocab_size, bpe_mb, formatted_share, prompts_mb):
    """Ranges, before any work: one line naming the option."""
    problems = [(size_mb > 0, f"--size_mb={size_mb}: expected more than 0"),
                (256 <= vocab_size <= 65536 - 5, f"--vocab_size={vocab_size}: expected 256 (the single bytes) to "
                                                  "65531 (ids are stored as uint16, with 5 special tokens)"),
                (bpe_mb > 0, f"--bpe_mb={bpe_mb}: expected more than 0"),
                (0 <= formatted_share <= 1, f"--formatted_share={formatted_share}: expected a share from 0 to 1"),
                (prompts_mb >= 0, f"--prompts_mb={prompts_mb}: expected 0 or more")]
    for ok, message in problems:
        if not ok:
            raise ValueError(message)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpWithDefaults)
    ap.add_argument("--out_dir", default="data/generated/corpus",
                    help="where train.bin, val.bin and the tokenizer are written")
    ap.add_argument("--input", default=None, help="a text file or a folder of *.txt files (default: generate)")
    ap.add_argument("--size_mb", type=float, default=4.0, help="MB of text to generate (ignored with --input)")
    ap.add_argument("--seed", type=int, default=1337, help="seed of the generated corpus")
    ap.add_argument("--vocab_size", type=int, default=2048, help="BPE tokens incl. the 256 bytes (+5 specials)")
    ap.add_argument("--tokenizer", default=None, help="'gpt2' or a .tiktoken file to reuse (default: train one)")
    ap.add_argument("--bpe_mb", type=float, default=8.0,
                    help="train the BPE on about this many MB of training text (whole documents; "
                         "the generated corpus adds --prompts_mb of prompts)")
    ap.add_argument("--formatted_share", type=float, default=0.25,
                    help="share of generated documents that are formatted pieces (lists, titles, capitals...)")
    ap.add_argument("--prompts_mb", type=float, default=0.5,
                    help="MB of instruction prompts added to the BPE's training text (generated corpus only)")
    args = ap.parse_args(argv)
    prepare(args.out_dir, input=args.input, size_mb=args.size_mb, seed=args.seed, vocab_size=args.vocab_size,
            tokenizer=args.tokenizer, bpe_mb=args.bpe_mb, formatted_share=args.formatted_share,
            prompts_mb=args.prompts_mb)


if __name__ == "__main__":
    run(main)
