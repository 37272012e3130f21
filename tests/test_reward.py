"""The reward model: the Bradley-Terry loss, batching whole prompt groups, padding
invariance, pair construction, Spearman, and train_reward.py end to end on synthetic pairs
where the chosen answer always contains a marker word."""
import json
import math
import os
import random

import pytest
import torch

import train_reward
from conftest import read_metrics, run_main, stop_after
from minift.checkpoint import build_model, load_checkpoint, save_training_checkpoint
from minift.training import Interrupted, lr_at
from minift.formats import write_jsonl
from minift.model import GPT, GPTConfig, ScalarModel, answer_positions
from minift.tokenizer import Tokenizer, save_ranks, train_bpe

WORDS = "the cat dog sun ran sat big red hat mat saw a on in and was happy sad tree ball".split()
MARKER = "zebra"


def test_bradley_terry_matches_hand_computation():
    loss = train_reward.bradley_terry(torch.tensor([2.0]), torch.tensor([0.5]))
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.5))), abs=1e-6)
    assert loss.item() == pytest.approx(0.2014, abs=1e-4)
    # the mean over pairs; a pair ranked the wrong way costs more than log 2
    loss = train_reward.bradley_terry(torch.tensor([2.0, 0.0]), torch.tensor([0.5, 1.0]))
    assert loss.item() == pytest.approx((0.2014 + 1.3133) / 2, abs=1e-4)
    # stable far from 0: a pair 1000 apart the wrong way costs 1000, where -log(sigmoid(x)) is inf
    loss = train_reward.bradley_terry(torch.tensor([0.0, 1000.0]), torch.tensor([1000.0, 0.0]))
    assert loss.item() == pytest.approx(1000 / 2, abs=1e-3)


def test_evaluate_correlates_scores_with_gold_over_all_answers_and_within_each_prompt(monkeypatch):
    """Two prompts whose answers the scores rank backwards, though they put the two prompts'
    levels in gold's order: over all answers rho is 0.6, within each prompt -1. A prompt
    whose answers tie in gold has no order to match and is left out of the within mean."""
    scores = torch.tensor([1.0, 2.0, 10.0, 11.0, 5.0, 6.0])
    monkeypatch.setattr(train_reward, "score_all", lambda model, seqs, *a: scores[:len(seqs)])
    gold, prompts = [2.0, 1.0, 4.0, 3.0, 0.5, 0.5], ["a", "a", "b", "b", "c", "c"]
    two = train_reward.evaluate(None, ([], []), ([[0]] * 4, gold[:4], prompts[:4]), None, "cpu", 8)
    assert two["spearman"] == pytest.approx(0.6) and two["spearman_within"] == pytest.approx(-1.0)
    three = train_reward.evaluate(None, ([], []), ([[0]] * 6, gold, prompts), None, "cpu", 8)
    assert three["spearman"] == pytest.approx(train_reward.spearman(scores.tolist(), gold))
    assert three["spearman_within"] == pytest.approx(-1.0)


def test_spearman_with_ties():
    assert train_reward.average_ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    # ranks (1, 2.5, 2.5, 4) vs (1, 3, 2, 4): Pearson = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert train_reward.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert train_reward.spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert math.isnan(train_reward.spearman([1, 1, 1], [1, 2, 3]))


