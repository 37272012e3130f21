"""
Stage 1 of 4: pretraining. The GPT learns to predict the next token of plain text.

    python data/prepare.py                 # make the corpus and tokenizer (once)
    python train_pretrain.py               # tiny preset: a few minutes on a laptop CPU
    python train_pretrain.py --preset=small --compile=True          # one GPU
    torchrun --nproc_per_node=4 train_pretrain.py --preset=small    # several GPUs (DDP)

Everything the loop does is below, top to bottom: random windows of the token stream,
AdamW with warmup + cosine decay, gradient accumulation and clipping, periodic
validation loss, atomic checkpoints, and exact resume (`--resume=True`, the default,
continues from <out_dir>/ckpt.pt if it exists; under torchrun, exact on rank 0, while the
other ranks draw fresh batches: minift.checkpoint.resume_training). A checkpoint is written
at every evaluation and on Ctrl-C, so a crash loses at most the steps since the last evaluation.
"""

import json
import os
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from minift.checkpoint import resume_training, resuming_line, save_training_checkpoint, should_resume
from minift.config import cli_config, print_config, run
from minift.model import GPT, GPTConfig
from minift.tokenizer import load_tokenizer
from minift.training import (MetricsLog, StopRequest, all_reduce_mean, cleanup_runtime, compile_and_wrap,
                             flops_per_token, host_reads, lr_at, make_optimizer, peak_bf16_flops, read_step, set_lr,
                             setup_runtime)


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
    dropout: float = 0.0      # ~1.5 passes over the corpus: little to overfit (FINDINGS.md, "Pretraining")
    # optimisation
    # Small batches learn more per token: the same tokens give more updates, and a tiny model
    # needs the updates; smaller still pays more per-step overhead for no gain (FINDINGS.md,
    # "Pretraining", small batches).
    batch_size: int = 4       # sequences per micro-batch
    grad_accum: int = 1       # micro-batches per optimizer step
    max_steps: int = 1440     # 1440 x 4 x 256: ~1.5M tokens
    decay_steps: int = 0      # where the cosine ends; 0 means max_steps
    # Tiny models tolerate (and need) high rates (FINDINGS.md, "Pretraining", learning rate).
    learning_rate: float = 6e-3   # the peak, after warmup
    min_lr: float = 6e-4          # where the cosine decay ends
    warmup_steps: int = 120
    weight_decay: float = 0.1
    # "adamw", or "muon" for the blocks' matrices (minift.training.make_optimizer). AdamW here:
    # Muon's gain is a lower loss, and a lower loss is not what this model's instruction
    # following lacks (FINDINGS.md, "Pretraining", a lower loss).
    optimizer: str = "adamw"      # or "muon"
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
    "tiny": dict(),   # the defaults above: ~1M parameters, sized for a CPU (FINDINGS.md, "Pretraining")
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
        raise SystemExit(f"error: {path} holds {n_tokens} tokens; windows of --block_size={block_size} need more "
                         f"than {block_size + 1} to draw from; give data/prepare.py more text, or lower --block_size")
    return np.memmap(path, dtype=np.uint16, mode="r")


