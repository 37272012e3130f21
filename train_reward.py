"""
Stage 3 of 4: the reward model (RM). A copy of the SFT model with a scalar head learns to
score answers the way the gold reward (our stand-in for human raters) ranks them.

    python data/make_preferences.py   # K SFT answers per prompt, pairs ranked by the gold reward
    python train_reward.py            # tiny preset, starts from out/sft/ckpt.pt
    python train_reward.py --data=hh_train.jsonl --val_data=hh_test.jsonl --val_samples=   # your own pairs

What happens (InstructGPT, Ouyang et al. 2022, section 3.5; Ziegler et al. 2019):
  1. The RM is the SFT transformer plus a linear head read at the last token of
     "<|endoftext|> <|user|> prompt <|end|> <|assistant|> answer <|end|>": one number per
     answer. To it we add --likelihood_weight times the answer's mean log-probability under
     the RM's own LM head: an answer the SFT model finds unlikely is usually one where
     sampling slipped, which the head alone would have to learn from pairs (ScalarModel).
     --likelihood_weight=0 --across_prompt_weight=0 gives InstructGPT's RM.
  2. Bradley-Terry loss: P(chosen beats rejected) = sigmoid(r_chosen - r_rejected), and we
     minimise -log of it, over the pairs of each prompt and (--across_prompt_weight) over
     answers to different prompts of a batch, ranked by their gold scores, so that scores
     of different prompts compare too. Only differences of rewards are learned, so the
     scale is arbitrary...
  3. ...which is why, after training, a gain and bias are fitted so that the SFT answers of
     the training pairs score mean 0 and std 1 (Ziegler et al. 2019). PPO's KL coefficient then means the same thing
     whatever RM it is paired with.
  4. One epoch, as InstructGPT trains its RM: it found that shuffled pairs overfit within a
     single pass, which is why a batch holds all of a prompt's pairs (section 3.5). More
     epochs were no better here (FINDINGS.md, "The reward model").
Metrics: pair accuracy on held-out prompts (overall and per instruction type) and the
Spearman correlation between RM scores and gold rewards on held-out SFT samples (over all
of them, and within each prompt). The training loss includes the cross-prompt term, the
held-out loss does not (held-out pairs are pairs of one prompt), so the two differ.
"""

import json
import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from minift.checkpoint import (GENERATIVE, build_model, load_checkpoint, note_if_pretrained, resume_training,
                               resuming_line, save_training_checkpoint, should_resume, tokenizer_for, train_first, unwrap)
from minift.config import cli_config, print_config, run
from minift.formats import load_preferences, load_scored_answers, require_file
from minift.model import ScalarModel, answer_positions, pad_left, padded_length
from minift.training import (MetricsLog, StopRequest, all_reduce_mean, check_finite, cleanup_runtime,
                             compile_and_wrap, lr_at, make_optimizer, set_lr, setup_runtime)


@dataclass
class Config:
    # I/O
    out_dir: str = "out/reward"
    init_from: str = "out/sft/ckpt.pt"                    # the SFT checkpoint
    data: str = "data/generated/prefs/train.jsonl"        # preference pairs (ours, TRL or HH-RLHF)
    val_data: str = "data/generated/prefs/val.jsonl"      # held-out pairs; "" = hold out val_fraction of data
    val_samples: str = "data/generated/prefs/val_samples.jsonl"  # answers with gold scores ("" to skip)
    val_fraction: float = 0.1      # only used when val_data is ""
    resume: bool = True
    force: bool = False            # start over in out_dir, even if it holds another run
    preset: str = "tiny"
    # optimisation
    batch_groups: int = 8          # prompts per micro-batch, each with all of its pairs
    grad_accum: int = 1
    epochs: int = 1                # InstructGPT trains one; more were no better (FINDINGS.md, "The reward model")
    # The reward adds this times the answer's mean log-probability under the RM's own LM head
    # (ScalarModel). 0 (with across_prompt_weight 0) is InstructGPT's RM. The term catches
    # answers where sampling slipped (a garbled word): the model finds them unlikely, where the
    # head must learn each slip from pairs (FINDINGS.md, "The reward model", the likelihood term).
    likelihood_weight: float = 2.0
    # One epoch gives few steps, so the rate is high; lower rates learned less, higher ones
    # no more (FINDINGS.md, "The reward model", learning rate).
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    # Bradley-Terry also between answers to DIFFERENT prompts of a batch, ranked by their gold
    # scores (across_prompt_pairs), with this weight; 0 = within a prompt only (InstructGPT).
    # Needs each answer's score (make_preferences.py's chosen_score / rejected_score; other
    # formats lack them, and the term is off). Pairs of one prompt leave each prompt's level
    # free; this term sets it, which raised the Spearman correlation with gold and left pair
    # accuracy as it was (FINDINGS.md, "The reward model", ranking across prompts). Pairs
    # form within a micro-batch, so batch_groups (and grad_accum, DDP ranks) change which
    # pairs there are.
    across_prompt_weight: float = 1.0
    optimizer: str = "adamw"       # or "muon" (make_optimizer): no better here
    grad_clip: float = 1.0
    dropout: float = 0.0
    # evaluation and logging
    eval_interval: int = 100       # and at the end
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
    "small": dict(batch_groups=16, learning_rate=1e-4, min_lr=1e-5, warmup_steps=20, eval_batch_size=256),
}