def test_pair_construction_drops_ties_and_keeps_groups():
    from data.make_preferences import make_pairs, val_groups
    samples = [{"group": g, "prompt": f"p{g}", "response": f"r{g}{i}", "gold": gold, "instruction_id_list": ["x"],
                "kwargs": [{}]} for g, golds in enumerate([[1.0, 0.5, 0.5, 0.0], [0.3, 0.3, 0.3], [0.1, 0.9]])
               for i, gold in enumerate(golds)]
    samples = [{**s, "key": f"k{s['group']}", "instruction_id_list": [f"id{s['group']}"]} for s in samples]
    pairs, ties = make_pairs(samples)
    assert ties == 1 + 3  # one tie in group 0 (0.5, 0.5), all three pairs of group 1
    assert len(pairs) == 5 + 1
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert {p["group"] for p in pairs} == {0, 2}
    assert all(p["prompt"] == f"p{p['group']}" and p["chosen"].startswith(f"r{p['group']}") for p in pairs)
    # each side's text is the answer that earned its score, and the prompt's fields come along
    score = {s["response"]: s["gold"] for s in samples}
    assert all(score[p["chosen"]] == p["chosen_score"] and score[p["rejected"]] == p["rejected_score"] for p in pairs)
    assert all(p["key"] == f"k{p['group']}" and p["instruction_id_list"] == [f"id{p['group']}"] for p in pairs)
    held = val_groups(100, 0.1, seed=0)
    assert len(held) == 10 and held == val_groups(100, 0.1, seed=0) != val_groups(100, 0.1, seed=1)
    assert len(val_groups(7, 0.25, seed=0)) == 2 and len(val_groups(5, 0.1, seed=0)) == 1   # nearest, at least one
    assert val_groups(5, 0.0, seed=0) == set()
    # two samples of one answer tie: never a pair whose two sides are the same text
    same = [{**samples[0], "response": r, "gold": g} for r, g in (("same", 0.5), ("same", 0.5), ("other", 0.2))]
    pairs, ties = make_pairs(same)
    assert ties == 1 and len(pairs) == 2 and all(p["chosen"] != p["rejected"] for p in pairs)


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    text = " ".join(rng.choice(WORDS + [MARKER]) for _ in range(3000)) + " Tell me about the.\n"
    return Tokenizer.from_ranks(train_bpe(text, 300))


