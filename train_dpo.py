"""
Direct Preference Optimization (DPO; Rafailov et al. 2023): the policy learns from the preference
pairs the reward model trains on (ranked by the gold judge) directly, with no reward model and
no sampling. An alternative to stages 3 and 4 (train_reward.py, then train_ppo.py).

    python data/make_preferences.py   # K SFT answers per prompt, pairs ranked by the gold reward
    python train_dpo.py               # tiny preset, starts from out/sft/ckpt.pt
    python train_dpo.py --loss_type=ipo --beta=0.1
    python evaluate.py --ckpt=out/dpo/ckpt.pt --split=heldout

What happens:
  1. The policy starts as the SFT model; a frozen copy of it is the reference pi_ref.
  2. Each answer's summed log-probability log pi(y | x) (its tokens and the <|end|> that
     closes it, given the prompt) under the policy and the reference. The reference's are
     computed once, up front.
  3. Under the KL-constrained RLHF objective the optimal policy is pi_ref * exp(r / beta) / Z,
     so a policy implies a reward r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) + beta * log Z(x)
     (paper eq. 5). Z cancels in a Bradley-Terry comparison of two answers to one prompt.
  4. So the Bradley-Terry loss of the reward model, with this implicit reward in place of a
     learned head, trains the policy directly (eq. 7):
         -log sigmoid(beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l))])
     --label_smoothing gives conservative DPO (some labels are taken to be flipped), and
     --loss_type=ipo the squared loss of IPO (Azar et al. 2023), which does not push the
     margin to infinity on pairs it already ranks right.
  5. Batches are whole prompt groups, as in train_reward.py: each distinct answer is forwarded
     once per step and its log-probability reused in every pair it is part of.
Metrics: loss, the implicit reward's pair accuracy and margin, on the training batches and on
held-out pairs. The checkpoint (kind "dpo") is a GPT: evaluate.py, sample.py and train_ppo.py
(as --sft_ckpt) read it as they read an SFT checkpoint.
"""

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minift.checkpoint import (GENERATIVE, build_model, load_checkpoint, note_if_pretrained, resume_training,
                               resuming_line, save_training_checkpoint, should_resume, tokenizer_for, train_first, unwrap)
from minift.config import cli_config, print_config, run
from minift.formats import load_preferences, require_file
from minift.model import answer_positions, pad_left, padded_length
from minift.training import (MetricsLog, StopRequest, all_reduce_mean, check_finite, cleanup_runtime,
                             compile_and_wrap, lr_at, make_optimizer, set_lr, setup_runtime)
from train_reward import accuracy_by_type, answers_used, build_groups, held_out_pairs, step_batch


@dataclass
class Config:
    # I/O
    out_dir: str = "out/dpo"
    init_from: str = "out/sft/ckpt.pt"                    # the SFT checkpoint: policy and reference
    data: str = "data/generated/prefs/train.jsonl"        # preference pairs (ours, TRL or HH-RLHF)
    val_data: str = "data/generated/prefs/val.jsonl"      # held-out pairs; "" = hold out val_fraction of data
    val_fraction: float = 0.1      # only used when val_data is ""
    resume: bool = True
    force: bool = False            # start over in out_dir, even if it holds another run
    preset: str = "tiny"
    # DPO
    # 0.1 and 0.3 scored alike overall; 0.3 holds the policy nearer the SFT model and kept more
    # of the capital letters, list and paragraph counts that 0.1 lost (FINDINGS.md, "The
    # alignment lab", DPO).
    beta: float = 0.3              # strength of the KL anchor to the reference (the paper uses 0.1 to 0.5)
    # sigmoid is the paper's loss; IPO bounds how far the implicit reward's margin is pushed.
    loss_type: str = "sigmoid"     # "sigmoid" (DPO, equation 7) or "ipo" (IPO, Azar et al., 2023)
    label_smoothing: float = 0.0   # conservative DPO: the share of labels taken to be flipped (sigmoid only)
    # optimisation
    batch_groups: int = 8          # prompts per micro-batch, each with all of its pairs
    grad_accum: int = 1
    epochs: int = 1                # passes over the pairs
    # 3e-4 ranked held-out pairs better and followed instructions worse: it fits the implicit
    # reward, not the checker (FINDINGS.md, "The alignment lab", DPO).
    learning_rate: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 10
    weight_decay: float = 0.0
    optimizer: str = "adamw"       # or "muon" (make_optimizer)
    grad_clip: float = 1.0
    # evaluation and logging
    eval_interval: int = 50        # and at the end
    eval_batch_size: int = 128     # sequences per forward pass when scoring
    log_interval: int = 10
    # system
    device: str = "auto"
    dtype: str = "bfloat16"        # autocast (Runtime.autocast); "float32": none
    compile: bool = False
    seed: int = 1337