# ---------------------------------------------------------------------- data
def render(tokenizer, prompt, response):
    """(prompt messages or string, answer) -> ids of the full conversation, ending in <|end|>."""
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.render_conversation(prompt + [{"role": "assistant", "content": response}])[0]


def prompt_group(record):
    """The key that gathers a prompt's records: its "group" field (make_preferences.py writes
    one) or, for other files, the prompt itself, so that identical prompts form one group."""
    return str(record["group"]) if "group" in record else json.dumps(record["prompt"])


def build_groups(pairs, tokenizer, block_size):
    """Preference pairs -> (seqs, groups, dropped, gold).

    seqs: the rendered ids of every distinct (prompt, answer), each stored once.
    groups: one list per prompt of (chosen seq index, rejected seq index, instruction ids).
    A prompt's group is prompt_group's. Pairs with a conversation longer than the context are
    dropped and counted.
    gold: each seq's gold score, from the pairs' chosen_score / rejected_score, or None for
    pairs without them (HH-RLHF, TRL)."""
    seqs, index, groups, dropped, gold = [], {}, {}, 0, []
    for p in pairs:
        key = prompt_group(p)
        answers = ((p["chosen"], p.get("chosen_score")), (p["rejected"], p.get("rejected_score")))
        rendered = [seqs[index[key, response]] if (key, response) in index else render(tokenizer, p["prompt"], response)
                    for response, _ in answers]
        if max(len(r) for r in rendered) > block_size:   # checked first: seqs holds only answers a pair uses
            dropped += 1
            continue
        ids = []
        for (response, score), ids_of_answer in zip(answers, rendered):
            if (key, response) not in index:
                index[key, response] = len(seqs)
                seqs.append(ids_of_answer)
                gold.append(score)
            ids.append(index[key, response])
        groups.setdefault(key, []).append((ids[0], ids[1], p.get("instruction_id_list", [])))
    return seqs, list(groups.values()), dropped, gold


def answers_used(groups):
    """The sorted seq indices of every answer the groups' pairs compare."""
    return sorted({i for g in groups for chosen, rejected, _ in g for i in (chosen, rejected)})


