"""Training throughput and peak memory of the tiny preset's model on this machine.

    python bench/bench_train.py

Times forward + backward + AdamW step of train_pretrain.py's tiny model, at its batch size,
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
from train_pretrain import Config  # noqa: E402  (the tiny preset's defaults)


def main(steps=20):
    cfg = Config()
    batch, block = cfg.batch_size, cfg.block_size
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=2053, block_size=block, n_layer=cfg.n_layer, n_head=cfg.n_head,
                          n_embd=cfg.n_embd))
    opt = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
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
