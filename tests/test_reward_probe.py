"""bench/reward_probe.py: each fix keeps its rule and nothing else changes; the reward splits
into the head and the likelihood term."""
import os
import sys
import types

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import reward_probe  # noqa: E402
from minift.checkpoint import build_model, load_checkpoint, tokenizer_for  # noqa: E402
import train_reward  # noqa: E402
from minift.formats import load_ifeval_inputs, load_ifeval_responses, load_preferences  # noqa: E402
from minift.model import ScalarModel  # noqa: E402
from minift.synthetic.tasks import verify  # noqa: E402

PROMPT = "Describe a kite."
KWARGS = {"detectable_content:postscript": {"postscript_marker": "P.S."},
          "startend:end_checker": {"end_phrase": "Is there anything else I can help with?"},
          "detectable_format:title": {}, "punctuation:no_comma": {}, "change_case:english_capital": {},
          "change_case:english_lowercase": {}}
SLIPPED = "A kite is red, blue and long. It flies high."


def record(iid):
    return {"prompt": PROMPT, "instruction_id_list": ["task:describe", iid],
            "kwargs": [{"topic": "kite"}, KWARGS[iid]]}


def test_each_fix_keeps_its_rule_and_the_task():
    for iid in reward_probe.FIXES:
        rec = record(iid)
        [(_, before, fixed)] = reward_probe.fixed_pairs([rec], [SLIPPED], iid)
        assert before == SLIPPED
        assert verify(SLIPPED, rec["instruction_id_list"], rec["kwargs"]) == [True, False]
        assert verify(fixed, rec["instruction_id_list"], rec["kwargs"]) == [True, True], (iid, fixed)
        # an answer that already keeps the rule, or a prompt that never asked for it, is no pair
        assert reward_probe.fixed_pairs([rec], [fixed], iid) == []
        other = next(i for i in reward_probe.FIXES if i != iid)
        assert reward_probe.fixed_pairs([record(other)], [SLIPPED], iid) == []


def test_the_comma_fix_takes_out_every_comma():
    commas = "A kite is red,blue. It flies, high,"
    [(_, _, fixed)] = reward_probe.fixed_pairs([record("punctuation:no_comma")], [commas], "punctuation:no_comma")
    assert "," not in fixed


def test_a_postscript_under_the_wrong_marker_gets_the_one_asked_for():
    rec = record("detectable_content:postscript")                  # asks for "P.S."
    wrong = SLIPPED + "\nP.P.S See you soon."
    [(_, before, fixed)] = reward_probe.fixed_pairs([rec], [wrong], "detectable_content:postscript")
    assert (before, fixed) == (wrong, SLIPPED + "\nP.S. See you soon.")


def test_probe_splits_the_reward_into_head_and_likelihood(micro_pipeline):
    out, _ = micro_pipeline
    ckpt = load_checkpoint(os.path.join(out, "reward", "ckpt.pt"), kinds=("reward",))
    tokenizer = tokenizer_for(ckpt, os.path.join(out, "reward", "ckpt.pt"))
    model = build_model(ckpt, ScalarModel).eval()
    answers = [a["response"] for a in load_ifeval_responses(os.path.join(out, "sft", "responses_test.jsonl"))]
    records = load_ifeval_inputs(os.path.join(out, "data", "sft", "test.jsonl"))[:len(answers)]
    weight = float(model.likelihood_weight)
    assert weight > 0
    rows = reward_probe.probe(model, tokenizer, records, answers)
    assert rows and float(model.likelihood_weight) == weight   # the weight is put back after the head's pass
    for r in rows.values():
        assert 0 <= r["full_prefers_fix"] <= r["n"] and 0 <= r["head_prefers_fix"] <= r["n"]
    # A head that outputs 0 everywhere leaves the likelihood term alone; a weight of 0, the head alone.
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    silent = reward_probe.probe(model, tokenizer, records, answers)
    assert all(r["head"] == 0 and r["head_prefers_fix"] == 0 and r["likelihood"] != 0 for r in silent.values())
    model = build_model(ckpt, ScalarModel).eval()
    model.likelihood_weight.fill_(0.0)
    head_only = reward_probe.probe(model, tokenizer, records, answers)
    assert all(r["likelihood"] == 0 and r["full"] == r["head"] == rows[iid]["head"]
               for iid, r in head_only.items())


def pair(chosen, rejected, iid="detectable_content:postscript"):
    rec = record(iid)
    return {"prompt": [{"role": "user", "content": rec["prompt"]}], "chosen": chosen, "rejected": rejected,
            "instruction_id_list": rec["instruction_id_list"], "kwargs": rec["kwargs"]}


