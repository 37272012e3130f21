"""Every bad input ends with one line that names the file or option, a non-zero exit and no
traceback, and leaves earlier good outputs (checkpoints, responses, stage markers) as they were.
Most cases call a script's main() in-process through minift.config.run, as `python script.py`
does; a traceback there is an exception this test does not catch, so it fails."""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import evaluate
import pipeline
import sample
import train_dpo
import train_grpo
import train_ppo
import train_pretrain
import train_reward
import train_sft
from conftest import ROOT, read_metrics, stop_after
from data import make_preferences, make_sft, prepare
from minift.checkpoint import build_model, load_checkpoint, save_checkpoint, save_training_checkpoint, tokenizer_for
from minift.config import run
from minift.formats import write_jsonl
from minift.model import GPTConfig, ScalarModel, answer_positions
from minift.tokenizer import load_ranks, load_tokenizer, save_ranks
from minift.training import Interrupted

MICRO = ["--preset=micro", "--device=cpu"]


def fails(main, argv, *needles):
    """Run main(argv) as a script's entry point does; it must exit non-zero with one line
    that contains every needle. Returns the line."""
    with pytest.raises(SystemExit) as e:
        run(lambda: main(argv))
    code = e.value.code
    assert code not in (0, None)
    line = str(code).strip()
    assert len(line.splitlines()) == 1 and line.startswith("error: "), line
    for needle in needles:
        assert needle in line, line
    return line


