"""PPO's pieces against hand computations, then short runs of the real script."""
import dataclasses
import os
import random
import subprocess
import sys
from types import SimpleNamespace
from unittest import mock

import pytest
import torch

import train_ppo
from conftest import ROOT, read_metrics, run_main, stand_in_generate
from minift.checkpoint import build_model, load_checkpoint, save_training_checkpoint
from minift.formats import write_jsonl
from minift.model import GPT, GPTConfig, ScalarModel, pad_left
from minift.tokenizer import Tokenizer, save_ranks, train_bpe
from train_ppo import (AdaptiveKLController, answer_logprobs, critic_from, gae, leave_one_out, masked_whiten,
                       penalise_unfinished, ppo_losses, rollout, token_rewards)

CLIP = SimpleNamespace(clip_range=0.2, value_clip=0.2)


def test_gae_matches_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 0.6, 9.0]])   # 9.0 sits on padding: must be ignored
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: A2 = 1 - .7 = .3; A1 = (.7 - .6) + .95*.3 = .385; A0 = (.6 - .5) + .95*.385 = .46575
    # row 1: the episode ends at t=1, so it bootstraps from 0: A1 = 1 - .6 = .4; A0 = .1 + .95*.4
    assert torch.allclose(adv, torch.tensor([[0.46575, 0.385, 0.3], [0.48, 0.4, 0.0]]))
    assert torch.allclose(ret[0], torch.tensor([0.96575, 0.985, 1.0]))
    assert ret[1, 2] == 0  # nothing is learned on padding


def test_gae_discounts_with_gamma():
    """gamma < 1 discounts the next value and the later advantages; lam = 1 then sums the
    discounted rewards (the Monte Carlo return) minus the value."""
    rewards, values, mask = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.2, 0.4, 0.6]]), torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # A2 = 1 - .6 = .4; A1 = .9*.6 - .4 + .45*.4 = .32; A0 = .9*.4 - .2 + .45*.32 = .304
    assert torch.allclose(adv, torch.tensor([[0.304, 0.32, 0.4]]))
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    assert torch.allclose(ret, torch.tensor([[0.81, 0.9, 1.0]]))


def test_kl_penalty_is_zero_when_policy_equals_reference_and_score_lands_on_last_token():
    logp = torch.randn(2, 4)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0]), logp, logp.clone(), mask, kl_coef=0.1)
    assert torch.equal(kl, torch.zeros_like(kl))
    assert torch.equal(rewards, torch.tensor([[0.0, 0, 0, 2], [0, -1, 0, 0]]))  # at <|end|>, not at PAD
    # and when they differ, each token pays -beta * (log pi - log pi_ref)
    rewards, kl = token_rewards(torch.zeros(2), logp, logp - 0.5, mask, kl_coef=0.1)
    assert torch.allclose(rewards, -0.05 * mask)


def test_leave_one_out_subtracts_the_other_answers_mean():
    # two prompts, four answers each, side by side
    score = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    out = leave_one_out(score, 4)
    # answer 0: 1 - (0 + 0 + 1) / 3 = 2/3; answer 1: 0 - (1 + 0 + 1) / 3 = -2/3
    assert torch.allclose(out, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0]))
    # a prompt's difficulty drops out: the same answers to an easier prompt score the same
    assert torch.allclose(leave_one_out(score + torch.tensor([0.3] * 4 + [-0.2] * 4), 4), out)


def test_masked_whiten_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = masked_whiten(x, mask)
    assert abs(w[0, :3].mean().item()) < 1e-6 and abs(w[0, :3].pow(2).mean().item() - 1) < 1e-4
    # shift_mean=False keeps the mean (reward whitening in N+)
    assert masked_whiten(x, mask, shift_mean=False)[0, :3].mean().item() == pytest.approx(2.0)


def test_first_minibatch_ratio_is_exactly_one():
    """Old log-probs come from the full rollout batch, new ones from a shuffled minibatch
    with different padding neighbours; before any update they must agree."""
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    prompt_ids, prompt_mask = pad_left(prompts, 0)
    answers = torch.tensor([[11, 12, 13], [14, 15, 0], [16, 0, 0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0]])
    seq, attn = torch.cat([prompt_ids, answers], 1), torch.cat([prompt_mask, mask.long()], 1)
    P = prompt_ids.size(1)
    with torch.no_grad():
        old, _ = answer_logprobs(policy, seq, attn, P, temperature=0.7)
        mb = torch.tensor([2, 0])
        new, _ = answer_logprobs(policy, seq[mb], attn[mb], P, temperature=0.7)
    adv = torch.randn(2, 3)
    _, _, stats = ppo_losses(new, old[mb], adv, torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3),
                             mask[mb], CLIP)
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-9) and stats["clipfrac"] == 0.0


