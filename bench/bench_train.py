"""Training throughput and peak memory of the tiny preset's model on this machine.

    python bench/bench_train.py

Times forward + backward + AdamW step of train_pretrain.py's tiny model (batch 16 x 256)
after a warm-up, and reports the peak resident memory of the process.
"""
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from minift.model import GPT, GPTConfig  # noqa: E402
from minift.training import make_optimizer  # noqa: E402


def main(steps=20, batch=16, block=256):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=2053, block_size=block, n_layer=4, n_head=4, n_embd=128))
    opt = make_optimizer(model, 1e-3, 0.1)
    x = torch.randint(0, 2053, (batch, block))
    for i in range(steps + 3):
        if i == 3:
            t0 = time.perf_counter()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    dt = (time.perf_counter() - t0) / steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"tiny preset model ({model.num_params() / 1e6:.2f}M params), batch {batch} x {block}, "
          f"{torch.get_num_threads()} threads")
    print(f"{dt * 1000:.0f} ms/step, {batch * block / dt:,.0f} tokens/s, peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
