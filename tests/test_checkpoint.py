"""minift.checkpoint: atomic weights-only files, named config mismatches, exact resume, and the
tokenizer each checkpoint carries."""
import dataclasses
import os
import re
import stat
from types import SimpleNamespace

import pytest
import torch

import train_grpo
import train_pretrain
import train_reward
import train_sft
from minift.checkpoint import (check_model_config, check_settings, load_checkpoint, resume_training, save_checkpoint,
                               save_training_checkpoint, should_resume, tokenizer_for)
from minift.model import GPT, GPTConfig
from minift.tokenizer import Tokenizer, save_ranks, train_bpe


def test_checkpoint_roundtrip_is_atomic_and_weights_only(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    payload = {"kind": "pretrain", "step": 3, "model": {"w": torch.arange(4.0)}, "config": {"a": 1},
               "model_config": {}, "tokenizer": {}}
    save_checkpoint(path, payload)
    assert os.listdir(tmp_path) == ["ckpt.pt"]                   # no temp file left behind
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))

    class Unsaveable:   # a save that fails halfway leaves the old checkpoint whole, and no temp file
        def __reduce__(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {**payload, "step": 4, "extra": Unsaveable()})
    assert os.listdir(tmp_path) == ["ckpt.pt"] and load_checkpoint(path)["step"] == 3

    class Evil:  # a pickled object (arbitrary code on load) is refused by weights_only
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"x": Evil()}, path)
    with pytest.raises(ValueError, match="holds Python objects .* could run code"):
        load_checkpoint(path)
    save_checkpoint(path, {"kind": "sft", "model": {}})  # another program's layout: say what it lacks
    with pytest.raises(ValueError, match="sft checkpoint without model_config and tokenizer"):
        load_checkpoint(path)
    for model_config in ({"n_layers": 4}, [4, 4, 128], 4):   # edited by hand: named, not a TypeError later
        save_checkpoint(path, {**payload, "model_config": model_config})
        with pytest.raises(ValueError, match="its model_config is not a dict of GPTConfig's fields"):
            load_checkpoint(path)
    with pytest.raises(ValueError, match=f"is a folder; pass a checkpoint file in it, such as {tmp_path}/ckpt.pt"):
        load_checkpoint(str(tmp_path))
    # a pipeline run's folder: one of its stages' checkpoints is named, not a ckpt.pt it lacks
    run_dir = tmp_path / "run"
    for stage in ("sft", "ppo"):
        save_checkpoint(str(run_dir / stage / "ckpt.pt"), payload)
    with pytest.raises(ValueError, match=f"such as {run_dir}/ppo/ckpt.pt"):
        load_checkpoint(str(run_dir))
    with pytest.raises(ValueError, match=f"such as {run_dir}/sft/ckpt.pt"):   # a stage of the kind wanted
        load_checkpoint(str(run_dir), kinds=("sft",))
    with pytest.raises(FileNotFoundError, match="run this first"):
        load_checkpoint(str(tmp_path / "missing.pt"), hint="run this first")


def test_a_checkpoint_is_synced_then_renamed_then_its_folder_synced(tmp_path, monkeypatch):
    """The file reaches the disk before it takes ckpt.pt's name, and the folder after, so that
    a power cut keeps the rename too (the name is an entry in the folder, not in the file)."""
    events, fsync, replace = [], os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(
        "fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file") or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda src, dst: events.append("replace") or replace(src, dst))
    path = tmp_path / "new" / "ckpt.pt"   # a folder not made yet
    save_checkpoint(str(path), {"kind": "sft", "model": {}, "model_config": {}, "tokenizer": {}})
    assert events == ["fsync file", "replace", "fsync folder"] and os.listdir(path.parent) == ["ckpt.pt"]


def test_pickled_code_never_runs_even_where_torch_is_told_to_allow_it(tmp_path, monkeypatch):
    """weights_only=True must be passed, not left to torch's default: that default was False
    before torch 2.6 (requirements.txt allows 2.4), and TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns
    it off today, but never overrides an explicit True."""
    ran = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(ran),))   # what loading would run: makes a folder we can look for
    path = str(tmp_path / "ckpt.pt")
    torch.save({"kind": "sft", "model": {"x": Evil()}, "model_config": {}, "tokenizer": {}}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="holds Python objects .* could run code"):
        load_checkpoint(path)
    assert not ran.exists()