def held_out_pairs(seqs, groups, cfg, tokenizer, block_size):
    """(training groups, (held-out seqs, held-out groups)): the pairs of --val_data, or with
    --val_data="" a --val_fraction share of whole prompt groups, so that no prompt is in both
    sets. Held-out groups get their own seqs, so an evaluation scores only their answers."""
    if cfg.val_data:
        return groups, build_groups(load_preferences(cfg.val_data), tokenizer, block_size)[:2]
    perm = torch.randperm(len(groups), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_val = int(len(groups) * cfg.val_fraction)
    held = [groups[i] for i in perm[:n_val]]
    used = answers_used(held)
    new_index = {old: k for k, old in enumerate(used)}
    val = ([seqs[i] for i in used], [[(new_index[c], new_index[r], ids) for c, r, ids in g] for g in held])
    return [groups[i] for i in perm[n_val:]], val


def epoch_order(n_groups, seed, epoch):
    """The shuffled group order of an epoch, a pure function of (seed, epoch): a resumed run
    finds its place from the step count alone."""
    return torch.randperm(n_groups, generator=torch.Generator().manual_seed(seed + epoch)).tolist()


def step_batch(n_groups, step, micro, cfg, rank=0, world_size=1):
    """Indices of the prompt groups of micro-batch `micro` on rank `rank` at optimizer step
    `step`. Each epoch walks its own shuffle of the groups (epoch_order); a step takes the next
    batch_groups * grad_accum * world_size of them, each micro-batch of each rank its own
    slice, so no group is seen twice in an epoch (the last partial step's are left out)."""
    per_step = cfg.batch_groups * cfg.grad_accum * world_size
    steps_per_epoch = n_groups // per_step
    order = epoch_order(n_groups, cfg.seed, step // steps_per_epoch)
    first = (step % steps_per_epoch) * per_step + (micro * world_size + rank) * cfg.batch_groups
    return order[first:first + cfg.batch_groups]


def last_token_scores(model, seqs, tokenizer, device):
    """Lists of ids -> (B,) raw scores: the head at each one's last real token (plus the
    answer's mean log-probability, weighted; ScalarModel). Left padding puts that token in
    the last column; positions come from the mask, so a score does not depend on what else
    is in the batch, nor on the extra padding up to a multiple of minift.model.PAD_MULTIPLE
    (tested to 1e-5; on the CPU to the last bit, minift/model.py's docstring says why). We
    call model(...), not model.reward(...), so that DDP sees its forward and syncs the
    gradients."""
    block_size = unwrap(model).gpt.config.block_size
    ids, mask = pad_left(seqs, tokenizer.pad, device, padded_length(max(map(len, seqs)), block_size))
    return model(ids, attention_mask=mask, answer_mask=answer_positions(ids, tokenizer.assistant, mask)).float()


@torch.no_grad()
def score_all(model, seqs, tokenizer, device, batch_size):
    """Raw RM scores of many sequences, batched by length so little compute goes to padding.
    Always in fp32, without autocast: PPO scores its rollouts in fp32, so the normalisation
    fitted on these scores, and the accuracy reported from them, must be fp32's too."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    scores = torch.zeros(len(seqs))
    with torch.autocast(torch.device(device).type, enabled=False):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            scores[batch] = last_token_scores(model, [seqs[i] for i in batch], tokenizer, device).cpu()
    model.train(was_training)
    return scores


def bradley_terry(r_chosen, r_rejected):
    """-log sigmoid(r_c - r_r), averaged over pairs (InstructGPT eq. 1, which weighs each
    prompt's C(K,2) pairs by 1/C(K,2); here tied pairs are dropped, so a prompt counts by its
    untied pairs). logsigmoid is the stable form: in float32 log(sigmoid(x)) is -inf for x
    below about -88."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def across_prompt_pairs(used, groups, gold):
    """(better, worse): row indices into `used` of every two answers to DIFFERENT prompts
    whose gold scores differ, the higher-scored first. Gold scores computed along different
    paths may differ in the last bits (0.6 against 0.6000000000000001): not a preference.
    (make_preferences.py's pairs within a prompt are computed along one path, and it drops
    exact ties only; distinct gold scores differ by far more than 1e-6, so the tolerance drops no
    preference: FINDINGS.md, "Preferences and the gold reward".)"""
    prompt_of = {i: k for k, g in enumerate(groups) for c, r, _ in g for i in (c, r)}
    prompt = torch.tensor([prompt_of[i] for i in used])
    score = torch.tensor([gold[i] for i in used], dtype=torch.float64)
    better = (score[:, None] > score[None, :] + 1e-6) & (prompt[:, None] != prompt[None, :])  # (U, U)
    return better.nonzero(as_tuple=True)


def group_batch_loss(model, seqs, groups, tokenizer, device, gold=None, across_prompt_weight=0.0):
    """Loss and accuracy of a batch made of whole prompt groups.

    Why whole groups (InstructGPT 3.5): with K answers per prompt there are up to C(K,2)
    pairs, but only K distinct answers. Forwarding each answer once and reusing its score in
    all its pairs costs K passes instead of K(K-1). And a prompt's pairs share answers, so
    they are strongly correlated: shuffled into separate batches, each answer would be seen
    K-1 times as if it were fresh data, which made InstructGPT's RM overfit.

    With `gold` (each seq's score) and a weight, the loss adds the same Bradley-Terry loss
    over pairs of answers to different prompts of the batch, ordered by gold: RankNet's
    pairwise loss over graded labels (Burges et al. 2005). Pairs within a prompt only ever
    compare its own answers, so each prompt's level is left free, and the RM's scores of two
    prompts' answers are not comparable. But the gold reward varies between prompts too (some
    prompts are harder than others), so a reward that ranks answers across prompts must also
    learn each prompt's level (FINDINGS.md, "The reward model", ranking across prompts). The
    accuracy returned is the within-prompt pairs' only."""
    used = answers_used(groups)
    row = {s: k for k, s in enumerate(used)}
    scores = last_token_scores(model, [seqs[i] for i in used], tokenizer, device)
    chosen = torch.tensor([row[c] for g in groups for c, _, _ in g], device=scores.device)
    rejected = torch.tensor([row[r] for g in groups for _, r, _ in g], device=scores.device)
    r_c, r_r = scores[chosen], scores[rejected]
    loss = bradley_terry(r_c, r_r)
    if across_prompt_weight > 0 and gold is not None:
        better, worse = across_prompt_pairs(used, groups, gold)
        if len(better):
            loss = loss + across_prompt_weight * bradley_terry(scores[better.to(scores.device)],
                                                               scores[worse.to(scores.device)])
    return loss, (r_c > r_r).float().mean().item()


def average_ranks(x):
    """Ranks 1..n; tied values share the average of the ranks they span."""
    order, ranks, i = sorted(range(len(x)), key=lambda i: x[i]), [0.0] * len(x), 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a, b):
    """Spearman's rho: the Pearson correlation of the ranks (ties averaged). nan if constant."""
    ra, rb = (torch.tensor(average_ranks(list(x)), dtype=torch.float64) for x in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return (ra @ rb).item() / denom if denom > 0 else float("nan")


def accuracy_by_type(groups, right):
    """Held-out pair accuracy per instruction id: a pair counts toward every id of its prompt.
    right: one bool per pair, in the groups' order."""
    by_type = {}
    for (_, _, instruction_ids), ok in zip([p for g in groups for p in g], right):
        for t in instruction_ids:
            by_type.setdefault(t, []).append(ok)
    return {t: sum(v) / len(v) for t, v in sorted(by_type.items())}


def evaluate(model, val, samples, tokenizer, device, batch_size):
    """Held-out pair accuracy (overall and per instruction id: a pair counts toward every id
    of its prompt), loss, and the Spearman correlation of RM scores with gold rewards."""
    out = {}
    if val[1]:
        seqs, groups = val
        pairs = [p for g in groups for p in g]
        used = answers_used(groups)
        raw = score_all(model, [seqs[i] for i in used], tokenizer, device, batch_size)
        scores = dict(zip(used, raw.tolist()))
        r_c, r_r = torch.tensor([scores[c] for c, _, _ in pairs]), torch.tensor([scores[r] for _, r, _ in pairs])
        right = (r_c > r_r).tolist()
        out.update(val_loss=bradley_terry(r_c, r_r).item(), val_accuracy=sum(right) / len(right),
                   val_accuracy_by_type=accuracy_by_type(groups, right))
    if samples:
        seqs, gold, group = samples
        scores = score_all(model, seqs, tokenizer, device, batch_size).tolist()
        out["spearman"] = spearman(scores, gold)
        # Pairs within a prompt leave each prompt's offset free (only --across_prompt_weight
        # pins it); within-prompt rank agreement is what they train, and what PPO uses (its
        # leave-one-out baseline and critic absorb offsets). Averaged over prompts whose gold varies.
        by_prompt = {}
        for s, g, k in zip(scores, gold, group):
            by_prompt.setdefault(k, []).append((s, g))
        rhos = [spearman(*zip(*v)) for v in by_prompt.values() if len({g for _, g in v}) > 1]
        out["spearman_within"] = sum(rhos) / len(rhos) if rhos else float("nan")
    return out


# ---------------------------------------------------------------------- training
def main(argv=None):
    cfg = cli_config(Config, PRESETS, argv)
    rt = setup_runtime(cfg.device, cfg.seed)
    if rt.master:
        print_config(cfg)

    # ---- the reward model: the SFT transformer plus a fresh scalar head
    init = load_checkpoint(cfg.init_from, hint=train_first("sft", "train_sft.py"), kinds=GENERATIVE,
                           option="init_from")
    tokenizer = tokenizer_for(init, cfg.init_from)
    note_if_pretrained(init, cfg.init_from, "init_from", rt.master)
    init["model_config"]["dropout"] = cfg.dropout
    model = build_model(init, ScalarModel).to(rt.device)
    model.likelihood_weight.fill_(cfg.likelihood_weight)  # a buffer: saved with the model
    block_size = model.gpt.config.block_size

    # ---- data: pairs grouped by prompt; validation pairs and gold-scored samples
    for option in ("data", "val_data", "val_samples"):
        if getattr(cfg, option):
            require_file(getattr(cfg, option), option, "data/make_preferences.py",
                         {"data": "", "val_data": "--val_data= holds out --val_fraction of --data instead",
                          "val_samples": "--val_samples= skips the Spearman correlation"}[option])
    seqs, groups, dropped, gold = build_groups(load_preferences(cfg.data), tokenizer, block_size)
    if any(g is None for g in gold):   # the cross-prompt term needs every answer's gold score
        if cfg.across_prompt_weight > 0 and rt.master:
            print(f"note: not every pair of {cfg.data} carries chosen_score / rejected_score: "
                  "Bradley-Terry within each prompt only (--across_prompt_weight ignored)")
        gold = None
    groups, val = held_out_pairs(seqs, groups, cfg, tokenizer, block_size)
    samples = None
    if cfg.val_samples:  # (rendered answers, gold scores, prompt groups)
        rows = [(render(tokenizer, r["prompt"], r["response"]), r["gold"], prompt_group(r))
                for r in load_scored_answers(cfg.val_samples)]
        samples = tuple(zip(*[row for row in rows if len(row[0]) <= block_size])) or None
    n_pairs = sum(len(g) for g in groups)
    per_step = cfg.batch_groups * cfg.grad_accum * rt.world_size  # whole prompt groups per optimizer step
    if len(groups) < per_step:
        raise ValueError(f"{len(groups)} prompt groups in {cfg.data} ({dropped} pairs longer than {block_size} "
                         f"tokens dropped), fewer than one step's {per_step}: lower --batch_groups or --grad_accum, "
                         "or run on fewer processes")
    if rt.master:
        n_val, n_samples = sum(len(g) for g in val[1]), len(samples[0]) if samples else 0
        print(f"{n_pairs} pairs over {len(groups)} prompts from {cfg.data} ({dropped} too long, dropped); "
              f"{n_val} validation pairs, {n_samples} gold-scored answers")

    steps_per_epoch = len(groups) // per_step  # the last partial batch of an epoch is left out
    max_steps = cfg.epochs * steps_per_epoch
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay, cfg.optimizer,
                               device_type=rt.device_type)
    batch_rng = torch.Generator().manual_seed(cfg.seed)  # never drawn (the order is epoch_order's); checkpoints keep one
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    step, metrics = 0, {}
    if should_resume(cfg, ckpt_path):
        ckpt = resume_training(ckpt_path, model, optimizer, batch_rng, rt.device, kind="reward", cfg=cfg,
                               tokenizer=init["tokenizer"], world_size=rt.world_size)
        step, metrics = ckpt["step"], ckpt["metrics"]  # a finished run just reports its metrics again
        if rt.master:
            print(resuming_line(ckpt_path, step, max_steps, option="epochs"))
    raw_model = model
    model = compile_and_wrap(model, rt, cfg.compile)   # torch.compile if asked, then DDP under torchrun

    train_answers = [seqs[i] for i in answers_used(groups)]

    def normalise():
        """Fit gain and bias so the RM's scores on SFT answers (every distinct answer in the
        training pairs) have mean 0 and std 1 (Ziegler et al. 2019; Huang et al. 2024)."""
        raw = score_all(raw_model, train_answers, tokenizer, rt.device, cfg.eval_batch_size)
        std = raw.std().clamp(min=1e-6)
        raw_model.gain.fill_(1.0 / std.item())
        raw_model.bias.fill_(-raw.mean().item() / std.item())
        return {"norm_mean": raw.mean().item(), "norm_std": std.item()}

    def save(metrics):   # after normalise(), so that every checkpoint on disk is ready for PPO
        save_training_checkpoint(ckpt_path, "reward", step, model, optimizer, cfg, init["tokenizer"], batch_rng,
                                 metrics, init_from=cfg.init_from, world_size=rt.world_size)

    # ---- the training loop
    log = MetricsLog(os.path.join(cfg.out_dir, "metrics.jsonl"), enabled=rt.master, step=step)
    bar = tqdm(total=max_steps, initial=step, desc="reward", disable=not rt.master, dynamic_ncols=True)
    with StopRequest(rt) as stop:
        while step < max_steps and not stop.agreed():
            lr = lr_at(step, cfg.learning_rate, cfg.min_lr, cfg.warmup_steps, max_steps)
            set_lr(optimizer, lr)
            step_loss = step_accuracy = 0.0
            for micro in range(cfg.grad_accum):
                batch = [groups[i] for i in step_batch(len(groups), step, micro, cfg, rt.rank, rt.world_size)]
                last = micro == cfg.grad_accum - 1
                with (model.no_sync() if rt.ddp and not last else nullcontext()), rt.autocast(cfg.dtype):
                    loss, acc = group_batch_loss(model, seqs, batch, tokenizer, rt.device, gold,
                                                 cfg.across_prompt_weight)
                    (loss / cfg.grad_accum).backward()
                step_loss += loss.item() / cfg.grad_accum
                step_accuracy += acc / cfg.grad_accum
            # averaged, so that all ranks stop together (one alone would leave the others waiting
            # forever in the next all-reduce); the logged figures are every rank's mean too
            step_loss, step_accuracy = all_reduce_mean(step_loss, rt), all_reduce_mean(step_accuracy, rt)
            check_finite(step_loss, step, ckpt_path)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            bar.update(1)
            if step % cfg.log_interval == 0:
                log.log(step=step, loss=step_loss, accuracy=step_accuracy, lr=lr, grad_norm=grad_norm)
            if step % cfg.eval_interval == 0 or step == max_steps:
                if rt.master:
                    metrics = evaluate(raw_model, val, samples, tokenizer, rt.device, cfg.eval_batch_size)
                    metrics = {"train_loss": step_loss, "train_accuracy": step_accuracy, **metrics, **normalise()}
                    # logged, then saved: a resumed run never loses a saved step's record
                    log.log(step=step, **{f"eval_{k}": v for k, v in metrics.items()})
                    save(metrics)
                    bar.write(f"step {step}: loss {step_loss:.4f}, " + ", ".join(
                        f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float)))
            bar.set_postfix(loss=f"{step_loss:.3f}", acc=f"{step_accuracy:.2f}", lr=f"{lr:.2e}",
                            **{k: f"{metrics[k]:.2f}" for k in ("val_accuracy", "spearman") if k in metrics})
        if stop.requested and rt.master:
            save({**metrics, **normalise()})
    bar.close()
    if rt.master and metrics.get("val_accuracy_by_type"):
        print("held-out pair accuracy by instruction type:")
        for t, a in metrics["val_accuracy_by_type"].items():
            print(f"  {t:50s} {a:.3f}")
    cleanup_runtime(rt)
    stop.raise_if_requested(f"saved {ckpt_path} at step {step} of {max_steps}")
    return {"step": step, "likelihood_weight": cfg.likelihood_weight, **metrics}


if __name__ == "__main__":
    run(main)
