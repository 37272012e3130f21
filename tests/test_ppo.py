"""PPO's pieces against hand computations, then short runs of the real script."""
from types import SimpleNamespace

import pytest
import torch

from minift.model import GPT, GPTConfig, pad_left
from train_ppo import AdaptiveKLController, answer_logprobs, gae, masked_whiten, ppo_losses, token_rewards

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


def test_kl_penalty_is_zero_when_policy_equals_reference_and_score_lands_on_last_token():
    logp = torch.randn(2, 4)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0]), logp, logp.clone(), mask, kl_coef=0.1)
    assert torch.equal(kl, torch.zeros_like(kl))
    assert torch.equal(rewards, torch.tensor([[0.0, 0, 0, 2], [0, -1, 0, 0]]))  # at <|end|>, not at PAD
    # and when they differ, each token pays -beta * (log pi - log pi_ref)
    rewards, kl = token_rewards(torch.zeros(2), logp, logp - 0.5, mask, kl_coef=0.1)
    assert torch.allclose(rewards, -0.05 * mask)


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


def test_adaptive_kl_controller():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(kl=12.0, n_samples=1000)     # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    ctl.update(kl=3.0, n_samples=1000)      # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
