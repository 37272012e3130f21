"""
RLHF without a critic: Group Relative Policy Optimization (GRPO; Shao et al. 2024, "DeepSeekMath",
sec. 4.1). PPO (train_ppo.py) needs a value model as large as the policy to tell a good answer
from a lucky one; GRPO samples a group of G answers to each prompt and uses the group itself
as the baseline: an answer's advantage is how far its score stands above its siblings'.

    python train_grpo.py                      # tiny preset, gold reward, from out/sft
    python train_grpo.py --reward=model       # the learned reward model, as PPO's default
    python train_grpo.py --group_size=16 --kl_coef=0

One iteration, top to bottom in `main`:
  1. rollout: G answers to each of rollout_batch / G prompts (train_ppo.rollout, KV cache,
     temperature T), and their log-probabilities under the policy and the frozen reference;
  2. score: the gold checker or the reward model, less the missing-end penalty
     (train_ppo.score_answers, penalise_unfinished);
  3. advantages: outcome supervision (sec. 4.1.2): every token of answer i gets
     A_i = (r_i - mean(r_group)) / (std(r_group) + eps). A group whose G scores are all equal
     has no reward signal (every A_i is 0) and is dropped from the loss, as DAPO drops them
     (Yu et al. 2025), its KL term with it;
  4. optimise: E epochs over M minibatches of the kept answers, minimising minus eq. 3:
     per token min(ratio * A, clip(ratio, 1-eps, 1+eps) * A) - beta * KL_t, with
     KL_t = pi_ref/pi - log(pi_ref/pi) - 1 (eq. 4, the k3 estimator of KL(pi || pi_ref) from
     samples of pi: never negative, and unbiased while pi is the policy that sampled, i.e. in
     the first minibatch; later ones reuse its samples, as DeepSeekMath's do), averaged over
     each answer's tokens, then over the answers.
The KL sits in the loss, not in the reward as in PPO: the advantage stays the group's pure
comparison of scores, and the penalty acts on each token directly instead of through a critic.
Its gradient, taken with the sampled tokens held fixed, is on average that of KL(pi_ref || pi),
the other direction (Tang and Munos 2025, "On a few pitfalls in KL divergence gradient
estimation for RL"): it pulls the policy toward the reference all the same, but it is not the
exact gradient of the KL that eq. 3 names. A fixed probe (train_ppo.probe) measures the policy
before training and at each evaluation, as in PPO.
"""

import os
from dataclasses import dataclass

import torch
from tqdm import tqdm

from minift.checkpoint import (note_if_pretrained, resume_training, resuming_line, save_training_checkpoint,
                               should_resume)
from minift.config import cli_config, print_config, run
from minift.evaluation import evaluate_records, load_eval_data, load_scorable_option
from minift.training import MetricsLog, StopRequest, check_finite, cleanup_runtime, set_lr, setup_runtime
from train_ppo import (answer_logprobs, evaluation_line, iteration_lr, load_models, masked_mean, mean_entropy,
                       penalise_unfinished, probe, ratio_stats, rollout, score_answers)


@dataclass
class Config:
    # I/O
    out_dir: str = "out/grpo"
    sft_ckpt: str = "out/sft/ckpt.pt"
    reward_ckpt: str = "out/reward/ckpt.pt"
    prompts: str = "data/generated/sft/rl_prompts.jsonl"
    eval_data: str = "data/generated/sft/test.jsonl"
    reward: str = "gold"             # "gold": the checkers (RLVR-style, as DeepSeekMath's rule rewards); "model"
    resume: bool = True
    force: bool = False              # start over in out_dir, even if it holds another run
    preset: str = "tiny"
    # rollouts: PPO's budget (train_ppo.py), 36 x 128 answers
    iterations: int = 36
    rollout_batch: int = 128         # answers per rollout: rollout_batch / group_size prompts
    # G answers to each prompt. The larger the group, the fewer groups whose answers all score
    # alike and carry no signal (FINDINGS.md, "The alignment lab", GRPO); 8 keeps most groups
    # while a batch of 128 still holds 16 prompts.
    group_size: int = 8
    max_new_tokens: int = 96
    temperature: float = 0.7         # as PPO: OpenAI, N+ and TRL sample at 0.7
    missing_eos_penalty: float = 1.0 # subtracted from the score of an answer that never ends
    # GRPO
    kl_coef: float = 0.04            # beta, as DeepSeekMath's (their equation 3)
    adv_eps: float = 1e-4            # eps under the group's std (TRL's): scores that differ only by
                                     # rounding (std << eps) get advantages near 0
    # DeepSeekMath takes one gradient step per rollout (mu = 1). As PPO (train_ppo.py) we take
    # one epoch of 4 minibatches; the clip keeps the later ones near the sampling policy.
    epochs: int = 1
    num_minibatches: int = 4
    clip_range: float = 0.2          # policy ratio clip, as PPO
    learning_rate: float = 1e-4      # annealed linearly to 0 over the run, as PPO; half PPO's rate:
                                     # at PPO's, GRPO on the reward model drifted far from SFT and
                                     # its gold reward fell below SFT's (FINDINGS.md, section 10)
    anneal_lr: bool = True           # False: the learning rate stays constant
    adam_eps: float = 1e-5           # N+: TensorFlow-like epsilon
    grad_clip: float = 1.0
    # evaluation and logging
    eval_interval: int = 9
    eval_examples: int = 100
    seed: int = 1337
    device: str = "auto"
    dtype: str = "bfloat16"          # autocast for sampling and updates, as train_ppo.py; "float32": none