def test_clipping_limits_the_objective():
    old = torch.zeros(1, 2)
    new = torch.tensor([[0.5, -0.5]])          # ratios e^.5 = 1.65 and e^-.5 = 0.61, both outside [.8, 1.2]
    mask = torch.ones(1, 2)
    adv = torch.tensor([[1.0, -1.0]])
    pg, _, stats = ppo_losses(new, old, adv, torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), mask, CLIP)
    # positive advantage: gain capped at 1.2; negative: the pessimistic max keeps -(-1 * 0.8)
    assert pg.item() == pytest.approx((-1.2 + 0.8) / 2, abs=1e-6)
    assert stats["clipfrac"] == 1.0


def test_value_loss_is_clipped_pessimistically():
    z = torch.zeros(1, 1)
    # the new value jumps from 0 to 1 toward a return of 1: the clipped value (0.2) is worse, so it counts
    _, vf, _ = ppo_losses(z, z, z, torch.ones(1, 1), z, torch.ones(1, 1), torch.ones(1, 1), CLIP)
    assert vf.item() == pytest.approx(0.5 * 0.8 ** 2)
    # the value's clip is its own setting, not the policy's ratio clip
    wider = SimpleNamespace(clip_range=0.2, value_clip=0.5)
    _, vf, _ = ppo_losses(z, z, z, torch.ones(1, 1), z, torch.ones(1, 1), torch.ones(1, 1), wider)
    assert vf.item() == pytest.approx(0.5 * 0.5 ** 2)


def test_learning_rate_anneals_toward_zero_or_stays_constant():
    from train_ppo import Config, iteration_lr
    annealed = [iteration_lr(Config(learning_rate=1e-4, iterations=4), it) for it in range(4)]
    assert annealed == pytest.approx([1e-4, 0.75e-4, 0.5e-4, 0.25e-4])
    constant = Config(learning_rate=1e-4, iterations=4, anneal_lr=False)
    assert [iteration_lr(constant, it) for it in range(4)] == [1e-4] * 4


def test_adaptive_kl_controller():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(kl=12.0, n_samples=1000)     # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    ctl.update(kl=3.0, n_samples=1000)      # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)


def test_critic_keeps_the_reward_models_transformer_and_starts_at_zero():
    """The value model is the reward model's transformer with a zero head: every value is 0
    at the start (the reward head's raw outputs are not), the transformer's weights are the
    reward model's, and the head still learns."""
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    reward_model = ScalarModel(config)
    torch.nn.init.constant_(reward_model.head.bias, 0.5)
    ckpt = {"model": reward_model.state_dict(), "model_config": dataclasses.asdict(config)}
    critic = critic_from(ckpt)
    idx = torch.randint(0, 50, (2, 10))
    assert reward_model(idx).abs().min() > 0
    assert torch.equal(critic(idx), torch.zeros(2, 10))
    rm_state = reward_model.gpt.state_dict()
    assert all(torch.equal(v, rm_state[k]) for k, v in critic.gpt.state_dict().items())
    ((critic(idx) - 1) ** 2).mean().backward()
    assert critic.head.weight.grad.abs().sum() > 0 and critic.head.bias.grad.abs() > 0


# ---------------------------------------------------------------------------- after the end token
PROMPT = "Write a few words. Do not use any capital letters."
SYLLABLES = "ba bo ki lu mo ne pi ra so tu ve zi".split()


@pytest.fixture(scope="module")
def tok():
    """A small BPE over made-up words (none is a noun of the story world, so the gold
    scorer's topic check stays quiet), a third of them capitalised."""
    rng = random.Random(0)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(60)]
    text = " ".join(rng.choice([w, w, w.capitalize(), w.upper()]) for w in (rng.choice(words) for _ in range(4000)))
    return Tokenizer.from_ranks(train_bpe(text + " " + PROMPT, 300))


class StubPolicy:
    """Stands in for the policy in rollout(): its generate() returns fixed answers, as lists of
    ids, in place of the engine's."""

    def __init__(self, answers, block_size=64):
        self.answers, self.kwargs, self.prompts = answers, None, None
        self.config = SimpleNamespace(block_size=block_size)

    def generate(self, prompts, max_new_tokens, **kwargs):
        self.prompts, self.kwargs = prompts, kwargs
        return [list(a) for a in self.answers]