def test_probe_gives_the_marker_swaps_a_row_of_their_own(micro_pipeline):
    out, _ = micro_pipeline
    ckpt = load_checkpoint(os.path.join(out, "reward", "ckpt.pt"), kinds=("reward",))
    tokenizer = tokenizer_for(ckpt, os.path.join(out, "reward", "ckpt.pt"))
    model = build_model(ckpt, ScalarModel).eval()
    rec = record("detectable_content:postscript")                     # asks for "P.S."
    answers = [SLIPPED + "\nP.P.S See you soon.", SLIPPED, SLIPPED + "\nP.S. See you soon."]   # swap, add, keep
    rows = reward_probe.probe(model, tokenizer, [rec] * 3, answers)
    assert list(rows) == ["detectable_content:postscript", reward_probe.MARKER_SWAP]
    both, swap = rows["detectable_content:postscript"], rows[reward_probe.MARKER_SWAP]
    assert (both["n"], swap["n"]) == (2, 1)
    alone = reward_probe.probe(model, tokenizer, [rec], answers[:1])["detectable_content:postscript"]
    assert swap == pytest.approx(alone)   # the swap's row is its own answer's figures


def test_what_decides_names_the_differences_and_whether_they_trade():
    fixed = SLIPPED + "\nP.S. Thank you for reading."
    assert reward_probe.what_decides(pair(fixed, SLIPPED)) == (("detectable_content:postscript",), True)
    # the P.S. kept, with a garbled word: the gold reward's arithmetic trades the check against the flaw
    clean = "A kite is red, blue and long. It can fly."
    assert reward_probe.what_decides(pair(clean + "\nP.S. Thank you for zorbling.", clean)) == (
        ("detectable_content:postscript", "flaw:garbled"), False)
    assert reward_probe.what_decides(pair(SLIPPED, SLIPPED)) == ((), True)


def test_held_out_pairs_are_grouped_by_what_decides_them(monkeypatch):
    """One check alone is named; several that all favour the chosen answer are "all one way";
    several that the gold reward trades against each other are "traded"."""
    monkeypatch.setattr(reward_probe, "render", lambda tokenizer, prompt, text: text)
    monkeypatch.setattr(reward_probe, "full_and_head", lambda model, seqs, *a: (torch.ones(len(seqs)),) * 2)
    kept, clean = SLIPPED + "\nP.S. Thank you for reading.", "A kite is red, blue and long. It can fly."
    pairs = [pair(kept, SLIPPED),                                        # the P.S. alone
             pair(clean + "\nP.S. Thank you for zorbling.", clean),      # the P.S. against a garbled word
             pair(clean + "\nP.S. Thank you for zorbling.", clean),
             pair(kept, "A dog is red. It runs.")]                        # the P.S. and the topic, one way
    rows = reward_probe.held_out_accuracy(reward_model_of(block_size=256), None, pairs)
    assert {label: r["n"] for label, r in rows.items()} == {
        "detectable_content:postscript": 1, "several, traded": 2, "several, all one way": 1}


def test_held_out_accuracy_adds_up_to_the_reward_models_own(micro_pipeline):
    out, _ = micro_pipeline
    path = os.path.join(out, "reward", "ckpt.pt")
    ckpt = load_checkpoint(path, kinds=("reward",))
    tokenizer = tokenizer_for(ckpt, path)
    model = build_model(ckpt, ScalarModel).eval()
    pairs = load_preferences(os.path.join(out, "data", "prefs", "val.jsonl"))
    rows = reward_probe.held_out_accuracy(model, tokenizer, pairs)
    assert sum(r["n"] for r in rows.values()) == len(pairs)
    val = train_reward.build_groups(pairs, tokenizer, model.gpt.config.block_size)[:2]
    own = train_reward.evaluate(model, val, None, tokenizer, "cpu", 64)["val_accuracy"]
    assert sum(r["n"] * r["full"] for r in rows.values()) / len(pairs) == pytest.approx(own)


