"""KV-cache generation against full recomputation, at 128 new tokens.

    python bench/bench_generate.py

Both paths produce the same tokens (tests/test_model.py checks it); this measures how
much the cache saves. Without it, step t re-runs the whole prefix: O(t^2) attention and
O(t) MLP work per token instead of O(t) and O(1).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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


if __name__ == "__main__":
    main()
