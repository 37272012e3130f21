"""plot.py: every stage's held-out curves, drawn from the names its script really logs; without
matplotlib, a table of each curve's first and last values."""
import json
import os
import subprocess
import sys
import types

import pytest

import plot
from conftest import ROOT

# Each stage's metrics.jsonl as its script writes it: the keys of a real tiny run's records
# (values shortened, the per-type and per-prompt lists cut down), a training record, then an
# evaluation record.
LOGGED = {
    "pretrain": [{"time": 1.0, "step": 10, "loss": 7.0, "lr": 5e-4, "grad_norm": 1.5, "tok_per_s": 15000.0},
                 {"time": 2.0, "step": 20, "loss": 5.5, "lr": 5e-4, "grad_norm": 1.25, "tok_per_s": 15000.0},
                 {"time": 3.0, "step": 20, "val_loss": 1.5}],
    "sft": [{"time": 1.0, "step": 10, "loss": 2.75, "lr": 7.5e-4, "grad_norm": 1.5},
            {"time": 2.0, "step": 10, "eval_prompt_strict": 0.34, "eval_instruction_strict": 0.6,
             "eval_prompt_loose": 0.36, "eval_instruction_loose": 0.616}],
    "reward": [{"time": 1.0, "step": 10, "loss": 1.0, "accuracy": 0.75, "lr": 1e-3, "grad_norm": 2.5},
               {"time": 2.0, "step": 10, "eval_train_loss": 1.0, "eval_train_accuracy": 0.75, "eval_val_loss": 0.5,
                "eval_val_accuracy": 0.78, "eval_val_accuracy_by_type": {"task:describe": 0.8},
                "eval_spearman": 0.67, "eval_spearman_within": 0.5, "eval_norm_mean": -4.0, "eval_norm_std": 1.75}],
    "dpo": [{"time": 1.0, "step": 10, "loss": 0.68, "accuracy": 0.6, "margin": 0.02, "chosen_reward": 0.01,
             "rejected_reward": -0.01, "lr": 1e-4, "grad_norm": 3.7},
            {"time": 2.0, "step": 10, "eval_train_loss": 0.58, "eval_train_accuracy": 0.77, "eval_val_loss": 0.62,
             "eval_val_accuracy": 0.7, "eval_val_margin": 0.22, "eval_val_chosen_reward": -0.2,
             "eval_val_rejected_reward": -0.43, "eval_val_accuracy_by_type": {"task:describe": 0.7}}],
    "ppo": [{"time": 1.0, "iteration": 0, "probe_gold": 0.7, "probe_gold_each": [0.5, 0.9], "probe_rm_score": 0.1,
             "probe_rm_each": [-0.5, 0.7]},   # the probe line: no curve of its own
            {"time": 2.0, "iteration": 1, "rm_score": -0.5, "gold": 0.0, "kl": 0.0, "length": 26.0, "end_rate": 1.0,
             "ratio": 1.0, "approx_kl": 0.03, "clipfrac": 0.1, "entropy": 0.33, "pg_loss": -0.04, "vf_loss": 0.2,
             "first_ratio": 1.0, "kl_coef": 0.05},
            {"time": 3.0, "iteration": 2, "rm_score": 0.25, "gold": 0.75, "kl": 1.5, "length": 35.5, "end_rate": 0.97,
             "ratio": 0.99, "approx_kl": 0.02, "clipfrac": 0.05, "entropy": 0.29, "pg_loss": 0.0, "vf_loss": 0.19,
             "first_ratio": 1.0, "kl_coef": 0.05, "eval_prompt_strict": 0.58, "probe_gold": 0.76,
             "probe_gold_each": [0.6, 0.9], "probe_rm_score": 0.3, "probe_rm_each": [-0.3, 0.9]}],
}
# The curves each stage must draw: its training loss (or, for RL, its rewards) and its held-out figures.
EXPECTED = {"pretrain": {"loss", "val_loss"}, "sft": {"loss", "eval_prompt_strict"},
            "reward": {"loss", "accuracy", "eval_val_loss", "eval_val_accuracy", "eval_spearman"},
            "dpo": {"loss", "accuracy", "eval_val_loss", "eval_val_accuracy"},
            "ppo": {"rm_score", "gold", "kl", "eval_prompt_strict"}}


def test_a_whole_number_in_a_log_is_a_point_too():
    assert plot.curves([{"step": 1, "loss": 3}, {"step": 2, "loss": 2.5}])["loss"] == [(1, 3), (2, 2.5)]


@pytest.mark.parametrize("stage", list(LOGGED))
def test_each_stage_draws_its_held_out_curves(stage):
    found = plot.curves(LOGGED[stage])
    assert set(found) == EXPECTED[stage]
    held_out = LOGGED[stage][-1]   # an evaluation: one point, at its step or iteration
    for name in EXPECTED[stage] & held_out.keys():
        assert found[name][-1] == (held_out.get("step", held_out.get("iteration")), held_out[name])