def stub_rollout(tok, answers, prompts=("Say hi.", "Say something longer, please.", "Go."), block_size=64):
    cfg = SimpleNamespace(max_new_tokens=4, temperature=0.7)
    policy = StubPolicy(answers, block_size)
    records = [{"prompt": p} for p in prompts]
    with mock.patch.object(train_ppo, "generate", stand_in_generate):
        return policy, rollout(policy, tok, records, cfg, torch.Generator(), "cpu")


def test_rollout_keeps_the_end_of_an_over_long_prompt(tok):
    """A prompt that leaves no room for max_new_tokens in the context keeps its last ids (the
    request and the assistant's turn), as in evaluation, so that the answer fits."""
    long_prompt = "Say something longer, please. " * 8
    short, full = (tok.render_prompt([{"role": "user", "content": p}]) for p in ("Go.", long_prompt))
    block_size = len(full) // 2
    assert len(short) < block_size - 4 < len(full)
    policy, _ = stub_rollout(tok, [[tok.end], [tok.end]], (long_prompt, "Go."), block_size)
    assert policy.prompts == [full[-(block_size - 4):], short]


def test_answer_logprobs_are_the_tempered_log_softmax_at_the_answer_tokens():
    """Against the naive computation: logits of the full pass, divided by the sampling
    temperature, the log-probability of each answer token read one position before it."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    seq, P = torch.randint(0, 50, (2, 10)), 6
    logits, _ = model(seq)                                                         # (B, T, V)
    naive = [torch.log_softmax(logits[:, P - 1:-1] / t, -1).gather(-1, seq[:, P:, None]).squeeze(-1)
             for t in (0.7, 1.0)]
    with torch.no_grad():
        logp, _ = answer_logprobs(model, seq, torch.ones_like(seq), P, 0.7)
    assert logp.shape == (2, 4) and torch.allclose(logp, naive[0], atol=1e-5)
    assert not torch.allclose(logp, naive[1], atol=1e-3)   # the temperature matters here


def test_answer_logprobs_do_not_see_the_left_padding():
    """A row scored in a batch, behind as much left padding as the longest prompt needs, gets
    the log-probabilities it gets alone without any: the mask keeps the padding out of
    attention, and positions count from the first real token (the sampler sees the same)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts, answers = [[1, 2, 3, 4, 5, 6], [7, 8]], torch.tensor([[11, 12, 13], [14, 15, 16]])
    prompt_ids, prompt_mask = pad_left(prompts, 0)
    seq = torch.cat([prompt_ids, answers], 1)
    attn = torch.cat([prompt_mask, torch.ones_like(answers)], 1)
    with torch.no_grad():
        batched, _ = answer_logprobs(model, seq, attn, prompt_ids.size(1), 0.7)
        alone, _ = answer_logprobs(model, torch.tensor([[7, 8, 14, 15, 16]]), torch.ones(1, 5, dtype=torch.long), 2, 0.7)
        unmasked, _ = answer_logprobs(model, seq, torch.ones_like(seq), prompt_ids.size(1), 0.7)
    assert torch.allclose(batched[1], alone[0], atol=1e-5)
    assert not torch.allclose(unmasked[1], alone[0], atol=1e-3)   # without the mask the padding leaks in


