"""
Generating text with the GPT: a KV cache, the sampler, and batched generation from prompts
of mixed length, streamed one token a step. Every stage that samples (evaluation, the
preference pairs, PPO's and GRPO's rollouts, sample.py) goes through `generate_stream`.

The KV cache is an optimisation only: `use_cache=False` recomputes the whole sequence at
every step, the naive path that tests/test_engine.py checks the cache against, token for
token. Shapes as in minift/model.py: B = batch, S = positions seen, H = heads, D = head size;
b = the rows still generating.
"""

import torch

from minift.model import pad_left

# Generation drops the rows whose answers have ended once this share of the rows left in the
# batch has (generate_stream); dropping them at every stop cost as much as it saved (FINDINGS.md,
# "Sampling and generation").
DROP_STOPPED_SHARE = 0.25


class KVCache:
    """Keys and values of every layer for the positions seen so far.
    Decoding one token then costs one query against the cache instead of re-running
    the whole prefix: O(S) work per new token instead of O(S^2)."""

    def __init__(self, config, batch_size, max_len, device, dtype):
        D = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, D)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions filled so far

    def keep(self, rows):
        """Keep only these batch rows (a boolean mask or indices): generation drops the rows
        whose answers have ended."""
        self.k, self.v = self.k[:, rows], self.v[:, rows]

    def update(self, layer, k, v):
        """Store the new (B, H, T, D) keys/values and return all of them, (B, H, S, D)."""
        T = k.size(2)
        self.k[layer, :, :, self.length:self.length + T] = k
        self.v[layer, :, :, self.length:self.length + T] = v
        S = self.length + T
        return self.k[layer, :, :, :S], self.v[layer, :, :, :S]


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None, uniform=None):
    """(B, V) logits -> (B,) token ids. temperature 0 means greedy (argmax).
    top_k > 0 keeps the k likeliest tokens (and any tied with the k-th); top_p < 1 keeps the
    smallest set of likeliest tokens whose probability reaches p (nucleus sampling, Holtzman
    et al. 2019).
    uniform: (B, 1) numbers in [0, 1) to sample with; drawn from `generator` if None."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        before = sorted_probs.cumsum(-1) - sorted_probs   # the mass of the likelier tokens
        drop = before >= top_p                             # p is reached without this token
        drop[:, 0] = False                                 # the likeliest always stays (top_p=0: greedy)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    # Inverse-CDF sampling: one uniform number u per row, and the first token whose
    # cumulative probability exceeds u. torch.multinomial draws one random number per
    # vocabulary entry instead (B x V), a large share of batched generation's time
    # (`python bench/bench_generate.py --sampler`; FINDINGS.md, "Sampling and generation").
    probs = logits.softmax(-1)
    cdf = probs.cumsum(-1)                                                      # (B, V)
    if uniform is None:
        uniform = torch.rand(cdf.size(0), 1, generator=generator, device=cdf.device)
    u = uniform * cdf[:, -1:]
    # Rounding can put u at the very end of the CDF (u = cdf[-1]), past every token; the
    # last token of nonzero probability is then the right pick, never a filtered-out one.
    last_possible = (probs > 0).cumsum(-1).argmax(-1, keepdim=True)            # (B, 1)
    return torch.minimum(torch.searchsorted(cdf, u, right=True), last_possible).squeeze(-1)


@torch.no_grad()
def generate_stream(model, prompts, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                    stop_tokens=(), pad_token=0, use_cache=True, generator=None):
    """Batched sampling from prompts of different lengths. Yields one (B,) tensor of
    new tokens per step. A row stops at any of `stop_tokens` and emits the first of them
    from then on; the loop ends when every row has stopped or after max_new_tokens.
    Stopped rows leave the batch: answers differ in length (a word, or a story), and a batch
    that computes every row until its longest answer ends does much more work than its
    answers need (FINDINGS.md, "Sampling and generation"). Rows leave once
    DROP_STOPPED_SHARE of the rows left in the batch have stopped, since each drop copies
    the cache. A row's answer does not depend on when the others stop: each step draws one
    random number for every row of the whole batch, whether it has left or not.
    use_cache=False recomputes the full sequence each step: slow, but the reference
    that the KV cache is tested against.
    Generation ends when the longest prompt's row reaches the model's context (block_size), and
    every row with it: a prompt of block_size tokens gets nothing, nor does a short prompt
    batched beside it. Callers keep room for the answer (evaluation.render_prompts)."""
    device = model.wte.weight.device
    idx, mask = pad_left(prompts, pad_token, device)  # (B, P)
    B, P = idx.shape
    max_len = min(P + max_new_tokens, model.config.block_size)
    cache = KVCache(model.config, B, max_len, device, model.wte.weight.dtype) if use_cache else None
    rows = torch.arange(B, device=device)              # (b,) the rows still in the batch
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stops = torch.tensor(stop_tokens, dtype=torch.long, device=device)
    step_input = idx                                    # (b, P), then (b, 1)
    for _ in range(max_len - P):
        h = model.hidden_states(step_input, mask, cache) if use_cache else model.hidden_states(idx, mask)
        logits = model.lm_head(h[:, -1])   # (b, V): only the last position's are needed
        uniform = None if temperature == 0 else torch.rand(B, 1, generator=generator, device=device)[rows]
        next_token = sample_next(logits, temperature, top_k, top_p, uniform=uniform)   # (b,)
        # (B,): a row that has left the batch has stopped, and emits the first stop token
        tokens = next_token.new_full((B,), stop_tokens[0] if stop_tokens else pad_token)
        if stop_tokens:
            next_token = torch.where(done[rows], stop_tokens[0], next_token)
            done[rows] |= torch.isin(next_token, stops)
        tokens[rows] = next_token
        yield tokens
        if done.all():
            return
        step_input = next_token.unsqueeze(1)
        mask = torch.cat([mask, torch.ones_like(step_input)], dim=1)
        if not use_cache:   # only the reference path re-reads the whole sequence
            idx = torch.cat([idx, step_input], dim=1)
        going = ~done[rows]
        if len(rows) - int(going.sum()) >= DROP_STOPPED_SHARE * len(rows):
            rows, step_input, mask = rows[going], step_input[going], mask[going]
            if use_cache:
                cache.keep(going)
            else:
                idx = idx[going]


def generate(model, prompts, max_new_tokens, **kwargs):
    """Returns one list of new token ids per prompt, cut after its stop token
    (which is kept, so a caller can tell a finished answer from a truncated one)."""
    out = [[] for _ in prompts]
    finished = [False] * len(prompts)
    stops = set(kwargs.get("stop_tokens", ()))
    for tokens in generate_stream(model, prompts, max_new_tokens, **kwargs):
        for i, t in enumerate(tokens.tolist()):
            if not finished[i]:
                out[i].append(t)
                finished[i] = t in stops
    return out
