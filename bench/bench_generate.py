"""KV-cache generation against full recomputation, at 128 new tokens.

    python bench/bench_generate.py
    python bench/bench_generate.py --sampler   # sample_next against torch.multinomial

Both paths produce the same tokens (tests/test_model.py checks it); this measures how
much the cache saves. Without it, step t re-runs the whole prefix: O(t^2) attention and
O(t) MLP work per token instead of O(t) and O(1).

--sampler times batched sampling as the preference data does it (256 rows, temperature 0.7,
96 new tokens) with minift's inverse-CDF sampler and with torch.multinomial, one random
number per vocabulary entry, alternated in one process so that both see the machine alike
(FINDINGS.md, "Sampling and generation").
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minift.model  # noqa: E402
from minift.model import GPT, GPTConfig  # noqa: E402


def main(new_tokens=128, batch=8, prompt_len=32, repeats=3):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=2053, block_size=256, n_layer=4, n_head=4, n_embd=128)).eval()
    prompts = torch.randint(0, 2000, (batch, prompt_len)).tolist()
    times = {}
    for use_cache in (True, False):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(prompts, new_tokens, temperature=0, use_cache=use_cache)
            best = min(best, time.perf_counter() - t0)
        times[use_cache] = best
    print(f"tiny model, batch {batch}, prompt {prompt_len}, {new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"KV cache:          {times[True]:.3f}s  ({batch * new_tokens / times[True]:,.0f} tok/s)")
    print(f"full recompute:    {times[False]:.3f}s  ({batch * new_tokens / times[False]:,.0f} tok/s)")
    print(f"speed-up:          {times[False] / times[True]:.1f}x")


def multinomial_sampler(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """torch.multinomial's sampler (without top-k or top-p): one random number per vocabulary entry."""
    return torch.multinomial((logits.float() / temperature).softmax(-1), 1, generator=generator).squeeze(-1)


def compare_samplers(batch=256, prompt_len=80, new_tokens=96, repeats=3):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=2053, block_size=256, n_layer=4, n_head=4, n_embd=128)).eval()
    prompts = torch.randint(0, 2000, (batch, prompt_len)).tolist()
    ours = minift.model.sample_next
    times = {"sample_next": [], "torch.multinomial": []}
    for _ in range(repeats):
        for name, sampler in (("sample_next", ours), ("torch.multinomial", multinomial_sampler)):
            minift.model.sample_next = sampler   # generate_stream looks the sampler up here
            t0 = time.perf_counter()
            model.generate(prompts, new_tokens, temperature=0.7, generator=torch.Generator().manual_seed(0))
            times[name].append(time.perf_counter() - t0)
    minift.model.sample_next = ours
    print(f"tiny model, batch {batch}, prompt {prompt_len}, {new_tokens} sampled tokens, "
          f"{torch.get_num_threads()} threads (best of {repeats})")
    for name, t in times.items():
        print(f"{name + ':':19}{min(t):.3f}s  ({batch * new_tokens / min(t):,.0f} tok/s)")
    print(f"speed-up:          {min(times['torch.multinomial']) / min(times['sample_next']):.2f}x")


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    compare_samplers() if "--sampler" in sys.argv[1:] else main()
