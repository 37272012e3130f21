"""
Stage 2 of 4: supervised fine-tuning (SFT). The pretrained GPT learns to answer
instructions from example conversations.

    python data/make_sft.py          # instruction data with verifiable instructions (once)
    python train_sft.py              # tiny preset, starts from out/pretrain/ckpt.pt
    python train_sft.py --data=alpaca_data.json --eval_data= --init_from=out/pretrain/ckpt.pt   # your own data

The loop is the pretraining loop with two changes:
  1. A batch is a set of whole conversations rendered with the chat template, instead of
     random windows of a token stream.
  2. The loss only counts the assistant's tokens (and the <|end|> that closes each reply):
     the model should learn to *answer*, not to imitate users (InstructGPT; the mask comes
     from Tokenizer.render_conversation and is tested exactly).
Every `eval_interval` steps it measures instruction-following accuracy by generating
answers to held-aside prompts and checking them in code.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm import tqdm

from minift.checkpoint import (GENERATIVE, build_model, load_checkpoint, resume_training, resuming_line,
                               save_training_checkpoint, should_resume, tokenizer_for, train_first)
from minift.config import cli_config, print_config, run
from minift.evaluation import evaluate_records, load_eval_data
from minift.formats import load_sft, require_file
from minift.model import padded_length
from minift.training import (MetricsLog, StopRequest, cleanup_runtime, compile_and_wrap, host_reads, lr_at,
                             make_optimizer, read_step, set_lr, setup_runtime)


@dataclass
class Config:
    # I/O
    out_dir: str = "out/sft"
    init_from: str = "out/pretrain/ckpt.pt"          # the pretrained checkpoint
    data: str = "data/generated/sft/train.jsonl"     # chat messages JSONL, Alpaca JSON or ShareGPT
    eval_data: str = "data/generated/sft/test.jsonl" # IFEval-style records ("" to skip)
    resume: bool = True
    force: bool = False                              # start over in out_dir, even if it holds another run
    preset: str = "tiny"
    # optimisation
    # Updates are what a tiny model needs most: smaller batches give more updates from the same
    # conversations, and more updates let the model find its place in a list (FINDINGS.md,
    # "SFT training", batch size).
    batch_size: int = 8            # conversations per micro-batch
    grad_accum: int = 1
    max_steps: int = 4800
    # A tiny model fine-tuned briefly needs a high rate; this is the highest we tried that
    # did not overshoot, with AdamW and with Muon (FINDINGS.md, "SFT training", learning rate).
    learning_rate: float = 6e-3
    min_lr: float = 6e-4
    warmup_steps: int = 80
    # Decoupled weight decay (Loshchilov & Hutter 2019), paired with Muon as Liu et al. (2025) do:
    # it pulls the blocks' matrices (and, through AdamW, the embedding) towards zero each step,
    # which Liu et al. found keeps Muon's weights from growing too large (FINDINGS.md, "SFT
    # training", weight decay). 0.0 turns it off.
    weight_decay: float = 0.1
    # "muon": Muon for the blocks' weight matrices, AdamW for the rest (minift.training.Muon and
    # make_optimizer); or "adamw" for all. Muon moves every direction of a matrix by about the
    # same amount (Jordan et al. 2024), so rarely used directions learn too; its cost per step
    # is fixed, so it needs all of SFT's steps to pay off (FINDINGS.md, "SFT training", Muon).
    optimizer: str = "muon"        # or "adamw"
    grad_clip: float = 1.0
    dropout: float = 0.0
    # evaluation and logging
    eval_interval: int = 2400
    eval_examples: int = 100       # prompts scored at each evaluation
    max_new_tokens: int = 128
    log_interval: int = 10
    # system
    device: str = "auto"
    dtype: str = "bfloat16"        # autocast (Runtime.autocast); "float32": none
    compile: bool = False
    seed: int = 1337


PRESETS = {
    "micro": dict(batch_size=8, max_steps=20, warmup_steps=2, eval_interval=10, eval_examples=8,
                  max_new_tokens=32, log_interval=1),
    "tiny": dict(),
    "small": dict(batch_size=64, max_steps=3000, learning_rate=3e-4, min_lr=3e-5, warmup_steps=100,
                  eval_interval=500, eval_examples=500, compile=True),
}


def render_dataset(records, tokenizer, block_size):
    """Render every conversation once up front: (ids, loss mask) pairs. Conversations
    longer than the context are dropped, and counted so the user knows (block_size + 1 tokens
    still fit: the inputs are all but the last token, the targets all but the first)."""
    rendered = [tokenizer.render_conversation(r["messages"]) for r in records]
    kept = [(ids, mask) for ids, mask in rendered if len(ids) <= block_size + 1]
    return kept, len(rendered) - len(kept)


def length_order(examples):
    """Indices of the examples from shortest to longest, for get_batch's length buckets."""
    return sorted(range(len(examples)), key=lambda i: len(examples[i][0]))


