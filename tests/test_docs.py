"""The command lines in the docs (README.md, EXERCISES.md, DESIGN.md, FINDINGS.md and every
script's docstring) run a script that exists, with options that script takes and values of the
right type; every option the docs name in passing is some script's; the files they name exist.
No command is run: each is parsed as its script would parse it."""
import ast
import dataclasses
import glob
import importlib
import os
import re
import shlex

import pytest

from conftest import ROOT

DOCS = ("README.md", "EXERCISES.md", "DESIGN.md", "FINDINGS.md")
SCRIPTS = sorted(path for pattern in ("*.py", "data/*.py", "bench/*.py") for path in glob.glob(pattern, root_dir=ROOT)
                 if '__name__ == "__main__"' in open(os.path.join(ROOT, path)).read())
COMMAND_WORDS = ("python ", "python3 ", "torchrun ", "bash ", "echo ")
PLACEHOLDER = re.compile(r"^[A-Z_]+$")   # --seed=N, --slip_scale=S, and <...> below


def fragments(text):
    """[(line number, text)] of every command line (a code line that starts with a command word,
    its backslash continuations joined) and of every inline `code span`, which may run over a
    line break. Fenced blocks count as code; so do lines indented by four spaces or more."""
    lines, found, prose, fence = text.split("\n"), [], [], False
    i = 0
    while i < len(lines):
        line, start = lines[i], i
        if line.lstrip().startswith("```"):
            fence = not fence
        elif (fence or line.startswith("    ")) and line.strip().removeprefix("$ ").startswith(COMMAND_WORDS):
            joined = line.strip().removeprefix("$ ")
            while joined.endswith("\\") and i + 1 < len(lines):
                i += 1
                joined = joined[:-1] + " " + lines[i].strip()
            found.append((start + 1, joined))
        elif not fence:
            prose.append((start + 1, line))
        i += 1
    joined = "\n".join(line for _, line in prose)
    offsets = [0]
    for _, line in prose:
        offsets.append(offsets[-1] + len(line) + 1)
    for m in re.finditer(r"`([^`]+)`", joined):
        row = next(k for k in range(len(prose)) if offsets[k + 1] > m.start())
        found.append((prose[row][0], " ".join(m.group(1).split())))
    return found


def sources():
    """{name: text}: the four docs, and each script's docstring (its lines numbered from the file's
    first line, where the docstring opens), with its shell variables (T=out/...) filled in."""
    texts = {doc: open(os.path.join(ROOT, doc)).read() for doc in DOCS}
    for script in SCRIPTS:
        tree = ast.parse(open(os.path.join(ROOT, script)).read())
        doc = ast.get_docstring(tree, clean=False) or ""
        variables = dict(re.findall(r"^\s*([A-Z]+)=(\S+)", doc, re.M))
        opening = tree.body[0].lineno - 1 if doc else 0   # lines before the docstring's opening quotes
        texts[script] = "\n" * opening + re.sub(r"\$([A-Z]+)", lambda m: variables.get(m.group(1), m.group(0)), doc)
    return texts


def script_path(name):
    """A script as the docs name it: its path, or a bare name such as make_preferences.py."""
    if os.path.isfile(os.path.join(ROOT, name)):
        return name
    same = [s for s in SCRIPTS if os.path.basename(s) == name]
    return same[0] if len(same) == 1 else name


