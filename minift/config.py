"""
Configuration: each script declares a dataclass of hyperparameters at its top (nanoGPT
style), a dict of presets, and calls `parse_config`. The command line then reads

    python train_pretrain.py --preset=tiny --max_steps=500 --learning_rate=3e-4

Presets are applied first, then the `--key=value` overrides, each checked against the
dataclass field's type. A typo or a bad value stops the script with a message that
names the option and says what was expected, before any work is done.
"""

import dataclasses
import difflib
import gc
import sys


class ConfigError(ValueError):
    pass


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(name, text, default, script):
    """Parse `text` into the type of the field's default value."""
    kind = type(default)
    try:
        if kind is bool:
            low = text.lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(f"{script}: --{name} expects {kind.__name__}, got {text!r}") from None


def parse_config(cls, argv=None, presets=None, script=None):
    """Build a `cls` dataclass from defaults, then `--preset=NAME`, then `--key=value`s.
    Accepts `--key=value` and `--key value`. Raises ConfigError on anything unknown."""
    argv = sys.argv[1:] if argv is None else list(argv)
    script = script or (sys.argv[0] if sys.argv and sys.argv[0] else cls.__name__)
    presets = presets or {}
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

    # The preset goes first, whatever its position, so explicit overrides always win.
    # (A script without presets, like pipeline.py, may still have a plain `preset` field.)
    for key, value in pairs:
        if key == "preset" and presets:
            if value not in presets:
                raise ConfigError(f"{script}: unknown preset {value!r}; choose from {', '.join(presets)}")
            config = dataclasses.replace(config, **presets[value])
            if "preset" in fields:
                config.preset = value
    for key, value in pairs:
        if key == "preset" and presets:
            continue
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            hint = f" Did you mean --{hint[0]}?" if hint else ""
            raise ConfigError(f"{script}: unknown option --{key}.{hint} "
                              f"Valid options: {', '.join('--' + f for f in fields)}")
        setattr(config, key, _convert(key, value, getattr(cls(), key), script))
    return config


def cli_config(cls, presets=None, argv=None):
    """parse_config for a script's main(): a bad option exits with its message, not a traceback."""
    try:
        return parse_config(cls, argv, presets)
    except ConfigError as e:
        raise SystemExit(f"error: {e}")


def print_config(config):
    print(", ".join(f"{k}={v}" for k, v in dataclasses.asdict(config).items()))


def run(main):
    """A script's entry point: an expected failure (a missing file, malformed data, a bad
    option, a NaN loss) ends with its one-line message, not a traceback. Anything else is
    a bug, and keeps its traceback."""
    from minift.training import NonFiniteLoss  # DataFormatError is a ValueError
    try:
        main()
    except (FileNotFoundError, ValueError, NonFiniteLoss) as e:
        sys.exit(f"error: {e}")
    # A DistributedDataParallel wrapper sits in a reference cycle, so it outlives main() until
    # the garbage collector runs, which may be only while the interpreter shuts down. Its
    # gloo process group torn down then can abort the process after a finished run
    # ("terminate called without an active exception", seen once in CI's DDP test). Collect
    # it now, while everything is still alive.
    gc.collect()
