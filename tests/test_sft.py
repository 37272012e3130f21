"""SFT's data path: render + mask, length-bucketed batches, overlong conversations; gradient
accumulation. (train_sft.py end to end runs in test_pipeline.py; its evaluation in test_evaluate.py.)"""
from collections import Counter

import pytest
import torch

import train_pretrain
import train_sft
from conftest import read_metrics, run_main
from minift.formats import write_jsonl
from minift.tokenizer import Tokenizer, train_bpe
from train_sft import get_batch, length_order, render_dataset

MESSAGES = [{"role": "user", "content": "Name a pet."}, {"role": "assistant", "content": "A cat."}]


def test_sft_batch_targets_only_the_answer_and_end_token():
    tok = Tokenizer.from_ranks(train_bpe("Name a pet. A cat. A dog. " * 50, 300))
    examples, dropped = render_dataset([{"messages": MESSAGES}], tok, block_size=64)
    assert dropped == 0
    x, y = get_batch(examples, length_order(examples), 2, tok.pad, torch.Generator().manual_seed(0), "cpu",
                     block_size=64)
    ids = examples[0][0]
    answer = tok.encode("A cat.")
    # inputs are the conversation minus its last token, right-padded to a multiple of 16;
    # targets are -1 except the answer + <|end|>
    n = len(ids) - 1
    assert x.shape[1] == 16 * -(-n // 16)
    assert x[0, :n].tolist() == ids[:-1] and set(x[0, n:].tolist()) <= {tok.pad}
    learned = [t for t in y[0].tolist() if t != -1]
    assert learned == answer + [tok.end]
    # the target sits one position before the token it predicts
    first = y[0].tolist().index(answer[0])
    assert x[0, first].item() == tok.assistant


def test_length_order_sorts_by_the_whole_conversation():
    """The batch's padding depends on the whole rendered conversation, not the answer alone."""
    examples = [([0] * 5, [1] + [0] * 4), ([0] * 3, [1] * 3), ([0] * 9, [0] * 9), ([0], [1])]
    assert length_order(examples) == [3, 1, 0, 2]


def test_length_buckets_cut_padding_and_reach_every_example():
    """Batches come from a window of similar lengths: far less padding than drawing at
    random, yet every example, the shortest and longest included, still comes up."""
    examples = [([7] * n, [0] * n) for n in range(10, 210)]   # lengths 10..209
    order = length_order(examples)
    gen = torch.Generator().manual_seed(0)
    seen, padded, real = set(), 0, 0
    for _ in range(300):
        x, _ = get_batch(examples, order, 8, 0, gen, "cpu", block_size=256, window=16)
        lengths = (x == 7).sum(dim=1)
        assert x.shape[1] % 16 == 0 and x.shape[1] - 16 < lengths.max()   # rounded up, no further
        padded += 8 * int(lengths.max())   # the padding that length buckets control
        real += int(lengths.sum())
        seen.update(int(n) + 1 for n in lengths)   # each row's example length
    assert real / padded > 0.9          # random batches of 8 from 10..209 fill only ~60%
    assert seen == set(range(10, 210))  # every example was drawn at least once


def test_overlong_conversations_are_dropped_and_counted():
    tok = Tokenizer.from_ranks(train_bpe("Name a pet. A cat. " * 50, 300))
    long = [{"role": "user", "content": "pet " * 100}, {"role": "assistant", "content": "A cat."}]
    examples, dropped = render_dataset([{"messages": MESSAGES}, {"messages": long}], tok, block_size=64)
    assert len(examples) == 1 and dropped == 1


def test_a_conversation_of_block_size_plus_one_tokens_fits():
    """Inputs drop the last token and targets the first, so block_size + 1 tokens make one
    full window; one more is too long and is dropped."""
    tok = Tokenizer.from_ranks({bytes([i]): i for i in range(256)})   # one token a byte

    def conversation(reply_len):
        return {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a" * reply_len}]}
    block = 32
    overhead = len(tok.render_conversation(conversation(0)["messages"])[0])
    fits, too_long = conversation(block + 1 - overhead), conversation(block + 2 - overhead)
    kept, dropped = render_dataset([fits, too_long], tok, block)
    assert len(kept) == 1 and len(kept[0][0]) == block + 1 and dropped == 1
    x, _ = get_batch(kept, [0], 1, tok.pad, torch.Generator().manual_seed(0), "cpu", block)
    assert x.shape == (1, block)


def test_the_length_window_wraps_so_every_example_is_drawn_as_often():
    """Batches come from a window of neighbours in length order; at the ends it wraps around,
    or the longest and shortest examples would be drawn less often than the rest."""
    examples = [([7] * n, [0] * n) for n in range(10, 110)]   # 100 examples, lengths 10..109
    order, g = length_order(examples), torch.Generator().manual_seed(0)
    counts = Counter()
    for _ in range(2000):
        x, _ = get_batch(examples, order, 8, 0, g, "cpu", block_size=256, window=16)
        counts.update((x == 7).sum(1).add(1).tolist())   # the inputs drop the last token
    mean = 2000 * 8 / 100
    assert len(counts) == 100 and 0.5 * mean < min(counts.values()) and max(counts.values()) < 1.5 * mean


def test_gradient_accumulation_averages_its_micro_batches(corpus_dir, tmp_path, monkeypatch):
    """As in pretraining: k micro-batches of the same conversations give one's gradient. And a
    run resumed from the first holds each step once in its log."""
    run_main(train_pretrain, ["--preset=micro", "--device=cpu", f"--data_dir={corpus_dir}",
                              f"--out_dir={tmp_path}/pre", "--max_steps=1", "--eval_batches=1"])
    write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": f"Say {w}."},
                                                       {"role": "assistant", "content": f"{w}!"}]}
                                         for w in ("cat", "dog", "sun", "tree")])
    real, first = train_sft.get_batch, {}

    def the_same_batch(*args, **kwargs):
        return first.setdefault("xy", real(*args, **kwargs))
    monkeypatch.setattr(train_sft, "get_batch", the_same_batch)
    logged = []
    for k in (1, 3):
        run_main(train_sft, ["--preset=micro", "--device=cpu", "--dtype=float32", f"--init_from={tmp_path}/pre/ckpt.pt",
                             f"--data={tmp_path}/sft.jsonl", "--eval_data=", f"--out_dir={tmp_path}/k{k}",
                             "--max_steps=1", f"--grad_accum={k}"])
        logged.append(next(m for m in read_metrics(tmp_path / f"k{k}") if "grad_norm" in m))
    assert logged[1]["grad_norm"] == pytest.approx(logged[0]["grad_norm"], rel=1e-4)
    assert logged[1]["loss"] == pytest.approx(logged[0]["loss"], abs=1e-5)
    # resumed after a run that died past its save: its log keeps the saved step, and the new one once
    with open(tmp_path / "k1" / "metrics.jsonl", "a") as log:
        log.write('{"step": 2, "loss": 9.9}\n')
    run_main(train_sft, ["--preset=micro", "--device=cpu", "--dtype=float32", f"--init_from={tmp_path}/pre/ckpt.pt",
                         f"--data={tmp_path}/sft.jsonl", "--eval_data=", f"--out_dir={tmp_path}/k1",
                         "--max_steps=2", "--log_interval=1"])
    losses = [(m["step"], m["loss"]) for m in read_metrics(tmp_path / "k1") if "loss" in m]
    assert losses[0] == (1, logged[0]["loss"]) and [s for s, _ in losses] == [1, 2] and losses[1][1] != 9.9
    # the evaluation during training: the first --eval_examples prompts, answered with --max_new_tokens
    ifeval = [{"key": i, "prompt": f"Say {w}.", "instruction_id_list": [], "kwargs": []}
              for i, w in enumerate(("cat", "dog", "sun", "tree", "cup"))]
    write_jsonl(tmp_path / "eval.jsonl", ifeval)
    asked, real_evaluate = [], train_sft.evaluate_records
    monkeypatch.setattr(train_sft, "evaluate_records", lambda model, tok, records, max_new_tokens: asked.append(
        (len(records), max_new_tokens)) or real_evaluate(model, tok, records, max_new_tokens))
    run_main(train_sft, ["--preset=micro", "--device=cpu", f"--init_from={tmp_path}/pre/ckpt.pt",
                         f"--data={tmp_path}/sft.jsonl", f"--eval_data={tmp_path}/eval.jsonl",
                         f"--out_dir={tmp_path}/ev", "--max_steps=1", "--eval_examples=3", "--max_new_tokens=9"])
    assert asked == [(3, 9)]