def commands(fragment, in_span):
    """[(script, args)] of the commands in one fragment: `python X.py ...`, `torchrun ... X.py ...`,
    `bash X.sh`, and in a code span also a bare `X.py --option`. None for a span of options only."""
    try:
        tokens = shlex.split(re.sub(r"<[^<>]*>", "PLACEHOLDER", fragment), comments=True)
    except ValueError:   # prose in quotes: no command
        return []
    found, i = [], 0
    while i < len(tokens):
        t, script = tokens[i], None
        if t in ("python", "python3", "bash") and i + 1 < len(tokens) and tokens[i + 1].endswith((".py", ".sh")):
            script, i = tokens[i + 1], i + 2
        elif t == "torchrun":
            i += 1
            while i < len(tokens) and tokens[i].startswith("--"):
                i += 1
            if i < len(tokens) and tokens[i].endswith(".py"):
                script, i = tokens[i], i + 1
        elif in_span and t.endswith(".py") and i + 1 < len(tokens) and tokens[i + 1].startswith("--"):
            script, i = script_path(t), i + 1
        elif in_span and i == 0 and t.startswith("--"):
            return [(None, [a for a in tokens if a.startswith("--")])]
        else:
            i += 1
        if script:
            args = []
            while i < len(tokens) and tokens[i] not in ("&&", "||", "|", ";", "python", "python3", "torchrun"):
                if tokens[i] != "...":   # "--rollout_batch=128 ...": the rest as before
                    args.append(tokens[i])
                i += 1
            found.append((script, args))
    return found


def documented_commands():
    """[(where, script, args)] for every command in the docs, each once."""
    seen = {}
    for name, text in sources().items():
        for line, fragment in fragments(text):
            in_span = not fragment.startswith(COMMAND_WORDS)
            for script, args in commands(fragment, in_span):
                seen.setdefault((script, tuple(args)), f"{name}:{line}")
    return [(where, script, list(args)) for (script, args), where in seen.items()]


COMMANDS = documented_commands()


def module_of(script):
    return importlib.import_module(script.removesuffix(".py").replace("/", "."))


def argparse_options(script):
    return set(re.findall(r'add_argument\("--(\w+)"', open(os.path.join(ROOT, script)).read()))


def all_options():
    """Every option some script takes."""
    names = set()
    for script in SCRIPTS:
        source = open(os.path.join(ROOT, script)).read()
        names |= argparse_options(script) | set(re.findall(r'"--(\w+)" in sys.argv', source))
        if "class Config" in source:
            names |= {f.name for f in dataclasses.fields(module_of(script).Config)}
    return names | set(module_of("bench/bench_train.py").OPTIONS)


def problem(script, args, monkeypatch):
    """What is wrong with `python script args`, or None. Parses the options as the script does,
    and stops before it does any work."""
    from minift.config import ConfigError, parse_config
    if not os.path.isfile(os.path.join(ROOT, script)):
        return f"no script {script}"
    if args in (["--help"], ["-h"]) or script.endswith(".sh"):
        return None if script.endswith(".py") or not args else f"{script} takes no options"
    module = module_of(script)
    if hasattr(module, "Config"):
        fields = {f.name for f in dataclasses.fields(module.Config)}
        placeholders = [a for a in args if a.startswith("--") and PLACEHOLDER.match(a.partition("=")[2])]
        for a in placeholders:   # --seed=N: a value to choose, so only its name is checked
            if a[2:].partition("=")[0] not in fields:
                return f"{script}: unknown option {a}"
        try:
            cfg = parse_config(module.Config, [a for a in args if a not in placeholders],
                               getattr(module, "PRESETS", None), script=script)
        except ConfigError as e:
            return str(e)
        if script == "compare.py":
            unknown = set(cfg.methods.split(",")) - set(module.METHODS)
            return f"compare.py: no method {', '.join(sorted(unknown))}" if unknown else None
        if script == "bench/compare_sft.py" and cfg.change:   # --change holds train_sft.py's options
            return problem("train_sft.py", shlex.split(cfg.change), monkeypatch)
        return None
    if argparse_options(script):   # data/make_sft.py, data/prepare.py: main() up to the work

        class Parsed(Exception):
            pass

        def parsed(*a, **k):
            raise Parsed
        worker = {"data.make_sft": "make_sft", "data.prepare": "prepare"}[module.__name__]
        monkeypatch.setattr(module, worker, parsed)
        try:
            module.main(args)
        except Parsed:
            return None
        except ValueError as e:
            return f"{script}: {e}"
        except SystemExit as e:   # argparse has printed why
            return f"{script}: {e.code if isinstance(e.code, str) else 'refused ' + ' '.join(args)}"
        return f"{script}: main() returned before its work"
    if script == "bench/bench_train.py":
        for a in args:
            name, _, value = a.removeprefix("--").partition("=")
            if not a.startswith("--") or name not in module.OPTIONS:
                return f"{script}: unknown option {a}"
            if name == "config" and value not in module.CONFIGS:
                return f"{script}: no config {value}"
        return None
    if script == "bench/bench_generate.py":
        from bench.bench_generate import JOBS
        return next((f"{script}: unknown option {a}" for a in args if a not in JOBS), None)
    if script in ("plot.py", "report_card.py"):   # one path (report_card.py: or none)
        ok = len(args) == 1 or (script == "report_card.py" and not args)
        return None if ok and not any(a.startswith("--") and not a.startswith("--out_dir=") for a in args) \
            else f"{script} takes one path, not {args}"
    return f"no way to check {script}"