def test_the_reward_models_likelihood_term_reads_the_answer_only(tok):
    """score_answers gives the reward model the answer's tokens, not the prompt's, for the mean
    log-probability term (ScalarModel); the gold reward is scored on the decoded text."""
    a, b = tok.encode("bo"), tok.encode("kira")
    _, (seq, attn, mask, _, texts) = stub_rollout(tok, [a + [tok.end], b + [tok.end], (a + b + a + b)[:4]])
    torch.manual_seed(0)
    rm = ScalarModel(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()
    rm.likelihood_weight.fill_(2.0)
    P = seq.size(1) - mask.size(1)
    answer_only = torch.zeros_like(attn)
    answer_only[:, P:] = mask.long()
    records = [{"prompt": "Say hi.", "instruction_id_list": [], "kwargs": []}] * 3
    with torch.no_grad():
        score, rm_score, gold = train_ppo.score_answers(rm, seq, attn, mask, texts, records)
        expected = rm.reward(seq, attn, answer_only)
        with_prompt = rm.reward(seq, attn, attn)
    assert torch.equal(score, rm_score) and torch.allclose(score, expected)
    assert not torch.allclose(score, with_prompt, atol=1e-4)
    assert gold.shape == (3,)


def test_rollout_refuses_a_context_with_no_room_for_the_prompt(tok):
    with pytest.raises(ValueError, match="--max_new_tokens=4 leaves no room for a prompt in the model.s context of 4 tokens"):
        stub_rollout(tok, [[tok.end]], ("Go.",), block_size=4)   # max_new_tokens is 4


def test_rollout_masks_everything_after_the_end_token(tok):
    a, b = tok.encode("bo"), tok.encode("kira")
    E = tok.end
    # answer 0 ends after 2 tokens but the sampler kept going; 1 ends at once; 2 never ends
    answers = [a + [E] + b + b, [E], (a + b + a + b)[:4]]
    policy, (seq, attn, mask, ended, texts) = stub_rollout(tok, answers)
    assert policy.kwargs["stop_tokens"] == (E,) and policy.kwargs["top_k"] == 0 and policy.kwargs["top_p"] == 1.0
    n0 = len(a) + 1
    assert mask.tolist() == [[1.0] * n0 + [0.0] * (4 - n0), [1.0, 0, 0, 0], [1.0] * 4]
    N = mask.size(1)
    assert seq[0, -N:].tolist() == a + [E] + [tok.pad] * (N - n0)       # the tokens after <|end|> are gone
    assert torch.equal(attn[:, -N:], mask.long())                        # and not attended to
    assert ended.tolist() == [1.0, 1.0, 0.0]
    assert texts == ["bo", "", tok.decode((a + b + a + b)[:4]).strip()]  # <|end|> is not part of the text


def test_the_missing_end_penalty_hits_only_unfinished_answers(tok):
    a, b = tok.encode("bo"), tok.encode("kira")
    _, (_, _, _, ended, _) = stub_rollout(tok, [a + [tok.end], b + [tok.end], (a + b + a + b)[:4]])
    score = torch.tensor([0.5, 0.25, 0.5])
    assert penalise_unfinished(score, ended, 1.0).tolist() == [0.5, 0.25, -0.5]
    assert penalise_unfinished(score, ended, 0.25).tolist() == [0.5, 0.25, 0.25]
    assert torch.equal(penalise_unfinished(score, ended.bool(), 0.3), penalise_unfinished(score, ended, 0.3))
    assert torch.equal(penalise_unfinished(score, ended, 0.0), score)


def test_nothing_after_the_end_token_counts(tok):
    """Scramble every position after <|end|> (tokens, attention, log-probs, values): the
    rewards, advantages, returns and both losses must not move."""
    a, b = tok.encode("bo"), tok.encode("kira")
    _, (seq, attn, mask, _, _) = stub_rollout(tok, [a + [tok.end], [tok.end], (a + b + a + b)[:4]])
    P, after = seq.size(1) - mask.size(1), mask == 0
    cfg = GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=1, n_head=2, n_embd=32)
    torch.manual_seed(0)
    nets = [GPT(cfg).eval() for _ in range(3)]   # policy before and after an update, reference
    g = torch.Generator().manual_seed(0)
    values, new_values = torch.randn(2, *mask.shape, generator=g)

    def ppo_terms(seq, attn, values, new_values, junk):
        with torch.no_grad():
            old, new, ref = (answer_logprobs(net, seq, attn, P, 0.7)[0] for net in nets)
        old, new, ref = (x + junk for x in (old, new, ref))
        rewards, kl = token_rewards(torch.tensor([1.0, -1.0, 0.5]), old, ref, mask, kl_coef=0.1)
        adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
        adv = masked_whiten(adv, mask)
        pg, vf, stats = ppo_losses(new, old, adv, new_values, values, ret, mask, CLIP)
        return {"rewards": rewards, "kl": kl, "adv": adv * mask, "ret": ret, "pg": pg, "vf": vf,
                **{k: torch.tensor(v) for k, v in stats.items()}}

    clean = ppo_terms(seq, attn, values, new_values, 0.0)
    junk_seq = seq.clone()
    junk_seq[:, P:][after] = torch.randint(0, tok.n_vocab, (int(after.sum()),), generator=g)
    junk_attn = attn.clone()
    junk_attn[:, P:] = 1                         # even if the junk were attended to

    def noise():   # large, and only where the mask is 0
        return 50 * torch.randn(mask.shape, generator=g) * after

    dirty = ppo_terms(junk_seq, junk_attn, values + noise(), new_values + noise(), noise())
    assert after.any() and not torch.equal(junk_seq, seq)
    for k in clean:
        assert torch.allclose(clean[k], dirty[k], atol=1e-6), k