PRESETS = {
    "micro": dict(batch_groups=2, warmup_steps=2, eval_interval=5, log_interval=1),
    "tiny": dict(),
    "small": dict(batch_groups=16, learning_rate=1e-5, min_lr=1e-6, warmup_steps=20, eval_batch_size=256),
}


# ---------------------------------------------------------------------- the method
def summed_answer_logprobs(model, seqs, tokenizer, device):
    """Lists of ids (prompt, then answer ending in <|end|>) -> (B,) summed log p(answer tokens |
    all before them): step 2. Left padding and positions from the mask (as
    train_reward.last_token_scores does), so a sequence's figure does not depend on the
    batch (tested to 1e-4; on the CPU to the last bit, minift/model.py's docstring says
    why). The input is ids[:, :-1] and the targets ids[:, 1:], kept only where they are
    answer tokens; its length is a multiple of minift.model.PAD_MULTIPLE. We call model(...)
    so that DDP syncs the gradients; it returns the scored rows' logits on the CPU and every
    row's elsewhere (GPT.forward)."""
    block_size = unwrap(model).config.block_size
    length = padded_length(max(map(len, seqs)) - 1, block_size) + 1
    ids, mask = pad_left(seqs, tokenizer.pad, device, length)
    answer = answer_positions(ids, tokenizer.assistant, mask)[:, 1:].bool()   # targets that count
    targets = torch.where(answer, ids[:, 1:], -1)
    logits, _ = model(ids[:, :-1], targets, attention_mask=mask[:, :-1])
    if logits.size(0) != answer.sum():
        logits = logits[answer.flatten()]
    logp = logits.float().log_softmax(-1).gather(1, targets[answer].unsqueeze(1)).squeeze(1)  # (N,)
    return torch.zeros(len(seqs), device=logp.device).index_add(0, answer.nonzero()[:, 0], logp)


