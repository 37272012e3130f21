"""minift.config: presets and --key=value overrides, clear errors, and --help on every script."""
import glob
import os
import re
import runpy
import sys
from dataclasses import dataclass

import pytest

from conftest import ROOT
from minift.config import ConfigError, parse_config, run
from minift.training import Interrupted


@dataclass
class Cfg:
    learning_rate: float = 1e-3
    max_steps: int = 100
    compile: bool = False
    out_dir: str = "out"
    preset: str = "tiny"


PRESETS = {"tiny": {}, "big": {"max_steps": 1000, "learning_rate": 3e-4}}


def test_overrides_and_presets():
    cfg = parse_config(Cfg, ["--max_steps=5", "--compile", "--out_dir", "x"], PRESETS)
    assert (cfg.max_steps, cfg.compile, cfg.out_dir) == (5, True, "x")
    # the preset applies first even when written last, so explicit overrides win
    cfg = parse_config(Cfg, ["--learning_rate=0.1", "--preset=big"], PRESETS)
    assert (cfg.max_steps, cfg.learning_rate, cfg.preset) == (1000, 0.1, "big")
    assert parse_config(Cfg, ["--compile=false"], PRESETS).compile is False
    # bool words in any case, as a shell user types them
    assert [parse_config(Cfg, [f"--compile={word}"], PRESETS).compile
            for word in ("True", "OFF", "0", "yes")] == [True, False, False, True]


