"""Tests for the simulated demonstrators (minift/synthetic/demonstrators.py) and their effect on the splits."""

from collections import Counter
from random import Random

import pytest

from data.make_sft import demo_pass_rate
from minift.synthetic import checkers, demonstrators, splits
from minift.synthetic.builders import Unsatisfiable
from minift.synthetic.demonstrators import COMMON_HABITS, HABITS, Habit, demonstrate, slip_table, slipped_kwargs
from minift.synthetic.instructions import REGISTRY
from minift.synthetic.splits import make_splits, sample

SIZES = {"train": 600, "test": 100, "heldout": 100, "rl_prompts": 50}


@pytest.fixture(scope="module")
def samples():
    rng = Random(7)
    return [sample(rng, "train") for _ in range(400)]


def test_every_instruction_type_has_a_habit():
    assert set(HABITS) == set(REGISTRY)
    assert all(0 < h.rate < 1 for h in HABITS.values())
    # the four common habits the README and the card name; the rest rare
    assert set(COMMON_HABITS) == {"detectable_content:postscript", "startend:end_checker", "punctuation:no_comma",
                                  "detectable_format:title"}
    assert all(HABITS[iid].rate <= 0.25 for iid in HABITS if iid not in COMMON_HABITS)


def test_only_the_slipped_instructions_fail_and_few_slips_go_unseen(samples):
    """demonstrate() reports the slips the checkers see; a slip must not break the prompt's
    other instructions, and a slip the checkers cannot see (it still passes) must be rare, or
    the rates in HABITS would overstate the demonstrators' slips."""
    for scale in (1.0, 3.0):  # scale 3: most instructions slip
        rng = Random(1)
        seen = expected = 0
        for s in samples:
            answer, slipped = demonstrate(s, rng, scale)
            for ins, kw in s.items:
                if ins.id not in slipped:
                    assert ins.verify(answer, kw), (ins.id, slipped, s.prompt, answer)
            seen += len(slipped)
            expected += sum(min(1.0, HABITS[ins.id].rate * scale) for ins, _ in s.items)
        assert seen > 0.85 * expected, (scale, seen, expected)


def test_slip_frequency_follows_the_rates(samples):
    asked, slipped = Counter(), Counter()
    for seed in range(5):
        rng = Random(seed)
        for s in samples:
            asked.update(ins.id for ins, _ in s.items)
            slipped.update(demonstrate(s, rng)[1])
    for iid in ("detectable_content:postscript", "startend:end_checker"):  # common habits, with room to measure
        assert abs(slipped[iid] / asked[iid] - HABITS[iid].rate) < 0.1, (iid, slipped[iid], asked[iid])
    assert sum(slipped.values()) / sum(asked.values()) < 0.4


def test_scale_zero_is_perfect_and_a_smaller_scale_slips_on_a_subset(samples):
    for s in samples[:100]:
        assert demonstrate(s, Random(3), 0.0) == (s.response, [])
        half, full = demonstrate(s, Random(3), 0.5)[1], demonstrate(s, Random(3), 1.0)[1]
        assert set(half) <= set(full)


def test_count_slips_go_one_past_or_to_the_other_side():
    bullets = Habit(0.2, "one too many", "num_bullets")
    assert slipped_kwargs(bullets, {"num_bullets": 3}) == {"num_bullets": 4}
    words = Habit(0.2, "the other side", "relation")
    assert slipped_kwargs(words, {"num_words": 20, "relation": "less than"})["relation"] == "at least"


def test_slips_change_answers_not_prompts(monkeypatch):
    # The builders' checks, not IFEval's language detector, which (where installed) calls a few
    # short all-capital answers another language.
    monkeypatch.setattr(checkers, "langdetect", None)
    perfect, slipped = make_splits(0, SIZES, slip_scale=0.0), make_splits(0, SIZES)
    for split in SIZES:
        assert [r["prompt"] for r in perfect[split]] == [r["prompt"] for r in slipped[split]]
    assert all(r["slips"] == [] for r in perfect["train"])
    rate_perfect, _ = demo_pass_rate(perfect["train"])
    rate_slipped, per_type = demo_pass_rate(slipped["train"])
    assert rate_perfect == 1.0   # every reference answer passes its checkers
    assert 0.45 < rate_slipped < 0.8
    assert per_type["detectable_content:postscript"]["strict"] < 0.5  # a common habit shows
    assert sum(bool(r["slips"]) for r in slipped["train"]) / len(slipped["train"]) == pytest.approx(1 - rate_slipped,
                                                                                                   abs=0.02)


def test_the_prompts_are_those_drawn_with_no_demonstrator_at_all(monkeypatch):
    """Slips draw from their own random stream, so the prompts are not just the same at every
    scale: they are what the sampler draws when no demonstrator runs (one that never slips and
    draws nothing)."""
    sizes = {"train": 200, "test": 50, "heldout": 50, "rl_prompts": 50}
    with_demonstrators = make_splits(3, sizes)
    monkeypatch.setattr(splits, "demonstrate", lambda s, rng, scale=1.0: (s.response, []))
    without = make_splits(3, sizes)
    for split in sizes:
        assert [r["prompt"] for r in with_demonstrators[split]] == [r["prompt"] for r in without[split]], split


def test_scaled_rates_stop_at_one():
    rates = [float(line.split()[1]) for line in slip_table(3.0).splitlines()[1:]]
    assert len(rates) == len(HABITS) and max(rates) == 1.0 and min(rates) > 0
    assert all(float(line.split()[1]) == 0 for line in slip_table(0.0).splitlines()[1:])


def test_a_slip_that_cannot_be_built_is_not_reported(monkeypatch):
    """With no slipped answer to build, the demonstrator gets it right: the reference answer,
    no slip reported. Every slip the generated data draws can be built, so only this forced
    case reaches that branch."""
    def cannot(*args, **kwargs):
        raise Unsatisfiable("forced")
    rng = Random(5)
    prompts = [s for s in (sample(rng, "train") for _ in range(20)) if s.items][:5]
    monkeypatch.setattr(demonstrators, "build_response", cannot)
    assert prompts and all(demonstrate(s, Random(0), 10.0) == (s.response, []) for s in prompts)


def test_make_sft_reports_what_it_wrote(tmp_path):
    """Its printed figures count the written records: instructions besides the base task, and
    the demonstrations' own pass rate."""
    import json
    from data.make_sft import make_sft
    stats = make_sft(str(tmp_path), n_train=40, n_test=10, n_heldout=10, n_rl=5)
    for split in ("train", "test", "heldout", "rl_prompts"):
        records = [json.loads(line) for line in open(tmp_path / f"{split}.jsonl")]
        extra = Counter(sum(not i.startswith("task:") for i in r["instruction_id_list"]) for r in records)
        assert stats["n_instructions"][split] == dict(sorted(extra.items())) and stats["counts"][split] == len(records)
    test = [json.loads(line) for line in open(tmp_path / "test.jsonl")]
    assert stats["demo_pass_rate"]["test"] == demo_pass_rate(test)[0]