def get_batch(data, batch_size, block_size, generator, device):
    """Random windows of the token stream: x is a window, y the same window shifted by one.
    (B, T) int64 each. One fancy index reads all B windows of T + 1 tokens at once."""
    # A start in [0, N-T-2]: the stream's very last window (one of about as many starts as the
    # stream has tokens) is never drawn.
    # Kept so that every run recorded in FINDINGS.md draws the same batches again.
    starts = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    windows = torch.from_numpy(data[starts.numpy()[:, None] + np.arange(block_size + 1)].astype(np.int64))
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    if device.startswith("cuda"):
        # From pinned memory the copy is queued behind the GPU's work instead of waiting for it.
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, data, cfg, rt):
    """Mean loss over a fixed set of validation windows (same windows every time, so the
    curve shows the model changing, not the sample). Under DDP each rank scores windows of its
    own, and the mean is taken over all of them."""
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed + 1 + 1000 * rt.rank)
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
    if os.path.isfile(cfg.data_dir):   # a text file given where its prepared folder belongs
        name = os.path.splitext(os.path.basename(cfg.data_dir))[0]
        raise SystemExit(f"error: --data_dir={cfg.data_dir} is a file; it takes the folder data/prepare.py writes. "
                         f"Run: python data/prepare.py --input {cfg.data_dir} --out_dir data/generated/{name}, "
                         f"then --data_dir=data/generated/{name}")
    if not os.path.exists(train_path):
        raise SystemExit(f"error: no training data at {train_path}. Run: python data/prepare.py "
                         f"(or python data/prepare.py --input your_text.txt --out_dir {cfg.data_dir})")
    meta_path = os.path.join(cfg.data_dir, "meta.json")
    if not os.path.exists(meta_path):
        raise SystemExit(f"error: {meta_path} is missing; data/prepare.py writes it beside train.bin")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        tokenizer_spec = meta["tokenizer"]
    except (ValueError, KeyError, TypeError) as e:  # not JSON, or no "tokenizer" in it
        raise SystemExit(f"error: {meta_path} is not the meta.json data/prepare.py writes ({type(e).__name__}: "
                         f"{e}); re-run data/prepare.py") from None
    # "gpt2", or the file prepare.py wrote beside the data, looked up there, so that a moved
    # data_dir still finds it
    if meta.get("tokenizer_file"):
        tokenizer_spec = os.path.join(cfg.data_dir, meta["tokenizer_file"])
    tokenizer = load_tokenizer(tokenizer_spec)
    if meta.get("tokenizer_sha256", tokenizer.identity["sha256"]) != tokenizer.identity["sha256"]:
        raise SystemExit(f"error: {tokenizer_spec} is not the tokenizer {cfg.data_dir}'s token files were made "
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
    step, val_loss, val_loss_init = 0, None, None
    if should_resume(cfg, ckpt_path):
        resumed = resume_training(ckpt_path, model, optimizer, batch_rng, rt.device, rt.rank, cfg.seed, "pretrain",
                                  cfg, tokenizer.identity)
        # the figures saved with it stand until the next evaluation replaces them
        step, val_loss, val_loss_init = (resumed["step"], resumed["metrics"].get("val_loss"),
                                         resumed["metrics"].get("val_loss_init"))
        if rt.master:
            print(resuming_line(ckpt_path, step, cfg.max_steps))
    raw_model = model
    model = compile_and_wrap(model, rt, cfg.compile)   # torch.compile if asked, then DDP under torchrun

    def save(val_loss):
        save_training_checkpoint(ckpt_path, "pretrain", step, model, optimizer, cfg,
                                 {"path": tokenizer_spec, **tokenizer.to_record()}, batch_rng,
                                 {"val_loss": val_loss, "val_loss_init": val_loss_init})

    # ---- the training loop
    log = MetricsLog(os.path.join(cfg.out_dir, "metrics.jsonl"), enabled=rt.master, step=step)
    decay_steps = cfg.decay_steps or cfg.max_steps
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * rt.world_size
    # Model FLOPs utilisation, on a GPU whose bf16 peak we know: the share of the peak that the
    # model's own arithmetic uses (nanoGPT's estimate_mfu).
    peak = peak_bf16_flops(rt.device)
    flops_token = flops_per_token(raw_model.num_params(), cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head,
                                  cfg.block_size)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="pretrain", disable=not rt.master, dynamic_ncols=True)
    if step == 0:  # where the curve starts: the untrained model's loss, about ln(vocab size)
        val_loss_init = estimate_loss(model, val_data, cfg, rt)
        log.log(step=0, val_loss=val_loss_init)
        if rt.master:
            bar.write(f"step 0: val loss {val_loss_init:.4f} (untrained)")
    # tokens/s between host reads (logs, evaluations, the last step): the machine's speed, which
    # sets every stage's time
    speeds = []
    t_log, step_log = time.time(), step
    step_loss = grad_norm = 0.0   # the last step's, read before a Ctrl-C save
    with StopRequest(rt) as stop:
        while step < cfg.max_steps and not stop.agreed():
            lr = lr_at(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, decay_steps)
            set_lr(optimizer, lr)
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                x, y = get_batch(train_data, cfg.batch_size, cfg.block_size, batch_rng, rt.device)
                # With DDP, gradients are all-reduced on every backward; skip that for all but
                # the last micro-batch, whose backward then averages the accumulated sum.
                last = micro == cfg.grad_accum - 1
                sync = model.no_sync() if rt.ddp and not last else nullcontext()
                with sync, rt.autocast(cfg.dtype):
                    _, loss = model(x, y)
                    (loss / cfg.grad_accum).backward()
                step_loss += loss.detach() / cfg.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            reading = host_reads(step, cfg, stop.requested)   # the loss stays on the device otherwise
            if reading:
                step_loss, grad_norm = read_step(step_loss, grad_norm, step, ckpt_path)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if not reading:
                continue

            tok_per_s = tokens_per_step * (step - step_log) / max(time.time() - t_log, 1e-9)
            t_log, step_log = time.time(), step
            speeds.append(tok_per_s)
            mfu = {"mfu": tok_per_s * flops_token / (peak * rt.world_size)} if peak else {}
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_per_s:,.0f}",
                            **{k: f"{v:.1%}" for k, v in mfu.items()})
            if step % cfg.log_interval == 0:
                log.log(step=step, loss=step_loss, lr=lr, grad_norm=grad_norm, tok_per_s=tok_per_s, **mfu)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                val_loss = estimate_loss(model, val_data, cfg, rt)
                log.log(step=step, val_loss=val_loss)
                if rt.master:   # tqdm.write prints even where the bar is disabled
                    bar.write(f"step {step}: train loss {step_loss:.4f}, val loss {val_loss:.4f}")
                    save(val_loss)
                t_log = time.time()  # the evaluation's time is not training time
        if stop.requested and rt.master:
            # A Ctrl-C that came after host_reads left the last step unread: read it now, so
            # that the checkpoint never keeps the weights of a NaN step.
            read_step(step_loss, grad_norm, step - 1, ckpt_path)
            save(val_loss)
    bar.close()
    cleanup_runtime(rt)
    stop.raise_if_requested(f"saved {ckpt_path} at step {step} of {cfg.max_steps}")
    speed = statistics.median(speeds) if speeds else None
    mfu = {"mfu": speed * flops_token / (peak * rt.world_size)} if peak and speed else {}
    return {"step": step, "val_loss": val_loss, "val_loss_init": val_loss_init, "tokens_per_s": speed, **mfu}


if __name__ == "__main__":
    run(main)
