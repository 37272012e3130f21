"""
Checkpoints: written atomically, read without unpickling code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts:
    {"kind": "pretrain" | "sft" | "reward" | "ppo" | ..., "step": int,
     "model": state_dict, "model_config": dict, "optimizer": state_dict,
     "config": dict (the script's hyperparameters), "tokenizer": {"path", "sha256", "ranks", ...},
     "rng": {...}, "metrics": {...}}

* Atomic: we write `ckpt.pt.tmp<process id>` and `os.replace` it over `ckpt.pt`. A crash or
  Ctrl-C mid-write leaves the previous checkpoint whole, never a truncated file (a killed
  process may leave its temp file beside it, which nothing reads).
* Safe: `torch.load(weights_only=True)` refuses anything but tensors and plain containers,
  so opening a checkpoint from the internet cannot run code (pickle can).
* Checked: a script names the kinds it accepts (load_checkpoint's `kinds`), and a resumed run
  must have the checkpoint's settings and tokenizer (resume_training); a wrong, foreign or
  unreadable file stops the script with one line that names it.
"""

import contextlib
import dataclasses
import glob
import os
import pickle
import zipfile

import torch

from minift.formats import require_folder, write_atomically
from minift.model import GPT, GPTConfig, ScalarModel


def save_checkpoint(path, payload):
    write_atomically(path, lambda f: torch.save(payload, f))


# The language models: a checkpoint of one of these kinds holds a GPT that generates.
GENERATIVE = ("pretrain", "sft", "ppo", "grpo", "dpo")
# Settings a resumed run may change: where and how fast it runs, how often it reports, and
# how long it trains. Resuming to a larger --max_steps or --epochs continues a run, on a
# learning-rate schedule stretched to the new length, so the rate rises again where it resumes
# (pretraining's --decay_steps, set to the first run's length, keeps the old schedule).
RESUMABLE_CHANGES = {"out_dir", "resume", "force", "device", "compile", "log_interval", "eval_interval",
                     "eval_batches", "eval_examples", "eval_batch_size", "max_steps", "decay_steps", "iterations",
                     "epochs", "preset"}
# ... except where a kind's option of one of those names sets how it trains: GRPO's --epochs are
# passes over each rollout (as PPO's --ppo_epochs), not the run's length (its --iterations).
FIXED_BY_KIND = {"grpo": {"epochs"}}


# What to run when a script that reads any stage's checkpoint (sample.py, evaluate.py) finds none.
TRAIN_ONE_FIRST = ("Train one first: python pipeline.py writes out/tiny/<stage>/ckpt.pt, one for each stage, "
                   "and each train_*.py script <its --out_dir>/ckpt.pt")


def train_first(stage, script):
    """The hint for a missing checkpoint of `stage`: the script that trains it, or the pipeline's."""
    return f"Train it first: python {script}, or pass the one python pipeline.py writes, out/tiny/{stage}/ckpt.pt"