def digest(*paths):
    """A fingerprint of files (and the files under folders), to show that nothing changed."""
    out = {}
    for p in paths:
        files = [os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs] if os.path.isdir(p) else [p]
        for f in sorted(files):
            with open(f, "rb") as fh:
                out[f] = hashlib.sha256(fh.read()).hexdigest()
    return out


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def kit(corpus_dir, tmp_path_factory):
    """A two-step micro pretraining run, and checkpoints of each kind made from it (their
    weights do not matter here), plus small data files in the good and the bad formats."""
    d = tmp_path_factory.mktemp("kit")
    pre = str(d / "pretrain")
    train_pretrain.main(MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={pre}", "--max_steps=2",
                                 "--eval_interval=2"])
    ckpt = load_checkpoint(os.path.join(pre, "ckpt.pt"))
    paths = {"pretrain": os.path.join(pre, "ckpt.pt")}
    for kind in ("sft", "ppo"):
        paths[kind] = str(d / f"{kind}.pt")
        save_checkpoint(paths[kind], {**ckpt, "kind": kind})
    rm = ScalarModel(GPTConfig(**ckpt["model_config"]))
    rm.gpt.load_state_dict(ckpt["model"])
    paths["reward"] = str(d / "reward.pt")
    save_training_checkpoint(paths["reward"], "reward", 1, rm, None, train_reward.Config(), ckpt["tokenizer"],
                             torch.Generator(), {})
    other = load_checkpoint(paths["reward"])
    other["tokenizer"] = {**other["tokenizer"], "sha256": "0" * 64}
    paths["reward_other_tokenizer"] = str(d / "reward_other.pt")
    save_checkpoint(paths["reward_other_tokenizer"], other)
    with open(paths["pretrain"], "rb") as f:
        whole = f.read()
    for name, data in (("truncated", whole[:len(whole) // 2]), ("empty", b""), ("text", b"hello, not a model\n"),
                       ("jsonl", b'{"prompt": "a data file passed as a checkpoint"}\n')):
        paths[name] = str(d / f"{name}.pt")
        with open(paths[name], "wb") as f:
            f.write(data)
    paths["foreign"] = str(d / "foreign.pt")
    torch.save({"weights": torch.zeros(3)}, paths["foreign"])

    record = {"key": 1, "prompt": "Describe a cat. Do not use any capital letters.",
              "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}],
              "messages": [{"role": "user", "content": "Describe a cat. Do not use any capital letters."},
                           {"role": "assistant", "content": "the cat is soft."}]}
    paths["sft_data"] = str(d / "sft.jsonl")
    write_jsonl(paths["sft_data"], [{**record, "key": i} for i in range(16)])
    paths["alpaca"] = str(d / "alpaca.json")
    with open(paths["alpaca"], "w") as f:
        json.dump([{"instruction": "Name a pet.", "input": "", "output": "A cat."}] * 4, f)
    paths["long_sft"] = str(d / "long.jsonl")
    write_jsonl(paths["long_sft"], [{"messages": [{"role": "user", "content": "cat " * 400},
                                                  {"role": "assistant", "content": "ok"}]}] * 3)
    paths["latin1"] = str(d / "latin1.txt")
    with open(paths["latin1"], "wb") as f:
        f.write("Le garçon mangea une pomme.\n\nUne crème brûlée.\n".encode("latin-1"))
    paths["binary"] = str(d / "binary.bin.txt")
    with open(paths["binary"], "wb") as f:
        f.write(bytes(range(256)) * 8)
    paths["empty_txt"] = str(d / "empty.txt")
    open(paths["empty_txt"], "w").close()
    return paths


# ---------------------------------------------------------------------------- data/prepare.py
@pytest.mark.parametrize("args, needles", [
    (["--input=/nonexistent/story.txt"], ["/nonexistent/story.txt", "does not exist"]),
    (["--vocab_size=100"], ["--vocab_size=100", "256"]),
    (["--vocab_size=65532"], ["--vocab_size=65532", "65531", "5 special tokens"]),   # 65537 ids: not uint16
    (["--size_mb=-1"], ["--size_mb=-1"]),
    (["--formatted_share=2"], ["--formatted_share=2"]),
])
def test_prepare_bad_options(tmp_path, args, needles):
    fails(prepare.main, [f"--out_dir={tmp_path}/c"] + args, *needles)
    assert not os.path.exists(tmp_path / "c" / "meta.json")


@pytest.mark.parametrize("name, needles", [
    ("empty_txt", ["no text found"]),
    ("latin1", ["latin1.txt", "not UTF-8"]),
    ("binary", ["binary.bin.txt", "looks binary"]),
])
def test_prepare_refuses_files_that_are_not_text(kit, tmp_path, name, needles):
    fails(prepare.main, [f"--out_dir={tmp_path}/c", f"--input={kit[name]}"], *needles)


def test_prepare_refuses_a_tokenizer_it_cannot_use(tmp_path):
    """Too many tokens for the uint16 token files is a one-line error, not an assert (a traceback;
    under python -O, wrapped ids); a file that is not a rank file is named too, and nothing is written."""
    big = {bytes([i]): i for i in range(256)}
    big.update((bytes([a, b]), 256 + 256 * a + b) for a in range(256) for b in range(256))
    save_ranks(str(tmp_path / "big.tiktoken"), big)
    (tmp_path / "notes.tiktoken").write_text("my tokenizer notes\n")
    for name, needles in (("big.tiktoken", ["--tokenizer", "65797 tokens", "uint16", "leave out --tokenizer"]),
                          ("notes.tiktoken", ["rank file", "line 1"])):
        fails(prepare.main, [f"--out_dir={tmp_path}/c", "--size_mb=0.01", f"--tokenizer={tmp_path}/{name}"],
              f"{tmp_path}/{name}", *needles)
        assert os.listdir(tmp_path / "c") == []


def test_prepare_script_answers_in_one_line(tmp_path):
    """As a process: the message and exit status of `python data/prepare.py`, no traceback."""
    r = subprocess.run([sys.executable, "data/prepare.py", f"--out_dir={tmp_path}", "--input=/nonexistent.txt"],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: --input '/nonexistent.txt' does not exist"


def test_ctrl_c_while_tokenizing_keeps_the_previous_corpus(corpus_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C mid-way: one line, status 130, and the corpus there before, with its tokenizer, whole
    (and no half-made token file or new tokenizer beside it)."""
    import tiktoken
    out = str(tmp_path / "corpus")
    shutil.copytree(corpus_dir, out)
    before = digest(out)

    def interrupted(self, text):
        raise KeyboardInterrupt
    monkeypatch.setattr(tiktoken.Encoding, "encode_ordinary", interrupted)
    with pytest.raises(SystemExit) as e:
        run(lambda: prepare.main([f"--out_dir={out}", "--size_mb=0.05", "--vocab_size=300"]))
    assert e.value.code == 130 and capsys.readouterr().err.strip().startswith("interrupted by Ctrl-C")
    assert digest(out) == before


def test_make_sft_bad_count(tmp_path):
    fails(make_sft.main, [f"--out_dir={tmp_path}", "--n_train=0"], "--n_train=0")


def test_a_bad_slip_scale_stops_before_any_data(tmp_path):
    """A negative scale once gave perfect demonstrations recorded as slip scale -1, and nan
    every rate 1: the script and the pipeline (which calls make_sft itself) refuse both."""
    for scale in ("-1", "nan", "inf"):
        fails(make_sft.main, [f"--out_dir={tmp_path}/sft", f"--slip_scale={scale}"], f"--slip_scale={float(scale)}")
    fails(pipeline.main, ["--preset=micro", "--slip_scale=-1", f"--out_dir={tmp_path}/run"], "--slip_scale=-1.0",
          "0 or more")
    assert not os.path.exists(tmp_path / "sft") and not os.path.exists(tmp_path / "run")


# ---------------------------------------------------------------------------- train_pretrain.py
@pytest.mark.parametrize("args, needles", [
    (["--max_steps=0"], ["--max_steps=0", "at least 1"]),
    (["--batch_size=0"], ["--batch_size=0"]),
    (["--n_head=3"], ["--n_head=3", "--n_embd=32"]),
    (["--dtype=fp16"], ["--dtype=fp16 is not a choice", "bfloat16, float32"]),
    (["--device=gpu"], ["--device=gpu is not a device", "cuda:N"]),
    (["--optimizer=sgd"], ["--optimizer=sgd"]),
    (["--learning_rate=-1"], ["--learning_rate=-1"]),
    (["--dropout=1.5"], ["--dropout=1.5"]),
    (["--eval_interval=0"], ["--eval_interval=0"]),
    (["--data_dir=/nonexistent"], ["/nonexistent/train.bin", "prepare.py"]),
    (["--block_size=100000"], ["val.bin", "--block_size=100000"]),
])
def test_pretrain_bad_options(corpus_dir, tmp_path, args, needles):
    fails(train_pretrain.main, MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={tmp_path}/p"] + args, *needles)
    assert not os.path.exists(tmp_path / "p" / "ckpt.pt")


def test_an_out_dir_that_is_a_file_stops_before_any_work(corpus_dir, tmp_path):
    """Not a traceback at the first save (or, with --force, at removing the old log)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for start_over in ([], ["--force"]):
        fails(train_pretrain.main, MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={notes}"] + start_over,
              f"--out_dir={notes} is a file, not a folder")
    fails(prepare.main, [f"--input={notes}", f"--out_dir={notes}"], f"--out_dir={notes} is a file, not a folder")
    assert notes.read_text() == "mine"
    # the text file where its prepared folder belongs: the command that prepares it
    fails(train_pretrain.main, MICRO + [f"--data_dir={notes}", f"--out_dir={tmp_path}/p"],
          f"--data_dir={notes} is a file", f"python data/prepare.py --input {notes} --out_dir data/generated/notes")


@pytest.mark.parametrize("meta", ["", "{}"])
def test_pretrain_names_a_broken_meta_json(corpus_dir, tmp_path, meta):
    data = tmp_path / "data"
    shutil.copytree(corpus_dir, data)
    (data / "meta.json").write_text(meta)
    fails(train_pretrain.main, MICRO + [f"--data_dir={data}", f"--out_dir={tmp_path}/p"],
          str(data / "meta.json"), "re-run data/prepare.py")


@pytest.fixture
def finished_pretrain(kit, tmp_path):
    """A copy of the kit's finished pretraining run (max_steps=2), to re-run in."""
    out = str(tmp_path / "pre")
    shutil.copytree(os.path.dirname(kit["pretrain"]), out)
    return out


def test_rerun_with_new_settings_stops_and_says_how_to_go_on(corpus_dir, finished_pretrain):
    args = MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={finished_pretrain}", "--max_steps=2",
                    "--eval_interval=2"]
    before = digest(finished_pretrain)
    line = fails(train_pretrain.main, args + ["--learning_rate=1e-3"], finished_pretrain, "--learning_rate=0.001",
                 "--force", "--out_dir")
    assert "(it has 0.006)" in line
    assert digest(finished_pretrain) == before
    # --force starts over: a new run with the new setting, and a log of the new run alone
    train_pretrain.main(args + ["--learning_rate=1e-3", "--force"])
    ckpt = load_checkpoint(os.path.join(finished_pretrain, "ckpt.pt"))
    assert ckpt["config"]["learning_rate"] == 1e-3 and ckpt["step"] == 2
    assert [m["step"] for m in read_metrics(finished_pretrain) if "loss" in m] == [1, 2]


@pytest.mark.parametrize("name, needles", [
    ("truncated", ["not a readable checkpoint"]),
    ("empty", ["not a readable checkpoint"]),
    ("sft", ["is a sft checkpoint; expected pretrain"]),
])
def test_resume_refuses_a_bad_checkpoint_and_keeps_it(kit, corpus_dir, finished_pretrain, name, needles):
    ckpt = os.path.join(finished_pretrain, "ckpt.pt")
    shutil.copyfile(kit[name], ckpt)
    before = digest(ckpt)
    fails(train_pretrain.main, MICRO + [f"--data_dir={corpus_dir}", f"--out_dir={finished_pretrain}",
                                        "--max_steps=2", "--eval_interval=2"], ckpt, *needles)
    assert digest(ckpt) == before


def test_resume_with_another_tokenizer_of_the_same_size_stops(corpus_dir, tmp_path):
    """data/prepare.py re-run with other settings but the same --vocab_size: a resumed run would
    go on with other token ids (loss 1.1 -> 9.1) and overwrite the checkpoint's record."""
    data, out = str(tmp_path / "corpus"), str(tmp_path / "pre")
    shutil.copytree(corpus_dir, data)
    tokenizer, meta_path = os.path.join(data, "tokenizer.tiktoken"), os.path.join(data, "meta.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["tokenizer"] = tokenizer   # the copy's own tokenizer file
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    args = MICRO + [f"--data_dir={data}", f"--out_dir={out}", "--max_steps=1", "--eval_interval=1",
                    "--eval_batches=1"]
    train_pretrain.main(args)
    ranks = load_ranks(tokenizer)
    a, b = bytes([1]), bytes([2])
    ranks[a], ranks[b] = ranks[b], ranks[a]     # same size, another id mapping
    save_ranks(tokenizer, ranks)
    meta["tokenizer_sha256"] = load_tokenizer(tokenizer).identity["sha256"]
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    before = digest(out)
    fails(train_pretrain.main, args, os.path.join(out, "ckpt.pt"), "another tokenizer")
    assert digest(out) == before
    # ... and token files whose meta.json names another tokenizer are refused too
    meta["tokenizer_sha256"] = "0" * 64
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    fails(train_pretrain.main, args + ["--force"], "tokenizer.tiktoken", "re-run data/prepare.py")


# ---------------------------------------------------------------------------- checkpoints as inputs
@pytest.mark.parametrize("main, option, name, needles", [
    (train_sft.main, "init_from", "reward", ["is a reward checkpoint; expected pretrain or sft"]),
    (train_sft.main, "init_from", "foreign", ["is not a minift checkpoint"]),
    (train_sft.main, "init_from", "text", ["is not a readable checkpoint"]),
    (train_sft.main, "init_from", "truncated", ["is not a readable checkpoint"]),
    (train_sft.main, "init_from", "jsonl", ["is not a readable checkpoint (not a zip archive"]),
    (train_reward.main, "init_from", "reward", ["is a reward checkpoint"]),
    (train_dpo.main, "init_from", "reward", ["is a reward checkpoint"]),
    (train_ppo.main, "reward_ckpt", "pretrain", ["is a pretrain checkpoint; expected reward"]),
    (train_ppo.main, "reward_ckpt", "sft", ["is a sft checkpoint; expected reward"]),
    (train_ppo.main, "reward_ckpt", "reward_other_tokenizer", ["another tokenizer", "sft.pt"]),
    (train_ppo.main, "sft_ckpt", "reward", ["is a reward checkpoint"]),
    (make_preferences.main, "sft_ckpt", "reward", ["is a reward checkpoint"]),
])
def test_scripts_check_the_kind_of_checkpoint(kit, tmp_path, main, option, name, needles):
    args = {"init_from": kit["pretrain"], "data": kit["sft_data"], "eval_data": "", "sft_ckpt": kit["sft"],
            "reward_ckpt": kit["reward"], "prompts": kit["sft_data"], "out_dir": tmp_path / "out", option: kit[name]}
    keep = {train_sft.main: ("init_from", "data", "eval_data"), train_reward.main: ("init_from",),
            train_dpo.main: ("init_from",),
            train_ppo.main: ("sft_ckpt", "reward_ckpt", "prompts", "eval_data"),
            make_preferences.main: ("sft_ckpt", "prompts")}[main]
    argv = MICRO + [f"--{k}={args[k]}" for k in keep + ("out_dir",)]
    # a refusal of the checkpoint itself names the option that gave it (PPO reads two)
    named = [f"(--{option})"] if any("checkpoint" in needle for needle in needles) else []
    fails(main, argv, kit[name], *needles, *named)
    assert not os.path.exists(tmp_path / "out" / "ckpt.pt")


@pytest.mark.parametrize("main, option, stop_at", [
    (train_ppo.main, "sft_ckpt", "prompts"), (train_grpo.main, "sft_ckpt", "prompts"),
    (train_reward.main, "init_from", "data"), (train_dpo.main, "init_from", "data"),
    (make_preferences.main, "sft_ckpt", "prompts")])
def test_a_pretrained_model_where_sft_belongs_runs_with_a_note(kit, tmp_path, capsys, main, option, stop_at):
    """Allowed (RL from the base model is an experiment), but named: the model never saw the
    chat template. A missing data file stops each script right after the note."""
    reward = [f"--reward_ckpt={kit['reward']}"] if main is train_ppo.main else []
    for start, noted in (("pretrain", True), ("sft", False)):
        fails(main, MICRO + reward + [f"--{option}={kit[start]}", f"--{stop_at}={tmp_path}/none.jsonl",
                                      f"--out_dir={tmp_path}/out"], "none.jsonl")
        out = capsys.readouterr().out
        assert (f"note: --{option}={kit[start]} is a pretrained model" in out) == noted and out.count("note:") == noted


def test_missing_checkpoint_says_what_to_run_first(tmp_path):
    fails(train_sft.main, MICRO + [f"--init_from={tmp_path}/none.pt", f"--out_dir={tmp_path}"],
          f"{tmp_path}/none.pt", "python train_pretrain.py")
    fails(train_dpo.main, MICRO + [f"--init_from={tmp_path}/none.pt", f"--out_dir={tmp_path}"],
          f"{tmp_path}/none.pt", "python train_sft.py", "python pipeline.py writes, out/tiny/sft/ckpt.pt")
    # evaluate.py looks for --split's data beside the checkpoint: the checkpoint's own fault first
    (tmp_path / "run" / "sft").mkdir(parents=True)
    (tmp_path / "run" / "pipeline.json").write_text("{}")
    fails(evaluate.main, [f"--ckpt={tmp_path}/run/sft"], "is a folder", f"{tmp_path}/run/sft/ckpt.pt")
    fails(evaluate.main, [f"--ckpt={tmp_path}/run/sft/none.pt"], "no checkpoint at", "python pipeline.py")


# ---------------------------------------------------------------------------- train_sft.py data
@pytest.mark.parametrize("data, eval_data, needles", [
    ("sft_data", "alpaca", ["alpaca.json", '"key"', "--eval_data="]),
    ("sft_data", "/nonexistent/test.jsonl", ["--eval_data=/nonexistent/test.jsonl", "make_sft.py"]),
    ("/nonexistent/train.jsonl", "", ["--data=/nonexistent/train.jsonl", "make_sft.py"]),
    ("long_sft", "", ["all 3 conversations", "long.jsonl", "longer than the model's context"]),
    ("latin1", "", ["latin1.txt", "not UTF-8"]),
    ("binary", "", ["binary.bin.txt"]),
])
def test_sft_checks_its_data_before_training(kit, tmp_path, data, eval_data, needles):
    """An Alpaca file as --eval_data used to train until the first evaluation and die there."""
    eval_path = kit.get(eval_data, eval_data)
    fails(train_sft.main, MICRO + [f"--init_from={kit['pretrain']}", f"--data={kit.get(data, data)}",
                                   f"--eval_data={eval_path}", f"--out_dir={tmp_path}/sft"], *needles)
    assert not os.path.exists(tmp_path / "sft" / "metrics.jsonl")


def test_sft_checks_its_eval_data_checker_arguments_before_training(kit, tmp_path):
    """A count given as a string stops SFT before its first step, not at its first evaluation
    with a TypeError."""
    bad = tmp_path / "eval.jsonl"
    bad.write_text(json.dumps({"key": 1, "prompt": "Describe a cat.", "kwargs": [{"num_highlights": "2"}],
                               "instruction_id_list": ["detectable_format:number_highlighted_sections"]}) + "\n")
    fails(train_sft.main, MICRO + [f"--init_from={kit['pretrain']}", f"--data={kit['sft_data']}",
                                   f"--eval_data={bad}", f"--out_dir={tmp_path}/sft"],
          str(bad), '"kwargs"[0]["num_highlights"] is "2"', "a whole number")
    assert not os.path.exists(tmp_path / "sft" / "metrics.jsonl")


@pytest.mark.parametrize("main, option", [(train_reward.main, "data"), (train_reward.main, "val_data"),
                                          (train_dpo.main, "data"), (train_dpo.main, "val_data")])
def test_pair_trainers_name_a_missing_pairs_file(kit, tmp_path, main, option):
    files = {"data": kit["sft_data"], "val_data": "", option: "/nonexistent/pairs.jsonl"}
    fails(main, MICRO + [f"--init_from={kit['sft']}", f"--out_dir={tmp_path}/out"]
          + [f"--{k}={v}" for k, v in files.items()], f"--{option}=/nonexistent/pairs.jsonl", "make_preferences.py")


@pytest.mark.parametrize("main", [train_ppo.main, train_grpo.main])
@pytest.mark.parametrize("option, bad, needles", [
    ("prompts", "/nonexistent/rl_prompts.jsonl", ["--prompts=/nonexistent/rl_prompts.jsonl", "make_sft.py"]),
    ("eval_data", "/nonexistent/test.jsonl", ["--eval_data=/nonexistent/test.jsonl", "--eval_data= trains"]),
    ("eval_data", "alpaca", ["alpaca.json", '"key"', "--eval_data takes IFEval records"]),
])
def test_rl_scripts_check_their_prompt_files(kit, tmp_path, main, option, bad, needles):
    """Each option is named: a bare "No such file" does not say which of the two files it was."""
    files = {"prompts": kit["sft_data"], "eval_data": kit["sft_data"], option: kit.get(bad, bad)}
    fails(main, MICRO + [f"--sft_ckpt={kit['sft']}", f"--reward_ckpt={kit['reward']}", f"--out_dir={tmp_path}/rl"]
          + [f"--{k}={v}" for k, v in files.items()], *needles)
    assert not os.path.exists(tmp_path / "rl" / "metrics.jsonl")



@pytest.mark.parametrize("option, value, needles", [
    ("prompts", "/nonexistent/rl_prompts.jsonl", ["--prompts=/nonexistent/rl_prompts.jsonl", "make_sft.py"]),
    ("prompts", "alpaca", ["alpaca.json", '"key"', "--prompts takes IFEval records"]),
    ("prompts", "bad_kwargs", ["bad_kwargs.jsonl", "length_constraints:number_words"]),
    ("k", 1, ["--k=1", "no pairs"]),
    ("num_prompts", 1, ["--val_fraction=0.4", "all 1 prompts", "train.jsonl"]),
])
def test_make_preferences_refuses_what_would_give_no_pairs(kit, tmp_path, option, value, needles):
    """Each is named before any answer is sampled, not met as an empty file by train_reward.py."""
    bad = str(tmp_path / "bad_kwargs.jsonl")
    write_jsonl(bad, [{"key": 1, "prompt": "Describe a cat.", "instruction_id_list": ["length_constraints:number_words"],
                       "kwargs": [{"relation": "at least"}]}])
    files = {"alpaca": kit["alpaca"], "bad_kwargs": bad}
    args = {"sft_ckpt": kit["sft"], "prompts": kit["sft_data"], "out_dir": tmp_path / "prefs",
            option: files.get(value, value)}
    fails(make_preferences.main, MICRO + [f"--{k}={v}" for k, v in args.items()], *needles)
    assert not os.path.exists(tmp_path / "prefs")

@pytest.mark.parametrize("main, args, needles", [
    (train_sft.main, ["--learning_rate=-0.1"], ["--learning_rate=-0.1"]),
    (train_reward.main, ["--batch_groups=0"], ["--batch_groups=0"]),
    (train_reward.main, ["--val_fraction=1"], ["--val_fraction=1", "(not 1 itself)"]),
    (train_ppo.main, ["--temperature=0"], ["--temperature=0"]),
    (train_sft.main, ["--dtype=float16"], ["--dtype=float16", "bfloat16, float32"]),   # no loss scaler
    (train_ppo.main, ["--rollout_batch=6", "--samples_per_prompt=4"], ["--rollout_batch=6"]),
    (train_ppo.main, ["--reward=human"], ["--reward=human", "model, gold"]),
    (train_ppo.main, ["--gamma=1.5"], ["--gamma=1.5"]),
    (train_ppo.main, ["--kl_coef=-0.1"], ["--kl_coef=-0.1", "0 or more"]),   # a negative penalty pays for drift
    (train_dpo.main, ["--beta=0"], ["--beta=0"]),
    (train_dpo.main, ["--loss_type=hinge"], ["--loss_type=hinge", "sigmoid, ipo"]),
    (train_dpo.main, ["--label_smoothing=0.5"], ["--label_smoothing=0.5"]),
    (evaluate.main, ["--max_examples=-495"], ["--max_examples=-495"]),
    (evaluate.main, ["--samples=-1"], ["--samples=-1"]),
    (sample.main, ["--temperature=-1"], ["--temperature=-1"]),
    (sample.main, ["--top_p=0"], ["--top_p=0", "(not 0 itself)"]),
    (pipeline.main, ["--preset=huge"], ["huge"]),
])
def test_option_ranges(tmp_path, main, args, needles):
    fails(main, args + [f"--out_dir={tmp_path}"] if main is not sample.main else args, *needles)


def test_pipeline_refuses_a_missing_device_before_its_data_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    fails(pipeline.main, ["--preset=micro", "--device=mps", f"--out_dir={tmp_path}/run"], "--device=mps", "--device=cpu")
    assert not os.path.exists(tmp_path / "run")


def test_pipeline_refuses_another_preset_in_its_out_dir(tmp_path):
    """Its finished stages would be skipped, and their numbers reported as the new preset's."""
    os.makedirs(tmp_path / "data")
    with open(tmp_path / "pipeline.json", "w") as f:
        json.dump({"preset": "micro"}, f)
    with open(tmp_path / "data" / "stage.json", "w") as f:
        json.dump({"seconds": 1.0}, f)
    before = digest(str(tmp_path))
    fails(pipeline.main, ["--preset=tiny", f"--out_dir={tmp_path}"], "--preset=micro", "--force", "--out_dir")
    assert digest(str(tmp_path)) == before
    # the same for other demonstrators: perfect ones must not reuse the slipping ones' SFT
    fails(pipeline.main, ["--preset=micro", "--slip_scale=0", f"--out_dir={tmp_path}"], "--slip_scale=1.0", "--force")
    assert digest(str(tmp_path)) == before
    # ... and for another seed: its stages are another draw, not this run's
    fails(pipeline.main, ["--preset=micro", "--seed=2", f"--out_dir={tmp_path}"], "--seed=1337", "--force")
    assert digest(str(tmp_path)) == before


# ---------------------------------------------------------------------------- evaluate.py, sample.py
def test_evaluate_checks_kinds(kit, tmp_path):
    fails(evaluate.main, [f"--ckpt={kit['reward']}", f"--input={kit['sft_data']}", f"--out_dir={tmp_path}"],
          kit["reward"], "(--ckpt) is a reward checkpoint")
    fails(evaluate.main, [f"--ckpt={kit['sft']}", f"--input={kit['sft_data']}", f"--out_dir={tmp_path}",
                          "--samples=2", f"--reward_ckpt={kit['sft']}", "--max_new_tokens=2"],
          kit["sft"], "(--reward_ckpt) is a sft checkpoint; expected reward")
    # best-of-K's judge must read the answers with the policy's token ids, as PPO's reward does
    fails(evaluate.main, [f"--ckpt={kit['sft']}", f"--input={kit['sft_data']}", f"--out_dir={tmp_path}",
                          "--samples=2", f"--reward_ckpt={kit['reward_other_tokenizer']}", "--max_new_tokens=2"],
          "another tokenizer", kit["sft"])
    # the results go under --out_dir, never beside the checkpoint, over the pipeline's own files
    ckpt_dir = os.path.dirname(kit["sft"])
    fails(evaluate.main, [f"--ckpt={kit['sft']}", f"--input={kit['sft_data']}",
                          f"--out_dir={os.path.dirname(ckpt_dir)}"], "beside the checkpoint", "--out_dir")
    # an answer as long as the context leaves no room for the prompt: the context is named
    fails(evaluate.main, [f"--ckpt={kit['sft']}", f"--input={kit['sft_data']}", f"--out_dir={tmp_path}",
                          "--max_new_tokens=256"], "--max_new_tokens=256", "context of 256 tokens")


def test_a_misspelt_checker_argument_stops_before_any_answer(kit, tmp_path, monkeypatch):
    """IFEval's HF export writes every argument name, the unused ones null: those pass. A name
    the checker reads, misspelt or null, is refused with the record, the field and the id,
    before generation (the checker would have raised a bare KeyError after all of it)."""
    def record(key, kwargs):
        return {"key": key, "prompt": "Describe a cat.", "kwargs": kwargs,
                "instruction_id_list": ["punctuation:no_comma", "detectable_format:number_bullet_lists"]}
    good = [record(1, [{"num_bullets": None}, {"num_bullets": 2, "end_phrase": None}])]
    write_jsonl(tmp_path / "good.jsonl", good)
    write_jsonl(tmp_path / "bad.jsonl", good + [record(2, [{}, {"num_bulets": 2}])])
    monkeypatch.setattr(evaluate, "evaluate_records", lambda *a, **k: pytest.fail("generated before the check"))
    fails(evaluate.main, [f"--ckpt={kit['sft']}", f"--input={tmp_path}/bad.jsonl", f"--out_dir={tmp_path}"],
          "bad.jsonl, record 2 (key 2)", '"kwargs"[1] has num_bulets, without num_bullets',
          '"detectable_format:number_bullet_lists"')
    with pytest.raises(BaseException, match="generated before the check"):
        evaluate.main([f"--ckpt={kit['sft']}", f"--input={tmp_path}/good.jsonl", f"--out_dir={tmp_path}"])


def test_evaluate_writes_to_its_own_folder(kit, tmp_path):
    """Never beside the checkpoint, where the pipeline keeps its 500-line responses."""
    beside = digest(os.path.dirname(kit["sft"]))
    evaluate.main([f"--ckpt={kit['sft']}", f"--input={kit['sft_data']}", f"--out_dir={tmp_path}/ev",
                   "--max_examples=2", "--max_new_tokens=2", "--device=cpu"])
    assert digest(os.path.dirname(kit["sft"])) == beside
    folder = tmp_path / "ev" / os.path.basename(os.path.dirname(kit["sft"]))
    assert sorted(os.listdir(folder)) == ["eval_sft.json", "responses_sft.jsonl"]
    with open(folder / "responses_sft.jsonl") as f:
        assert len(f.readlines()) == 2


def test_sample_prompt_longer_than_the_context(kit):
    fails(sample.main, [f"--ckpt={kit['pretrain']}", "--prompt=" + "cat " * 300, "--max_new_tokens=2"],
          "--prompt", "context is 256")


@pytest.mark.parametrize("name", ["truncated", "foreign", "empty"])
def test_sample_unreadable_checkpoint(kit, name):
    fails(sample.main, [f"--ckpt={kit[name]}", "--prompt=hi"], kit[name])


def test_sample_draws_a_fresh_seed_unless_given(kit, capsys):
    args = [f"--ckpt={kit['pretrain']}", "--prompt=Once", "--max_new_tokens=12", "--temperature=1.5"]
    seeds = set()
    for _ in range(2):
        sample.main(args)
        err = capsys.readouterr().err
        seeds.add(err.split("seed ")[1].split()[0])
    assert len(seeds) == 2
    seed = seeds.pop()
    assert sample.main(args + [f"--seed={seed}"]) == sample.main(args + [f"--seed={seed}"])
    assert "seed" not in capsys.readouterr().err   # a given seed is not announced again


def test_sample_resolves_device_auto(kit):
    """--device=auto passes the option check, so it must mean what it means in the training
    scripts (minift.training.pick_device), for generation and for a reward model alike."""
    assert len(sample.main([f"--ckpt={kit['pretrain']}", "--prompt=Once", "--max_new_tokens=2", "--seed=1",
                            "--device=auto"])) == 1
    assert isinstance(sample.main([f"--ckpt={kit['reward']}", "--prompt=hi", "--response=ok", "--device=auto"]), float)


def test_a_reward_model_without_a_response_to_score(kit):
    """It would print the reward of an empty answer, as if that were what was asked."""
    with pytest.raises(SystemExit, match='is a reward model, which scores a response .* --response="..."'):
        sample.main([f"--ckpt={kit['reward']}", "--prompt=hi"])


@pytest.mark.parametrize("name", ["pretrain", "reward"])
def test_sample_without_a_prompt_on_a_terminal(kit, monkeypatch, name):
    """Rather than wait silently for stdin, which a user at a terminal does not know to type into."""
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stdin", Terminal(""))
    fails(sample.main, [f"--ckpt={kit[name]}", "--max_new_tokens=2"], "--prompt", "echo")


@pytest.mark.parametrize("name, args, needles", [
    ("reward", ["--chat"], ["{ckpt} is a reward model", "--chat", "--response="]),
    ("reward", ["--prompt=hi", "--response=ho", "--raw"], ["--raw", "reward model ({ckpt})"]),
    ("reward", ["--prompt=hi", "--response=ho", "--num_samples=3"], ["--num_samples=3", "reward model ({ckpt})"]),
    ("sft", ["--prompt=hi", "--response=ok"], ["--response", "{ckpt} is a sft checkpoint", "reward"]),
    ("sft", ["--chat", "--prompt=hi"], ["--prompt", "--chat"]),
    ("sft", ["--chat", "--raw"], ["--raw", "--chat"]),
    ("pretrain", ["--chat", "--num_samples=3"], ["--num_samples=3", "--chat"]),
])
def test_sample_refuses_an_option_it_would_ignore(kit, monkeypatch, name, args, needles):
    """Each would otherwise be ignored without a word (a reward model given --chat would read a
    prompt from stdin)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\n"))
    fails(sample.main, [f"--ckpt={kit[name]}"] + args, *(n.format(ckpt=kit[name]) for n in needles))


def test_sample_chat_keeps_room_for_the_reply(kit, monkeypatch):
    """Each turn's prompt leaves max_new_tokens of the context for the reply: an over-long chat
    forgets its earlier turns, then the start of the newest message. With no room, an error
    before the chat begins (a slice [-0:] once kept the whole prompt)."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("Name a pet.\n"))
    for too_many in (256, 300):
        fails(sample.main, [f"--ckpt={kit['sft']}", "--chat", f"--max_new_tokens={too_many}"],
              f"--max_new_tokens={too_many}", "context of 256")
    asked = []
    monkeypatch.setattr(sample, "stream", lambda model, tok, prompt, cfg, generator: asked.append(prompt) or "A cat.")
    monkeypatch.setattr(sys, "stdin", io.StringIO("Name a pet.\n" + "Name a cat. " * 40 + "\n"))
    sample.main([f"--ckpt={kit['sft']}", "--chat", "--max_new_tokens=200"])
    tok = tokenizer_for(load_checkpoint(kit["sft"]), kit["sft"])
    assert asked[0] == tok.render_prompt([{"role": "user", "content": "Name a pet."}])
    long = tok.render_prompt([{"role": "user", "content": ("Name a cat. " * 40).strip()}])
    assert len(long) > 256 - 200 and asked[1] == long[-(256 - 200):]   # the newest message's end, alone
    # a conversation that fills the room exactly is sent whole: nothing forgotten one token early
    chat = [{"role": "user", "content": "Name a pet."}, {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Name a toy."}]
    exact = tok.render_prompt(chat)
    asked.clear()
    monkeypatch.setattr(sys, "stdin", io.StringIO("Name a pet.\nName a toy.\n"))
    sample.main([f"--ckpt={kit['sft']}", "--chat", f"--max_new_tokens={256 - len(exact)}"])
    assert asked[1] == exact


def test_sample_reward_of_a_conversation_longer_than_the_context(kit, capsys):
    """Scored on its end, where the reward model reads its score, as evaluate.py's judge does."""
    score = sample.main([f"--ckpt={kit['reward']}", "--prompt=" + "cat " * 300, "--response=ok"])
    assert "context of 256" in capsys.readouterr().err
    ckpt = load_checkpoint(kit["reward"])
    model, tokenizer = build_model(ckpt, ScalarModel).eval(), tokenizer_for(ckpt, kit["reward"])
    end = train_reward.render(tokenizer, "cat " * 300, "ok")[-256:]
    ids = torch.tensor([end])
    with torch.no_grad():
        expected = model.reward(ids, torch.ones_like(ids), answer_positions(ids, tokenizer.assistant, ids > -1))
    assert score == pytest.approx(expected.item(), abs=1e-4)


# ---------------------------------------------------------------------------- Ctrl-C
# (A real SIGINT to train_pretrain.py: tests/test_pretrain.py's test_ctrl_c_saves_a_checkpoint.)
TIMINGS = {"seconds", "sampling_seconds", "tokens_per_s", "total_seconds", "run_seconds"}


def without_timings(x):
    if isinstance(x, dict):
        return {k: without_timings(v) for k, v in x.items() if k not in TIMINGS}
    return x


def test_pipeline_interrupted_in_pretrain_sft_and_ppo_resumes_to_the_same_card(micro_pipeline, tmp_path,
                                                                                 monkeypatch):
    """Ctrl-C in three stages, one after another, each followed by a re-run: no interrupted
    stage is marked done, each resumes from its checkpoint, and the last run's report card
    equals the uninterrupted run's (all but the timings)."""
    ref, ref_report = micro_pipeline
    out = str(tmp_path / "micro")
    os.makedirs(out)
    shutil.copytree(os.path.join(ref, "data"), os.path.join(out, "data"))  # the data stage is not in question
    argv = ["--preset=micro", f"--out_dir={out}", "--device=cpu"]
    for script, steps, done in ((train_pretrain, 4, {"data"}), (train_sft, 5, {"data", "pretrain"}),
                                (train_ppo, 1, {"data", "pretrain", "sft", "prefs", "reward"})):
        with monkeypatch.context() as m:
            m.setattr(script, "StopRequest", stop_after(steps))
            with pytest.raises(Interrupted, match="run the same command again to resume"):
                pipeline.main(argv)
        stage = script.__name__.replace("train_", "")
        assert {s for s in os.listdir(out) if os.path.exists(os.path.join(out, s, "stage.json"))} == done
        assert load_checkpoint(os.path.join(out, stage, "ckpt.pt"))["step"] == steps
    # The resumed stages' weights are the uninterrupted run's, bit for bit. The evaluation of
    # equal weights is greedy and so equal too: the reference's eval marker stands in for it
    # (it costs as much as the rest of the pipeline), valid once the weights are shown equal.
    os.makedirs(os.path.join(out, "eval"))
    shutil.copyfile(os.path.join(ref, "eval", "stage.json"), os.path.join(out, "eval", "stage.json"))
    report = pipeline.main(argv)
    for stage in ("pretrain", "sft", "reward", "ppo"):
        a, b = (load_checkpoint(os.path.join(d, stage, "ckpt.pt")) for d in (out, ref))
        assert a["step"] == b["step"] and a["model"].keys() == b["model"].keys(), stage
        assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), stage
    assert without_timings(report) == without_timings(ref_report)