def get_batch(examples, order, batch_size, pad_token, generator, device, block_size, window=512):
    """Sample conversations of similar length and right-pad them to the longest one.

    Padded rather than packed: packing several conversations into one row would let a
    reply attend to an unrelated earlier conversation unless we also built block-diagonal
    masks. Right padding needs no attention mask at all: causal attention already keeps
    every real token from seeing the padding that follows it.
    Length buckets: a batch of conversations drawn at random is padded to its longest
    one, which in our data wasted much of the compute on padding (FINDINGS.md, "SFT training").
    So the batch is drawn from a `window` of neighbours in `order` (examples sorted by
    length) that starts at a random place; the window wraps around the end, so every
    example is equally likely, and neighbours in length need little padding (a window that
    wraps mixes the longest with the shortest, in about window / N of the batches). The length is then
    rounded up to a multiple of minift.model.PAD_MULTIPLE (which says why), which adds a
    little back.
    Returns x, y of shape (B, L); y is -1 (ignored by the loss) wherever mask is 0."""
    window = min(window, len(order))
    start = int(torch.randint(len(order), (1,), generator=generator))
    offsets = torch.randint(window, (batch_size,), generator=generator).tolist()
    picks = [order[(start + o) % len(order)] for o in offsets]
    L = padded_length(max(len(examples[i][0]) for i in picks) - 1, block_size)
    x = torch.full((batch_size, L), pad_token, dtype=torch.long)
    y = torch.full((batch_size, L), -1, dtype=torch.long)
    for row, i in enumerate(picks):
        ids, mask = examples[i]
        ids, mask = torch.tensor(ids), torch.tensor(mask)
        n = len(ids) - 1
        x[row, :n] = ids[:-1]
        # target t is token t+1; it counts only if token t+1 belongs to an assistant reply
        y[row, :n] = torch.where(mask[1:] == 1, ids[1:], torch.tensor(-1))
    return x.to(device), y.to(device)