def load_checkpoint(path, hint="", map_location="cpu", kinds=None, option=None):
    """Read a checkpoint; with `kinds`, refuse one of any other kind (a pretraining checkpoint
    given as the reward model would otherwise load, with its head left at its random init).
    `hint` says what to run when there is no file at `path`; `option`, the command-line option
    that gave it, is named in every refusal, so a script with several checkpoints says which."""
    name = f"{path} (--{option})" if option else path
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {name}." + (f" {hint}" if hint else ""))
    if os.path.isdir(path):
        inside = os.path.join(path, "ckpt.pt")   # a stage's folder; or a run's, with one folder a stage
        below = sorted(glob.glob(os.path.join(path, "*", "ckpt.pt")))
        wanted = [p for p in below if kinds is None or os.path.basename(os.path.dirname(p)) in kinds]
        below = wanted or below   # a stage folder of a kind this script takes, if there is one
        example = below[0] if below and not os.path.exists(inside) else inside
        raise ValueError(f"{name} is a folder; pass a checkpoint file in it, such as {example}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a damaged file can fail anywhere in the unpickler (a KeyError, even)
        # torch says "Weights only load failed" for any file its safe unpickler cannot read; only
        # an "Unsupported global" is an object that loading would have to construct, running code.
        if isinstance(e, pickle.UnpicklingError) and "unsupported global" in str(e).lower():
            raise ValueError(f"{name} holds Python objects besides tensors and plain containers; refused, since "
                             "loading them could run code. Load only checkpoints that minift wrote.") from None
        if not zipfile.is_zipfile(path):   # torch.save has written zip archives since PyTorch 1.6
            reason = "not a zip archive, as torch.save writes"
        else:
            reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ValueError(f"{name} is not a readable checkpoint ({reason}). It may be truncated or another "
                         "kind of file: restore it, or make it again.") from None
    if not isinstance(ckpt, dict) or not {"kind", "model"} <= set(ckpt):
        raise ValueError(f"{name} is not a minift checkpoint (it has no kind and model)")
    missing = [key for key in ("model_config", "tokenizer") if key not in ckpt]
    if missing:  # every script rebuilds the model and its tokenizer from these two entries
        raise ValueError(f"{name} is a {ckpt['kind']} checkpoint without {' and '.join(missing)}, which minift "
                         "needs to rebuild the model; load only checkpoints that minift wrote")
    # An edited or foreign file fails here with its own name, not as a TypeError in GPTConfig(**...).
    fields = [f.name for f in dataclasses.fields(GPTConfig)]
    if not isinstance(ckpt["model_config"], dict) or not set(ckpt["model_config"]) <= set(fields):
        raise ValueError(f"{name}: its model_config is not a dict of GPTConfig's fields ({', '.join(fields)}); "
                         "load only checkpoints that minift wrote")
    if kinds is not None and ckpt["kind"] not in kinds:
        raise ValueError(f"{name} is a {ckpt['kind']} checkpoint; expected {' or '.join(kinds)}")
    return ckpt


def resuming_line(path, done, total, unit="step", option="max_steps"):
    """What a resumed run prints: where it stands, and, when it is already finished, that it
    only reports its figures again."""
    line = f"resuming from {path} at {unit} {done} of {total}"
    return line + (f"; that run is finished and only reports its figures again (a higher --{option} would "
                   "train it on)" if done >= total else "")


def note_if_pretrained(ckpt, path, option, master=True):
    """A stage that starts from the SFT model runs from a pretrained one too (RL or a reward
    model from the base model is an experiment in itself), with a note on the main process:
    such a model never saw the chat template, which is easy to miss."""
    if master and ckpt["kind"] == "pretrain":
        print(f"note: --{option}={path} is a pretrained model, which never saw the chat template; this stage "
              f"usually starts from an SFT model (InstructGPT), such as out/tiny/sft/ckpt.pt")


def check_tokenizer(ckpt, path, expected, source):
    """Two models that meet (a policy and its reward model; a resumed run and its data) must
    share one id mapping: the same tokenizer hash."""
    record = ckpt.get("tokenizer") if isinstance(ckpt.get("tokenizer"), dict) else {}
    have = record.get("sha256")
    if have != expected["sha256"]:
        raise ValueError(f"{path} was trained with another tokenizer than {source} "
                         f"({record.get('path', '?')}, hash {str(have)[:12]} against "
                         f"{expected['sha256'][:12]}). Use checkpoints and data made from one data/prepare.py run.")


def same_setting(saved, wanted):
    """Equal values, or two spellings of one path (--data=./data/x.bin and --data=data/x.bin)."""
    if isinstance(saved, str) and isinstance(wanted, str):
        return os.path.normpath(saved) == os.path.normpath(wanted) if saved and wanted else saved == wanted
    return saved == wanted


def check_settings(ckpt, cfg, path):
    """A resumed run must be the run the checkpoint started: re-running with another
    --learning_rate (say) in the same --out_dir would otherwise resume the old run silently."""
    saved, wanted = ckpt.get("config", {}), dataclasses.asdict(cfg)
    free = RESUMABLE_CHANGES - FIXED_BY_KIND.get(ckpt.get("kind"), set())
    diff = [f"--{k}={wanted[k]} (it has {saved[k]})" for k in wanted
            if k in saved and k not in free and not same_setting(saved[k], wanted[k])]
    if diff:
        raise ValueError(f"{path} holds a run with other settings: {', '.join(diff)}. To resume it, use its "
                         f"settings; to start over, add --force; or choose another --out_dir.")


def unwrap(model):
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def model_state(model):
    """The state dict of the underlying module (unwrap), so checkpoints load into a plain model."""
    return unwrap(model).state_dict()


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
    info = ckpt["tokenizer"] if isinstance(ckpt["tokenizer"], dict) else {}
    # A record carries the tokenizer whole (ranks), or, in older checkpoints, names its file (path).
    needed = {"sha256"} | ({"name", "pat_str", "specials", "ranks"} if "ranks" in info else {"path"})
    if not needed <= set(info):
        raise ValueError(f"{path}: its tokenizer record lacks {', '.join(sorted(needed - set(info)))} (needed to "
                         "rebuild the tokenizer); load only checkpoints that minift wrote")
    tokenizer = Tokenizer.from_record(info) if "ranks" in info else load_tokenizer(info["path"])
    if tokenizer.identity["sha256"] != info["sha256"]:
        raise ValueError(f"{info.get('path', 'this tokenizer')} is not the tokenizer checkpoint {path} was "
                         f"trained with (hash differs). Re-run the stages after data/prepare.py, or restore that file.")
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
    raw = unwrap(model)
    gpt = getattr(raw, "gpt", raw)  # a ScalarModel keeps its transformer in .gpt
    save_checkpoint(path, {
        "kind": kind, "step": step, "model": model_state(model),
        "model_config": dataclasses.asdict(gpt.config),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "config": dataclasses.asdict(cfg), "tokenizer": tokenizer_info,
        "rng": rng_state(generator), "metrics": metrics, **extra})


def should_resume(cfg, ckpt_path):
    """Whether a training script resumes from <out_dir>/ckpt.pt: it does when the file exists
    and --resume is on (the default). --force, or --resume=false, starts over instead: the old
    metrics log and checkpoint go at once, so a log never mixes two runs, and a new run that
    stops before its first save leaves nothing that a plain rerun would take for it. (Under DDP
    every rank gets here; one removes the files, the others find them gone.)"""
    require_folder(cfg.out_dir)
    if cfg.force or not cfg.resume:
        for old in (os.path.join(cfg.out_dir, "metrics.jsonl"), ckpt_path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(old)
        return False
    return os.path.exists(ckpt_path)


def resume_training(path, model, optimizer, generator, device="cpu", rank=0, seed=0, kind=None, cfg=None,
                    tokenizer=None, world_size=None):
    """Load <out_dir>/ckpt.pt into a freshly built model and optimizer, and restore the
    random state, so the run continues exactly where it stopped. Returns the checkpoint.
    With them, first check that the checkpoint is of this `kind`, was made with this run's
    settings (`cfg`, check_settings) and `tokenizer` (its identity dict).
    Under DDP only rank 0 saves, so the checkpoint holds rank 0's generators: every other
    rank reseeds its batch generator from (seed, rank, step) instead of copying rank 0's draws
    (which would make all ranks train on the same batches after a resume). So a DDP run
    resumes exactly on rank 0 only; the others draw new batches of the same kind.
    Scripts that walk their data in epochs (reward, DPO) save and pass their `world_size`: they
    count their place in the data in steps of that many batches, so a run resumed on another
    number of processes would skip or repeat data."""
    from minift.training import set_rng_state
    ckpt = load_checkpoint(path, map_location=device, kinds=(kind,) if kind else None)
    if cfg is not None:
        check_settings(ckpt, cfg, path)
    if tokenizer is not None:
        check_tokenizer(ckpt, path, tokenizer, "this run (its --init_from or its data)")
    if world_size is not None and ckpt.get("world_size", 1) != world_size:
        raise ValueError(f"{path} was trained on {ckpt.get('world_size', 1)} process(es), this run has "
                         f"{world_size}: resume it with as many (torchrun --nproc_per_node=N), or start over "
                         "with --force")
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