# ---------------------------------------------------------------------------- the real script
@pytest.fixture(scope="module")
def micro_sft(tok, tmp_path_factory):
    """A random micro GPT saved as an SFT checkpoint with its tokenizer, and 64 prompts that
    each carry one easy instruction (IFEval record form), for train_ppo.py --reward=gold.
    It was trained with dropout, as an SFT model may be: PPO must turn it off, or the first
    ratio would not be 1."""
    d = tmp_path_factory.mktemp("ppo")
    save_ranks(str(d / "tok.tiktoken"), tok.enc._mergeable_ranks)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.n_vocab, block_size=128, n_layer=1, n_head=2, n_embd=32, dropout=0.1)
    save_training_checkpoint(str(d / "sft.pt"), "sft", 0, GPT(config), None, config,
                             {"path": str(d / "tok.tiktoken"), **tok.identity}, torch.Generator(), {})
    write_jsonl(str(d / "prompts.jsonl"), [{"key": f"p{i}", "prompt": PROMPT, "kwargs": [{}],
                                            "instruction_id_list": ["change_case:english_lowercase"]}
                                           for i in range(64)])
    return d


def ppo_args(d, out, **overrides):
    # --eval_data= skips the IFEval evaluation; a random model starts at 0 there anyway
    args = {"preset": "micro", "device": "cpu", "reward": "gold", "sft_ckpt": d / "sft.pt",
            "prompts": d / "prompts.jsonl", "eval_data": "", "out_dir": out, **overrides}
    return [f"--{k}={v}" for k, v in args.items()]


def test_ppo_on_gold_learns_an_easy_instruction(micro_sft, tmp_path):
    """"Use no capital letters": a random model passes on about 40% of its 8-token answers
    (gold 1.0 when it passes, 0.2 when not, and half that when a word is garbled, as nearly
    every word of a random model is). PPO on the gold reward must push that up: over seeds
    1-4 the first iteration scored 0.18-0.26 and the mean of the last five 0.41-0.43 (before
    the garbled flaw: 0.30-0.45 and 0.76-0.85).
    missing_eos_penalty=0: a random model almost never emits <|end|>, so the penalty would
    teach it to stop first, which is a different lesson from the one tested here."""
    out = tmp_path / "gold"
    run_main(train_ppo, ppo_args(micro_sft, out, iterations=20, rollout_batch=64, max_new_tokens=8,
                                 learning_rate=5e-3, missing_eos_penalty=0, eval_interval=1000, seed=1))
    gold = [m["gold"] for m in read_metrics(out)]
    assert len(gold) == 20
    # no reward model, so no reward-model score is logged beside the gold reward it would copy
    assert not any("rm_score" in m for m in read_metrics(out))
    assert sum(gold[-5:]) / 5 > gold[0] + 0.12, gold
    # before each iteration's first update, the policy is the one that sampled: ratio 1 exactly
    assert all(m["first_ratio"] == pytest.approx(1.0, abs=1e-5) for m in read_metrics(out))
    ckpt = load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["kind"] == "ppo" and ckpt["step"] == 20


