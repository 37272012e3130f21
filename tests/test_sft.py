"""SFT's data path: render + mask, length-bucketed batches, overlong conversations.
(train_sft.py end to end runs in test_pipeline.py; its evaluation in test_evaluate.py.)"""
import torch

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
