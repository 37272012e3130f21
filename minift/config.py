"""
Configuration: each script declares a dataclass of hyperparameters at its top (nanoGPT
style), a dict of presets, and calls `parse_config`. The command line then reads

    python train_pretrain.py --preset=tiny --max_steps=500 --learning_rate=3e-4

Presets are applied first, then the `--key=value` overrides, each checked against the
dataclass field's type. A typo or a bad value stops the script with a message that
names the option and says what was expected, before any work is done. `--help` prints the
script's docstring, every option with its default and the comment beside its field, and
the presets.
"""

import argparse
import dataclasses
import difflib
import gc
import inspect
import io
import math
import os
import re
import sys
import textwrap
import tokenize


class ConfigError(ValueError):
    pass


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help of the data scripts, which use argparse: the docstring as written, then every
    option with its default, as the training scripts' --help shows them."""

    def _get_help_string(self, action):   # a default of None: the help says what happens instead
        return action.help if action.default is None else super()._get_help_string(action)


TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}


def _convert(name, text, default, script):
    """Parse `text` into the type of the field's default value."""
    kind = type(default)
    try:
        if kind is bool:
            low = text.lower()
            if low in TRUE_WORDS | FALSE_WORDS:
                return low in TRUE_WORDS
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text)
            if not math.isfinite(value):  # nan slips past every range check (nan < 0 is False)
                raise ValueError
            return value
        return text
    except ValueError:
        raise ConfigError(f"{script}: --{name} expects {'a finite float' if kind is float else kind.__name__}, "
                          f"got {text!r}") from None


def field_comments(cls):
    """{field name: its one-line help} read from the class's source: the first sentence of the
    comment after the field, which may run on in comment-only lines just below it, indented
    further. Comments above a field are notes on how its value was chosen, not help."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source file (an interactive interpreter): help without comments
        return {}
    comments = {tok.start[0]: tok for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    names = {f.name for f in dataclasses.fields(cls)}
    result, field, field_col = {}, None, 0
    for number, line in enumerate(source.splitlines(), start=1):
        stripped = line.lstrip()
        name = stripped.split(":", 1)[0].strip()
        comment = comments.get(number)
        if name in names and ":" in stripped:
            field, field_col = name, len(line) - len(stripped)
            result[field] = comment.string.lstrip("# ").rstrip() if comment else ""
        elif field and comment and stripped.startswith("#") and comment.start[1] > field_col and result[field]:
            result[field] += " " + comment.string.lstrip("# ").rstrip()
        else:
            field = None
    return {name: re.split(r"(?<=\.)\s+(?=[A-Z0-9(])", text, maxsplit=1)[0] for name, text in result.items()}


def config_help(cls, presets=None, script=None):
    """The text of --help: the script's docstring, the options, the presets."""
    doc = inspect.getdoc(sys.modules.get(cls.__module__)) or ""
    comments = field_comments(cls)
    options = [(f"--{f.name}={getattr(cls(), f.name)}", comments.get(f.name, "")) for f in dataclasses.fields(cls)]
    width = min(max(len(o) for o, _ in options), 34) + 2
    preset = " [--preset=NAME]" if presets else ""
    lines = [f"usage: python {script or cls.__module__ + '.py'}{preset} [--key=value ...]", ""]
    lines += [doc, ""] if doc else []
    lines.append("options, shown with their defaults (--key=value or --key value; a bare --flag turns a "
                 "boolean on):")
    for option, comment in options:
        lines.append(f"  {option:<{width}}{comment}".rstrip() if len(option) < width
                     else f"  {option}  {comment}".rstrip())
    if presets:
        lines += ["", "presets (--preset=NAME sets these first; the options you give override them):"]
        for name, values in presets.items():
            settings = " ".join(f"{k}={v}" for k, v in values.items()) or "the defaults above"
            lines += textwrap.wrap(settings, 100, initial_indent=f"  {name:<8}", subsequent_indent=" " * 10)
    return "\n".join(lines)


def parse_config(cls, argv=None, presets=None, script=None):
    """Build a `cls` dataclass from defaults, then `--preset=NAME`, then `--key=value`s.
    Accepts `--key=value` and `--key value`. Raises ConfigError on anything unknown.
    `--help` (or -h) prints config_help and exits with status 0, as argparse does."""
    argv = sys.argv[1:] if argv is None else list(argv)
    script = script or (sys.argv[0] if sys.argv and sys.argv[0] else cls.__name__)
    presets = presets or {}
    if "--help" in argv or "-h" in argv:
        print(config_help(cls, presets, script))
        raise SystemExit(0)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    config = cls()

    pairs = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"{script}: unexpected argument {arg!r}; options look like --key=value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = arg[2:], argv[i + 1]
            i += 1
        elif arg[2:] in fields and isinstance(getattr(config, arg[2:]), bool):
            key, value = arg[2:], "true"   # a bare --flag switches a boolean on
        else:
            raise ConfigError(f"{script}: {arg} needs a value, as in {arg}=VALUE")
        pairs.append((key, value))
        i += 1

    # The preset goes first, whatever its position, so explicit overrides always win. Given
    # twice, the last one wins, as any option does: applying both would mix their settings.
    # (A script without presets, like pipeline.py, may still have a plain `preset` field.)
    chosen = [value for key, value in pairs if key == "preset"] if presets else []
    for value in chosen:
        if value not in presets:
            raise ConfigError(f"{script}: unknown preset {value!r}; choose from {', '.join(presets)}")
    if chosen:
        config = dataclasses.replace(config, **presets[chosen[-1]])
        if "preset" in fields:
            config.preset = chosen[-1]
    for key, value in pairs:
        if key == "preset" and presets:
            continue
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean --{hint[0]}?" if hint else ""
            raise ConfigError(f"{script}: unknown option --{key}.{hint} "
                              f"Valid options: {', '.join('--' + f for f in fields)}")
        setattr(config, key, _convert(key, value, getattr(cls(), key), script))
    check_ranges(config, script)
    return config