def tiny_scalar_model(tok, seed=0):
    """A random reward model, with the likelihood term on so that the tests cover it."""
    torch.manual_seed(seed)
    model = ScalarModel(GPTConfig(vocab_size=tok.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    model.likelihood_weight.fill_(0.5)
    return model


def reward_alone(model, tok, seq):
    """One sequence scored the way sample.py scores it: no padding, its own answer mask."""
    ids = torch.tensor([seq])
    return model.reward(ids, torch.ones_like(ids), answer_positions(ids, tok.assistant, torch.ones_like(ids)),
                        normalized=False)


def test_build_groups_renders_each_answer_once(tok):
    pairs = [{"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "b"},
             {"prompt": [{"role": "user", "content": "hi"}], "chosen": "a", "rejected": "c"},
             {"prompt": [{"role": "user", "content": "yo"}], "chosen": "a", "rejected": "b", "group": 7}]
    seqs, groups, dropped, gold = train_reward.build_groups(pairs, tok, block_size=64)
    assert len(seqs) == 5 and dropped == 0          # "a" under "hi" is rendered once
    assert gold == [None] * 5                       # no chosen_score / rejected_score
    assert [len(g) for g in groups] == [2, 1]       # identical prompts group together
    assert groups[0][0][0] == groups[0][1][0]
    assert seqs[0] == tok.render_conversation([{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "a"}])[0]
    assert seqs[0][-1] == tok.end
    _, _, dropped, _ = train_reward.build_groups(pairs, tok, block_size=5)
    assert dropped == 3
    # a dropped pair leaves no answer behind: every seq fits, so DPO can score them all
    too_long = [pairs[0], pairs[1] | {"rejected": "c " * 40}]
    seqs, groups, dropped, _ = train_reward.build_groups(too_long, tok, block_size=20)
    assert dropped == 1 and len(seqs) == 2 and max(len(s) for s in seqs) <= 20 and len(groups[0]) == 1
    scored = [p | {"chosen_score": 1.0, "rejected_score": s} for p, s in zip(pairs, (0.5, 0.0, 0.2))]
    assert train_reward.build_groups(scored, tok, block_size=64)[3] == [1.0, 0.5, 0.0, 1.0, 0.2]


def test_held_out_pairs_keep_whole_prompts_and_only_their_answers(tok):
    """--val_data="": whole prompt groups are held out, and the held-out set carries only its
    own answers, so an evaluation scores those and not every training answer."""
    from types import SimpleNamespace
    pairs = [{"prompt": [{"role": "user", "content": f"prompt {k}"}], "chosen": f"good {k}", "rejected": f"bad {k}{j}"}
             for k in range(10) for j in range(2)]
    seqs, groups, _, _ = train_reward.build_groups(pairs, tok, block_size=64)
    cfg = SimpleNamespace(val_data="", val_fraction=0.3, seed=0)
    train, (val_seqs, val_groups) = train_reward.held_out_pairs(seqs, groups, cfg, tok, 64)
    assert len(train) == 7 and len(val_groups) == 3
    texts = lambda ss, gs: sorted((tok.decode(ss[c]), tok.decode(ss[r])) for g in gs for c, r, _ in g)  # noqa: E731
    assert texts(val_seqs, val_groups) == sorted(set(texts(seqs, groups)) - set(texts(seqs, train)))
    assert len(val_seqs) == 9                      # each held-out prompt's 3 answers, nothing else


def test_scores_do_not_depend_on_padding_or_batch(tok):
    model = tiny_scalar_model(tok)
    short = train_reward.render(tok, "Tell me about the cat.", "The cat sat.")
    longer = [train_reward.render(tok, "Tell me about the dog on the mat.", " ".join(WORDS)),
              train_reward.render(tok, "hi", "the sun")]
    with torch.no_grad():
        alone = train_reward.last_token_scores(model, [short], tok, "cpu")
        mixed = train_reward.last_token_scores(model, longer + [short], tok, "cpu")
        via_reward = reward_alone(model, tok, short)
    assert torch.allclose(alone[0], mixed[2], atol=1e-5)
    assert torch.allclose(alone[0], via_reward[0], atol=1e-5)   # what sample.py and PPO read
    # score_all sorts by length internally; results come back in the input order
    scores = train_reward.score_all(model, longer + [short], tok, "cpu", batch_size=2)
    assert torch.allclose(scores, mixed, atol=1e-5)


def test_group_batch_loss_equals_pairs_scored_alone(tok):
    model = tiny_scalar_model(tok)
    seqs = [train_reward.render(tok, "Tell me about the cat.", r) for r in ("the cat", "a big red cat sat", "sad")]
    seqs.append(train_reward.render(tok, "hi", "the dog ran on the mat and was happy"))
    groups = [[(0, 1, []), (0, 2, []), (1, 2, [])], [(3, 0, [])]]
    loss, acc = train_reward.group_batch_loss(model, seqs, groups, tok, "cpu")
    with torch.no_grad():
        alone = [reward_alone(model, tok, s).item() for s in seqs]
    pairs = [p for g in groups for p in g]
    expected = sum(-math.log(1 / (1 + math.exp(-(alone[c] - alone[r])))) for c, r, _ in pairs) / len(pairs)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert acc == pytest.approx(sum(alone[c] > alone[r] for c, r, _ in pairs) / len(pairs))


def test_across_prompt_pairs_add_bradley_terry_between_prompts(tok):
    """The cross-prompt term by hand: every two answers to different prompts, the one of
    higher gold first; equal gold (to the last bits) is no pair, nor is a pair within a prompt.
    Sequence 0 is in no group of the batch, so batch rows (0-4) and sequence ids (1-5) differ."""
    model = tiny_scalar_model(tok)
    seqs = [train_reward.render(tok, "hi", "not in this batch")]
    seqs += [train_reward.render(tok, "Tell me about the cat.", r) for r in ("the cat", "a big red cat sat", "sad")]
    seqs += [train_reward.render(tok, "hi", r) for r in ("the dog ran on the mat", "the sun")]
    gold = [0.9, 1.0, 0.6000000000000001, 0.2, 0.6, 0.0]
    groups = [[(1, 2, []), (1, 3, []), (2, 3, [])], [(4, 5, [])]]
    better, worse = train_reward.across_prompt_pairs([1, 2, 3, 4, 5], groups, gold)
    rows = [(0, 3), (0, 4), (1, 4), (2, 4), (3, 2)]          # as rows of the batch: sequence id - 1
    assert sorted(zip(better.tolist(), worse.tolist())) == rows
    within, _ = train_reward.group_batch_loss(model, seqs, groups, tok, "cpu")
    both, acc = train_reward.group_batch_loss(model, seqs, groups, tok, "cpu", gold, across_prompt_weight=0.5)
    with torch.no_grad():
        alone = [reward_alone(model, tok, s).item() for s in seqs]
    bt = lambda c, r: -math.log(1 / (1 + math.exp(-(alone[c] - alone[r]))))  # noqa: E731
    across = sum(bt(c + 1, r + 1) for c, r in rows) / len(rows)
    assert both.item() == pytest.approx(within.item() + 0.5 * across, abs=1e-5)
    pairs = [p for g in groups for p in g]
    assert acc == pytest.approx(sum(alone[c] > alone[r] for c, r, _ in pairs) / len(pairs))  # within only


def tiny_sft_checkpoint(tok, tmp_path, block_size=64, n_layer=2):
    """A random GPT saved as an SFT checkpoint, with its tokenizer: what train_reward.py starts from."""
    tok_path = str(tmp_path / "tok.tiktoken")
    save_ranks(tok_path, tok.enc._mergeable_ranks)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tok.n_vocab, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=32)
    sft = str(tmp_path / "sft.pt")
    save_training_checkpoint(sft, "sft", 0, GPT(config), None, config, {"path": tok_path, **tok.identity},
                             torch.Generator(), {})
    return sft


def test_train_reward_uses_the_cross_prompt_term_when_pairs_carry_scores(tok, tmp_path, capsys):
    """One step of train_reward.main from one model: its logged training loss is the
    within-prompt loss, plus the cross-prompt term only when the flag is on AND the pairs
    carry gold scores; pairs without them (HH-RLHF, TRL) say so and train within prompts."""
    sft = tiny_sft_checkpoint(tok, tmp_path)
    scored = str(tmp_path / "scored.jsonl")
    synthetic_prefs(scored, 8, 3, seed=1)
    plain = str(tmp_path / "plain.jsonl")
    write_jsonl(plain, [{k: v for k, v in json.loads(line).items() if not k.endswith("_score")}
                        for line in open(scored)])

    def first_loss(data, weight):
        out = str(tmp_path / f"rm_{os.path.basename(data)}_{weight}")
        train_reward.main(["--preset=micro", "--batch_groups=8", "--device=cpu", "--dtype=float32",
                           f"--init_from={sft}", f"--out_dir={out}", f"--data={data}", f"--val_data={data}",
                           "--val_samples=", f"--across_prompt_weight={weight}"])
        return [m for m in read_metrics(out) if "loss" in m][0]["loss"]   # step 1: the starting model's

    within = first_loss(scored, 0)
    assert first_loss(scored, 1) > within + 0.1      # 112 cross-prompt pairs at ~log 2 each, added
    capsys.readouterr()
    assert first_loss(plain, 1) == pytest.approx(within, abs=1e-6)
    assert "not every pair of" in capsys.readouterr().out


def synthetic_prefs(path, n_groups, k, seed, flipped=0):
    """Each prompt has k answers of random words; answers with the marker beat those without.
    The last `flipped` prompts are of another instruction type, whose pairs prefer the answers
    without the marker: a model that learned the marker gets them wrong."""
    rng = random.Random(seed)
    pairs, samples = [], []
    for g in range(n_groups):
        flip = g >= n_groups - flipped
        prompt = f"Tell me about the {rng.choice(WORDS)}."
        answers = []
        for i in range(k):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
            if i == 0:
                words.insert(rng.randrange(len(words)), MARKER)
            answers.append((" ".join(words) + ".", float(i == 0)))
        samples += [{"prompt": prompt, "response": a, "gold": s, "group": g} for a, s in answers]
        pairs += [{"prompt": prompt, "chosen": a if flip else answers[0][0], "rejected": answers[0][0] if flip else a,
                   "group": g, "instruction_id_list": ["task:flipped" if flip else "task:synthetic"], "kwargs": [{}],
                   "chosen_score": 1.0, "rejected_score": s} for a, s in answers[1:]]
    write_jsonl(path, pairs)
    return samples


def test_gradient_accumulation_takes_the_same_step(tok, tmp_path):
    """Two micro-batches of 2 prompt groups, each loss divided by 2, make the gradient of one
    batch of 4 (the within-prompt loss is a mean over the pairs of equal-sized groups)."""
    sft = tiny_sft_checkpoint(tok, tmp_path)
    data = str(tmp_path / "train.jsonl")
    synthetic_prefs(data, 8, 3, seed=1)

    def first_grad_norm(batch_groups, grad_accum):
        out = str(tmp_path / f"rm_{batch_groups}x{grad_accum}")
        train_reward.main(["--preset=micro", f"--batch_groups={batch_groups}", f"--grad_accum={grad_accum}",
                           "--device=cpu", "--dtype=float32", f"--init_from={sft}", f"--out_dir={out}",
                           f"--data={data}", f"--val_data={data}", "--val_samples=", "--across_prompt_weight=0"])
        return [m for m in read_metrics(out) if "grad_norm" in m][0]["grad_norm"]
    assert first_grad_norm(2, 2) == pytest.approx(first_grad_norm(4, 1), rel=1e-4)


def test_train_reward_script_learns_a_marker(tok, tmp_path, monkeypatch):
    sft = tiny_sft_checkpoint(tok, tmp_path)
    synthetic_prefs(str(tmp_path / "train.jsonl"), 200, 3, seed=1)
    val_samples = synthetic_prefs(str(tmp_path / "val.jsonl"), 40, 3, seed=2, flipped=4)
    write_jsonl(str(tmp_path / "val_samples.jsonl"), val_samples)
    out = str(tmp_path / "rm")
    args = ["--preset=micro", "--batch_groups=4", "--device=cpu", f"--init_from={sft}",
            f"--out_dir={out}",
            f"--data={tmp_path / 'train.jsonl'}", f"--val_data={tmp_path / 'val.jsonl'}",
            f"--val_samples={tmp_path / 'val_samples.jsonl'}", "--learning_rate=3e-3", "--eval_interval=1000"]
    run_main(train_reward, args)
    final = [m for m in read_metrics(out) if "eval_val_accuracy" in m][-1]
    assert final["eval_val_accuracy"] > 0.7 and final["eval_spearman"] > 0.4, final
    assert final["eval_spearman_within"] > 0.5, final
    # per instruction type: the marker's pairs right, the flipped type's (8 of 80 pairs) wrong
    by_type = final["eval_val_accuracy_by_type"]
    assert set(by_type) == {"task:synthetic", "task:flipped"}
    assert by_type["task:synthetic"] > 0.8 and by_type["task:flipped"] < 0.2, by_type
    assert (72 * by_type["task:synthetic"] + 8 * by_type["task:flipped"]) / 80 == pytest.approx(final["eval_val_accuracy"])

    # the checkpoint: kind "reward", normalised on the training answers, readable by sample.py
    ckpt = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert ckpt["kind"] == "reward" and ckpt["step"] == 200 // 4
    # the likelihood term's weight is saved with the model, as given: what PPO's reward adds
    assert ckpt["model"]["likelihood_weight"].item() == ckpt["config"]["likelihood_weight"] == 2.0
    # the optimizer ran the schedule: its last rate is the last step's (decaying), not --learning_rate
    cfg = ckpt["config"]
    last_lr = lr_at(49, cfg["learning_rate"], cfg["min_lr"], cfg["warmup_steps"], 50)
    assert {g["lr"] for g in ckpt["optimizer"]["param_groups"]} == {last_lr} and last_lr < 0.5 * cfg["learning_rate"]
    seqs, groups, _, _ = train_reward.build_groups(
        [json.loads(line) for line in open(tmp_path / "train.jsonl")], tok, 64)

    def assert_normalised(ckpt):
        model = build_model(ckpt, ScalarModel).eval()
        normalised = model.normalize(train_reward.score_all(model, seqs, tok, "cpu", 256))
        assert abs(normalised.mean().item()) < 1e-3 and normalised.std().item() == pytest.approx(1.0, abs=1e-3)
    assert_normalised(ckpt)
    with monkeypatch.context() as m:   # so is the one a Ctrl-C (during step 3) saves before any evaluation
        m.setattr(train_reward, "StopRequest", stop_after(2))
        with pytest.raises(Interrupted, match="at step 2 of"):
            train_reward.main(args + [f"--out_dir={tmp_path / 'stopped'}"])
    assert_normalised(load_checkpoint(os.path.join(tmp_path, "stopped", "ckpt.pt")))
    import sample
    marked = sample.main([f"--ckpt={out}/ckpt.pt", "--prompt=Tell me about the cat.", "--response=the zebra sat."])
    plain = sample.main([f"--ckpt={out}/ckpt.pt", "--prompt=Tell me about the cat.", "--response=the dog sat."])
    assert marked > plain


def test_make_preferences_script(tok, tmp_path, monkeypatch):
    """data/make_preferences.py end to end with a random model: whole prompts go to val, every
    pair is ordered by gold, val_samples holds every held-out answer, and answers end where
    PPO's rollouts end, at <|end|> only."""
    from random import Random as R

    from data import make_preferences
    from minift.engine import generate
    from minift.synthetic.splits import sample
    stops = set()
    monkeypatch.setattr("minift.evaluation.generate",
                        lambda model, *a, **kw: stops.add(kw["stop_tokens"]) or generate(model, *a, **kw))
    sft = tiny_sft_checkpoint(tok, tmp_path, block_size=128, n_layer=1)
    rng = R(0)
    write_jsonl(str(tmp_path / "rl.jsonl"), [sample(rng, "rl_prompts").record(f"rl-{i}") for i in range(20)])
    out = str(tmp_path / "prefs")
    stats = make_preferences.main(["--preset=micro", "--k=3", "--val_fraction=0.25", "--num_prompts=16", "--device=cpu",
                                   f"--sft_ckpt={sft}", f"--out_dir={out}", f"--prompts={tmp_path / 'rl.jsonl'}"])
    train, val = (read(os.path.join(out, f"{n}.jsonl")) for n in ("train", "val"))
    samples = read(os.path.join(out, "val_samples.jsonl"))
    assert stats["samples"] == 16 * 3 and len(samples) == 4 * 3   # the first 16 prompts, a quarter held out
    assert {s["group"] for s in samples}.isdisjoint({p["group"] for p in train})
    assert {p["group"] for p in val} <= {s["group"] for s in samples}
    assert all(p["chosen_score"] > p["rejected_score"] for p in train + val)
    assert len(train) + len(val) == stats["train_pairs"] + stats["val_pairs"]
    assert stats["train_pairs"] + stats["val_pairs"] + round(stats["tie_rate"] * 48) == 48  # 16 x C(3, 2)
    assert stops == {(tok.end,)}
    again = make_preferences.main(["--preset=micro", "--k=3", "--val_fraction=0.25", "--num_prompts=16", "--device=cpu",
                                   f"--sft_ckpt={sft}", f"--out_dir={out}2", f"--prompts={tmp_path / 'rl.jsonl'}"])
    assert again == {**stats, "sampling_seconds": again["sampling_seconds"]}   # deterministic
    assert "seconds" not in stats   # pipeline.py's prefs stage records its own, whole time as "seconds"


def read(path):
    return [json.loads(line) for line in open(path)]


def test_make_preferences_scores_each_answer_against_its_own_prompt(monkeypatch):
    """make_preferences with a stand-in sampler that answers each prompt with its reference
    answer twice, once with a garbled word and once not at all: gold 0.5, 1, 0, 1. The answers
    stay with their prompt, the pairs and ties follow, and the statistics count every answer."""
    from random import Random as R
    from types import SimpleNamespace

    from data import make_preferences
    from minift.synthetic.gold import gold_reward
    from minift.synthetic.splits import sample
    rng, drawn = R(0), []
    while len(drawn) < 10:   # prompts whose instructions still hold with a word added at the end
        s = sample(rng, "rl_prompts")
        if gold_reward(s.prompt, s.response + " OWba", s.ids, s.kwargs) == 0.5:
            drawn.append(s)
    records = [s.record(f"rl-{i}") for i, s in enumerate(drawn)]
    reference = {r["key"]: s.response for r, s in zip(records, drawn)}

    def stand_in(model, tokenizer, recs, k, temperature, max_new_tokens, batch_size, generator, stop_tokens):
        assert generator.initial_seed() == 5 and k == 4
        return [[reference[r["key"]] + " OWba", reference[r["key"]], "", reference[r["key"]]] for r in recs]
    monkeypatch.setattr(make_preferences, "sample_answers", stand_in)
    train, val, val_samples, stats = make_preferences.make_preferences(
        None, SimpleNamespace(end=0), records, k=4, val_fraction=0.2, seed=5)
    assert len(train) == 8 * 5 and len(val) == 2 * 5 and len(val_samples) == 2 * 4   # C(4, 2) = 6 less a tie
    assert {s["group"] for s in val_samples} == make_preferences.val_groups(10, 0.2, seed=5)
    for p in train + val:
        gold = {reference[p["key"]]: 1.0, reference[p["key"]] + " OWba": 0.5, "": 0.0}
        assert gold[p["chosen"]] == p["chosen_score"] > p["rejected_score"] == gold[p["rejected"]], p
    assert sorted(s["gold"] for s in val_samples) == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert stats == {"prompts": 10, "samples": 40, "train_pairs": 40, "val_pairs": 10, "tie_rate": 1 / 6,
                     "mean_gold": 0.625, "perfect_share": 0.5, "flaw_rate": {"garbled": 0.25}}
    # a prompt that the file repeats goes to one split with all its copies
    repeated = [records[i % 3] | {"key": f"copy-{i}"} for i in range(9)]
    reference.update({r["key"]: reference[records[i % 3]["key"]] for i, r in enumerate(repeated)})
    train, val, _, _ = make_preferences.make_preferences(None, SimpleNamespace(end=0), repeated, k=4,
                                                         val_fraction=0.2, seed=5)
    held = {p["prompt"] for p in val}
    assert len(held) == 1 and held.isdisjoint(p["prompt"] for p in train) and len(val) == 3 * 5


def test_step_batch_gives_every_rank_and_micro_batch_its_own_groups():
    """The walk the reward model and DPO share. Two ranks, two micro-batches each, two groups
    a micro-batch: 8 groups a step, so 2 steps an epoch of 19 groups (3 left out). Within an
    epoch no group comes twice; the next epoch walks another order; and a step's batches
    depend on the step alone (a resumed run)."""
    cfg = train_reward.Config(batch_groups=2, grad_accum=2, seed=3)
    epochs = []
    for epoch in range(2):
        batches = [train_reward.step_batch(19, step, micro, cfg, rank, world_size=2)
                   for step in (2 * epoch, 2 * epoch + 1) for micro in range(2) for rank in range(2)]
        assert all(len(b) == 2 for b in batches)
        seen = [i for b in batches for i in b]
        assert len(set(seen)) == 16 and set(seen) <= set(range(19))
        epochs.append(seen)
    assert epochs[0] != epochs[1]
    assert train_reward.step_batch(19, 3, 1, cfg, 1, world_size=2) == epochs[1][-2:]
    # within a step, micro-batch by micro-batch, each split over the ranks: the layout recorded runs drew
    order = train_reward.epoch_order(19, 3, 1)
    assert train_reward.step_batch(19, 3, 1, cfg, 0, world_size=2) == order[8 + 4:8 + 6]
    assert train_reward.step_batch(19, 2, 0, cfg, 1, world_size=2) == order[2:4]