PRESETS = {
    "micro": dict(iterations=3, rollout_batch=8, group_size=4, max_new_tokens=16, num_minibatches=2, epochs=2,
                  eval_interval=3, eval_examples=8),
    "tiny": dict(),
    "small": dict(iterations=200, rollout_batch=256, epochs=4, max_new_tokens=128, learning_rate=1e-5,
                  eval_examples=500),
}


# ---------------------------------------------------------------------------- the math
def group_advantages(score, group_size, eps):
    """Each score standardised within its group of G answers to one prompt (sec. 4.1.2,
    outcome supervision). Rows come in groups side by side. Returns (advantages (B,), kept (B,)
    bool): a group whose scores are all equal has advantages 0 and is not kept. Equality is
    tested exactly (max == min), not as std == 0, which rounding can miss."""
    groups = score.view(-1, group_size)                                            # (B/G, G)
    advantages = (groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + eps)
    kept = groups.amax(1) > groups.amin(1)                                         # (B/G,)
    advantages = torch.where(kept.unsqueeze(1), advantages, 0.0)   # 0, not 0/0, even with eps = 0
    return advantages.flatten(), kept.repeat_interleave(group_size)


def k3_kl(logp, ref_logp):
    """Per-token KL(pi || pi_ref) estimated from a sample of pi (eq. 4; Schulman, "Approximating
    KL divergence", k3): r - log r - 1 with r = pi_ref / pi. Unbiased, and >= 0 for every
    sample since log r <= r - 1, unlike the plain log-ratio (k1) that can go negative. (Its
    gradient is another matter: see the module docstring.)"""
    log_r = ref_logp - logp
    return log_r.exp() - log_r - 1


def grpo_loss(new_logp, old_logp, ref_logp, advantages, mask, cfg):
    """Minus the GRPO objective (eq. 3) on a minibatch: the clipped ratio objective of PPO per
    token with the answer's advantage (B,) on every token, less beta times the k3 KL, averaged
    over each answer's tokens (1/|o_i|), then over the minibatch's answers (the paper's 1/G
    averages one group's; a minibatch mixes groups). Returns (loss, stats)."""
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    adv = advantages.unsqueeze(1)                                                   # (B, 1)
    surrogate = torch.min(adv * ratio, adv * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range))
    kl = k3_kl(new_logp, ref_logp)
    loss = -masked_mean(surrogate - cfg.kl_coef * kl, mask, dim=1).mean()
    with torch.no_grad():
        # kl_to_ref: the penalty's k3 estimate of KL(pi || pi_ref), nats a token (before beta)
        stats = ratio_stats(ratio, log_ratio, mask, cfg.clip_range) | {
            "kl_to_ref": masked_mean(kl, mask, dim=1).mean().item()}
    return loss, stats


