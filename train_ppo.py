"""
Stage 4 of 4: RLHF with PPO (Schulman et al. 2017), as in InstructGPT (Ouyang et al. 2022).
The SFT policy writes answers, a frozen reward model scores them, and PPO nudges the
policy toward higher scores while a per-token KL penalty keeps it close to the SFT model.

    python train_ppo.py                      # tiny preset, from out/sft and out/reward
    python train_ppo.py --reward=gold        # reward straight from the checkers (RLVR-style)
    torchrun --nproc_per_node=2 train_ppo.py # DDP: each rank samples its own rollouts

One iteration, top to bottom in `main`:
  1. rollout: sample K answers to each of a batch of prompts (KV cache, temperature T);
  2. score: reward model (or gold checker) at the last token, less the mean score of the
     prompt's other answers (RLOO's baseline), minus a KL penalty per token;
  3. advantages: GAE over the answer tokens, whitened;
  4. optimise: E epochs (one by default) over M minibatches of the clipped PPO objective,
     policy and critic.
Before the first iteration and at every evaluation, a fixed probe (the evaluation prompts,
sampled from one seed) measures the reward model's and the gold reward's mean score, so that
"did the rewards rise?" compares the same prompts before and after.
Every detail is commented with its source. "N+" below is "The N+ Implementation Details of
RLHF with PPO: A Case Study on TL;DR Summarization" (Huang et al. 2024); Ziegler is
"Fine-Tuning Language Models from Human Preferences" (Ziegler et al. 2019, OpenAI's
lm-human-preferences).
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minift.checkpoint import (GENERATIVE, build_model, check_tokenizer, load_checkpoint, note_if_pretrained,
                               resume_training, resuming_line, save_training_checkpoint, should_resume, tokenizer_for,
                               train_first)
from minift.config import cli_config, print_config, run
from minift.engine import generate
from minift.evaluation import (decode_answer, evaluate_records, load_eval_data, load_scorable_option, prompt_room,
                               render_prompts)
from minift.synthetic.gold import gold_reward
from minift.model import ScalarModel, pad_left
from minift.training import (MetricsLog, StopRequest, all_reduce_mean, average_gradients, check_finite,
                             cleanup_runtime, set_lr, setup_runtime)


@dataclass
class Config:
    # I/O
    out_dir: str = "out/ppo"
    sft_ckpt: str = "out/sft/ckpt.pt"
    reward_ckpt: str = "out/reward/ckpt.pt"
    prompts: str = "data/generated/sft/rl_prompts.jsonl"
    eval_data: str = "data/generated/sft/test.jsonl"
    reward: str = "model"            # "model": the learned reward model; "gold": the checkers directly
    resume: bool = True
    force: bool = False              # start over in out_dir, even if it holds another run
    preset: str = "tiny"
    # rollouts
    # Rollout + optimisation rounds: 36 x 128 = 4,608 episodes, each used for one epoch. More
    # fresh answers, each seen once, taught more on heldout and in samples than fewer answers
    # reused for 4 epochs, for a little more time (FINDINGS.md, section 14, "Fresh answers
    # instead of reused ones").
    iterations: int = 36
    rollout_batch: int = 128         # answers per rollout, K to each prompt (per rank with DDP)
    max_new_tokens: int = 96
    temperature: float = 0.7         # OpenAI, N+ and TRL sample at 0.7, with no top-k/top-p
    missing_eos_penalty: float = 1.0 # subtracted from the score of an answer that never ends
    # K answers to each of rollout_batch / K prompts; with K > 1 each answer's score has the
    # mean score of the prompt's other K-1 answers subtracted (leave_one_out). It is also
    # faster: a batch of fewer prompts is padded to a shorter longest prompt and waits for
    # fewer long answers (FINDINGS.md, section 9, "Four answers to each prompt").
    samples_per_prompt: int = 4      # K, each scored against the other K-1
    # rewards
    kl_coef: float = 0.05            # beta: N+ and TRL use 0.05 (InstructGPT 0.02)
    adaptive_kl: bool = False        # Ziegler's proportional controller toward kl_target
    kl_target: float = 3.0           # nats per answer (our answers are short)
    kl_horizon: int = 10000
    whiten_rewards: bool = False     # scale the scores per batch (N+ scales the per-token rewards); batches >= 8
    # PPO
    ppo_epochs: int = 1              # OpenAI and N+ use 4; here fresh answers beat reused ones
                                     # for the same time (the clip still binds within an epoch's
                                     # later minibatches)
    num_minibatches: int = 4
    gamma: float = 1.0               # no discounting within an answer (all sources)
    lam: float = 1.0                 # GAE lambda (OpenAI, N+ and TRL: 0.95). With a critic that
                                     # starts at zero, 0.95 hands an answer's first tokens (a title,
                                     # an opening quote) a fraction of its score; 1.0 hands it all
                                     # (FINDINGS.md, section 14, "PPO's defaults, re-measured")
    clip_range: float = 0.2          # policy ratio clip
    value_clip: float = 0.2
    # OpenAI's 0.1 (lm-human-preferences) balances two losses in one network; our critic is its
    # own network, so under Adam the factor acts only through eps and how often the critic's
    # gradient-norm clip (grad_clip, per network) binds.
    vf_coef: float = 0.1             # the value loss's weight in the one loss
    learning_rate: float = 2e-4      # annealed linearly to 0 over the run. At 3e-5 PPO stopped
                                     # moving long before the end; 1e-4 with 4 epochs and 2e-4
                                     # with one are measured in FINDINGS.md, section 14 ("PPO's
                                     # defaults, re-measured", "Fresh answers instead of reused ones")
    anneal_lr: bool = True           # False: the learning rate stays constant
    adam_eps: float = 1e-5           # N+: TensorFlow-like epsilon
    grad_clip: float = 1.0
    # evaluation and logging
    eval_interval: int = 9           # the probe before the first update and 4 times after
    eval_examples: int = 100
    seed: int = 1337
    device: str = "auto"
    # bf16 autocast (Runtime.autocast) for the policy, reference and critic: their sampling,
    # scoring and updates. Old and new log-probabilities come from the same bf16 products, so
    # the first ratio is still 1 (exactly on the CPU, where a row's result does not depend on its
    # batch; a GPU's kernels may differ by rounding). The reward model scores in fp32, the
    # precision its normalisation was fitted in, and the evaluations decode in fp32, as
    # evaluate.py does. bf16 scored within the seeds' noise of fp32, in less time (FINDINGS.md,
    # section 9, "bf16"). "float32": none.
    dtype: str = "bfloat16"          # autocast; "float32": none


PRESETS = {
    "micro": dict(iterations=3, rollout_batch=8, max_new_tokens=16, num_minibatches=2, ppo_epochs=2,
                  eval_interval=3, eval_examples=8),
    "tiny": dict(),
    "small": dict(iterations=200, rollout_batch=256, ppo_epochs=4, max_new_tokens=128, learning_rate=1e-5,
                  eval_examples=500),
}


# ---------------------------------------------------------------------------- the math
def masked_mean(x, mask, dim=None):
    return (x * mask).sum() / mask.sum() if dim is None else (x * mask).sum(dim) / mask.sum(dim)


def masked_whiten(x, mask, shift_mean=True):
    """Normalise to unit variance over the valid tokens only (padding must not count).
    Advantages are whitened with the mean removed; rewards keep their mean (N+ detail)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    white = (x - mean) * torch.rsqrt(var + 1e-8)
    return white if shift_mean else white + mean