def test_the_loop_hands_each_step_what_the_algorithm_says(micro_sft, tmp_path):
    """The pieces are tested one by one above; this checks how main() wires them, by watching
    what each receives in a short run: a prompt's K answers side by side, scores with the
    other answers' mean taken out (they sum to zero over a prompt), the reference scored as the
    policy is (no KL before the first update), beta as configured and adapted as Ziegler et
    al.'s controller says, GAE's gamma and lambda as configured, advantages whitened, and the
    learning rate annealed as logged."""
    seen = {"keys": [], "rewards": [], "advantages": [], "gae": []}

    def spy(name, record):
        real = getattr(train_ppo, name)

        def wrapper(*args, **kwargs):
            record(*args, **kwargs)
            return real(*args, **kwargs)
        return mock.patch.object(train_ppo, name, wrapper)

    with (spy("rollout", lambda policy, tokenizer, records, *a: seen["keys"].append([r["key"] for r in records])),
          spy("token_rewards", lambda *a: seen["rewards"].append(a)),
          spy("gae", lambda *a: seen["gae"].append(a[3:5])),
          spy("optimise", lambda *a: seen["advantages"].append((a[3][6], a[3][2])))):
        out = tmp_path / "wired"
        run_main(train_ppo, ppo_args(micro_sft, out, iterations=4, rollout_batch=32, samples_per_prompt=4,
                                     max_new_tokens=8, learning_rate=5e-3, kl_coef=0.07, eval_interval=1000,
                                     gamma=0.9, lam=0.8, adaptive_kl=True, kl_target=0.5, kl_horizon=100))
    metrics = read_metrics(out)
    assert seen["gae"] == [(0.9, 0.8)] * 4
    beta = 0.07   # the controller replayed on the logged KL: each iteration's 32 answers move beta
    for m in metrics:
        beta *= 1 + max(-0.2, min(0.2, m["kl"] / 0.5 - 1)) * 32 / 100
        assert m["kl_coef"] == pytest.approx(beta)
    assert [m["lr"] for m in metrics] == pytest.approx([5e-3 * (1 - i / 4) for i in range(4)])
    assert metrics[0]["kl"] == 0 and metrics[-1]["kl"] > 0   # the policy's, from the reference: its sign too
    for keys in seen["keys"]:
        groups = [keys[i:i + 4] for i in range(0, 32, 4)]
        assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 8
    score, logp, ref_logp, mask, kl_coef = seen["rewards"][0]
    assert torch.equal(logp, ref_logp) and kl_coef == 0.07
    for score, *_ in seen["rewards"]:
        assert torch.allclose(score.view(8, 4).sum(1), torch.zeros(8), atol=1e-5)
    whitened = 0
    for adv, mask in seen["advantages"]:
        mean = (adv * mask).sum() / mask.sum()
        var = ((adv - mean) ** 2 * mask).sum() / mask.sum()
        assert abs(mean) < 1e-4 and (var < 1e-6 or abs(var - 1) < 1e-3)
        whitened += abs(var - 1) < 1e-3
    assert whitened >= 2


def test_probe_changes_only_when_the_policy_does(micro_sft, tmp_path, capsys):
    """The start and end figures of the report come from a probe: the same prompts sampled from
    the same seed. With a learning rate of 0 the policy never changes, so neither may the probe
    (a different random draw each time would make it differ); with learning it must move."""
    frozen, learning = tmp_path / "frozen", tmp_path / "learning"
    for out, lr in ((frozen, 0.0), (learning, 5e-3)):
        run_main(train_ppo, ppo_args(micro_sft, out, iterations=4, rollout_batch=16, max_new_tokens=8,
                                     learning_rate=lr, missing_eos_penalty=0, eval_data=micro_sft / "prompts.jsonl",
                                     eval_examples=16, eval_interval=2))
    probes = {out: [m for m in read_metrics(out) if "probe_gold" in m] for out in (frozen, learning)}
    assert [m["iteration"] for m in probes[frozen]] == [0, 2, 4]
    assert len({m["probe_gold"] for m in probes[frozen]}) == 1
    assert probes[learning][0]["probe_gold"] == probes[frozen][0]["probe_gold"]
    assert probes[learning][-1]["probe_gold"] != probes[learning][0]["probe_gold"]
    # each evaluation prints its figures (the log's, as the card reads them)
    last = probes[learning][-1]
    line = f"iteration 4: test prompt-strict {last['eval_prompt_strict']:.3f}, probe gold {last['probe_gold']:.3f}\n"
    assert line in capsys.readouterr().out   # with --reward=gold: no reward model to name


def test_ddp_two_cpu_processes_with_gloo(micro_sft, tmp_path):
    """Two ranks sample different rollouts; average_gradients must keep their models identical."""
    out = tmp_path / "ddp"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "tests/rank_weights.py", str(out), "train_ppo.py"]
                       + ppo_args(micro_sft, out, iterations=2, rollout_batch=8, max_new_tokens=8),
                       cwd=ROOT, capture_output=True, text=True, timeout=240,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert load_checkpoint(str(out / "ckpt.pt"))["step"] == 2
    # only rank 0 writes the log: one line per iteration, not two
    metrics = read_metrics(out)
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert all(0.0 <= m["gold"] <= 1.0 for m in metrics)
    # both ranks end with the same policy and critic, and it moved from the SFT model
    rank0, rank1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert len(rank0) == len(rank1) > 0 and all(torch.equal(a, b) for a, b in zip(rank0, rank1))
    start = build_model(load_checkpoint(str(micro_sft / "sft.pt"))).parameters()
    assert any(not torch.equal(a, b) for a, b in zip(start, rank0))
