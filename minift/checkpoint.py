"""
Checkpoints: written atomically, read without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:
    {"kind": "pretrain" | "sft" | "reward" | "ppo", "step": int,
     "model": state_dict, "model_config": dict, "optimizer": state_dict,
     "config": dict (the script's hyperparameters), "tokenizer": {"path", "sha256", "ranks", ...},
     "rng": {...}, "metrics": {...}}

* Atomic: we write `ckpt.pt.tmp` and `os.replace` it over `ckpt.pt`. A crash or Ctrl-C
  mid-write leaves the previous checkpoint whole, never a truncated file.
* Safe: `torch.load(weights_only=True)` refuses anything but tensors and plain containers,
  so opening a checkpoint from the internet cannot run code (pickle can).
"""

import dataclasses
import os

import torch

from minift.model import GPT, GPTConfig, ScalarModel


def save_checkpoint(path, payload):
    tmp = f"{path}.tmp"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic on POSIX and Windows


def load_checkpoint(path, hint="", map_location="cpu"):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}." + (f" {hint}" if hint else ""))
    return torch.load(path, map_location=map_location, weights_only=True)


def model_state(model):
    """The state dict of the underlying module: unwraps DDP (`.module`) and
    torch.compile (`._orig_mod`) so checkpoints load into a plain model."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return model.state_dict()


def check_model_config(ckpt, model_config, path):
    """Resuming into a differently shaped model would fail deep inside load_state_dict
    with a wall of tensor sizes; name the mismatched fields instead."""
    saved = ckpt.get("model_config", {})
    wanted = dataclasses.asdict(model_config)
    diff = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: checkpoint has {a}, config asks for {b}" for k, (a, b) in diff.items())
        raise ValueError(f"checkpoint {path} does not fit the config ({lines}). "
                         f"Use the checkpoint's settings, or a fresh --out_dir.")


def tokenizer_for(ckpt, path):
    """Load the tokenizer a checkpoint was trained with, and make sure it is the same one:
    a model is meaningless under a different id mapping (say, after re-running prepare.py
    with another --vocab_size). A checkpoint carries its tokenizer (Tokenizer.to_record), so
    it works wherever it is copied; older ones name a tokenizer file, read from its path."""
    from minift.tokenizer import Tokenizer, load_tokenizer
    info = ckpt["tokenizer"]
    tokenizer = Tokenizer.from_record(info) if "ranks" in info else load_tokenizer(info["path"])
    if tokenizer.identity["sha256"] != info["sha256"]:
        raise ValueError(f"{info['path']} is not the tokenizer checkpoint {path} was trained with "
                         f"(hash differs). Re-run the stages after data/prepare.py, or restore that file.")
    return tokenizer


def build_model(ckpt, cls=GPT, **kwargs):
    """Rebuild the model a checkpoint describes and load its weights.
    cls=ScalarModel builds a reward/value model. A GPT checkpoint (pretrain, SFT) loaded
    into a ScalarModel initialises its transformer, leaving the new head at its init."""
    config = GPTConfig(**ckpt["model_config"])
    model = cls(config, **kwargs)
    state = ckpt["model"]
    if cls is ScalarModel and not any(k.startswith("gpt.") for k in state):
        model.gpt.load_state_dict(state)
    else:
        if cls is ScalarModel and "likelihood_weight" not in state:  # saved before the likelihood term:
            state = {**state, "likelihood_weight": torch.zeros(())}   # the head alone
        model.load_state_dict(state)
    return model


def save_training_checkpoint(path, kind, step, model, optimizer, cfg, tokenizer_info, generator, metrics,
                             **extra):
    """The one checkpoint layout every training script writes (see the top of this file)."""
    from minift.training import rng_state
    raw = getattr(getattr(model, "module", model), "_orig_mod", getattr(model, "module", model))
    gpt = getattr(raw, "gpt", raw)  # a ScalarModel keeps its transformer in .gpt
    save_checkpoint(path, {
        "kind": kind, "step": step, "model": model_state(model),
        "model_config": dataclasses.asdict(gpt.config),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "config": dataclasses.asdict(cfg), "tokenizer": tokenizer_info,
        "rng": rng_state(generator), "metrics": metrics, **extra})


def resume_training(path, model, optimizer, generator, device="cpu", rank=0, seed=0):
    """Load <out_dir>/ckpt.pt into a freshly built model and optimizer, and restore the
    random state, so the run continues exactly where it stopped. Returns the checkpoint.
    Under DDP only rank 0 saves, so the checkpoint holds rank 0's generator: every other
    rank reseeds its own from (seed, rank, step) instead of copying rank 0's draws (which
    would make all ranks train on the same batches after a resume)."""
    from minift.training import set_rng_state
    ckpt = load_checkpoint(path, map_location=device)
    gpt = getattr(model, "gpt", model)
    check_model_config(ckpt, gpt.config, path)
    model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer"):
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:  # AdamW state into Muon + AdamW, or the reverse
            saved = ckpt.get("config", {}).get("optimizer", "adamw")
            raise ValueError(f"{path}: its optimizer state does not fit this run's optimizer ({e}). It was "
                             f"trained with --optimizer={saved}: resume with that, or start afresh in "
                             f"another --out_dir.") from None
    set_rng_state(ckpt["rng"], generator)
    if rank > 0:
        generator.manual_seed(seed + rank + 1000 * ckpt["step"])
    return ckpt