def answer_logprobs(model, seq, attn, prompt_len, temperature):
    """Log-probabilities (B, N) of the answer tokens seq[:, P:], and the logits they came from.
    Logits at position t predict token t+1, so positions P-1 .. P+N-2 score the answer.
    The logits are divided by the *sampling* temperature: otherwise the ratio and the KL
    compare a different distribution from the one we sampled (N+; KL rises too fast)."""
    h = model.hidden_states(seq, attn)[:, prompt_len - 1:-1]                   # (B, N, C)
    # The output layer runs only where an answer token is predicted: the prompt's half of
    # the positions would be thrown away.
    logits = model.lm_head(h).float() / temperature                              # (B, N, V)
    logp = F.log_softmax(logits, dim=-1).gather(-1, seq[:, prompt_len:].unsqueeze(-1)).squeeze(-1)
    return logp, logits


def answer_values(value_model, seq, attn, prompt_len):
    """The critic's V(s_t) (B, N) for each answer token t, read where its log-probability is:
    at the token before it, positions P-1 .. P+N-2, the state in which t was chosen."""
    return value_model(seq, attn)[:, prompt_len - 1:-1].float()


def penalise_unfinished(score, ended, penalty):
    """The "EOS trick": an answer cut off at max_new_tokens, without its <|end|>, loses
    `penalty` from its score, as TRL's missing_eos_penalty does (N+ sets such a score to -1
    instead); one that ended keeps its score.
    Without it, rambling until cut off costs nothing, and the policy learns to ramble."""
    return score - penalty * (1 - ended.float())


