"""bench/overoptimisation.py: the study's path through train_ppo.py on the micro pipeline's models."""
import csv
import os
import statistics
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import overoptimisation  # noqa: E402


def test_micro_study_writes_the_curve_and_skips_the_picture_without_matplotlib(micro_pipeline, tmp_path, monkeypatch,
                                                                                capsys):
    shared, _ = micro_pipeline
    out = tmp_path / "micro"
    out.mkdir()
    for stage in ("sft", "reward", "data"):   # the shared run's models, read only; the study writes beside them
        os.symlink(os.path.join(shared, stage), out / stage)
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib now fails, installed or not
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    overoptimisation.main(["--preset=micro", f"--out_dir={out}", "--device=cpu", "--kl_coefs=0,0.01"])
    with open(out / "overoptimisation.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == overoptimisation.COLUMNS
    # the probe before training and after each of the 2 iterations, for each coefficient
    assert [(r["kl_coef"], r["iteration"]) for r in rows] == [(c, i) for c in ("0.0", "0.01") for i in "012"]
    for r in rows:
        assert float(r["sqrt_kl"]) ** 2 == float(r["kl"]) or abs(float(r["sqrt_kl"]) ** 2 - float(r["kl"])) < 1e-3
        assert 0 <= float(r["gold"]) <= 1 and 0 <= float(r["test_prompt_strict"]) <= 1
    start = [r for r in rows if r["iteration"] == "0"]
    assert all(float(r["kl"]) == 0 and float(r["gold_change"]) == 0 for r in start)
    assert not os.path.exists(out / "overoptimisation.png")
    assert "pip install matplotlib" in capsys.readouterr().out


def test_paired_change_and_its_standard_error():
    mean, se = overoptimisation.paired_change([1.0, 0.5, 0.0, 0.5], [0.5, 0.5, 0.5, 0.5])
    # differences .5, 0, -.5, 0: mean 0, sample variance .5 / 3, se sqrt(.5 / 3 / 4)
    assert mean == 0 and abs(se - (0.5 / 3 / 4) ** 0.5) < 1e-12


def test_each_preset_runs_twice_ppos_iterations_at_ppos_learning_rate():
    import train_ppo
    from minift.config import parse_config
    for preset in ("tiny", "small"):
        ours = parse_config(overoptimisation.Config, [f"--preset={preset}"], overoptimisation.PRESETS)
        ppo = parse_config(train_ppo.Config, [f"--preset={preset}"], train_ppo.PRESETS)
        assert (ours.iterations, ours.learning_rate, ours.eval_examples) == \
            (2 * ppo.iterations, ppo.learning_rate, ppo.eval_examples), preset


def test_curve_rows_put_each_probe_at_its_own_policys_kl_and_measure_changes_from_the_start():
    """train_ppo.py's line for iteration i holds the KL of the rollout sampled before update i, and
    the probe after it: a probed policy's KL is the next line's (the last keeps its own). Changes
    are paired, from the first probe; the fall is from the gold peak to the last probe."""
    def probe(it, rm, gold, **more):
        return {"iteration": it, "probe_rm_each": rm, "probe_gold_each": gold, "probe_rm_score": sum(rm) / 3,
                "probe_gold": sum(gold) / 3, **more}
    metrics = [probe(0, [0, 0, 0], [0.5, 0.5, 0.5]),
               {"iteration": 1, "kl": -0.01},    # the SFT policy's own rollout: a batch estimate below 0
               probe(2, [1, 2, 3], [1.0, 0.5, 1.0], kl=1.0, eval_prompt_strict=0.5),
               {"iteration": 3, "kl": 4.0},
               probe(4, [3, 3, 3], [0.0, 0.5, 0.5], kl=9.0, eval_prompt_strict=0.4)]
    rows = overoptimisation.curve_rows(0.0, metrics, 0.45)
    assert [(r["iteration"], r["kl"], r["sqrt_kl"], r["test_prompt_strict"]) for r in rows] == [
        (0, 0.0, 0.0, 0.45), (2, 4.0, 2.0, 0.5), (4, 9.0, 3.0, 0.4)]
    start, peak, last = rows
    assert start["rm_change"] == start["gold_change"] == 0
    # each row's own scores, not the start's
    assert [r["rm_score"] for r in rows] == pytest.approx([0, 2, 3])
    assert [r["gold"] for r in rows] == pytest.approx([0.5, 2.5 / 3, 1 / 3])
    assert peak["rm_change"] == pytest.approx(2) and peak["rm_change_se"] == pytest.approx(1 / 3 ** 0.5)
    assert peak["gold_change"] == pytest.approx(1 / 3)
    assert peak["gold_change_se"] == pytest.approx(statistics.stdev([0.5, 0, 0.5]) / 3 ** 0.5)
    best, final, fall, se = overoptimisation.peak_and_fall(rows, metrics)
    assert (best["iteration"], final["iteration"]) == (2, 4)
    assert fall == pytest.approx(-0.5) and se == pytest.approx(statistics.stdev([-1, 0, -0.5]) / 3 ** 0.5)