def test_checkpoint_config_mismatch_is_named():
    ckpt = {"model_config": dataclasses.asdict(GPTConfig(n_layer=4))}
    check_model_config(ckpt, GPTConfig(n_layer=4), "c.pt")
    with pytest.raises(ValueError, match="n_layer: checkpoint has 4, config asks for 6"):
        check_model_config(ckpt, GPTConfig(n_layer=6), "c.pt")


def test_resume_gives_rank_0_the_saved_draws_and_other_ranks_their_own(tmp_path):
    """Only rank 0 saves its batch generator; after a DDP resume, rank 0 continues exactly,
    and rank 1 must not copy rank 0's draws (both would train on the same batches)."""
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    path = str(tmp_path / "ckpt.pt")
    saved = torch.Generator().manual_seed(7)
    torch.randint(100, (5,), generator=saved)
    save_training_checkpoint(path, "pretrain", 3, GPT(config), None, config, {}, saved, {})
    expected = torch.randint(10**6, (8,), generator=saved)

    draws = []
    for rank in (0, 1):
        generator = torch.Generator().manual_seed(7 + rank)
        resume_training(path, GPT(config), None, generator, rank=rank, seed=7)
        draws.append(torch.randint(10**6, (8,), generator=generator))
    assert torch.equal(draws[0], expected)
    assert not torch.equal(draws[1], expected)



def test_resume_restores_the_global_generator_and_refuses_another_model_or_world_size(tmp_path):
    """The global generator (dropout's) continues where it was saved; a model of another shape
    or a run on another number of processes is refused by name, not deep in load_state_dict."""
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    path = str(tmp_path / "ckpt.pt")
    torch.manual_seed(3)
    save_training_checkpoint(path, "pretrain", 3, GPT(config), None, config, {}, torch.Generator(), {})
    expected = torch.rand(4)
    torch.manual_seed(4)
    resume_training(path, GPT(config), None, torch.Generator())
    assert torch.equal(torch.rand(4), expected)
    with pytest.raises(ValueError, match="n_embd: checkpoint has 16, config asks for 32"):
        resume_training(path, GPT(dataclasses.replace(config, n_embd=32)), None, torch.Generator())
    with pytest.raises(ValueError, match="trained on 1 process.* this run has 2: resume it with as many"):
        resume_training(path, GPT(config), None, torch.Generator(), world_size=2)


@pytest.mark.parametrize("script, change, refused", [
    (train_pretrain, {"seed": 7}, True),              # ranks > 0 reseed from it; validation windows too
    (train_pretrain, {"learning_rate": 1e-3}, True),
    (train_pretrain, {"max_steps": 5000, "device": "cpu", "eval_interval": 7, "compile": True}, False),
    (train_reward, {"epochs": 3}, False),             # the run's length: a longer run continues
    (train_reward, {"grad_accum": 2}, True),          # the batch a step sees: another run
    (train_grpo, {"iterations": 72}, False),
    (train_grpo, {"epochs": 4}, True),                # passes over each rollout: how it trains
])
def test_a_resume_refuses_only_settings_that_change_the_run(script, change, refused):
    kind = script.__name__.removeprefix("train_")
    ckpt = {"kind": kind, "config": dataclasses.asdict(script.Config())}
    cfg = dataclasses.replace(script.Config(), **change)
    if refused:
        name, value = next(iter(change.items()))
        with pytest.raises(ValueError, match=re.escape(f"other settings: --{name}={value} (it has ")):
            check_settings(ckpt, cfg, "out/ckpt.pt")
    else:
        check_settings(ckpt, cfg, "out/ckpt.pt")


def test_a_resume_reads_two_spellings_of_one_path_as_one_setting():
    ckpt = {"kind": "sft", "config": dataclasses.asdict(train_sft.Config())}
    for spelling in ("./" + train_sft.Config().data, train_sft.Config().data.replace("/", "//")):
        check_settings(ckpt, dataclasses.replace(train_sft.Config(), data=spelling), "out/ckpt.pt")
    with pytest.raises(ValueError, match=re.escape("--eval_data=. (it has )")):   # "" skips it: not the folder .
        check_settings({**ckpt, "config": {**ckpt["config"], "eval_data": ""}},
                       dataclasses.replace(train_sft.Config(), eval_data="."), "out/ckpt.pt")
    with pytest.raises(ValueError, match=re.escape("--data=data/other.jsonl (it has ")):
        check_settings(ckpt, dataclasses.replace(train_sft.Config(), data="data/other.jsonl"), "out/ckpt.pt")