def test_judges_vote_counts_only_pairs_that_differ_on_the_rule_and_names_what_the_keeper_lost_by():
    kept = SLIPPED + "\nP.S. Thank you for reading."
    clean = "A kite is red, blue and long. It can fly."
    pairs = [pair(kept, SLIPPED),                                    # the judges chose the keeper
             pair(clean, clean + "\nP.S. Thank you for zorbling."),  # they chose the breaker: a garbled word
             pair(clean, SLIPPED),                                   # neither keeps the P.S.: not counted
             pair(kept, SLIPPED, "punctuation:no_comma"),            # commas in both: not counted
             pair(kept, SLIPPED + "\nP.P.S Thank you for reading.")]  # the right marker against the wrong one
    no_ids = {k: v for k, v in pair(kept, SLIPPED).items() if k not in ("instruction_id_list", "kwargs")}
    rows = reward_probe.judges_vote(pairs + [no_ids])                # a pair without ids (HH, TRL) is skipped
    assert list(rows) == ["detectable_content:postscript", reward_probe.MARKER_SWAP]
    row = rows["detectable_content:postscript"]
    assert (row["n"], row["keeper_chosen"], dict(row["keeper_lost_by"])) == (3, 2, {"garbled": 1})
    row = rows[reward_probe.MARKER_SWAP]
    assert (row["n"], row["keeper_chosen"], dict(row["keeper_lost_by"])) == (1, 1, {})
    # one marker with and without its own final period is the same marker: no swap
    same = reward_probe.judges_vote([pair(SLIPPED + "\nP.P.S. See you soon.", SLIPPED + "\nP.P.S See you soon.")])
    assert reward_probe.MARKER_SWAP not in same


def test_marker_odds_tell_a_model_that_copies_the_marker_from_one_that_does_not(micro_pipeline):
    """Where the postscript begins, the odds of "P.P.S" over "P.S.", each marker scored whole, by
    the marker asked: a stand-in that copies the marker scores near 1 and near 0, one that always
    writes "P.P.S" near 1 under both; prompts without a postscript, or without a demonstration,
    are left out. Then the real checkpoints, end to end."""
    out, _ = micro_pipeline
    ckpt = load_checkpoint(os.path.join(out, "sft", "ckpt.pt"))
    tokenizer = tokenizer_for(ckpt, os.path.join(out, "sft", "ckpt.pt"))

    def asked(marker, demo="A kite flies.\nP.S. Bye.", iid="detectable_content:postscript"):
        prompt = f"Describe a kite. Add a postscript starting with {marker}"
        return {"prompt": prompt, "instruction_id_list": ["task:describe", iid],
                "kwargs": [{"topic": "kite"}, {"postscript_marker": marker}],
                "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": demo}]}

    class StandIn(torch.nn.Module):   # from where the marker begins, sure of one marker's tokens
        def __init__(self, copies):
            super().__init__()
            self.copies = copies

        def forward(self, idx):
            text = tokenizer.decode(idx[0].tolist())
            written = next(m for m in reward_probe.MARKERS if text.endswith("A kite flies.\n" + m))
            assert "Bye" not in text   # the demonstration is cut where its postscript begins
            favoured = tokenizer.encode("\n" + ("P.P.S" if "with P.P.S" in text or not self.copies else "P.S."))
            start = idx.size(1) - len(tokenizer.encode("\n" + written)) - 1   # predicts the new line
            logits = torch.zeros(1, idx.size(1), tokenizer.n_vocab)
            for i, token in enumerate(favoured[:idx.size(1) - start]):
                logits[0, start + i, token] = 20.0
            return logits, None

    records = [asked("P.S."), asked("P.P.S", "A kite flies.\nP.P.S Bye."), asked("P.S."),
               asked("P.S.", iid="punctuation:no_comma"), asked("P.P.S")]
    records[-1].pop("messages")
    odds, counts = reward_probe.marker_odds(StandIn(copies=True), tokenizer, records)
    assert counts == {"P.S.": 2, "P.P.S": 1}
    assert odds["P.P.S"] > 0.999 and odds["P.S."] < 0.001
    odds, _ = reward_probe.marker_odds(StandIn(copies=False), tokenizer, records)
    assert odds["P.P.S"] > 0.999 and odds["P.S."] > 0.999
    rows = reward_probe.main([f"--out_dir={out}", "--markers=true"])
    assert [os.path.basename(os.path.dirname(path)) for path in rows] == ["sft", "ppo", "reward"]
    assert all(0 < p < 1 for row in rows.values() for p in row.values())