def test_table_of_first_and_last_values_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib fails, installed or not
    for stage, records in LOGGED.items():
        (tmp_path / stage).mkdir()
        with open(tmp_path / stage / "metrics.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    plot.main([str(tmp_path)])
    out = capsys.readouterr().out
    blocks = {}   # stage -> {curve: its row's words}, one block per metrics.jsonl
    for line in out.splitlines():
        if line.endswith("metrics.jsonl"):
            stage = line.split("/")[-2]
            blocks[stage] = {}
        elif line.startswith("  "):
            blocks[stage][line.split()[0]] = line.split()
    assert list(blocks) == sorted(LOGGED)   # in order
    assert {stage: set(rows) for stage, rows in blocks.items()} == EXPECTED
    assert blocks["pretrain"]["loss"][1:] == ["2", "points", "first", "7.0000", "last", "5.5000"]
    assert blocks["sft"]["eval_prompt_strict"][-1] == "0.3400" and blocks["ppo"]["kl"][-1] == "1.5000"
    assert "pip install matplotlib" in out
    assert not list(tmp_path.rglob("*.png"))


def test_a_malformed_metrics_file_ends_in_one_line(tmp_path):
    """As a process, through minift.config.run: the file and line, no traceback (a run killed
    mid-write can leave a half line)."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps(LOGGED["sft"][0]) + "\n" + '{"step": 20, "loss": 2.\n')
    r = subprocess.run([sys.executable, "plot.py", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {path} line 2: invalid JSON")


def test_a_file_not_named_metrics_jsonl_is_refused_and_out_dir_is_understood(tmp_path, monkeypatch, capsys):
    """report.json beside the metrics would read as a malformed log: it is refused by name. And
    `--out_dir=`, as every other script spells a run's folder, finds its metrics too."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    (tmp_path / "report.json").write_text("{\n}\n")
    with pytest.raises(SystemExit, match="report.json is not a metrics.jsonl"):
        plot.main([str(tmp_path / "report.json")])
    (tmp_path / "ppo").mkdir()
    (tmp_path / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LOGGED["ppo"]))
    plot.main([f"--out_dir={tmp_path}"])
    assert f"{tmp_path}/ppo/metrics.jsonl" in capsys.readouterr().out


def test_what_plot_says_with_nothing_to_draw(tmp_path, monkeypatch, capsys):
    """No path: its usage. A folder without metrics: what to pass. A log without a curve it
    knows: that line, and no picture or table."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match="plot.py takes one path; usage: python plot.py OUT_DIR"):
        plot.main([])
    with pytest.raises(SystemExit, match=f"no metrics.jsonl under {tmp_path}; pass a run's out_dir"):
        plot.main([str(tmp_path)])
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 10, "lr": 1e-3}) + "\n")
    plot.main([str(tmp_path)])
    assert capsys.readouterr().out.splitlines()[0] == f"{tmp_path}/metrics.jsonl: no curves to draw"
    with pytest.raises(SystemExit) as stopped:
        plot.main(["--help"])
    assert stopped.value.code == 0 and capsys.readouterr().out.startswith("Training curves from metrics.jsonl files.")


def test_with_matplotlib_each_metrics_jsonl_gets_its_curves_png_beside_it(tmp_path, monkeypatch, capsys):
    """Through a stand-in matplotlib (CI installs none) that records each panel's title and
    points and writes each figure saved: one panel per curve, and no advice to install it."""
    drawn = {}   # png -> {panel title: (xs, ys)}

    class Axes:
        def plot(self, xs, ys, *style, **kwargs):
            self.points = (list(xs), list(ys))

        def set_title(self, title):
            self.title = title

        def set_xlabel(self, label):
            pass

    class Figure:
        def __init__(self, panels):
            self.axes = [Axes() for _ in range(panels)]

        def suptitle(self, title):
            pass

        def tight_layout(self):
            pass

        def savefig(self, png, dpi):
            drawn[png] = {ax.title: ax.points for ax in self.axes}
            open(png, "wb").close()

    def subplots(rows, panels, **kwargs):
        fig = Figure(panels)
        return fig, [fig.axes]
    pyplot = types.SimpleNamespace(subplots=subplots, close=lambda fig: None)
    monkeypatch.setitem(sys.modules, "matplotlib", types.SimpleNamespace(use=lambda backend: None, pyplot=pyplot))
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    monkeypatch.chdir(tmp_path)   # a picture written anywhere but beside its log lands here, not in the repo
    for stage in ("pretrain", "ppo"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LOGGED[stage]))
    plot.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert sorted(drawn) == [f"{tmp_path}/{stage}/curves.png" for stage in ("ppo", "pretrain")]
    for stage in ("pretrain", "ppo"):
        png = f"{tmp_path}/{stage}/curves.png"
        found = plot.curves(LOGGED[stage])
        assert drawn[png] == {name: tuple(map(list, zip(*points))) for name, points in found.items()}
        assert f"wrote {png}" in out and os.path.exists(png)
    assert "pip install matplotlib" not in out and not (tmp_path / "curves.png").exists()