def test_starting_over_clears_the_log_and_resuming_keeps_it(tmp_path):
    """--force and --resume=false both start over, so the old run's log and checkpoint go at
    once (a log never mixes two runs, and a new run stopped before its first save leaves no old
    checkpoint to resume); a plain run resumes and keeps both; with nothing to clear, nothing fails."""
    ckpt, log = tmp_path / "ckpt.pt", tmp_path / "metrics.jsonl"
    cfg = dict(out_dir=str(tmp_path), force=False, resume=True)
    ckpt.write_bytes(b"a checkpoint")
    log.write_text("{}\n")
    assert should_resume(SimpleNamespace(**cfg), str(ckpt)) and log.exists() and ckpt.exists()
    for start_over in ({"force": True}, {"resume": False}):
        ckpt.write_bytes(b"a checkpoint")
        log.write_text("{}\n")
        assert not should_resume(SimpleNamespace(**cfg | start_over), str(ckpt))
        assert not log.exists() and not ckpt.exists()
    assert not should_resume(SimpleNamespace(**cfg | {"force": True}), str(ckpt))
    assert not should_resume(SimpleNamespace(**cfg), str(tmp_path / "none.pt"))
    # an --out_dir that is a file stops the run before any work, naming it, with or without --force
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for start_over in ({}, {"force": True}):
        with pytest.raises(ValueError, match=re.escape(f"--out_dir={notes} is a file, not a folder")):
            should_resume(SimpleNamespace(**cfg | start_over | {"out_dir": str(notes)}), str(notes / "ckpt.pt"))
    assert notes.read_text() == "mine"


def test_a_checkpoint_carries_its_tokenizer(tmp_path):
    """The tokenizer travels inside the checkpoint (ranks, split pattern, specials), so a
    checkpoint copied anywhere needs no tokenizer file; one saved before that names its file,
    which still loads; and a tokenizer that is not the one trained with is refused."""
    tok = Tokenizer.from_ranks(train_bpe("Name a pet. A cat. A dog. " * 50, 300))
    config = GPTConfig(vocab_size=tok.n_vocab, block_size=16, n_layer=1, n_head=2, n_embd=16)
    tok_path = str(tmp_path / "tok.tiktoken")
    save_ranks(tok_path, tok.enc._mergeable_ranks)

    def saved(name, info):
        path = str(tmp_path / name)
        save_training_checkpoint(path, "sft", 0, GPT(config), None, config, info, torch.Generator(), {})
        return load_checkpoint(path), path
    carrying, path = saved("carrying.pt", {"path": tok_path, **tok.to_record()})
    naming, _ = saved("naming.pt", {"path": tok_path, **tok.identity})   # the older layout
    os.replace(tok_path, tok_path + ".moved")
    text = "Name a dog. <|end|> é"
    loaded = tokenizer_for(carrying, path)
    assert loaded.encode(text) == tok.encode(text) and loaded.identity == tok.identity
    assert (loaded.eot, loaded.end, loaded.pad) == (tok.eot, tok.end, tok.pad)
    with pytest.raises(FileNotFoundError, match="tok.tiktoken"):
        tokenizer_for(naming, "naming.pt")
    os.replace(tok_path + ".moved", tok_path)
    assert tokenizer_for(naming, "naming.pt").encode(text) == tok.encode(text)
    without_specials = {k: v for k, v in carrying["tokenizer"].items() if k != "specials"}
    broken = ((without_specials, "specials"), ({"sha256": "0" * 64}, "path"), (None, "path, sha256"))
    for info, lacking in broken:
        with pytest.raises(ValueError, match=re.escape(path) + f": its tokenizer record lacks {lacking} \\(needed"):
            tokenizer_for({"tokenizer": info}, path)
    other = Tokenizer.from_ranks(train_bpe("Name a toy. A ball. " * 50, 300)).to_record()
    with pytest.raises(ValueError, match="hash differs"):
        tokenizer_for({"tokenizer": {"path": tok_path, **other, "sha256": tok.identity["sha256"]}}, path)
