"""plot.py without matplotlib: a table of each curve's first and last values."""
import json
import sys

import plot


def test_table_of_first_and_last_values_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib fails, installed or not
    (tmp_path / "sft").mkdir()
    (tmp_path / "ppo").mkdir()
    with open(tmp_path / "sft" / "metrics.jsonl", "w") as f:
        for step, loss in ((10, 2.5), (20, 1.75), (30, 1.25)):
            f.write(json.dumps({"step": step, "loss": loss, "lr": 1e-3}) + "\n")
        f.write(json.dumps({"step": 30, "val_loss": 1.5}) + "\n")
    with open(tmp_path / "ppo" / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"iteration": 0, "probe_gold": 0.7}) + "\n")   # the probe line: no curve of its own
        for it, rm, kl in ((1, -0.5, 0.0), (2, 0.25, 1.5)):
            f.write(json.dumps({"iteration": it, "rm_score": rm, "gold": 0.5 + rm, "kl": kl}) + "\n")
    plot.main([str(tmp_path)])
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  ")}
    assert rows["loss"][1:] == ["3", "points", "first", "2.5000", "last", "1.2500"]
    assert rows["val_loss"][1] == "1" and rows["rm_score"][-1] == "0.2500" and rows["kl"][-1] == "1.5000"
    assert "lr" not in rows and "probe_gold" not in rows
    assert out.index("ppo") < out.index("sft")   # one block per stage, in order
    assert "pip install matplotlib" in out
    assert not list(tmp_path.rglob("*.png"))
