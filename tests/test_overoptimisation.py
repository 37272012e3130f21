"""bench/overoptimisation.py: the study's path through train_ppo.py on the micro pipeline's models."""
import csv
import os
import sys

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
