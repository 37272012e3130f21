"""minift/engine.py: the KV cache against recomputing every step, token for token, greedy
and sampled; stop tokens; rows that leave the batch; the sampler's filters and frequencies."""
import torch

import minift.engine
from minift.engine import KVCache, generate, sample_next
from minift.model import pad_left
from test_model import CFG, make_model


def wandering_model(seed=0):
    """A random GPT with large weights: an untrained one predicts almost uniformly, so its greedy
    answers repeat one token and its samples ignore the context, and a wrong position or a
    wrong cached key would change nothing a test compares. With weights 8x larger the answers
    depend on every earlier token."""
    model = make_model(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.mul_(1 if "ln" in name else 8)
    return model


def test_kv_cache_matches_full_recomputation_greedy_mixed_lengths():
    model = wandering_model()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    fast = generate(model, prompts, 30, temperature=0)
    slow = generate(model, prompts, 30, temperature=0, use_cache=False)
    assert all(len(set(row)) >= 3 for row in fast)   # the answers wander, so a wrong step would show
    assert fast == slow
    # batching does not change a row's output either
    assert generate(model, prompts[1:2], 30, temperature=0)[0] == fast[1]


def test_kv_cache_logits_match_step_by_step():
    """Feed tokens one at a time through the cache and compare every logit to one full pass."""
    model = make_model()
    x = torch.randint(0, 97, (2, 12))
    full, _ = model(x)
    cache = KVCache(CFG, 2, 12, "cpu", torch.float32)
    steps = [model(x[:, :5], cache=cache)[0]] + [model(x[:, t:t + 1], cache=cache)[0] for t in range(5, 12)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    # and as generation feeds it: a left-padded batch, the mask growing by one token each step
    ids, mask = pad_left([[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24, 25]], pad_token=0)
    full, _ = model(ids, attention_mask=mask)
    cache = KVCache(CFG, 2, ids.size(1), "cpu", torch.float32)
    steps = [model(ids[:, :4], attention_mask=mask[:, :4], cache=cache)[0]]
    steps += [model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=cache)[0] for t in range(4, ids.size(1))]
    stepped = torch.cat(steps, 1)
    assert torch.allclose(stepped[mask.bool()], full[mask.bool()], atol=1e-5)   # every real token's logits


def test_kv_cache_sampling_matches_with_same_seed_and_stop_token():
    model = wandering_model()
    prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11]]
    kw = dict(temperature=1.0, top_k=20, top_p=0.9, stop_tokens=(13,))
    fast = generate(model, prompts, 25, generator=torch.Generator().manual_seed(1), **kw)
    slow = generate(model, prompts, 25, generator=torch.Generator().manual_seed(1), use_cache=False, **kw)
    assert fast == slow
    for row in fast:  # nothing follows the stop token
        assert 13 not in row[:-1]


def test_a_row_stops_at_the_first_of_its_stop_tokens():
    """With several stop tokens an answer ends at whichever comes first, which it keeps; until
    then it is the answer generated without any."""
    model = make_model()
    prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11]]
    kw = dict(temperature=1.0, top_k=20)
    unstopped = generate(model, prompts, 25, generator=torch.Generator().manual_seed(1), **kw)
    stops = (unstopped[0][4], unstopped[2][9])
    stopped = generate(model, prompts, 25, stop_tokens=stops, generator=torch.Generator().manual_seed(1), **kw)
    for full, cut in zip(unstopped, stopped):
        ends = [i for i, t in enumerate(full) if t in stops]
        assert cut == (full[:ends[0] + 1] if ends else full)


def test_rows_that_stop_leave_the_batch_and_no_answer_changes(monkeypatch):
    """Generation drops the rows whose answers have ended (KVCache.keep); every answer, greedy
    and sampled, is the one the whole batch computed to the end would give."""
    model = wandering_model()
    prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18], [19, 20, 21], [22, 23]]
    left = []   # how many rows each call of KVCache.keep dropped
    keep = minift.engine.KVCache.keep
    monkeypatch.setattr(minift.engine.KVCache, "keep", lambda self, rows: (left.append(int((~rows).sum())),
                                                                           keep(self, rows)))
    for kw in (dict(temperature=0), dict(temperature=1.0, top_k=20, top_p=0.9)):
        def answers(stops, share, **more):
            monkeypatch.setattr(minift.engine, "DROP_STOPPED_SHARE", share)
            return generate(model, prompts, 40, stop_tokens=stops, generator=torch.Generator().manual_seed(1),
                            **kw, **more)
        # stop at the token that first appears at the most different steps, so that rows end apart
        unstopped = answers((), float("inf"))
        stop = (max(range(97), key=lambda t: len({a.index(t) for a in unstopped if t in a})),)
        left.clear()
        everyone = answers(stop, float("inf"))        # rows never leave
        assert left == []
        assert answers(stop, 0.25) == everyone
        assert sum(left) >= 2 and len({len(a) for a in everyone}) >= 3   # rows did leave, at different steps
        assert answers(stop, 0.25, use_cache=False) == everyone


def test_sample_next_filters():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0]])
    assert sample_next(logits, temperature=0).item() == 2
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert draws <= {2, 3} and len(draws) == 2
    # top_p: token 2 alone holds ~93% of the mass, so p=0.5 keeps only it
    assert {sample_next(logits, 1.0, top_p=0.5, generator=g).item() for _ in range(50)} == {2}
    # the smallest set that reaches p: of four equally likely tokens, two hold exactly 0.5
    # (powers of two, so the sums are exact) and a third is not needed
    even = torch.zeros(1, 4)
    assert len({sample_next(even, 1.0, top_p=0.5, generator=g).item() for _ in range(200)}) == 2
    assert len({sample_next(even, 1.0, top_p=0.75, generator=g).item() for _ in range(200)}) == 3
    assert {sample_next(logits, 1.0, top_p=0.0, generator=g).item() for _ in range(20)} == {2}   # greedy
    # top_k keeps every token tied with the k-th: no tie is broken by the order of the vocabulary
    tied = torch.tensor([[0.0, 3.0, 3.0, 1.0]])
    assert {sample_next(tied, 1.0, top_k=1, generator=g).item() for _ in range(100)} == {1, 2}


