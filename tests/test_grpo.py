"""GRPO's pieces against hand computations, then a micro run of the real script that resumes."""
import math
from types import SimpleNamespace

import pytest
import torch

import train_grpo
from conftest import read_metrics, run_main
from minift.checkpoint import GENERATIVE, load_checkpoint
from minift.model import GPT, GPTConfig, pad_left
from train_grpo import group_advantages, grpo_loss, k3_kl
from train_ppo import answer_logprobs

CFG = SimpleNamespace(clip_range=0.2, kl_coef=0.04)


def test_group_advantage_is_the_score_standardised_within_its_group():
    # two prompts, four answers each, side by side
    score = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.2, 0.4, 0.6, 0.8])
    adv, kept = group_advantages(score, 4, eps=0.0)
    # group 0: mean .5, sample std sqrt((4 * .25) / 3) = .57735, so +-.5 / .57735 = +-.86603
    # group 1: mean .5, sample std sqrt((.09 + .01 + .01 + .09) / 3) = .25820
    assert torch.allclose(adv, torch.tensor([0.86603, -0.86603, -0.86603, 0.86603,
                                             -1.16190, -0.38730, 0.38730, 1.16190]), atol=1e-4)
    assert kept.tolist() == [True] * 8
    # the group is its own baseline: an easier prompt (every score higher) gives the same advantages
    assert torch.allclose(group_advantages(score + 0.1, 4, eps=0.0)[0], adv, atol=1e-5)


def test_each_group_is_standardised_by_its_own_mean():
    adv, _ = group_advantages(torch.tensor([0.0, 1.0, 10.0, 11.0]), 2, eps=0.0)
    assert torch.allclose(adv, torch.tensor([-1.0, 1.0, -1.0, 1.0]) / 2 ** 0.5, atol=1e-5)


def test_an_all_equal_group_has_zero_advantage_and_is_dropped():
    score = torch.tensor([0.1, 0.1, 0.1, 0.7, 0.3, 0.7], dtype=torch.float64)
    for eps in (1e-4, 0.0):   # with eps 0 an exact tie would be 0/0
        adv, kept = group_advantages(score, 3, eps=eps)
        assert kept.tolist() == [False, False, False, True, True, True]
        assert adv[:3].tolist() == [0.0, 0.0, 0.0] and adv[3] > 0 > adv[4]
    assert 1 - kept.float().mean().item() == 0.5   # the logged fraction of dropped groups
    # eight float32 0.1s: rounding puts their std at about 8e-9, not 0, so equality is tested
    # as max == min; a std > 0 test would keep a group with no signal
    ties = torch.full((8,), 0.1)
    assert ties.view(1, 8).std(1).item() > 0
    adv, kept = group_advantages(ties, 8, eps=1e-4)
    assert not kept.any() and (adv == 0).all()


@pytest.mark.parametrize("advantage, ratio, objective, moves", [
    (1.0, 1.5, 1.2, False),     # a gain already past 1 + eps: clipped, no gradient
    (-1.0, 1.5, -1.5, True),    # a loss past it: the unclipped, worse term, which still pushes back
    (1.0, 0.5, 0.5, True),      # a gain below 1 - eps: unclipped
    (-1.0, 0.5, -0.8, False),   # a loss below it: clipped
])
def test_the_clip_takes_the_pessimistic_side(advantage, ratio, objective, moves):
    new = torch.full((1, 2), math.log(ratio), requires_grad=True)
    cfg = SimpleNamespace(clip_range=0.2, kl_coef=0.0)
    loss, stats = grpo_loss(new, torch.zeros(1, 2), new.detach(), torch.tensor([advantage]), torch.ones(1, 2), cfg)
    assert loss.item() == pytest.approx(-objective, rel=1e-5) and stats["clipfrac"] == 1.0
    loss.backward()
    assert bool(new.grad.abs().sum() > 0) == moves


