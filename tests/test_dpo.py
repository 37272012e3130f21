"""DPO: the loss on hand values (sigmoid, conservative, IPO), the implicit reward's sign and
the logged figures, the summed answer log-probability against a naive computation, the
one-forward-per-answer batch, the held-out evaluation, the walk over the groups by epoch, rank
and micro-batch, and train_dpo.py end to end on the micro pipeline's SFT model and pairs: with
Ctrl-C and resume, at learning rate 0 against hand-made gradients, and under DDP."""
import math
import os
import random
import re

import pytest
import torch

import evaluate
import sample
import train_dpo
import train_reward
from conftest import read_metrics, run_main, stop_after
from minift.checkpoint import build_model, load_checkpoint, tokenizer_for
from minift.engine import generate
from minift.formats import load_preferences
from minift.model import GPT, GPTConfig
from minift.tokenizer import Tokenizer, train_bpe
from minift.training import Interrupted, lr_at

WORDS = "the cat dog sun ran sat big red hat mat saw a on in and was happy sad tree ball".split()
T = torch.tensor


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    return Tokenizer.from_ranks(train_bpe(" ".join(rng.choice(WORDS) for _ in range(2000)) + " Tell me.\n", 300))


def tiny_gpt(tok):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()


def test_dpo_loss_on_hand_values():
    # policy = reference: h = 0, loss log 2, rewards 0
    losses, r_c, r_r = train_dpo.dpo_loss(T([-5.0]), T([-7.0]), T([-5.0]), T([-7.0]), beta=0.1)
    assert losses.item() == pytest.approx(math.log(2)) and r_c.item() == 0 and r_r.item() == 0
    # chosen up 2 nats, rejected down 3 against the reference: h = 5, beta h = 0.5
    losses, r_c, r_r = train_dpo.dpo_loss(T([-3.0]), T([-10.0]), T([-5.0]), T([-7.0]), beta=0.1)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    assert r_c.item() == pytest.approx(0.2) and r_r.item() == pytest.approx(-0.3)
    # conservative DPO: 0.2 of the labels taken to be flipped
    losses, _, _ = train_dpo.dpo_loss(T([-3.0]), T([-10.0]), T([-5.0]), T([-7.0]), 0.1, label_smoothing=0.2)
    assert losses.item() == pytest.approx(0.8 * math.log(1 + math.exp(-0.5)) + 0.2 * math.log(1 + math.exp(0.5)))
    # IPO: (h - 1 / (2 beta))^2 = (5 - 5)^2 at beta 0.1, (5 - 1)^2 at beta 0.5
    for beta, want in ((0.1, 0.0), (0.5, 16.0)):
        losses, _, _ = train_dpo.dpo_loss(T([-3.0]), T([-10.0]), T([-5.0]), T([-7.0]), beta, loss_type="ipo")
        assert losses.item() == pytest.approx(want, abs=1e-5)
    # per pair, not averaged; a pair ranked the wrong way costs more than log 2
    losses, _, _ = train_dpo.dpo_loss(T([0.0, -9.0]), T([-1.0, 0.0]), T([0.0, 0.0]), T([0.0, 0.0]), beta=1.0)
    assert losses.shape == (2,) and losses[0] < math.log(2) < losses[1]
    with pytest.raises(ValueError, match="hinge"):
        train_dpo.dpo_loss(T([0.0]), T([0.0]), T([0.0]), T([0.0]), 0.1, loss_type="hinge")


def test_label_smoothing_is_refused_with_ipo(tmp_path):
    """dpo_loss smooths only the sigmoid loss: with IPO the option would be dropped silently."""
    with pytest.raises(SystemExit, match="--label_smoothing=0.1.*--loss_type=sigmoid"):
        train_dpo.main(["--loss_type=ipo", "--label_smoothing=0.1", f"--out_dir={tmp_path}"])
    assert not os.listdir(tmp_path)


