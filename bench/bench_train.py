"""Training throughput and peak memory of the tiny preset's model on this machine.

    python bench/bench_train.py
    python bench/bench_train.py --bf16     # and fp32 against bf16 autocast on the CPU, as a ratio
    python bench/bench_train.py --muon     # and AdamW against Muon (--optimizer=muon), as a ratio

Times forward + backward + AdamW step of train_pretrain.py's tiny model, at its batch size,
after a warm-up, and reports the peak resident memory of the process.

--bf16 and --muon time both ways twice, interleaved (A, B, A, B), so that a machine that
slows down or speeds up mid-run touches both alike, and print the ratio.

--muon: Muon orthogonalises each block matrix's update with three Newton-Schulz
iterations, a fixed cost per step that does not shrink with the batch; our batched Muon
makes one product per shape instead of one per matrix (FINDINGS.md, "Speed and precision").

--bf16: a CPU with AMX (Intel Sapphire Rapids and later) or AVX512-BF16 multiplies bf16
matrices in hardware. The plain figure above is fp32's. The training scripts use bf16 where
the CPU has either (minift.training.Runtime.autocast), with attention kept in fp32 by the
model (minift.model.attention); FINDINGS.md, "Speed and precision", has the ratios.
"""
import contextlib
import functools
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minift.model import GPT, GPTConfig  # noqa: E402
from minift.training import make_optimizer  # noqa: E402
from train_pretrain import Config  # noqa: E402  (the tiny preset's defaults)


def seconds_per_step(cfg, autocast=contextlib.nullcontext, optimizer="adamw", steps=20):
    """Mean seconds of one training step of a fresh tiny model, after 3 warm-up steps."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=2053, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                          n_embd=cfg.n_embd))
    opt = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, optimizer)
    x = torch.randint(0, 2053, (cfg.batch_size, cfg.block_size))
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        with autocast():
            _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps, model.num_params()


def interleaved(name_a, step_a, name_b, step_b, first_a):
    """Time A and B as A, B, A, B (first_a is A's first timing, already taken) and print both
    and the ratio."""
    a, b = [first_a], []
    b.append(step_b())
    a.append(step_a())
    b.append(step_b())
    print(f"{name_a} {a[0] * 1000:.0f} / {a[1] * 1000:.0f} ms/step, {name_b} {b[0] * 1000:.0f} / "
          f"{b[1] * 1000:.0f} ms/step: {name_b} is {sum(a) / sum(b):.2f}x as fast")


def main(args):
    cfg = Config()
    tokens = cfg.batch_size * cfg.block_size
    dt, n_params = seconds_per_step(cfg)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"tiny preset model ({n_params / 1e6:.2f}M params), batch {cfg.batch_size} x {cfg.block_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"{dt * 1000:.0f} ms/step, {tokens / dt:,.0f} tokens/s, peak RSS {peak_mb:.0f} MB")

    def step_time(**kwargs):
        return seconds_per_step(cfg, **kwargs)[0]

    if "--bf16" in args:
        bf16_cpu = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16)
        interleaved("fp32", step_time, "bf16 autocast", functools.partial(step_time, autocast=bf16_cpu), dt)
    if "--muon" in args:
        interleaved("AdamW", step_time, "Muon", functools.partial(step_time, optimizer="muon"), dt)


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    main(sys.argv[1:])