def test_k3_kl_is_zero_when_the_models_agree_and_positive_otherwise():
    logp = torch.tensor([[-0.5, -2.0, -1.0]])
    assert torch.equal(k3_kl(logp, logp.clone()), torch.zeros(1, 3))
    # pi_ref / pi = e^1 and e^-1: e - 1 - 1 = .71828 and e^-1 + 1 - 1 = .36788
    kl = k3_kl(torch.tensor([[-1.0, -1.0]]), torch.tensor([[0.0, -2.0]]))
    assert torch.allclose(kl, torch.tensor([[math.e - 2, math.exp(-1)]]))
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_loss_averages_each_answer_over_its_own_tokens_then_over_answers():
    """Eq. 3: 1/G sum_i 1/|o_i| sum_t; a short answer weighs as much as a long one."""
    zeros = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1, 1], [1, 0, 0]])
    loss, stats = grpo_loss(zeros, zeros, zeros, torch.tensor([1.0, -1.0]), mask, CFG)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)    # +1 over three tokens, -1 over one: they cancel
    assert stats["clipfrac"] == 0 and stats["kl_to_ref"] == 0
    # with the reference elsewhere, beta * KL adds to the loss
    ref = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0, 0]])
    loss, _ = grpo_loss(zeros, zeros, ref, torch.zeros(2), mask, CFG)
    assert loss.item() == pytest.approx(0.04 * ((math.e - 2) + math.exp(-1)) / 2, rel=1e-5)


def test_grpo_samples_as_many_answers_as_ppo():
    """The lab compares methods at one sampling budget: GRPO's defaults match PPO's."""
    import train_grpo
    import train_ppo
    for preset in ("tiny", "small"):
        grpo = {**vars(train_grpo.Config()), **train_grpo.PRESETS[preset]}
        ppo = {**vars(train_ppo.Config()), **train_ppo.PRESETS[preset]}
        assert grpo["iterations"] * grpo["rollout_batch"] == ppo["iterations"] * ppo["rollout_batch"]


def test_first_minibatch_ratio_is_exactly_one():
    """Old log-probs come from the full rollout batch, new ones from a shuffled minibatch
    with different padding neighbours; before any update they must agree."""
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    prompt_ids, prompt_mask = pad_left([[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]], 0)
    answers = torch.tensor([[11, 12, 13], [14, 15, 0], [16, 0, 0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0]])
    seq, attn = torch.cat([prompt_ids, answers], 1), torch.cat([prompt_mask, mask.long()], 1)
    P = prompt_ids.size(1)
    with torch.no_grad():
        old, _ = answer_logprobs(policy, seq, attn, P, temperature=0.7)
        mb = torch.tensor([2, 0])
        new, _ = answer_logprobs(policy, seq[mb], attn[mb], P, temperature=0.7)
    _, stats = grpo_loss(new, old[mb], old[mb] - 0.3, torch.tensor([1.0, -1.0]), mask[mb], CFG)
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-6)
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-9) and stats["clipfrac"] == 0.0


def run_grpo(d, out, **overrides):
    args = {"preset": "micro", "device": "cpu", "sft_ckpt": f"{d}/sft/ckpt.pt", "reward_ckpt": f"{d}/reward/ckpt.pt",
            "prompts": f"{d}/data/sft/rl_prompts.jsonl", "eval_data": f"{d}/data/sft/test.jsonl",
            "out_dir": out, **overrides}
    run_main(train_grpo, [f"--{k}={v}" for k, v in args.items()])