def test_implicit_reward_follows_the_policy_against_the_reference():
    """Raising the chosen answer's likelihood relative to the reference gives it a positive
    reward, and the pair is ranked right; the gradient pushes chosen up, rejected down."""
    ref_c, ref_r = T([-20.0, -15.0]), T([-18.0, -12.0])   # the reference prefers the rejected answers
    pol_c = (ref_c + 1.0).requires_grad_()
    pol_r = ref_r.clone().requires_grad_()
    losses, r_c, r_r = train_dpo.dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1)
    stats = train_dpo.pair_stats(losses, r_c, r_r)
    assert (r_c > 0).all() and (r_r == 0).all() and stats["accuracy"] == 1.0
    assert stats["margin"] == pytest.approx(0.1)
    assert not r_c.requires_grad and not r_r.requires_grad      # for reading only
    losses.mean().backward()
    assert (pol_c.grad < 0).all() and (pol_r.grad > 0).all()   # descent raises chosen, lowers rejected


def test_pair_stats_on_hand_values():
    """A pair is ranked right when its chosen answer's reward is strictly higher: a tie (as
    every pair is at step 0, when the policy is the reference) is not."""
    stats = train_dpo.pair_stats(T([0.1, 0.2, 0.3]), T([0.5, -0.2, 0.0]), T([0.3, 0.1, 0.0]))
    assert stats["loss"] == pytest.approx(0.2) and stats["accuracy"] == pytest.approx(1 / 3)
    assert stats["margin"] == pytest.approx((0.2 - 0.3 + 0.0) / 3)
    assert stats["chosen_reward"] == pytest.approx(0.1) and stats["rejected_reward"] == pytest.approx(0.4 / 3)


def naive_answer_logprob(model, tok, prompt, answer):
    """One conversation alone, no padding: the sum of log p over the tokens after <|assistant|>."""
    ids = train_reward.render(tok, prompt, answer)
    start = max(i for i, t in enumerate(ids) if t == tok.assistant) + 1
    logits, _ = model(T([ids]))
    logp = logits[0, :-1].log_softmax(-1).gather(1, T(ids[1:])[:, None])[:, 0]
    return logp[start - 1:].sum(), len(ids) - start


def test_summed_answer_logprobs_match_a_naive_sum_whatever_the_padding(tok):
    model = tiny_gpt(tok)
    convs = [("Tell me about the cat.", "The cat sat."), ("hi", " ".join(WORDS)), ("Tell me.", "sad")]
    seqs = [train_reward.render(tok, p, a) for p, a in convs]
    with torch.no_grad():
        naive = [naive_answer_logprob(model, tok, p, a) for p, a in convs]
        together = train_dpo.summed_answer_logprobs(model, seqs, tok, "cpu")
        alone = torch.cat([train_dpo.summed_answer_logprobs(model, [s], tok, "cpu") for s in seqs])
    want = torch.stack([lp for lp, _ in naive])
    assert naive[2][1] >= 2                         # the answer and its <|end|>, at least
    assert torch.allclose(together, want, atol=1e-4) and torch.allclose(alone, want, atol=1e-4)
    # logprobs_all batches by length and returns the input order
    assert torch.allclose(train_dpo.logprobs_all(model, seqs, tok, "cpu", batch_size=2), want, atol=1e-4)


