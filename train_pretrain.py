"""
Stage 1 of 4: pretraining. The GPT learns to predict the next token of plain text.

    python data/prepare.py                 # make the corpus and tokenizer (once)
    python train_pretrain.py               # tiny preset: a few minutes on a laptop CPU
    python train_pretrain.py --preset=small --compile=True          # one GPU
    torchrun --nproc_per_node=4 train_pretrain.py --preset=small    # several GPUs (DDP)

Everything the loop does is below, top to bottom: random windows of the token stream,
AdamW with warmup + cosine decay, gradient accumulation and clipping, periodic
validation loss, atomic checkpoints, and exact resume (`--resume=True`, the default,
continues from <out_dir>/ckpt.pt if it exists).
"""

import json
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from minift.checkpoint import resume_training, save_training_checkpoint, should_resume
from minift.config import cli_config, print_config, run
from minift.model import GPT, GPTConfig
from minift.tokenizer import load_tokenizer
from minift.training import (MetricsLog, StopRequest, all_reduce_mean, check_finite, cleanup_runtime,
                             lr_at, make_optimizer, set_lr, setup_runtime)


@dataclass
class Config:
    # I/O
    out_dir: str = "out/pretrain"
    data_dir: str = "data/generated/corpus"   # train.bin, val.bin, tokenizer, from data/prepare.py
    resume: bool = True                        # continue from <out_dir>/ckpt.pt when it exists
    force: bool = False                        # start over in out_dir, even if it holds another run
    preset: str = "tiny"
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 256
    dropout: float = 0.0      # no dropout: one pass over lots of data hardly overfits
    # optimisation
    # Small batches learn more per token. The same 1.5M tokens, measured on the whole validation
    # set: 16 sequences a step (360 steps) 1.142, 8 a step (720 steps) 1.090, 4 a step (1440
    # steps) 1.085. After SFT on top, 4 a step followed 55.0% of 300 test prompts against 49.0%
    # for 8 a step, in the same 86 s (2026-11-30). 2 a step (2,880 steps): val loss 0.985 against
    # 1.053, SFT 56.0% against 55.0%, but 23% slower (session 4); re-measured in session 6, it lost
    # (1.027 and 1.085 against 1.014 and 1.073, two pretraining seeds) and took 16-21% longer
    # (EXPERIMENTS.md). We take 4.
    batch_size: int = 4       # sequences per micro-batch
    grad_accum: int = 1       # micro-batches per optimizer step
    max_steps: int = 1440     # ~1.5M tokens: 75-103 s on 2 CPU cores (bf16)
    decay_steps: int = 0      # where the cosine ends; 0 means max_steps
    learning_rate: float = 6e-3   # tiny models tolerate (and need) high rates:
    min_lr: float = 6e-4          # val loss 1.146 at 6e-3 vs 1.207 at 3e-3 (16 x 360 steps)
    warmup_steps: int = 120
    weight_decay: float = 0.1
    # "adamw", or "muon" for the blocks' matrices (minift.training.make_optimizer). Muon (with 5
    # Newton-Schulz iterations; make_optimizer now runs 3) lowered the val loss from 1.085 to
    # 0.972 (102 s against 68 s), but SFT on top did worse: test / heldout 57.7 / 39.0 against
    # 62.2 / 38.9 with AdamW SFT, 63.7 / 38.7 against 67.9 / 45.2 with Muon SFT, means of three
    # seeds (EXPERIMENTS.md, session 12).
    optimizer: str = "adamw"
    grad_clip: float = 1.0
    # evaluation and logging
    eval_interval: int = 480
    eval_batches: int = 40    # x batch_size windows of block_size tokens: 160 windows
    log_interval: int = 10
    # system
    device: str = "auto"
    dtype: str = "bfloat16"   # bf16 autocast on CUDA and CPUs with bf16 products (Runtime.autocast); "float32": none
    compile: bool = False     # torch.compile: worth it on a GPU, slow to start on a CPU
    seed: int = 1337


PRESETS = {
    "micro": dict(n_layer=2, n_head=2, n_embd=32, block_size=256, batch_size=8, max_steps=20,
                  warmup_steps=5, eval_interval=10, eval_batches=2, log_interval=1),
    "tiny": dict(),   # the defaults above: ~1M parameters, minutes on 2 CPU cores
    "small": dict(n_layer=8, n_head=8, n_embd=512, block_size=512, batch_size=64, max_steps=5000,
                  learning_rate=1e-3, min_lr=1e-4, warmup_steps=200, eval_interval=500,
                  eval_batches=50, dropout=0.0, compile=True),
}


def token_stream(path, block_size):
    """A .bin file of uint16 token ids, checked: it must hold more than one window."""
    if not os.path.exists(path):
        raise SystemExit(f"error: {path} is missing; re-run data/prepare.py")
    if os.path.getsize(path) % 2:
        raise SystemExit(f"error: {path} is not a file of uint16 token ids (odd size); re-run data/prepare.py")
    n_tokens = os.path.getsize(path) // 2
    if n_tokens <= block_size + 1:
        raise SystemExit(f"error: {path} holds {n_tokens} tokens, too few for one window of --block_size="
                         f"{block_size}; give data/prepare.py more text, or lower --block_size")
    return np.memmap(path, dtype=np.uint16, mode="r")