def main(argv=None):
    cfg = cli_config(Config, PRESETS, argv)
    rt = setup_runtime(cfg.device, cfg.seed)
    if rt.master:
        print_config(cfg)

    # ---- the pretrained model and its tokenizer
    init = load_checkpoint(cfg.init_from, hint=train_first("pretrain", "train_pretrain.py"), kinds=GENERATIVE,
                           option="init_from")
    tokenizer = tokenizer_for(init, cfg.init_from)
    init["model_config"]["dropout"] = cfg.dropout
    model = build_model(init).to(rt.device)
    block_size = model.config.block_size

    # ---- data: conversations (any supported format), rendered with the chat template
    require_file(cfg.data, "data", "data/make_sft.py")
    examples, dropped = render_dataset(load_sft(cfg.data), tokenizer, block_size)
    if not examples:
        raise SystemExit(f"error: all {dropped} conversations of {cfg.data} are longer than the model's context "
                         f"({block_size} tokens); shorten them, or pretrain with a larger --block_size")
    order = length_order(examples)
    # Checked before training: a bad file would otherwise stop the run at its first evaluation.
    eval_records = load_eval_data(cfg.eval_data, cfg.eval_examples)
    if rt.master:
        n_target = sum(sum(m) for _, m in examples)
        print(f"{len(examples)} conversations from {cfg.data} ({dropped} longer than {block_size} "
              f"tokens dropped), {n_target / len(examples):.1f} answer tokens each on average")

    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, cfg.optimizer,
                               device_type=rt.device_type)
    batch_rng = torch.Generator().manual_seed(cfg.seed + rt.rank)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    step, metrics = 0, {}   # metrics: the latest evaluation's figures
    if should_resume(cfg, ckpt_path):
        resumed = resume_training(ckpt_path, model, optimizer, batch_rng, rt.device, rt.rank, cfg.seed, "sft",
                                  cfg, init["tokenizer"])
        step, metrics = resumed["step"], resumed["metrics"]   # they stand until the next evaluation
        if rt.master:
            print(resuming_line(ckpt_path, step, cfg.max_steps))
    raw_model = model
    model = compile_and_wrap(model, rt, cfg.compile)   # torch.compile if asked, then DDP under torchrun

    def evaluate():
        """Instruction-following accuracy on eval prompts, greedy, checked in code."""
        metrics, _ = evaluate_records(raw_model, tokenizer, eval_records, cfg.max_new_tokens)
        return {k: metrics[k] for k in ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")}

    def save(metrics):
        save_training_checkpoint(ckpt_path, "sft", step, model, optimizer, cfg, init["tokenizer"], batch_rng,
                                 metrics, init_from=cfg.init_from)

    # ---- the training loop
    log = MetricsLog(os.path.join(cfg.out_dir, "metrics.jsonl"), enabled=rt.master, step=step)
    bar = tqdm(total=cfg.max_steps, initial=step, desc="sft", disable=not rt.master, dynamic_ncols=True)
    step_loss = grad_norm = 0.0   # the last step's, read before a Ctrl-C save
    with StopRequest(rt) as stop:
        while step < cfg.max_steps and not stop.agreed():
            lr = lr_at(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
            set_lr(optimizer, lr)
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                x, y = get_batch(examples, order, cfg.batch_size, tokenizer.pad, batch_rng, rt.device, block_size)
                last = micro == cfg.grad_accum - 1
                with (model.no_sync() if rt.ddp and not last else nullcontext()), rt.autocast(cfg.dtype):
                    _, loss = model(x, y)   # mean over answer tokens only (y = -1 elsewhere)
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

            if step % cfg.log_interval == 0:
                log.log(step=step, loss=step_loss, lr=lr, grad_norm=grad_norm)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                if rt.master:
                    metrics = evaluate() if eval_records else {}
                    log.log(step=step, **{f"eval_{k}": v for k, v in metrics.items()})
                    bar.write(f"step {step}: " + ", ".join([f"loss {step_loss:.4f}"] +
                                                           [f"{k} {v:.3f}" for k, v in metrics.items()]))
                    save(metrics)
            strict = {"strict": f"{metrics['prompt_strict']:.2f}"} if "prompt_strict" in metrics else {}
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", **strict)   # the latest evaluation's
        if stop.requested and rt.master:
            # A Ctrl-C that came after host_reads left the last step unread: read it now, so
            # that the checkpoint never keeps the weights of a NaN step.
            read_step(step_loss, grad_norm, step - 1, ckpt_path)
            save(metrics)
    bar.close()
    cleanup_runtime(rt)
    stop.raise_if_requested(f"saved {ckpt_path} at step {step} of {cfg.max_steps}")
    return {"step": step, **metrics, "eval_prompts": len(eval_records)}   # how many prompts those figures cover


if __name__ == "__main__":
    run(main)