def test_group_batch_loss_forwards_each_answer_once(tok, monkeypatch):
    """Three answers to one prompt make three pairs: three sequences forwarded, not six, and
    the loss is the mean of the pairs' dpo_loss from their log-probabilities."""
    model = tiny_gpt(tok)
    answers = ("the cat", "a big red cat sat", "sad")
    pairs = [{"prompt": "Tell me.", "chosen": answers[a], "rejected": answers[b]} for a, b in ((0, 1), (0, 2), (1, 2))]
    seqs, groups, _, _ = train_reward.build_groups(pairs, tok, 64)
    assert len(seqs) == 3 and len(groups) == 1
    forwarded = []
    real = train_dpo.summed_answer_logprobs
    monkeypatch.setattr(train_dpo, "summed_answer_logprobs", lambda m, s, *a: forwarded.append(len(s)) or real(m, s, *a))
    ref = T([-1.0, -2.0, -3.0])
    cfg = train_dpo.Config(beta=0.5)
    loss, stats = train_dpo.group_batch_loss(model, seqs, groups, ref, tok, "cpu", cfg)
    assert forwarded == [3]
    with torch.no_grad():
        lp = real(model, seqs, tok, "cpu")
    c, r = T([0, 0, 1]), T([1, 2, 2])
    want, r_c, r_r = train_dpo.dpo_loss(lp[c], lp[r], ref[c], ref[r], 0.5)
    assert loss.item() == pytest.approx(want.mean().item(), abs=1e-5)
    assert stats["accuracy"] == pytest.approx(((r_c > r_r).float().mean()).item())
    # the loss options reach the loss
    for options in (dict(label_smoothing=0.2), dict(loss_type="ipo")):
        cfg = train_dpo.Config(beta=0.5, **options)
        loss, _ = train_dpo.group_batch_loss(model, seqs, groups, ref, tok, "cpu", cfg)
        want, _, _ = train_dpo.dpo_loss(lp[c], lp[r], ref[c], ref[r], 0.5, **options)
        assert loss.item() == pytest.approx(want.mean().item(), abs=1e-5)
    # a batch of a later group: the policy's log-probs come in the batch's rows, the
    # reference's stay indexed by the answers' places in the whole file
    two = pairs + [{"prompt": "Say it.", "chosen": answers[2], "rejected": answers[0]}]
    seqs, groups, _, _ = train_reward.build_groups(two, tok, 64)
    later = groups[1:]
    c, r = train_dpo.pair_rows(later)
    ref = T([-1.0, -2.0, -3.0, -4.0, -7.0])   # gaps that differ: only the gap reaches the loss
    loss, _ = train_dpo.group_batch_loss(model, seqs, later, ref, tok, "cpu", train_dpo.Config(beta=0.5))
    with torch.no_grad():
        lp = real(model, seqs, tok, "cpu")
    want, _, _ = train_dpo.dpo_loss(lp[c], lp[r], ref[c], ref[r], 0.5)
    assert len(seqs) == 5 and min(c.min(), r.min()) >= 3
    assert loss.item() == pytest.approx(want.mean().item(), abs=1e-5)


def test_evaluate_scores_held_out_pairs_against_their_own_reference(tok):
    """The held-out figures come from the policy's log-probabilities less the reference's, per
    pair: with a reference below the policy by known amounts, each implicit reward is beta times
    that amount, whatever the model, and every figure can be worked out by hand."""
    model = tiny_gpt(tok)
    pairs = [{"prompt": "Tell me.", "chosen": a, "rejected": b, "instruction_id_list": ["x:a"]}
             for a, b in (("the cat", "a big red cat"), ("the cat", "sad"), ("a big red cat", "sad"))]
    pairs.append({"prompt": "Tell me about the sun.", "chosen": "the sun", "rejected": "a hat",
                  "instruction_id_list": ["x:a", "x:b"]})
    seqs, groups, _, _ = train_reward.build_groups(pairs, tok, 64)
    assert len(seqs) == 5 and len(groups) == 2
    above = [1.0, -0.5, 2.0, 0.7, 0.0]         # log pi - log pi_ref of each answer, in nats
    h = [above[c] - above[r] for c, r in ((0, 1), (0, 2), (1, 2), (3, 4))]   # 1.5, -1, -2.5, 0.7
    smoothed = lambda x: 0.8 * math.log1p(math.exp(-0.5 * x)) + 0.2 * math.log1p(math.exp(0.5 * x))  # noqa: E731
    for loss_type, smoothing, pair_loss in (("sigmoid", 0.0, lambda x: math.log1p(math.exp(-0.5 * x))),
                                            ("sigmoid", 0.2, smoothed),   # conservative DPO, held out too
                                            ("ipo", 0.0, lambda x: (x - 1 / (2 * 0.5)) ** 2)):
        cfg = train_dpo.Config(beta=0.5, loss_type=loss_type, label_smoothing=smoothing, eval_batch_size=2)
        policy = train_dpo.logprobs_all(model, seqs, tok, "cpu", cfg.eval_batch_size)
        m = train_dpo.evaluate(model, (seqs, groups), policy - T(above), tok, "cpu", cfg)
        assert m["val_loss"] == pytest.approx(sum(map(pair_loss, h)) / 4, abs=1e-4)
        assert m["val_accuracy"] == 0.5 and m["val_margin"] == pytest.approx(0.5 * sum(h) / 4, abs=1e-4)
        assert m["val_chosen_reward"] == pytest.approx(0.5 * (1.0 + 1.0 - 0.5 + 0.7) / 4, abs=1e-4)
        assert m["val_rejected_reward"] == pytest.approx(0.5 * (-0.5 + 2.0 + 2.0 + 0.0) / 4, abs=1e-4)
        assert m["val_accuracy_by_type"] == {"x:a": 0.5, "x:b": 1.0}
    assert train_dpo.evaluate(model, ([], []), T([]), tok, "cpu", cfg) == {}   # no held-out pairs