def get_batch(data, batch_size, block_size, generator, device):
    """Random windows of the token stream: x is a window, y the same window shifted by one.
    (B, T) int64 each."""
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([torch.from_numpy(data[s:s + block_size].astype(np.int64)) for s in starts])
    y = torch.stack([torch.from_numpy(data[s + 1:s + 1 + block_size].astype(np.int64)) for s in starts])
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, data, cfg, rt):
    """Mean loss over a fixed set of validation windows (same windows every time, so the
    curve shows the model changing, not the sample)."""
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = get_batch(data, cfg.batch_size, cfg.block_size, generator, rt.device)
        with rt.autocast(cfg.dtype):
            losses.append(model(x, y)[1].item())
    model.train()
    return all_reduce_mean(sum(losses) / len(losses), rt)


def main(argv=None):
    cfg = cli_config(Config, PRESETS, argv)
    rt = setup_runtime(cfg.device, cfg.seed)
    if rt.master:
        print_config(cfg)

    # ---- data and tokenizer
    train_path = os.path.join(cfg.data_dir, "train.bin")
    if not os.path.exists(train_path):
        raise SystemExit(f"error: no training data at {train_path}. Run: python data/prepare.py "
                         f"(or python data/prepare.py --input your_text.txt --out_dir {cfg.data_dir})")
    meta_path = os.path.join(cfg.data_dir, "meta.json")
    if not os.path.exists(meta_path):
        raise SystemExit(f"error: {meta_path} is missing; data/prepare.py writes it beside train.bin")
    with open(meta_path) as f:
        meta = json.load(f)
    tokenizer = load_tokenizer(meta["tokenizer"])
    if meta.get("tokenizer_sha256", tokenizer.identity["sha256"]) != tokenizer.identity["sha256"]:
        raise SystemExit(f"error: {meta['tokenizer']} is not the tokenizer {cfg.data_dir}'s token files were made "
                         f"with (meta.json has another hash); re-run data/prepare.py")
    train_data, val_data = (token_stream(os.path.join(cfg.data_dir, f"{split}.bin"), cfg.block_size)
                            for split in ("train", "val"))

    # ---- model, optimizer, and (maybe) the checkpoint to resume from
    model_config = GPTConfig(vocab_size=tokenizer.n_vocab, block_size=cfg.block_size, n_layer=cfg.n_layer,
                             n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout)
    model = GPT(model_config, verbose=rt.master).to(rt.device)
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, cfg.optimizer,
                               device_type=rt.device_type)
    batch_rng = torch.Generator().manual_seed(cfg.seed + rt.rank)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    step = 0
    if should_resume(cfg, ckpt_path):
        step = resume_training(ckpt_path, model, optimizer, batch_rng, rt.device, rt.rank, cfg.seed, "pretrain",
                               cfg, tokenizer.identity)["step"]
        if rt.master:
            print(f"resuming from {ckpt_path} at step {step}")
    if cfg.compile:
        model = torch.compile(model)
    if rt.ddp:
        model = DDP(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)

    def save(val_loss):
        save_training_checkpoint(ckpt_path, "pretrain", step, model, optimizer, cfg,
                                 {"path": meta["tokenizer"], **tokenizer.identity}, batch_rng,
                                 {"val_loss": val_loss})

    # ---- the training loop
    log = MetricsLog(os.path.join(cfg.out_dir, "metrics.jsonl"), enabled=rt.master)
    decay_steps = cfg.decay_steps or cfg.max_steps
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * rt.world_size
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain", disable=not rt.master, dynamic_ncols=True)
    val_loss = None
    speeds = []  # tokens/s of each step: the machine's speed, which sets every stage's time
    t0 = time.time()
    with StopRequest(rt) as stop:
        while step < cfg.max_steps and not stop.agreed():
            lr = lr_at(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, decay_steps)
            set_lr(optimizer, lr)
            loss_sum = 0.0
            for micro in range(cfg.grad_accum):
                x, y = get_batch(train_data, cfg.batch_size, cfg.block_size, batch_rng, rt.device)
                # With DDP, gradients are all-reduced on every backward; skip that for all but
                # the last micro-batch, whose backward then averages the accumulated sum.
                last = micro == cfg.grad_accum - 1
                sync = model.no_sync() if rt.ddp and not last else nullcontext()
                with sync, rt.autocast(cfg.dtype):
                    _, loss = model(x, y)
                    (loss / cfg.grad_accum).backward()
                loss_sum += loss.item() / cfg.grad_accum
            check_finite(loss_sum, step, ckpt_path)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            tok_per_s = tokens_per_step * (step - bar.n) / max(time.time() - t0, 1e-9)
            t0 = time.time()
            speeds.append(tok_per_s)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_per_s:,.0f}")
            if step % cfg.log_interval == 0:
                log.log(step=step, loss=loss_sum, lr=lr, grad_norm=grad_norm, tok_per_s=tok_per_s)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                val_loss = estimate_loss(model, val_data, cfg, rt)
                log.log(step=step, val_loss=val_loss)
                bar.write(f"step {step}: train loss {loss_sum:.4f}, val loss {val_loss:.4f}")
                if rt.master:
                    save(val_loss)
        if stop.requested and rt.master:
            save(val_loss)
    bar.close()
    cleanup_runtime(rt)
    stop.raise_if_requested(f"saved {ckpt_path} at step {step} of {cfg.max_steps}")
    return {"step": step, "val_loss": val_loss, "tokens_per_s": statistics.median(speeds) if speeds else None}


if __name__ == "__main__":
    run(main)