def leave_one_out(score, k):
    """Each score minus the mean score of the other k-1 answers to its prompt (RLOO, Ahmadian
    et al. 2024). Rows come in groups of k answers to one prompt. A prompt's difficulty
    (some instructions pass almost always, others rarely) then drops out of the score, and
    what is left says whether this answer beat its siblings: the critic alone would have to
    learn each prompt's difficulty first. The other answers do not depend on this one, so
    the baseline leaves the policy gradient unbiased."""
    groups = score.view(-1, k)                                                     # (B/k, k)
    others = (groups.sum(1, keepdim=True) - groups) / (k - 1)
    return (groups - others).flatten()


def token_rewards(score, logprobs, ref_logprobs, mask, kl_coef):
    """Per-token reward: r_t = -beta * (log pi(a_t) - log pi_ref(a_t)), plus the sequence
    score on the last real answer token (Ziegler eq. 2; InstructGPT eq. 2). Returns
    (rewards (B, N), kl (B, N)). Padding after the end token gets nothing."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(1).long() - 1                                               # (B,)
    # At the answer's last real token: its <|end|>, or the last token of an answer cut off at
    # max_new_tokens; never at a PAD position.
    rewards[torch.arange(len(score)), last] += score
    return rewards, kl


def gae(rewards, values, mask, gamma, lam):
    """Generalised Advantage Estimation (Schulman et al. 2016):
        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1}.
    Values past the answer's end are zeroed, so the last real token bootstraps from 0:
    the episode ends there. Returns (advantages, returns = A + V), both (B, N)."""
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        next_value = values[:, t + 1] if t + 1 < rewards.size(1) else torch.zeros_like(next_adv)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask[:, t]
        advantages[:, t] = next_adv
    return advantages, advantages + values


@torch.no_grad()
def ratio_stats(ratio, log_ratio, mask, clip_range):
    """How far an update moved the policy from the one that sampled: the mean ratio, the k3
    estimator of KL(old || new) (Schulman, "Approximating KL divergence") and the share of
    tokens whose ratio lies outside [1 - eps, 1 + eps] (CleanRL's clipfrac; the clip changes
    the loss only for those of them whose advantage pushes the ratio further out)."""
    return {"ratio": masked_mean(ratio, mask).item(),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, mask).item(),
            "clipfrac": masked_mean(((ratio - 1).abs() > clip_range).float(), mask).item()}


def ppo_losses(new_logp, old_logp, advantages, new_values, old_values, returns, mask, cfg):
    """The clipped surrogate objective (PPO eq. 7) and the clipped value loss (OpenAI's
    baselines, kept by N+ and TRL). Returns (policy loss, value loss, stats)."""
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    pg_loss = masked_mean(torch.max(-advantages * ratio,
                                    -advantages * ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)), mask)
    clipped_values = old_values + (new_values - old_values).clamp(-cfg.value_clip, cfg.value_clip)
    vf_loss = 0.5 * masked_mean(torch.max((new_values - returns) ** 2, (clipped_values - returns) ** 2), mask)
    return pg_loss, vf_loss, ratio_stats(ratio, log_ratio, mask, cfg.clip_range)


class AdaptiveKLController:
    """Ziegler et al. 2019, sec. 2.2: raise beta when the KL overshoots the target, lower it
    when it undershoots. The proportional error KL / target - 1 is clipped to +-0.2, and beta
    is multiplied by 1 + error x (samples since the last update / horizon) (lm-human-preferences'
    code; the paper writes a constant K_beta where the code has samples / horizon)."""

    def __init__(self, init, target, horizon):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl, n_samples):
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.value *= 1 + error * n_samples / self.horizon


def critic_from(ckpt):
    """The value model: the checkpoint's transformer under a value head set to zero, so that
    it predicts 0 until it learns (OpenAI's value-head init; N+). Why not keep the
    reward model's own head, as a plain copy would: that head was trained at the last token
    only, and in the reward's raw scale, before normalisation. Copied, its values along an
    answer erred by more than the returns spread, and until it relearned, the advantages were
    mostly its errors; from zero the value loss starts low (FINDINGS.md, section 9, "The critic
    starts with a zero head")."""
    critic = build_model(ckpt, ScalarModel, head_std=0.0)   # from an SFT checkpoint: a new head, at zero
    # from a reward model: its trained head came with the weights, so zero it here
    torch.nn.init.zeros_(critic.head.weight)
    torch.nn.init.zeros_(critic.head.bias)
    return critic


# ---------------------------------------------------------------------------- rollouts
@torch.no_grad()
def rollout(policy, tokenizer, records, cfg, generator, device):
    """One answer per record (a prompt's record comes K times for K answers). Returns the
    left-padded prompt + right-padded answer batch and its masks, used again in training."""
    # As in evaluation, an over-long prompt keeps its end, so the answer has room to be written.
    room = prompt_room(policy.config.block_size, cfg.max_new_tokens)
    prompts = render_prompts(tokenizer, [r["prompt"] for r in records], room)
    prompt_ids, prompt_mask = pad_left(prompts, tokenizer.pad, device)             # (B, P)
    answers = generate(policy, prompts, cfg.max_new_tokens, temperature=cfg.temperature, top_k=0, top_p=1.0,
                       stop_tokens=(tokenizer.end,), pad_token=tokenizer.pad, generator=generator)
    # Only <|end|> ends a rollout: an answer that never closes its turn is penalised
    # (penalise_unfinished). generate() already stops a row there; cutting here as well makes
    # it this function's guarantee that nothing after the end token is ever scored or trained on.
    answers = [a[:a.index(tokenizer.end) + 1] if tokenizer.end in a else a for a in answers]
    N = max(len(a) for a in answers)
    answer_ids = torch.full((len(answers), N), tokenizer.pad, dtype=torch.long)
    answer_mask = torch.zeros((len(answers), N))
    for i, a in enumerate(answers):
        answer_ids[i, :len(a)] = torch.tensor(a)
        answer_mask[i, :len(a)] = 1   # up to and including <|end|>; everything after is masked
    ended = torch.tensor([bool(a) and a[-1] == tokenizer.end for a in answers], dtype=torch.float)
    texts = [decode_answer(tokenizer, a, (tokenizer.end,)) for a in answers]
    seq = torch.cat([prompt_ids, answer_ids.to(device)], 1)                         # (B, P+N)
    attn = torch.cat([prompt_mask, answer_mask.long().to(device)], 1)                 # (B, P+N)
    return seq, attn, answer_mask.to(device), ended.to(device), texts


def load_models(cfg, device, critic=True):
    """The SFT checkpoint, its tokenizer, and the policy, reference, reward and value models
    (the reward model is None with --reward=gold, the value model with critic=False, as in
    GRPO). Dropout is off in all of them (Ziegler, N+): with dropout, the log-probabilities
    of the rollout and of the update would differ by noise alone."""
    sft = load_checkpoint(cfg.sft_ckpt, hint=train_first("sft", "train_sft.py"), kinds=GENERATIVE,
                          option="sft_ckpt")
    sft["model_config"]["dropout"] = 0.0
    tokenizer = tokenizer_for(sft, cfg.sft_ckpt)
    policy = build_model(sft).to(device)          # trained; starts as the SFT model
    reference = build_model(sft).to(device)       # frozen SFT copy, anchor of the KL penalty
    rm_ckpt = None   # --reward=gold: the checkers score, no reward model
    if cfg.reward == "model":
        rm_ckpt = load_checkpoint(cfg.reward_ckpt, hint=train_first("reward", "train_reward.py"),
                                  kinds=("reward",), option="reward_ckpt")
        check_tokenizer(rm_ckpt, cfg.reward_ckpt, sft["tokenizer"], cfg.sft_ckpt)
        rm_ckpt["model_config"]["dropout"] = 0.0
    reward_model = build_model(rm_ckpt, ScalarModel).to(device) if rm_ckpt else None
    # The critic is the reward model's transformer (InstructGPT, N+, TRL: its features already
    # tell good answers from bad), or with --reward=gold the SFT model's, under a value head
    # that starts at zero.
    value_model = critic_from(rm_ckpt or sft).to(device).eval() if critic else None
    for frozen in (reference, reward_model):
        if frozen is not None:
            frozen.eval().requires_grad_(False)
    policy.eval()       # eval mode = no dropout; gradients still flow
    return sft, tokenizer, policy, reference, reward_model, value_model


def score_answers(reward_model, seq, attn, mask, texts, batch):
    """The sequence-level score of each answer: the reward model's normalised reward (its
    head at the last real token, plus its weighted likelihood of the answer's tokens, which
    `mask` marks), or with --reward=gold the gold checker's. Returns (the score optimised, the
    reward model's (None without one), the gold reward): the gold reward is logged either way,
    to watch what the reward model's score does to it."""
    gold = torch.tensor([gold_reward(r["prompt"], t, r["instruction_id_list"], r["kwargs"])
                         for r, t in zip(batch, texts)], device=seq.device)
    if reward_model is None:   # --reward=gold: load_models loads none
        return gold, None, gold
    answer_only = torch.cat([torch.zeros_like(attn[:, :seq.size(1) - mask.size(1)]), mask.long()], 1)
    rm = reward_model.reward(seq, attn, answer_only)
    return rm, rm, gold


def probe(policy, reward_model, tokenizer, eval_records, cfg, rt):
    """Mean reward-model score and gold reward on a fixed probe: the evaluation prompts,
    sampled as in a rollout but from the same seed each time. The rollout batches' own
    means compare different prompts, and prompt difficulty varies more between two batches
    than a short PPO run moves the policy. The probe compares the same prompts with the same
    random numbers (common random numbers), so its change is the policy's change. Each
    prompt's scores are logged too, for a paired test of that change (pipeline.py)."""
    with rt.autocast(cfg.dtype):   # sampled as the rollouts are
        seq, attn, mask, _, texts = rollout(policy, tokenizer, eval_records, cfg,
                                            torch.Generator(device=rt.device).manual_seed(cfg.seed), rt.device)
    _, rm, gold = score_answers(reward_model, seq, attn, mask, texts, eval_records)
    rm_figures = {} if rm is None else {"probe_rm_score": rm.mean().item(),
                                        "probe_rm_each": [round(x, 4) for x in rm.tolist()]}
    return {"probe_gold": gold.mean().item(), "probe_gold_each": [round(x, 4) for x in gold.tolist()], **rm_figures}


def evaluation_line(it, metrics):
    """What an evaluation prints: the greedy test pass rate, and the probe's scores."""
    return (f"iteration {it}: test prompt-strict {metrics['eval_prompt_strict']:.3f}, probe gold "
            f"{metrics['probe_gold']:.3f}" + (f", reward model {metrics['probe_rm_score']:+.2f}"
                                              if "probe_rm_score" in metrics else ""))


@torch.no_grad()
def mean_entropy(logits, mask):
    """Mean entropy (nats) of the sampling distribution at the answer tokens: how much the
    policy still explores (one whose entropy collapses samples nothing new to reinforce)."""
    p = logits.softmax(-1)
    return masked_mean(-(p * p.clamp_min(1e-12).log()).sum(-1), mask).item()


def iteration_lr(cfg, it):
    """Iteration `it`'s learning rate: annealed linearly toward 0 over the run (CleanRL, N+),
    or constant with --anneal_lr=false."""
    return cfg.learning_rate * ((1 - it / cfg.iterations) if cfg.anneal_lr else 1.0)


def optimise(policy, value_model, optimizer, experience, cfg, rt, generator, it, ckpt_path):
    """E epochs over M shuffled minibatches of the clipped PPO objective, policy and critic in
    one backward. `experience` holds what steps 1-3 stored. Returns each minibatch's stats."""
    seq, attn, mask, P, old_logp, old_values, advantages, returns = experience
    params = list(policy.parameters()) + list(value_model.parameters())
    B = seq.size(0)
    # ceil(B / M) answers a minibatch: M equal minibatches when M divides B (the presets),
    # else at most M, the last one possibly smaller; no answer is dropped
    mb_size = -(-B // cfg.num_minibatches)
    stats = []
    for epoch in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator, device=rt.device)
        for start in range(0, B, mb_size):
            mb = order[start:start + mb_size]
            with rt.autocast(cfg.dtype):
                new_logp, logits = answer_logprobs(policy, seq[mb], attn[mb], P, cfg.temperature)
                new_values = answer_values(value_model, seq[mb], attn[mb], P)
            pg_loss, vf_loss, st = ppo_losses(new_logp, old_logp[mb], advantages[mb], new_values,
                                              old_values[mb], returns[mb], mask[mb], cfg)
            loss = pg_loss + cfg.vf_coef * vf_loss
            # averaged, so that all ranks stop together (one alone would leave the
            # others waiting forever in the next all-reduce)
            check_finite(all_reduce_mean(loss.item(), rt), it, ckpt_path)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(params, rt)
            # Clip each network on its own, so the critic's large early gradients
            # cannot shrink the policy's step.
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            torch.nn.utils.clip_grad_norm_(value_model.parameters(), cfg.grad_clip)
            optimizer.step()
            st["entropy"] = mean_entropy(logits, mask[mb])
            stats.append(st | {"pg_loss": pg_loss.item(), "vf_loss": vf_loss.item()})
    return stats


def save(ckpt_path, it, metrics, policy, value_model, optimizer, cfg, tokenizer_info, generator, kl_ctl):
    """The policy, its optimizer and random state (save_training_checkpoint), the critic and beta."""
    save_training_checkpoint(ckpt_path, "ppo", it, policy, optimizer, cfg, tokenizer_info, generator,
                             metrics, value_model=value_model.state_dict(), kl_coef=kl_ctl.value)


def main(argv=None):
    cfg = cli_config(Config, PRESETS, argv)
    if cfg.temperature <= 0:  # the log-probabilities divide the logits by it
        raise SystemExit(f"error: --temperature={cfg.temperature}: PPO samples its rollouts, so it must be more than 0")
    rt = setup_runtime(cfg.device, cfg.seed)
    if rt.master:
        print_config(cfg)
    device = rt.device
    sft, tokenizer, policy, reference, reward_model, value_model = load_models(cfg, device)
    note_if_pretrained(sft, cfg.sft_ckpt, "sft_ckpt", rt.master)
    records = load_scorable_option(cfg.prompts, "prompts")
    eval_records = load_eval_data(cfg.eval_data, cfg.eval_examples)
    # One Adam over both networks: Adam adapts per parameter, so this equals two optimizers
    # with one learning rate. eps 1e-5 as N+ (TensorFlow's placement differs from PyTorch's).
    optimizer = torch.optim.Adam(list(policy.parameters()) + list(value_model.parameters()),
                                 lr=cfg.learning_rate, eps=cfg.adam_eps)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
    # With DDP each rank draws its own prompts and samples: a rank-specific seed.
    generator = torch.Generator(device=device).manual_seed(cfg.seed + rt.rank)
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    it, metrics = 0, {}
    if should_resume(cfg, ckpt_path):
        ckpt = resume_training(ckpt_path, policy, optimizer, generator, device, rt.rank, cfg.seed, "ppo", cfg,
                               sft["tokenizer"])
        value_model.load_state_dict(ckpt["value_model"])
        it, kl_ctl.value, metrics = ckpt["step"], ckpt["kl_coef"], ckpt["metrics"]   # metrics: the latest saved
        if rt.master:
            print(resuming_line(ckpt_path, it, cfg.iterations, "iteration", "iterations"))

    # Only rank 0 logs, evaluates and saves; the statistics it logs are averaged over ranks.
    log = MetricsLog(os.path.join(cfg.out_dir, "metrics.jsonl"), enabled=rt.master, step=it)
    bar = tqdm(total=cfg.iterations, initial=it, desc="ppo", disable=not rt.master, dynamic_ncols=True)
    if rt.master and eval_records and it == 0:  # the probe before any update: the "start" figures
        log.log(iteration=0, **probe(policy, reward_model, tokenizer, eval_records, cfg, rt))
    with StopRequest(rt) as stop:
        while it < cfg.iterations and not stop.agreed():
            # ---- 1. rollout
            K = cfg.samples_per_prompt
            picks = torch.randperm(len(records), generator=generator, device=device)[:cfg.rollout_batch // K]
            batch = [records[i] for i in picks.tolist() for _ in range(K)]   # a prompt's K rows side by side
            with torch.no_grad(), rt.autocast(cfg.dtype):
                seq, attn, mask, ended, texts = rollout(policy, tokenizer, batch, cfg, generator, device)
                # seq, attn (B, P+N): each prompt left-padded to P tokens, then its answer;
                # mask (B, N): 1 on the answer's tokens up to and including <|end|>
                P = seq.size(1) - mask.size(1)
                # ---- 2. score. Old log-probs and values are stored once, before any update.
                old_logp, _ = answer_logprobs(policy, seq, attn, P, cfg.temperature)
                ref_logp, _ = answer_logprobs(reference, seq, attn, P, cfg.temperature)
                old_values = answer_values(value_model, seq, attn, P) * mask
            with torch.no_grad():
                score, rm_score, gold = score_answers(reward_model, seq, attn, mask, texts, batch)   # in fp32
                score = penalise_unfinished(score, ended, cfg.missing_eos_penalty)
                if K > 1:
                    score = leave_one_out(score, K)
                if cfg.whiten_rewards:
                    score = masked_whiten(score, torch.ones_like(score), shift_mean=False)
                rewards, kl = token_rewards(score, old_logp, ref_logp, mask, kl_ctl.value)
                # ---- 3. advantages, whitened over valid tokens (all sources)
                advantages, returns = gae(rewards, old_values, mask, cfg.gamma, cfg.lam)
                advantages = masked_whiten(advantages, mask)

            # ---- 4. optimise: E epochs over M shuffled minibatches
            set_lr(optimizer, iteration_lr(cfg, it))
            stats = optimise(policy, value_model, optimizer,
                             (seq, attn, mask, P, old_logp, old_values, advantages, returns),
                             cfg, rt, generator, it, ckpt_path)
            it += 1

            # ---- logging: the KL to the reference is summed over an answer's tokens (nats).
            # Every statistic is averaged over the ranks (a no-op without DDP).
            local = {**({} if rm_score is None else {"rm_score": rm_score.mean().item()}),
                     "gold": gold.mean().item(), "kl": kl.sum(1).mean().item(),
                     "length": mask.sum(1).mean().item(), "end_rate": ended.mean().item(),
                     **{k: sum(s[k] for s in stats) / len(stats) for k in stats[0]},
                     "first_ratio": stats[0]["ratio"]}
            metrics = {"iteration": it, "lr": optimizer.param_groups[0]["lr"], **{k: all_reduce_mean(v, rt) for k, v in local.items()}}
            if cfg.adaptive_kl:  # on the averaged KL, so every rank keeps the same beta
                kl_ctl.update(metrics["kl"], seq.size(0) * rt.world_size)
            metrics["kl_coef"] = kl_ctl.value
            evaluating = rt.master and (it % cfg.eval_interval == 0 or it == cfg.iterations)
            if evaluating and eval_records:
                ev, _ = evaluate_records(policy, tokenizer, eval_records, cfg.max_new_tokens)
                metrics["eval_prompt_strict"] = ev["prompt_strict"]
                metrics.update(probe(policy, reward_model, tokenizer, eval_records, cfg, rt))
                bar.write(evaluation_line(it, metrics))
            log.log(**metrics)   # logged, then saved: a resumed run never loses a saved iteration's record
            if evaluating:
                save(ckpt_path, it, metrics, policy, value_model, optimizer, cfg, sft["tokenizer"], generator, kl_ctl)
            bar.update(1)
            bar.set_postfix(**({"rm": f"{metrics['rm_score']:.2f}"} if "rm_score" in metrics else {}),
                            gold=f"{metrics['gold']:.2f}", kl=f"{metrics['kl']:.2f}", clip=f"{metrics['clipfrac']:.3f}")
        if stop.requested and rt.master:
            save(ckpt_path, it, metrics, policy, value_model, optimizer, cfg, sft["tokenizer"], generator, kl_ctl)
    bar.close()
    cleanup_runtime(rt)
    stop.raise_if_requested(f"saved {ckpt_path} at iteration {it} of {cfg.iterations}")
    return metrics


if __name__ == "__main__":
    run(main)