def test_micro_run_writes_a_policy_checkpoint_that_loads_and_resumes(micro_pipeline, tmp_path, capsys):
    shared, _ = micro_pipeline
    out = tmp_path / "grpo"
    run_grpo(shared, out, iterations=2, eval_interval=2, reward="model")
    ckpt = load_checkpoint(str(out / "ckpt.pt"), kinds=GENERATIVE)   # evaluate.py and sample.py load it so
    assert ckpt["kind"] == "grpo" and ckpt["step"] == 2
    capsys.readouterr()
    run_grpo(shared, out, iterations=3, eval_interval=2, reward="model")
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "at iteration 2 of 3" in printed and "finished" not in printed
    evaluated = [line for line in printed.splitlines() if line.startswith("iteration ")]   # its evaluation only
    assert len(evaluated) == 1 and evaluated[0].startswith("iteration 3: test prompt-strict ")
    assert ", probe gold " in evaluated[0] and ", reward model " in evaluated[0]
    metrics = read_metrics(out)
    assert [m["iteration"] for m in metrics] == [0, 1, 2, 3]   # the probe, then one line per iteration
    assert load_checkpoint(str(out / "ckpt.pt"))["step"] == 3
    for m in metrics[1:]:
        assert {"gold", "rm_score", "kl", "dropped_groups", "entropy"} <= set(m)
        assert 0.0 <= m["dropped_groups"] <= 1.0
        if m["dropped_groups"] < 1:   # before each iteration's first update, the policy is the one that sampled
            assert m["first_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert {"eval_prompt_strict", "probe_gold", "probe_rm_score"} <= set(metrics[2])
    # the learning rate anneals toward 0 over the run, and the resumed run is 3 iterations long
    lr = train_grpo.Config().learning_rate
    assert [m["lr"] for m in metrics[1:]] == pytest.approx([lr, lr / 2, lr / 3])
    # --help prints the options with their comments, and does no work
    with pytest.raises(SystemExit) as stop:
        train_grpo.main(["--help"])
    printed = capsys.readouterr().out
    assert stop.value.code == 0 and "--group_size" in printed and "--kl_coef" in printed


def test_a_resumed_run_takes_the_steps_of_an_unbroken_one(micro_pipeline, tmp_path):
    """Iteration 2 after a resume draws the prompts and samples an unbroken run draws there:
    the checkpoint carries the rollout generator's state, and it is put back into that generator."""
    shared, _ = micro_pipeline
    common = dict(reward="gold", dtype="float32", eval_interval=1)
    run_grpo(shared, tmp_path / "straight", iterations=2, **common)
    run_grpo(shared, tmp_path / "resumed", iterations=1, **common)
    run_grpo(shared, tmp_path / "resumed", iterations=2, **common)
    a, b = (load_checkpoint(str(tmp_path / d / "ckpt.pt"))["model"] for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_group_is_one_prompts_answers_and_an_unfinished_answer_pays(micro_pipeline, tmp_path, monkeypatch):
    """The G answers compared with each other answer one prompt, each group another; an answer
    cut off before <|end|> loses missing_eos_penalty from its score before the comparison."""
    shared, _ = micro_pipeline
    seen, real_rollout, real_advantages = {}, train_grpo.rollout, train_grpo.group_advantages

    def rollout(*args, **kwargs):
        out = real_rollout(*args, **kwargs)
        seen.setdefault("ended", out[3].clone())
        return out

    def score_answers(reward_model, seq, attn, mask, texts, batch):
        seen.setdefault("prompts", [r["prompt"] for r in batch])
        scores = torch.full((len(batch),), 0.5)
        return scores, None, scores.clone()

    def group_advantages(score, group_size, eps):
        seen.setdefault("score", score.clone())
        return real_advantages(score, group_size, eps)
    for name, fn in (("rollout", rollout), ("score_answers", score_answers), ("group_advantages", group_advantages)):
        monkeypatch.setattr(train_grpo, name, fn)
    run_grpo(shared, tmp_path / "grpo", iterations=1, reward="gold", missing_eos_penalty=0.3)
    groups = [seen["prompts"][i:i + 4] for i in range(0, 8, 4)]
    assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 2
    ended = seen["ended"].float()
    assert (ended == 0).any() and torch.allclose(seen["score"], 0.5 - 0.3 * (1 - ended))


def test_only_the_kept_groups_are_trained_on_and_no_kl_before_the_first_update(micro_pipeline, tmp_path,
                                                                              monkeypatch):
    """micro: 8 answers in groups of 4, scored so that the first group ties and the second does
    not. Only the second reaches the update; the reference, scored at the policy's temperature,
    agrees with the policy until it moves."""
    shared, _ = micro_pipeline
    scores = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.0, 1.0, 0.0, 1.0])
    monkeypatch.setattr(train_grpo, "score_answers", lambda *a: (scores.clone(), None, scores.clone()))
    rows, stats, real_optimise = [], [], train_grpo.optimise

    def optimise(policy, optimizer, experience, *args):
        rows.append(experience[0].size(0))
        stats.append(real_optimise(policy, optimizer, experience, *args))
        return stats[-1]
    monkeypatch.setattr(train_grpo, "optimise", optimise)
    out = tmp_path / "grpo"
    run_grpo(shared, out, iterations=2, reward="gold", missing_eos_penalty=0.0)
    assert rows == [4, 4]
    # the loss's KL is to the reference: none before the first update, some once the policy
    # has moved, even where the policy still equals the one that sampled (each first minibatch)
    assert stats[0][0]["kl_to_ref"] == pytest.approx(0.0, abs=1e-6) and stats[1][0]["kl_to_ref"] > 1e-6
    metrics = read_metrics(out)
    assert metrics[1]["dropped_groups"] == 0.5 and metrics[1]["kl"] == pytest.approx(0.0, abs=1e-6)