def test_generation_divides_by_the_temperature_once():
    """generate() samples the first token as sample_next does from the prompt's last logits at
    the same temperature, with the same uniform numbers: the two paths of the cache tests
    below would agree even if both divided twice."""
    model, prompt = wandering_model(), [1, 2, 3]
    out = generate(model, [prompt] * 200, 1, temperature=0.7, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ids, mask = pad_left([prompt], 0)
        logits = model.lm_head(model.hidden_states(ids, mask)[:, -1])
    uniform = torch.rand(200, 1, generator=torch.Generator().manual_seed(3))
    want = sample_next(logits.expand(200, -1), 0.7, uniform=uniform)
    assert [o[0] for o in out] == want.tolist() and len(set(want.tolist())) > 1


def test_sample_next_draws_from_the_tempered_softmax(monkeypatch):
    """Inverse-CDF sampling: the frequencies are softmax(logits / T), and a token of probability
    0 (a logit of -inf, as top-k leaves) is never drawn, even at either end of the vocabulary."""
    logits = torch.tensor([[float("-inf"), 0.0, 1.0, 2.0, float("-inf")]])
    draws = sample_next(logits.expand(20000, -1), 0.5, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    assert freq[0] == 0 and freq[4] == 0
    assert torch.allclose(freq, (logits[0] / 0.5).softmax(-1), atol=0.01), freq
    # the rare draw that rounding puts at the very end of the CDF picks the last possible token
    monkeypatch.setattr(torch, "rand", lambda rows, cols, **kw: torch.ones(rows, cols))
    assert sample_next(logits, 0.5).item() == 3


def test_a_stopped_row_emits_its_stop_token_from_then_on(monkeypatch):
    """generate_stream's promise: once a row has stopped, every later step yields the first
    stop token for it (here no row leaves the batch, so every step is seen for every row)."""
    monkeypatch.setattr(minift.engine, "DROP_STOPPED_SHARE", float("inf"))
    model = wandering_model()
    prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11], [12, 13]]
    free = generate(model, prompts, 30, temperature=0)
    stop = max(range(CFG.vocab_size), key=lambda t: sum(t in a for a in free))   # in the most answers
    steps = torch.stack(list(minift.engine.generate_stream(model, prompts, 30, temperature=0,
                                                             stop_tokens=(stop,))), 1).tolist()
    early = [row for row in steps if stop in row[:-1]]
    assert early and all(set(row[row.index(stop):]) == {stop} for row in early)


def test_without_a_stop_every_row_gets_max_new_tokens_or_the_rest_of_the_context():
    model = wandering_model()
    assert [len(a) for a in generate(model, [[1, 2, 3], [4]], 7, temperature=0)] == [7, 7]
    assert len(generate(model, [[1] * (CFG.block_size - 3)], 10, temperature=0)[0]) == 3
    # the longest prompt sets the end for every row of its batch
    assert [len(a) for a in generate(model, [[1] * (CFG.block_size - 3), [1]], 10, temperature=0)] == [3, 3]


def test_the_stream_ends_when_the_last_row_stops_and_rows_that_left_emit_the_first_stop(monkeypatch):
    """With rows leaving the batch: a row that ends at either stop token yields the first one at
    every later step, and the stream ends at the step where the last row stops (sample.py and
    generate() cut at any stop themselves, so only the stream shows these)."""
    model = wandering_model()
    prompts = [[3, 4, 5], [6], [7, 8, 9, 10, 11], [12, 13]]
    kw = dict(temperature=1.0, top_k=20, top_p=0.9)
    free = generate(model, prompts, 30, generator=torch.Generator().manual_seed(1), **kw)
    stops = (free[0][-3], free[3][1])
    ends = [min(a.index(t) for t in stops if t in a) for a in free]
    left = []
    keep = minift.engine.KVCache.keep
    monkeypatch.setattr(minift.engine.KVCache, "keep", lambda self, rows: (left.append(int((~rows).sum())),
                                                                           keep(self, rows)))
    steps = torch.stack(list(minift.engine.generate_stream(model, prompts, 30, stop_tokens=stops,
                                                             generator=torch.Generator().manual_seed(1), **kw)), 1)
    # row 3 ends at the second stop while others go on; rows left the batch; the last ends early
    assert free[3][ends[3]] == stops[1] and ends[3] < max(ends) < 29 and sum(left) >= 1
    assert steps.size(1) == max(ends) + 1
    for answer, row, end in zip(free, steps.tolist(), ends):
        assert row == answer[:end + 1] + [stops[0]] * (len(row) - end - 1)


def test_sample_next_never_draws_a_token_of_probability_zero():
    """The first token whose cumulative probability exceeds u: at u = 0 not a token of
    probability 0 before it, and at u on a boundary the token after the boundary."""
    logits = torch.tensor([[float("-inf"), 0.0, 0.0, float("-inf")]])
    assert sample_next(logits, 1.0, uniform=torch.zeros(1, 1)).item() == 1
    assert sample_next(logits, 1.0, uniform=torch.full((1, 1), 0.5)).item() == 2