@torch.no_grad()
def logprobs_all(model, seqs, tokenizer, device, batch_size):
    """summed_answer_logprobs of many sequences without gradients, batched by length so little
    compute goes to padding."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.zeros(len(seqs))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        out[batch] = summed_answer_logprobs(model, [seqs[i] for i in batch], tokenizer, device).cpu()
    return out


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, loss_type="sigmoid",
             label_smoothing=0.0):
    """Summed log-probabilities of the answers of each pair, (P,) each -> (losses (P,),
    chosen rewards (P,), rejected rewards (P,)). The rewards are the implicit ones,
    beta * (log pi - log pi_ref) (eq. 5), detached: they are for reading, not training.
    h = the log-ratio of chosen over rejected under the policy less the reference's.
      sigmoid: -log sigmoid(beta h) (eq. 7); with label_smoothing e, conservative DPO
               (Mitchell 2023; TRL): -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h).
      ipo:     (h - 1 / (2 beta))^2 (Azar et al. 2023, eq. 17): h is pulled to a finite
               target instead of pushed up without end. (TRL's IPO averages log-probs over
               an answer's tokens; we pass sums, as for sigmoid.)"""
    h = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; expected sigmoid or ipo")
    return losses, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


def pair_stats(losses, chosen_rewards, rejected_rewards):
    """The figures logged for a set of pairs: loss, implicit-reward accuracy and margin."""
    margin = chosen_rewards - rejected_rewards
    return {"loss": losses.mean().item(), "accuracy": (margin > 0).float().mean().item(),
            "margin": margin.mean().item(), "chosen_reward": chosen_rewards.mean().item(),
            "rejected_reward": rejected_rewards.mean().item()}


def pair_rows(groups):
    """(chosen seq indices, rejected seq indices) of every pair of the groups, as tensors."""
    pairs = [(c, r) for g in groups for c, r, _ in g]
    return torch.tensor([c for c, _ in pairs]), torch.tensor([r for _, r in pairs])


def group_batch_loss(model, seqs, groups, ref_logps, tokenizer, device, cfg):
    """Mean DPO loss of a batch of whole prompt groups, and its pair_stats. Each distinct
    answer is forwarded once and its log-probability reused in all its pairs (step 5)."""
    used = answers_used(groups)
    row = torch.full((len(seqs),), -1, dtype=torch.long)
    row[used] = torch.arange(len(used))
    logps = summed_answer_logprobs(model, [seqs[i] for i in used], tokenizer, device)
    chosen, rejected = pair_rows(groups)
    ref = ref_logps.to(logps.device)
    losses, r_c, r_r = dpo_loss(logps[row[chosen].to(device)], logps[row[rejected].to(device)],
                                ref[chosen.to(device)], ref[rejected.to(device)], cfg.beta, cfg.loss_type,
                                cfg.label_smoothing)
    return losses.mean(), pair_stats(losses, r_c, r_r)


def evaluate(model, val, ref_logps, tokenizer, device, cfg):
    """Held-out pairs: loss, implicit-reward accuracy and margin, and accuracy per
    instruction id (a pair counts toward every id of its prompt)."""
    seqs, groups = val
    if not groups:
        return {}
    logps = logprobs_all(model, seqs, tokenizer, device, cfg.eval_batch_size)
    chosen, rejected = pair_rows(groups)
    losses, r_c, r_r = dpo_loss(logps[chosen], logps[rejected], ref_logps[chosen], ref_logps[rejected],
                                cfg.beta, cfg.loss_type, cfg.label_smoothing)
    return {**{f"val_{k}": v for k, v in pair_stats(losses, r_c, r_r).items()},
            "val_accuracy_by_type": accuracy_by_type(groups, (r_c > r_r).tolist())}


# ---------------------------------------------------------------------- training
def main(argv=None):
    cfg = cli_config(Config, PRESETS, argv)
    if cfg.loss_type == "ipo" and cfg.label_smoothing:   # IPO's squared loss has no flipped labels
        raise SystemExit(f"error: --label_smoothing={cfg.label_smoothing} is conservative DPO's, for "
                         "--loss_type=sigmoid; IPO would ignore it. Drop it, or use --loss_type=sigmoid")
    rt = setup_runtime(cfg.device, cfg.seed)
    if rt.master:
        print_config(cfg)

    # ---- policy and frozen reference, both the SFT model; dropout off in both (as in
    # train_ppo.load_models), or the two log-probabilities would differ by noise alone
    init = load_checkpoint(cfg.init_from, hint=train_first("sft", "train_sft.py"), kinds=GENERATIVE,
                           option="init_from")
    tokenizer = tokenizer_for(init, cfg.init_from)
    note_if_pretrained(init, cfg.init_from, "init_from", rt.master)
    init["model_config"]["dropout"] = 0.0
    model = build_model(init).to(rt.device).eval()    # eval mode = no dropout; gradients still flow
    reference = build_model(init).to(rt.device).eval().requires_grad_(False)
    block_size = model.config.block_size

    # ---- data: pairs grouped by prompt, as for the reward model
    for option in ("data", "val_data"):
        if getattr(cfg, option):
            require_file(getattr(cfg, option), option, "data/make_preferences.py",
                         "--val_data= holds out --val_fraction of --data instead" if option == "val_data" else "")
    seqs, groups, dropped, _ = build_groups(load_preferences(cfg.data), tokenizer, block_size)
    groups, val = held_out_pairs(seqs, groups, cfg, tokenizer, block_size)
    per_step = cfg.batch_groups * cfg.grad_accum * rt.world_size  # whole prompt groups per optimizer step
    if len(groups) < per_step:
        raise ValueError(f"{len(groups)} prompt groups in {cfg.data} ({dropped} pairs longer than {block_size} "
                         f"tokens dropped), fewer than one step's {per_step}: lower --batch_groups or --grad_accum, "
                         "or run on fewer processes")
    if rt.master:
        print(f"{sum(len(g) for g in groups)} pairs over {len(groups)} prompts from {cfg.data} ({dropped} too "
              f"long, dropped); {sum(len(g) for g in val[1])} validation pairs")

    # ---- the reference's log-probabilities, once (step 2). Per step would cost the same
    # forward passes in one epoch, as each answer is seen once; up front they run without
    # autograd, in batches sorted by length (little padding), and once for every epoch and
    # every evaluation. Under the training's autocast, so policy and reference agree at step 0.
    with rt.autocast(cfg.dtype):
        ref_logps = logprobs_all(reference, seqs, tokenizer, rt.device, cfg.eval_batch_size)
        val_ref_logps = logprobs_all(reference, val[0], tokenizer, rt.device, cfg.eval_batch_size)
    del reference

    steps_per_epoch = len(groups) // per_step  # the last partial batch of an epoch is left out
    max_steps = cfg.epochs * steps_per_epoch
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, cfg.optimizer,
                               device_type=rt.device_type)
    batch_rng = torch.Generator().manual_seed(cfg.seed)  # never drawn (the order is epoch_order's); checkpoints keep one
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    step, metrics = 0, {}
    if should_resume(cfg, ckpt_path):
        ckpt = resume_training(ckpt_path, model, optimizer, batch_rng, rt.device, kind="dpo", cfg=cfg,
                               tokenizer=init["tokenizer"], world_size=rt.world_size)
        step, metrics = ckpt["step"], ckpt["metrics"]  # a finished run just reports its metrics again
        if rt.master:
            print(resuming_line(ckpt_path, step, max_steps, option="epochs"))
    raw_model = model
    model = compile_and_wrap(model, rt, cfg.compile)   # torch.compile if asked, then DDP under torchrun

    def save(metrics):
        save_training_checkpoint(ckpt_path, "dpo", step, model, optimizer, cfg, init["tokenizer"], batch_rng,
                                 metrics, init_from=cfg.init_from, world_size=rt.world_size)

    # ---- the training loop
    log = MetricsLog(os.path.join(cfg.out_dir, "metrics.jsonl"), enabled=rt.master, step=step)
    bar = tqdm(total=max_steps, initial=step, desc="dpo", disable=not rt.master, dynamic_ncols=True)
    with StopRequest(rt) as stop:
        while step < max_steps and not stop.agreed():
            lr = lr_at(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, max_steps)
            set_lr(optimizer, lr)
            stats = {}
            for micro in range(cfg.grad_accum):
                batch = [groups[i] for i in step_batch(len(groups), step, micro, cfg, rt.rank, rt.world_size)]
                last = micro == cfg.grad_accum - 1
                with (model.no_sync() if rt.ddp and not last else nullcontext()), rt.autocast(cfg.dtype):
                    loss, batch_stats = group_batch_loss(model, seqs, batch, ref_logps, tokenizer, rt.device, cfg)
                    (loss / cfg.grad_accum).backward()
                for k, v in batch_stats.items():
                    stats[k] = stats.get(k, 0.0) + v / cfg.grad_accum
            # averaged, so that all ranks stop together (one alone would leave the others waiting
            # forever in the next all-reduce); the logged statistics are every rank's mean too
            stats = {k: all_reduce_mean(v, rt) for k, v in stats.items()}
            check_finite(stats["loss"], step, ckpt_path)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            bar.update(1)
            if step % cfg.log_interval == 0:
                log.log(step=step, **stats, lr=lr, grad_norm=grad_norm)
            if step % cfg.eval_interval == 0 or step == max_steps:
                if rt.master:
                    with rt.autocast(cfg.dtype):
                        metrics = evaluate(raw_model, val, val_ref_logps, tokenizer, rt.device, cfg)
                    metrics = {"train_loss": stats["loss"], "train_accuracy": stats["accuracy"], **metrics}
                    # logged, then saved: a resumed run never loses a saved step's record
                    log.log(step=step, **{f"eval_{k}": v for k, v in metrics.items()})
                    save(metrics)
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                            if isinstance(v, float)))
            bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['accuracy']:.2f}", lr=f"{lr:.2e}",
                            **{"val_acc": f"{metrics['val_accuracy']:.2f}"} if "val_accuracy" in metrics else {})
        if stop.requested and rt.master:
            save(metrics)
    bar.close()
    if rt.master and "val_accuracy" in metrics:
        for t, a in metrics["val_accuracy_by_type"].items():
            print(f"  {t:50s} {a:.3f}")
        print(f"dpo: {step} steps, beta {cfg.beta} ({cfg.loss_type}); held-out pairs: implicit-reward accuracy "
              f"{metrics['val_accuracy']:.3f}, loss {metrics['val_loss']:.4f}, margin {metrics['val_margin']:.3f}")
    cleanup_runtime(rt)
    stop.raise_if_requested(f"saved {ckpt_path} at step {step} of {max_steps}")
    return {"step": step, "beta": cfg.beta, "loss_type": cfg.loss_type, **metrics}


if __name__ == "__main__":
    run(main)