def test_train_dpo_micro_end_to_end_and_resume(micro_pipeline, tmp_path, capsys, monkeypatch):
    pipeline_out, _ = micro_pipeline
    prefs = os.path.join(pipeline_out, "data", "prefs")
    out = str(tmp_path / "dpo")
    args = ["--preset=micro", "--device=cpu", f"--init_from={pipeline_out}/sft/ckpt.pt", f"--out_dir={out}",
            f"--data={prefs}/train.jsonl", f"--val_data={prefs}/val.jsonl", "--learning_rate=1e-3"]
    first = train_dpo.main(args)
    steps = first["step"]
    assert steps >= 2 and 0 <= first["val_accuracy"] <= 1 and first["val_loss"] > 0
    logged = read_metrics(out)
    train_rows = [m for m in logged if "loss" in m]
    assert [m["step"] for m in train_rows] == list(range(1, steps + 1))
    assert {"loss", "accuracy", "margin", "chosen_reward", "rejected_reward", "lr", "grad_norm"} <= set(train_rows[0])
    # at step 1 the policy is the reference: the loss is log 2, up to bf16's rounding
    assert train_rows[0]["loss"] == pytest.approx(math.log(2), abs=0.02)
    assert logged[-1]["eval_val_loss"] == pytest.approx(first["val_loss"])

    # the checkpoint: a GPT of kind "dpo" that generates, and evaluate.py reads
    ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"), kinds=("dpo",))
    assert ckpt["step"] == steps and ckpt["init_from"].endswith("sft/ckpt.pt")
    cfg = ckpt["config"]   # the optimizer ran the schedule: its last rate is the last step's
    assert {g["lr"] for g in ckpt["optimizer"]["param_groups"]} == {
        lr_at(steps - 1, cfg["learning_rate"], cfg["min_lr"], cfg["warmup_steps"], steps)}
    model, tok = build_model(ckpt).eval(), tokenizer_for(ckpt, out)
    sft = build_model(load_checkpoint(f"{pipeline_out}/sft/ckpt.pt"))
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), sft.parameters()))  # it trained
    new = generate(model, [tok.render_prompt([{"role": "user", "content": "Write a sentence."}])], 8, temperature=0,
                   stop_tokens=tok.stops, pad_token=tok.pad)[0]
    # sample.py answers through the chat template, as the model was trained (it does not echo the
    # prompt as a text continuer does): its greedy answer is the one generated here
    answers = sample.main([f"--ckpt={out}/ckpt.pt", "--prompt=Write a sentence.", "--temperature=0",
                           "--max_new_tokens=8"])
    assert answers == [tok.decode([t for t in new if t not in tok.stops])]
    assert not capsys.readouterr().out.startswith("Write a sentence.")
    scores = evaluate.evaluate(f"{out}/ckpt.pt", f"{pipeline_out}/data/sft/test.jsonl", max_examples=4,
                               max_new_tokens=8, device="cpu")
    assert scores["n_prompts"] == 4 and scores["prompt_strict"] * 4 == round(scores["prompt_strict"] * 4)

    # Ctrl-C during step 3: the loop saves step 2 and stops; the rerun resumes there and ends on
    # the uninterrupted run's weights, bit for bit
    stopped = str(tmp_path / "stopped")
    with monkeypatch.context() as m:
        m.setattr(train_dpo, "StopRequest", stop_after(2))
        with pytest.raises(Interrupted, match="at step 2 of"):
            train_dpo.main(args + [f"--out_dir={stopped}"])
    assert load_checkpoint(os.path.join(stopped, "ckpt.pt"))["step"] == 2
    assert train_dpo.main(args + [f"--out_dir={stopped}"])["step"] == steps
    a, b = (load_checkpoint(os.path.join(d, "ckpt.pt"))["model"] for d in (out, stopped))
    assert all(torch.equal(a[k], b[k]) for k in a)

    # resume: a second call with more epochs continues from the saved step
    second = train_dpo.main(args + ["--epochs=2"])
    assert second["step"] == 2 * steps
    steps_logged = [m["step"] for m in read_metrics(out) if "loss" in m]
    assert steps_logged == list(range(1, 2 * steps + 1))