def test_probe_reports_each_change_as_fixed_minus_before(monkeypatch):
    """Scores planned by hand: the fix gains 2 in full and 0.5 in the head, so the likelihood term
    gains 1.5; the gold change is the fixed answer's gold reward less the slipped one's."""
    from minift.synthetic.gold import gold_reward
    rec = record("detectable_content:postscript")
    seen = []
    monkeypatch.setattr(reward_probe, "render", lambda tokenizer, prompt, text: text)   # a character a token
    monkeypatch.setattr(reward_probe, "full_and_head", lambda model, seqs, *a: seen.extend(seqs) or
                        (torch.tensor([1.0, 3.0]), torch.tensor([0.5, 1.0])))
    row = reward_probe.probe(reward_model_of(block_size=1000), None, [rec], [SLIPPED])["detectable_content:postscript"]
    fixed = seen[1]
    assert seen == [SLIPPED, fixed] and fixed != SLIPPED
    assert (row["n"], row["full_prefers_fix"], row["head_prefers_fix"]) == (1, 1, 1)
    assert (row["full"], row["head"], row["likelihood"]) == pytest.approx((2.0, 0.5, 1.5))
    ids, kwargs = rec["instruction_id_list"], rec["kwargs"]
    gold = gold_reward(PROMPT, fixed, ids, kwargs) - gold_reward(PROMPT, SLIPPED, ids, kwargs)
    assert row["gold"] == pytest.approx(gold)
    assert row["gold"] > 0


def reward_model_of(block_size):
    return types.SimpleNamespace(gpt=types.SimpleNamespace(config=types.SimpleNamespace(block_size=block_size)))


def test_pairs_too_long_for_the_context_are_left_out_and_counted(monkeypatch, capsys):
    """An answer cut at max_new_tokens, or lengthened by its fix, can run past the reward model's
    context, which would stop the whole probe: it is left out, as train_reward.py leaves it out."""
    rec = record("detectable_content:postscript")
    fixed = reward_probe.write_the_postscript_asked_for(SLIPPED, {"postscript_marker": "P.S."})
    monkeypatch.setattr(reward_probe, "render", lambda tokenizer, prompt, text: text)   # a character a token
    scored = []
    monkeypatch.setattr(reward_probe, "full_and_head", lambda model, seqs, *a: scored.append(seqs) or
                        (torch.zeros(len(seqs)), torch.zeros(len(seqs))))
    short = reward_model_of(block_size=len(fixed) - 1)
    assert reward_probe.probe(short, None, [rec], [SLIPPED]) == {} and scored == []
    assert capsys.readouterr().out == ("detectable_content:postscript: answers: 1 of 1 left out, longer than the "
                                       f"reward model's context ({len(fixed) - 1} tokens)\n")
    pairs = [pair(fixed, SLIPPED), pair(SLIPPED, SLIPPED[:10])]
    rows = reward_probe.held_out_accuracy(short, None, pairs)
    assert sum(r["n"] for r in rows.values()) == 1 and scored == [[SLIPPED, SLIPPED[:10]]]
    assert "held-out pairs: 1 of 2 left out" in capsys.readouterr().out


def test_held_out_pairs_are_the_validation_pairs_and_the_judges_the_training_pairs(micro_pipeline, capsys):
    out, _ = micro_pipeline
    train, val = (load_preferences(os.path.join(out, "data", "prefs", f"{split}.jsonl")) for split in ("train", "val"))
    assert len(train) != len(val)
    rows = reward_probe.main([f"--out_dir={out}", "--held_out_pairs=true"])
    assert sum(r["n"] for r in rows.values()) == len(val)
    assert reward_probe.main([f"--out_dir={out}", "--judges=true"]) == reward_probe.judges_vote(train)
    assert f"training pairs ({os.path.join(out, 'data', 'prefs', 'train.jsonl')})" in capsys.readouterr().out


def test_main_probes_the_models_answers_to_the_split_asked(micro_pipeline, tmp_path):
    out, _ = micro_pipeline
    path = os.path.join(out, "reward", "ckpt.pt")
    ckpt = load_checkpoint(path, kinds=("reward",))
    model = build_model(ckpt, ScalarModel).eval()
    for name, split in (("ppo", "test"), ("sft", "heldout")):
        answers = [a["response"] for a in load_ifeval_responses(os.path.join(out, name, f"responses_{split}.jsonl"))]
        records = load_ifeval_inputs(os.path.join(out, "data", "sft", f"{split}.jsonl"))[:len(answers)]
        assert reward_probe.main([f"--out_dir={out}", f"--model={name}", f"--split={split}"]) == \
            reward_probe.probe(model, tokenizer_for(ckpt, path), records, answers)
    # a run without those answers: the command that makes them for this --out_dir, not for out/tiny
    with pytest.raises(SystemExit, match=f"no answers at {tmp_path}/ppo/responses_test.jsonl. Run: python pipeline.py "
                                         f"--out_dir={tmp_path}"):
        reward_probe.main([f"--out_dir={tmp_path}"])