def test_the_docs_commands_are_found():
    """The extraction itself: commands in code blocks, in docstrings, in spans over a line
    break, bare script names, and --change's own options."""
    found = {(script, tuple(args)) for _, script, args in COMMANDS}
    assert len(COMMANDS) > 150
    assert ("train_ppo.py", ("--kl_coef=0", "--sft_ckpt=out/tiny/sft/ckpt.pt", "--reward_ckpt=out/tiny/reward/ckpt.pt",
            "--prompts=out/tiny/data/sft/rl_prompts.jsonl", "--eval_data=out/tiny/data/sft/test.jsonl",
            "--out_dir=out/tiny/ppo_kl0")) in found                                      # EXERCISES.md, continued
    assert ("compare.py", ("--methods=sft,ppo", "--seeds=1337,2,3")) in found           # README.md, over a line break
    assert ("evaluate.py", ("--ckpt=out/tiny/sft/ckpt.pt", "--input=out/tiny/data/sft/test.jsonl",
            "--earlier_turn")) in found                                                  # evaluate.py, $T filled in
    assert ("data/make_preferences.py", ("--k=16",)) in found                            # FINDINGS.md, a bare name
    assert ("bench/compare_sft.py", ("--change=--optimizer=adamw",)) in found
    assert problem("compare.py", ["--methods=sft,pp0"], None) == "compare.py: no method pp0"
    assert "unknown option --lerning_rate" in problem("bench/compare_sft.py", ["--change=--lerning_rate=1"], None)
    assert "unknown option --seeed" in problem("pipeline.py", ["--seeed=N"], None)


@pytest.mark.parametrize("where, script, args", [c for c in COMMANDS if c[1]], ids=[c[0] for c in COMMANDS if c[1]])
def test_every_documented_command_parses(where, script, args, monkeypatch):
    assert problem(script, args, monkeypatch) is None, f"{where}: python {script} {' '.join(args)}"


def test_every_option_named_in_passing_exists():
    """`--whiten_rewards=true` in a sentence: some script takes it."""
    known = all_options() | {"key", "help", "nproc_per_node", "index-url"}
    unknown = [(where, a) for where, script, args in COMMANDS if script is None for a in args
               if a[2:].partition("=")[0] not in known]
    assert not unknown


def test_the_files_the_docs_name_exist():
    """Every `path.py` (or .md, .sh, .png) in the four docs: a path from the repository root, or a
    module named bare beside one (`lexicon.py` in minift/synthetic/). Runs write the ones in out/."""
    everything = {os.path.basename(p) for p in glob.glob("**/*", root_dir=ROOT, recursive=True)}
    missing = []
    for doc in DOCS:
        text = open(os.path.join(ROOT, doc)).read()
        for line, fragment in fragments(text):
            for name in re.findall(r"^[\w./-]+\.(?:py|md|sh|png)$", fragment):
                if name.startswith("out/"):
                    continue
                if not os.path.exists(os.path.join(ROOT, name)) and ("/" in name or name not in everything):
                    missing.append(f"{doc}:{line}: {name}")
    assert not missing