# ---------------------------------------------------------------------------- the loop
def optimise(policy, optimizer, experience, cfg, rt, generator, it, ckpt_path):
    """E epochs over the kept answers in shuffled minibatches of ceil(kept / M): at most M of
    them, the last possibly smaller (the number kept varies). Returns each minibatch's stats
    (none when every group was dropped)."""
    seq, attn, mask, P, old_logp, ref_logp, advantages = experience
    B = seq.size(0)
    mb_size = -(-B // cfg.num_minibatches)
    stats = []
    for epoch in range(cfg.epochs if B else 0):
        order = torch.randperm(B, generator=generator, device=rt.device)
        for start in range(0, B, mb_size):
            mb = order[start:start + mb_size]
            with rt.autocast(cfg.dtype):
                new_logp, logits = answer_logprobs(policy, seq[mb], attn[mb], P, cfg.temperature)
            loss, st = grpo_loss(new_logp, old_logp[mb], ref_logp[mb], advantages[mb], mask[mb], cfg)
            check_finite(loss.item(), it, ckpt_path)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            optimizer.step()
            st["entropy"] = mean_entropy(logits, mask[mb])
            stats.append(st | {"loss": loss.item()})
    return stats


def main(argv=None):
    cfg = cli_config(Config, PRESETS, argv)
    if cfg.temperature <= 0:  # the log-probabilities divide the logits by it
        raise SystemExit(f"error: --temperature={cfg.temperature}: GRPO samples its answers, so it must be more than 0")
    if cfg.group_size < 2 or cfg.rollout_batch % cfg.group_size:
        raise SystemExit(f"error: --group_size={cfg.group_size} must be at least 2 and divide "
                         f"--rollout_batch={cfg.rollout_batch}")
    rt = setup_runtime(cfg.device, cfg.seed)
    if rt.ddp:  # each rank keeps a different number of answers: their minibatch counts would differ
        raise SystemExit("error: train_grpo.py runs in one process; start it with python, not torchrun")
    print_config(cfg)
    device = rt.device
    sft, tokenizer, policy, reference, reward_model, _ = load_models(cfg, device, critic=False)
    note_if_pretrained(sft, cfg.sft_ckpt, "sft_ckpt")
    records = load_scorable_option(cfg.prompts, "prompts")
    eval_records = load_eval_data(cfg.eval_data, cfg.eval_examples)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    it, metrics = 0, {}
    if should_resume(cfg, ckpt_path):
        ckpt = resume_training(ckpt_path, policy, optimizer, generator, device, 0, cfg.seed, "grpo", cfg,
                               sft["tokenizer"])
        it, metrics = ckpt["step"], ckpt["metrics"]   # a finished run just reports its metrics again
        print(resuming_line(ckpt_path, it, cfg.iterations, "iteration", "iterations"))

    def save():
        save_training_checkpoint(ckpt_path, "grpo", it, policy, optimizer, cfg, sft["tokenizer"], generator, metrics)

    log = MetricsLog(os.path.join(cfg.out_dir, "metrics.jsonl"), step=it)
    bar = tqdm(total=cfg.iterations, initial=it, desc="grpo", dynamic_ncols=True)
    if eval_records and it == 0:  # the probe before any update: the "start" figures
        log.log(iteration=0, **probe(policy, reward_model, tokenizer, eval_records, cfg, rt))
    with StopRequest(rt) as stop:
        while it < cfg.iterations and not stop.requested:
            # ---- 1. rollout: a prompt's G rows side by side
            G = cfg.group_size
            picks = torch.randperm(len(records), generator=generator, device=device)[:cfg.rollout_batch // G]
            batch = [records[i] for i in picks.tolist() for _ in range(G)]
            with torch.no_grad(), rt.autocast(cfg.dtype):
                seq, attn, mask, ended, texts = rollout(policy, tokenizer, batch, cfg, generator, device)
                P = seq.size(1) - mask.size(1)
                old_logp, _ = answer_logprobs(policy, seq, attn, P, cfg.temperature)
                ref_logp, _ = answer_logprobs(reference, seq, attn, P, cfg.temperature)
            with torch.no_grad():
                # ---- 2. score
                score, rm_score, gold = score_answers(reward_model, seq, attn, mask, texts, batch)
                score = penalise_unfinished(score, ended, cfg.missing_eos_penalty)
                # ---- 3. group-relative advantages; the all-equal groups leave the batch
                advantages, kept = group_advantages(score, G, cfg.adv_eps)
            keep = kept.nonzero().squeeze(1)

            # ---- 4. optimise, learning rate annealed linearly to 0 over the run (as PPO)
            set_lr(optimizer, iteration_lr(cfg, it))
            stats = optimise(policy, optimizer, (seq[keep], attn[keep], mask[keep], P, old_logp[keep],
                                                 ref_logp[keep], advantages[keep]), cfg, rt, generator, it, ckpt_path)
            it += 1

            # ---- logging: kl is log pi - log pi_ref summed over an answer's tokens, as PPO's: an
            # estimate from samples, so a batch's can dip below 0; the loss's k3 (kl_to_ref) cannot
            metrics = {"iteration": it, "lr": optimizer.param_groups[0]["lr"],
                       **({} if rm_score is None else {"rm_score": rm_score.mean().item()}),
                       "gold": gold.mean().item(),
                       "kl": ((old_logp - ref_logp) * mask).sum(1).mean().item(),
                       "length": mask.sum(1).mean().item(), "end_rate": ended.mean().item(),
                       "dropped_groups": 1 - kept.float().mean().item(),
                       **{k: sum(s[k] for s in stats) / len(stats) for k in (stats[0] if stats else {})},
                       **({"first_ratio": stats[0]["ratio"]} if stats else {})}
            evaluating = it % cfg.eval_interval == 0 or it == cfg.iterations
            if evaluating and eval_records:
                ev, _ = evaluate_records(policy, tokenizer, eval_records, cfg.max_new_tokens)
                metrics["eval_prompt_strict"] = ev["prompt_strict"]
                metrics.update(probe(policy, reward_model, tokenizer, eval_records, cfg, rt))
                bar.write(evaluation_line(it, metrics))
            log.log(**metrics)   # logged, then saved: a resumed run never loses a saved iteration's record
            if evaluating:
                save()
            bar.update(1)
            bar.set_postfix(**({"rm": f"{metrics['rm_score']:.2f}"} if "rm_score" in metrics else {}),
                            gold=f"{metrics['gold']:.2f}", kl=f"{metrics['kl']:.2f}",
                            dropped=f"{metrics['dropped_groups']:.2f}")
        if stop.requested:
            save()
    bar.close()
    cleanup_runtime(rt)
    stop.raise_if_requested(f"saved {ckpt_path} at iteration {it} of {cfg.iterations}")
    return metrics


if __name__ == "__main__":
    run(main)