def test_fewer_groups_than_one_step_are_refused(micro_pipeline, tmp_path):
    """Else the run would take 0 steps an epoch, and end at once with nothing trained."""
    pipeline_out, _ = micro_pipeline
    prefs = os.path.join(pipeline_out, "data", "prefs")
    with pytest.raises(ValueError, match=re.escape(f"prompt groups in {prefs}/train.jsonl") + ".* lower --batch_groups"):
        run_main(train_dpo, ["--preset=micro", "--device=cpu", f"--init_from={pipeline_out}/sft/ckpt.pt",
                             f"--out_dir={tmp_path}", f"--data={prefs}/train.jsonl", f"--val_data={prefs}/val.jsonl",
                             "--batch_groups=1000"])


def sft_gradient_norm(pipeline_out):
    """(grad_norm, groups) of the micro pipeline's training pairs: grad_norm(batches) is the
    norm of the gradient, at the SFT model's weights, of the mean of the micro-batches' DPO
    losses (each batch a list of indices into groups), as a step taken from there sees it."""
    ckpt = load_checkpoint(f"{pipeline_out}/sft/ckpt.pt")
    tok, model = tokenizer_for(ckpt, pipeline_out), build_model(ckpt).eval()
    pairs = load_preferences(f"{pipeline_out}/data/prefs/train.jsonl")
    seqs, groups, _, _ = train_reward.build_groups(pairs, tok, model.config.block_size)
    cfg = train_dpo.Config()
    ref = train_dpo.logprobs_all(model, seqs, tok, "cpu", cfg.eval_batch_size)

    def norm(batches):
        model.zero_grad()
        for batch in batches:
            loss, _ = train_dpo.group_batch_loss(model, seqs, [groups[i] for i in batch], ref, tok, "cpu", cfg)
            (loss / len(batches)).backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).norm().item()
    return norm, groups