@pytest.mark.parametrize("argv, message", [
    (["--lerning_rate=1"], "Did you mean --learning_rate"),
    (["--max_steps=ten"], "--max_steps expects int, got 'ten'"),
    (["--compile=maybe"], "--compile expects bool"),
    (["--learning_rate=nan"], "--learning_rate expects a finite float, got 'nan'"),
    (["--preset=huge"], "unknown preset 'huge'"),
    (["max_steps=3"], "unexpected argument"),
])
def test_config_errors_are_clear(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(Cfg, argv, PRESETS, script="t.py")


def test_values_are_read_whole_and_the_last_of_an_option_wins():
    """A value keeps every "=" after the first, a "--key value" value may start with a minus
    (read as the value, so the range check names it), and an option or a preset given twice
    takes its last value: two presets are never mixed."""
    cfg = parse_config(Cfg, ["--out_dir=runs/lr=3e-4", "--learning_rate", "1e-4"], PRESETS)
    assert (cfg.out_dir, cfg.learning_rate) == ("runs/lr=3e-4", 1e-4)
    with pytest.raises(ConfigError, match="--max_steps=-5 is out of range"):
        parse_config(Cfg, ["--max_steps", "-5"], PRESETS)
    assert parse_config(Cfg, ["--max_steps=5", "--max_steps=7"], PRESETS).max_steps == 7
    cfg = parse_config(Cfg, ["--preset=big", "--preset=tiny"], PRESETS)
    assert (cfg.preset, cfg.max_steps, cfg.learning_rate) == ("tiny", 100, 1e-3)
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        parse_config(Cfg, ["--preset=huge", "--preset=big"], PRESETS)


@pytest.mark.parametrize("error, code, stderr", [
    (ValueError("data.jsonl, line 3: no messages"), "error: data.jsonl, line 3: no messages", ""),
    (NotADirectoryError(20, "Not a directory", "notes.txt/ckpt.pt"), "error: [Errno 20] Not a directory: "
                                                                      "'notes.txt/ckpt.pt'", ""),
    (PermissionError(13, "Permission denied", "/srv/out"), "error: [Errno 13] Permission denied: '/srv/out'", ""),
    (Interrupted("saved out/ckpt.pt at step 3 of 9; run the same command again to resume"), 130,
     "interrupted: saved out/ckpt.pt at step 3"),
    (KeyboardInterrupt(), 130, "interrupted by Ctrl-C"),
])
def test_run_ends_an_expected_failure_in_one_line(error, code, stderr, capsys):
    """A bad input or an unusable path ends in its one-line message; Ctrl-C in status 130, so
    that nothing downstream takes the run as finished."""
    def main():
        raise error
    with pytest.raises(SystemExit) as exit:
        run(main)
    assert exit.value.code == code
    assert capsys.readouterr().err.startswith(stderr)


def test_run_lets_rank_0_alone_say_a_run_was_interrupted_and_catches_a_late_ctrl_c(capsys, monkeypatch):
    """Under torchrun every process stops; the others' lines would repeat rank 0's. A Ctrl-C
    that lands after main() returns, during run()'s own clean-up, ends the same way."""
    def stopped():
        raise Interrupted("saved out/ckpt.pt at step 3 of 9")

    def ctrl_c():   # outside the training loop: loading, compiling
        raise KeyboardInterrupt
    for main in (stopped, ctrl_c):
        for rank, said in (("1", ""), ("0", "interrupted")):
            monkeypatch.setenv("RANK", rank)
            with pytest.raises(SystemExit) as exit:
                run(main)
            err = capsys.readouterr().err
            assert exit.value.code == 130 and (err.startswith(said) if said else err == "")
    monkeypatch.delenv("RANK")

    monkeypatch.setattr("minift.config.gc.collect", ctrl_c)
    with pytest.raises(SystemExit) as exit:
        run(lambda: None)
    assert exit.value.code == 130 and capsys.readouterr().err.startswith("interrupted by Ctrl-C")


def test_run_keeps_the_traceback_of_a_bug():
    def main():
        raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        run(main)



@dataclass
class Documented:
    steps: int = 10         # optimizer steps. Measured notes after the first sentence stay out.
    # a note above a field is not its help
    name: str = "x"
    verbose: bool = False   # print every step: a comment that
                            # runs on to a second line


def test_help_lists_options_with_defaults_comments_and_presets(capsys):
    with pytest.raises(SystemExit) as exit:
        parse_config(Documented, ["--steps=3", "--help"], {"fast": {"steps": 1}}, script="t.py")
    assert exit.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "usage: python t.py [--preset=NAME] [--key=value ...]"
    option = {line.split()[0]: " ".join(line.split()[1:]) for line in lines if line.startswith("  --")}
    assert option == {"--steps=10": "optimizer steps.", "--name=x": "",
                      "--verbose=False": "print every step: a comment that runs on to a second line"}
    assert "  fast    steps=1" in lines


SCRIPTS = sorted(path for pattern in ("*.py", "data/*.py", "bench/*.py") for path in glob.glob(pattern, root_dir=ROOT)
                 if '__name__ == "__main__"' in open(os.path.join(ROOT, path)).read())


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(script, monkeypatch, capsys):
    """`python SCRIPT --help` prints its usage and options and exits 0, before any work. Run
    in-process (runpy, as `python SCRIPT` would) to keep the suite quick."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as exit:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    assert exit.value.code in (0, None)
    out = capsys.readouterr().out
    assert "usage" in out.lower() or "python " + script in out, out[:500]


@pytest.mark.parametrize("script, shown", [
    ("data/make_sft.py", ["SFT demonstrations (default: 12000)", "0 = perfect (default: 1.0)"]),
    ("data/prepare.py", ["(default: 1337)", "folder of *.txt files (default:"]),
])
def test_the_data_scripts_help_shows_the_defaults(script, shown, monkeypatch, capsys):
    """They use argparse, whose plain --help hides defaults; an option whose default is None
    says in its help what happens then, not "(default: None)"."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit):
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    out = " ".join(capsys.readouterr().out.split())   # argparse wraps its lines
    assert all(s in out for s in shown) and "(default: None)" not in out, out


def test_help_of_a_training_script_names_its_presets(monkeypatch, capsys):
    import train_ppo
    with pytest.raises(SystemExit) as exit:
        train_ppo.main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0
    assert re.search(r"^  --kl_coef=0.05 +beta: N\+ and TRL use 0.05", out, re.M)
    assert re.search(r"^  micro +iterations=3 ", out, re.M) and re.search(r"^  tiny +the defaults above", out, re.M)