# Ranges, checked by option name in every script's config (one table serves them all), so a
# bad value stops the script before any work, not as a ZeroDivisionError at step 200.
AT_LEAST_ONE = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "grad_accum", "max_steps", "eval_interval",
                "eval_batches", "log_interval", "iterations", "rollout_batch", "max_new_tokens", "samples_per_prompt",
                "ppo_epochs", "num_minibatches", "epochs", "batch_groups", "eval_batch_size", "k", "num_samples",
                "kl_horizon", "kl_examples")
AT_LEAST_ZERO = ("max_examples", "samples", "eval_examples", "num_prompts", "top_k", "warmup_steps", "decay_steps",
                 "learning_rate", "min_lr", "weight_decay", "temperature", "missing_eos_penalty", "kl_coef",
                 "likelihood_weight", "across_prompt_weight", "vf_coef", "slip_scale")
ABOVE_ZERO = ("grad_clip", "clip_range", "value_clip", "kl_target", "adam_eps", "beta")
# FRACTIONS: name: (low, high, low included, high included)
FRACTIONS = {"dropout": (0, 1, True, False), "val_fraction": (0, 1, True, False), "gamma": (0, 1, True, True),
             "lam": (0, 1, True, True), "top_p": (0, 1, False, True), "label_smoothing": (0, 0.5, True, False)}
CHOICES = {"dtype": ("bfloat16", "float32"), "optimizer": ("adamw", "muon"), "reward": ("model", "gold"),
           "loss_type": ("sigmoid", "ipo")}


def check_ranges(config, script):
    """Raise ConfigError naming the first option whose value is out of its range."""
    from minift.training import DEVICE, DEVICES   # here, as in run(): minift.training imports torch
    values = dataclasses.asdict(config)

    def bad(name, expected, problem="is out of range"):
        raise ConfigError(f"{script}: --{name}={values[name]} {problem}; expected {expected}")
    for name, value in values.items():
        if name in AT_LEAST_ONE and value < 1:
            bad(name, "at least 1")
        if name in AT_LEAST_ZERO and value < 0:
            bad(name, "0 or more")
        if name in ABOVE_ZERO and not value > 0:
            bad(name, "more than 0")
        if name in FRACTIONS:
            low, high, with_low, with_high = FRACTIONS[name]
            if not (low <= value if with_low else low < value) or not (value <= high if with_high else value < high):
                left_out = [str(end) for end, included in ((low, with_low), (high, with_high)) if not included]
                bad(name, f"a number from {low} to {high}" + (f" (not {' or '.join(left_out)} itself)"
                                                              if left_out else ""))
        if name in CHOICES and value not in CHOICES[name]:
            bad(name, f"one of {', '.join(CHOICES[name])}", "is not a choice")
        if name == "device" and not DEVICE.fullmatch(value):
            bad(name, DEVICES, "is not a device")
    if "n_head" in values and "n_embd" in values and values["n_embd"] % values["n_head"]:
        raise ConfigError(f"{script}: --n_head={values['n_head']} does not divide --n_embd={values['n_embd']}; "
                          f"each head takes n_embd / n_head channels")
    if "samples_per_prompt" in values and values["rollout_batch"] % values["samples_per_prompt"]:
        raise ConfigError(f"{script}: --rollout_batch={values['rollout_batch']} must be a multiple of "
                          f"--samples_per_prompt={values['samples_per_prompt']}")
    if "num_minibatches" in values and values["num_minibatches"] > values["rollout_batch"]:
        raise ConfigError(f"{script}: --num_minibatches={values['num_minibatches']} is more than "
                          f"--rollout_batch={values['rollout_batch']} answers")


def cli_config(cls, presets=None, argv=None):
    """parse_config for a script's main(): a bad option exits with its message, not a traceback."""
    try:
        return parse_config(cls, argv, presets)
    except ConfigError as e:
        raise SystemExit(f"error: {e}")


def print_config(config):
    print(", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()))


def run(main):
    """A script's entry point: an expected failure (a missing file, a path that cannot be used
    as given, such as a file where a folder must be or a folder without write permission,
    malformed data, a bad option, a wrong checkpoint, a NaN loss, Ctrl-C) ends with its
    one-line message, not a traceback. Anything else is a bug, and keeps its traceback.
    Ctrl-C exits with 130, the shell's code for SIGINT; under torchrun, every process stops
    and the first (rank 0, which saved) says so."""
    from minift.training import Interrupted, NonFiniteLoss  # DataFormatError is a ValueError
    try:
        main()
        # A DistributedDataParallel wrapper sits in a reference cycle, so it outlives main() until
        # the garbage collector runs, which may be only while the interpreter shuts down. Its
        # gloo process group torn down then can abort the process after a finished run
        # ("terminate called without an active exception", seen once in CI's DDP test). Collect
        # it now, while everything is still alive (and inside the try: a Ctrl-C may land here).
        gc.collect()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError, PermissionError, ValueError,
            NonFiniteLoss) as e:
        sys.exit(f"error: {e}")
    except Interrupted as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            print("interrupted by Ctrl-C: nothing unfinished was marked done; run the same command again to "
                  "continue", file=sys.stderr)
        sys.exit(130)