def test_a_run_at_learning_rate_zero_keeps_the_reference(micro_pipeline, tmp_path):
    """With the policy held at the SFT model (learning rate 0, float32) every pair's h is 0:
    each training and held-out loss is log 2 and the held-out margin 0 (so the held-out pairs
    meet their own reference's log-probabilities). Each step's logged gradient norm is worked
    out here from the groups epoch_order gives the step: the mean of its micro-batches'
    losses (scaled by grad_accum), and no gradient left over from the step before."""
    pipeline_out, _ = micro_pipeline
    prefs = os.path.join(pipeline_out, "data", "prefs")
    out = str(tmp_path / "dpo")
    result = run_main(train_dpo, [
        "--preset=micro", "--device=cpu", f"--init_from={pipeline_out}/sft/ckpt.pt", f"--out_dir={out}",
        f"--data={prefs}/train.jsonl", f"--val_data={prefs}/val.jsonl", "--learning_rate=0", "--min_lr=0",
        "--dtype=float32", "--batch_groups=1", "--grad_accum=2", "--epochs=2"])
    assert result["val_loss"] == pytest.approx(math.log(2), abs=1e-6) and result["val_margin"] == pytest.approx(0)
    rows = [m for m in read_metrics(out) if "loss" in m]
    assert all(m["loss"] == pytest.approx(math.log(2), abs=1e-5) for m in rows)

    grad_norm, groups = sft_gradient_norm(pipeline_out)
    steps_per_epoch = len(groups) // 2
    assert len(rows) == 2 * steps_per_epoch
    for step, logged in enumerate(rows):
        order = train_reward.epoch_order(len(groups), train_dpo.Config.seed, step // steps_per_epoch)
        at = 2 * (step % steps_per_epoch)
        assert logged["grad_norm"] == pytest.approx(grad_norm([[order[at]], [order[at + 1]]]), rel=1e-4)
    # under bf16 autocast (where this CPU multiplies bf16) the reference is scored as the policy
    # is, in the same precision: still no margin at all
    bf16 = run_main(train_dpo, [
        "--preset=micro", "--device=cpu", f"--init_from={pipeline_out}/sft/ckpt.pt", f"--out_dir={out}_bf16",
        f"--data={prefs}/train.jsonl", f"--val_data={prefs}/val.jsonl", "--learning_rate=0", "--min_lr=0"])
    assert bf16["val_margin"] == 0.0 and bf16["val_chosen_reward"] == 0.0


def test_ddp_two_cpu_processes_with_gloo(micro_pipeline, tmp_path):
    """Two ranks train on different prompt groups: both finish (every collective, the loss
    averaged for the NaN check included, is reached by both), DDP keeps their models
    identical, and rank 0 alone logs. Its checkpoint then refuses to resume on one process,
    where its place in the data would count in steps of one batch, not two."""
    import subprocess
    import sys
    from conftest import ROOT
    pipeline_out, _ = micro_pipeline
    prefs = os.path.join(pipeline_out, "data", "prefs")
    out = tmp_path / "ddp"
    out.mkdir()
    args = ["--preset=micro", "--device=cpu", f"--init_from={pipeline_out}/sft/ckpt.pt", f"--out_dir={out}",
            f"--data={prefs}/train.jsonl", f"--val_data={prefs}/val.jsonl", "--batch_groups=1"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "tests/rank_weights.py", str(out), "train_dpo.py", *args],
                       cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = (torch.load(out / f"rank{k}.pt") for k in (0, 1))
    assert len(rank0) == len(rank1) > 0 and all(torch.equal(a, b) for a, b in zip(rank0, rank1))
    train_rows = [m for m in read_metrics(out) if "loss" in m]
    steps = load_checkpoint(str(out / "ckpt.pt"))["step"]
    assert steps >= 2 and [m["step"] for m in train_rows] == list(range(1, steps + 1))   # rank 0 alone logs
    assert train_rows[0]["loss"] == pytest.approx(math.log(2), abs=0.02)   # step 1: the policy is the reference
    # step 1's gradient is the mean of the two ranks' own groups' (rel: bf16's rounding)
    grad_norm, groups = sft_gradient_norm(pipeline_out)
    cfg = train_dpo.Config(batch_groups=1)
    ranks = [train_dpo.step_batch(len(groups), 0, 0, cfg, rank, world_size=2) for rank in (0, 1)]
    assert train_rows[0]["grad_norm"] == pytest.approx(grad_norm(ranks), rel=0.01)
    with pytest.raises(ValueError, match="trained on 2 process"):
        train_dpo.main(args + ["--epochs=2"])
