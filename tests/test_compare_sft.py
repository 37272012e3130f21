"""bench/compare_sft.py: paired SFT runs over seeds, reused when finished, and the paired t-test."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import compare_sft  # noqa: E402
import train_pretrain  # noqa: E402
from data.make_sft import make_sft  # noqa: E402


def test_paired_summary_against_hand_computation():
    base = [{"test": 0.5, "heldout": 0.3}, {"test": 0.6, "heldout": 0.3}, {"test": 0.7, "heldout": 0.3}]
    # test: differences 0.1, 0.2, 0.0 -> mean 0.1, sd 0.1, se 0.1/sqrt(3) = 0.0577; t(2 df) = 4.30
    # -> 0.248 > 0.1: within the noise. heldout: 0.10, 0.11, 0.09 -> se 0.00577, 0.025 < 0.1: beyond it.
    changed = [{"test": 0.6, "heldout": 0.40}, {"test": 0.8, "heldout": 0.41}, {"test": 0.7, "heldout": 0.39}]
    s = compare_sft.paired_summary(base, changed)
    assert s["test"]["mean"] == pytest.approx(0.1) and s["test"]["se"] == pytest.approx(0.1 / 3 ** 0.5)
    assert not s["test"]["significant"]
    assert s["heldout"]["mean"] == pytest.approx(0.1) and s["heldout"]["significant"]
    assert compare_sft.arm_name("--learning_rate=3e-3 --max_steps=10") == "learning_rate=3e-3_max_steps=10"


def test_the_verdict_follows_the_paired_test(monkeypatch, capsys):
    """The scores of the hand computation above, as if trained: a change within the seed
    noise on test, beyond it on heldout, and the report says so for each."""
    planned = {"unchanged": [{"test": 0.5, "heldout": 0.3}, {"test": 0.6, "heldout": 0.3}, {"test": 0.7, "heldout": 0.3}],
               "lr": [{"test": 0.6, "heldout": 0.40}, {"test": 0.8, "heldout": 0.41}, {"test": 0.7, "heldout": 0.39}]}
    monkeypatch.setattr(compare_sft, "run_arm", lambda cfg, name, seed, flags: planned[name][seed - 1])
    compare_sft.main(["--seeds=1,2,3", "--change=--learning_rate=3e-3", "--name=lr"])
    out = capsys.readouterr().out
    assert "test: +10.0 +- 5.8 points (mean +- standard error): within the seed noise\n" in out
    assert "heldout: +10.0 +- 0.6 points (mean +- standard error): beyond the seed noise (95%)\n" in out
    # one seed: a difference, but no spread to judge it by, and no "+- nan"
    compare_sft.main(["--seeds=1", "--change=--learning_rate=3e-3", "--name=lr"])
    out = capsys.readouterr().out
    assert "test: +10.0 points; the paired t-test needs two seeds or more" in out and "nan" not in out


def test_compare_runs_both_arms_per_seed_and_reuses_them(corpus_dir, tmp_path, capsys):
    pre = str(tmp_path / "pretrain")
    train_pretrain.main(["--preset=micro", "--device=cpu", f"--data_dir={corpus_dir}", f"--out_dir={pre}"])
    data = str(tmp_path / "sft")
    make_sft(data, n_train=64, n_test=6, n_heldout=6, n_rl=0)
    args = ["--preset=micro", "--device=cpu", "--seeds=1,2", "--change=--optimizer=adamw --max_steps=4",
            f"--init_from={pre}/ckpt.pt", f"--data_dir={data}", "--examples=6", f"--out_dir={tmp_path / 'cmp'}"]
    result = compare_sft.main(args)
    arm = "optimizer=adamw_max_steps=4"
    assert result["seeds"] == [1, 2] and len(result["unchanged"]) == len(result[arm]) == 2
    diffs = [c["test"] - b["test"] for b, c in zip(result["unchanged"], result[arm])]
    assert result["difference"]["test"]["mean"] == pytest.approx(sum(diffs) / 2)
    # the change reached train_sft.py: the changed arm stopped after 4 steps, the baseline ran its
    # 20, and only the baseline saved the state of Muon + AdamW (minift.training.OptimizerPair)
    def ckpt(name, seed):
        return torch.load(tmp_path / "cmp" / f"{name}-seed{seed}" / "ckpt.pt", weights_only=True)
    assert ckpt(arm, 1)["step"] == 4 and ckpt("unchanged", 1)["step"] == 20
    assert "pair" not in ckpt(arm, 1)["optimizer"] and "pair" in ckpt("unchanged", 1)["optimizer"]
    out = capsys.readouterr().out
    for split, d in result["difference"].items():   # each split's line says what its paired test found
        verdict = "beyond the seed noise (95%)" if d["significant"] else "within the seed noise"
        assert f"{split}: {100 * d['mean']:+.1f} +- {100 * d['se']:.1f} points (mean +- standard error): {verdict}" in out
    # a second call trains nothing: all four runs are reused
    again = compare_sft.main(args)
    assert capsys.readouterr().out.count("reusing") == 4 and again["unchanged"] == result["unchanged"]
    # without a change, only the baseline: its scores, and no difference to judge
    alone = compare_sft.main([a for a in args if not a.startswith("--change")])
    out = capsys.readouterr().out
    assert alone == {"seeds": [1, 2], "unchanged": result["unchanged"]} and "difference" not in out
    # scores made with other settings are never mixed in silently
    with pytest.raises(SystemExit, match="Delete"):
        compare_sft.main([a if not a.startswith("--examples") else "--examples=3" for a in args])


def test_missing_inputs_stop_before_any_training_and_say_what_makes_them(tmp_path, monkeypatch):
    """The default --init_from is what pipeline.py writes (train_pretrain.py's own default is
    elsewhere), and the scored splits are read only after minutes of training: both checked first."""
    monkeypatch.setattr(compare_sft.train_sft, "main", lambda argv: pytest.fail("trained with an input missing"))
    data = tmp_path / "sft"
    data.mkdir()
    (data / "train.jsonl").write_text("")
    args = ["--device=cpu", "--seeds=1", f"--data_dir={data}", f"--out_dir={tmp_path / 'cmp'}"]
    with pytest.raises(SystemExit, match=r"no checkpoint at --init_from=.*nope\.pt; run python pipeline\.py first"):
        compare_sft.main(args + [f"--init_from={tmp_path / 'nope.pt'}"])
    (tmp_path / "ckpt.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"--data_dir=.*test\.jsonl; make it with data/make_sft\.py"):
        compare_sft.main(args + [f"--init_from={tmp_path / 'ckpt.pt'}"])
