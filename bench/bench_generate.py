"""KV-cache generation against full recomputation, at 128 new tokens.

    python bench/bench_generate.py
    python bench/bench_generate.py --sampler   # sample_next against torch.multinomial
    python bench/bench_generate.py --stopped_rows   # dropping the rows that have stopped, or not

Both paths produce the same tokens (tests/test_engine.py checks it); this measures how
much the cache saves. Without it, step t re-runs the whole prefix: O(t^2) attention and
O(t) MLP work per token instead of O(t) and O(1).

--sampler times batched sampling as the preference data does it (256 rows, temperature 0.7,
96 new tokens) with minift's inverse-CDF sampler and with torch.multinomial, one random
number per vocabulary entry, alternated in one process so that both see the machine alike
(FINDINGS.md, "Sampling and generation").

--stopped_rows times what dropping the rows whose answers have ended saves, on real answers
of different lengths (the pipeline's SFT model, `python pipeline.py` first): 8 answers to each
of 128 RL prompts at temperature 0.7 in batches of 256, as the preference data samples them
(but up to 128 new tokens, where the preference data stops at 96),
and greedy answers to 256 test prompts in batches of 64, as the evaluation does. Both ways
give the same answers (tests/test_engine.py checks it; here it is checked again).
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import minift.engine  # noqa: E402
from minift.engine import generate  # noqa: E402
from minift.model import GPT, GPTConfig  # noqa: E402


def tiny_model():
    """A random GPT of the tiny preset's shape: generation's cost does not depend on the weights."""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=2053, block_size=256, n_layer=4, n_head=4, n_embd=128)).eval()


def main(new_tokens=128, batch=8, prompt_len=32, repeats=3):
    model = tiny_model()
    prompts = torch.randint(0, 2000, (batch, prompt_len)).tolist()
    times = {}
    for use_cache in (True, False):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            generate(model, prompts, new_tokens, temperature=0, use_cache=use_cache)
            best = min(best, time.perf_counter() - t0)
        times[use_cache] = best
    print(f"tiny model, batch {batch}, prompt {prompt_len}, {new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"KV cache:          {times[True]:.3f}s  ({batch * new_tokens / times[True]:,.0f} tok/s)")
    print(f"full recompute:    {times[False]:.3f}s  ({batch * new_tokens / times[False]:,.0f} tok/s)")
    print(f"speed-up:          {times[False] / times[True]:.1f}x")


def multinomial_sampler(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None, uniform=None):
    """torch.multinomial's sampler (without top-k or top-p): one random number per vocabulary
    entry. It takes sample_next's arguments and ignores `uniform`, the one number a row that
    generate_stream draws for sample_next's inverse CDF (a (B, 1) draw: small beside this one)."""
    return torch.multinomial((logits.float() / temperature).softmax(-1), 1, generator=generator).squeeze(-1)


def compare_samplers(batch=256, prompt_len=80, new_tokens=96, repeats=3):
    model = tiny_model()
    prompts = torch.randint(0, 2000, (batch, prompt_len)).tolist()
    ours = minift.engine.sample_next
    times = {"sample_next": [], "torch.multinomial": []}
    try:   # put ours back even if a run fails: the swap is process-wide
        for _ in range(repeats):
            for name, sampler in (("sample_next", ours), ("torch.multinomial", multinomial_sampler)):
                minift.engine.sample_next = sampler   # generate_stream looks the sampler up here
                t0 = time.perf_counter()
                generate(model, prompts, new_tokens, temperature=0.7, generator=torch.Generator().manual_seed(0))
                times[name].append(time.perf_counter() - t0)
    finally:
        minift.engine.sample_next = ours
    print(f"tiny model, batch {batch}, prompt {prompt_len}, {new_tokens} sampled tokens, "
          f"{torch.get_num_threads()} threads (best of {repeats})")
    for name, t in times.items():
        print(f"{name + ':':19}{min(t):.3f}s  ({batch * new_tokens / min(t):,.0f} tok/s)")
    print(f"speed-up:          {min(times['torch.multinomial']) / min(times['sample_next']):.2f}x")
    return times


def compare_stopped_rows(ckpt="out/tiny/sft/ckpt.pt", data="out/tiny/data/sft", repeats=2):
    from minift.checkpoint import build_model, load_checkpoint, tokenizer_for
    from minift.evaluation import generate_responses
    from minift.formats import load_ifeval_inputs
    if not os.path.exists(ckpt):
        sys.exit(f"error: no {ckpt}; run python pipeline.py first")
    checkpoint = load_checkpoint(ckpt)
    tokenizer, model = tokenizer_for(checkpoint, ckpt), build_model(checkpoint).eval()
    rl = [r["prompt"] for r in load_ifeval_inputs(f"{data}/rl_prompts.jsonl")[:128] for _ in range(8)]
    test = [r["prompt"] for r in load_ifeval_inputs(f"{data}/test.jsonl")[:256]]
    jobs = {"8 samples a prompt, batch 256": (rl, 256, 0.7), "greedy, batch 64": (test, 64, 0.0)}
    ways = {"rows leave": minift.engine.DROP_STOPPED_SHARE, "every row to the end": float("inf")}
    print(f"{ckpt}, {torch.get_num_threads()} threads (best of {repeats})")
    for job, (prompts, batch, temperature) in jobs.items():
        times, answers = {way: [] for way in ways}, {}
        try:
            for _ in range(repeats):
                for way, share in ways.items():
                    minift.engine.DROP_STOPPED_SHARE = share   # generate_stream looks it up at each step
                    t0 = time.perf_counter()
                    answers[way] = generate_responses(model, tokenizer, prompts, 128, batch, temperature,
                                                      torch.Generator().manual_seed(0))
                    times[way].append(time.perf_counter() - t0)
        finally:
            minift.engine.DROP_STOPPED_SHARE = ways["rows leave"]
        assert answers["rows leave"] == answers["every row to the end"], "the answers differ"
        first, second = (min(t) for t in times.values())
        print(f"{job}: {first:.2f}s with rows leaving, {second:.2f}s without, {second / first:.2f}x; same answers")


# The other benches, by option (without one: main)
JOBS = {"--sampler": compare_samplers, "--stopped_rows": compare_stopped_rows}


if __name__ == "__main__":
    args = sys.argv[1:]
    if {"-h", "--help"} & set(args):
        print(__doc__)
        sys.exit(0)
    if len(args) > 1:
        sys.exit(f"error: one option at a time, not {' '.join(args)}; expected one of {', '.join(JOBS)}")
    if args and args[0] not in JOBS:   # a typo would otherwise run the default bench
        sys.exit(f"error: unknown option {args[0]}; expected nothing, or one of {', '.join(JOBS)}")
    (JOBS[args[0]] if args else main)()
