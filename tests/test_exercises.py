"""EXERCISES.md: every exercise's check fails before the work and passes after it.

"After" is our own code, which the rest of the suite runs: each check is a test of the suite.
"Before" is the exercise's function emptied (raising NotImplementedError, as it does once its
body is deleted), where each of the check's tests must fail, and fail with that error: not by
naming a test that does not exist, not for an unrelated reason."""
import ast
import json
import os
import re
import runpy
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT


def read_exercises():
    """[{title, target: (path, "function" or "Class.method") or None, check: command}]."""
    with open(os.path.join(ROOT, "EXERCISES.md")) as f:
        sections = re.split(r"^## ", f.read(), flags=re.M)[1:]
    exercises = []
    for text in sections:
        target = re.search(r"^\*\*Write:\*\* `([\w.]+)` in `([\w/.]+)`", text, re.M)
        check = re.search(r"^\*\*Check:\*\* `([^`]+)`", text, re.M)
        exercises.append({"title": text.splitlines()[0], "check": check and check.group(1),
                          "target": target and (target.group(2), target.group(1))})
    return exercises


EXERCISES = read_exercises()


def find_function(tree, qualname):
    node = tree
    for name in qualname.split("."):
        node = next((n for n in ast.iter_child_nodes(node)
                     if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name), None)
        assert node is not None, f"no {qualname}"
    return node


def test_exercises_name_a_target_and_a_check_that_exists():
    assert 6 <= len(EXERCISES) <= 13
    for ex in EXERCISES:
        assert ex["check"], ex["title"]
        if ex["target"]:
            path, qualname = ex["target"]
            with open(os.path.join(ROOT, path)) as f:
                find_function(ast.parse(f.read()), qualname)
        for node_id in re.findall(r"tests/\S+::\w+", ex["check"]):   # the suite runs each of them
            path, name = node_id.split("::")
            with open(os.path.join(ROOT, path)) as f:
                find_function(ast.parse(f.read()), name)


def test_every_check_fails_on_an_empty_body():
    """Every check's tests at once, in one process (most of the time is starting Python and
    torch), each with its exercise's function emptied while it runs (tests/stub_exercises.py)."""
    targets = {node_id: ex["target"] for ex in EXERCISES if ex["target"]
               for node_id in re.findall(r"tests/\S+::\w+", ex["check"])}
    r = subprocess.run([sys.executable, "tests/stub_exercises.py", json.dumps(targets)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"})  # summary lines uncut
    failed = dict(re.findall(r"^FAILED (\S+) - (\w+)", r.stdout, re.M))
    assert failed == {node_id: "NotImplementedError" for node_id in targets}, r.stdout[-3000:]


def test_a_step_to_take_fails_before_it_is_taken(tmp_path, monkeypatch, capsys):
    """An exercise with no function to write (train on your own text): its check is a script
    that fails until the step is done, here in an empty folder."""
    monkeypatch.chdir(tmp_path)
    steps = [ex for ex in EXERCISES if not ex["target"]]
    assert steps
    for ex in steps:
        command = shlex.split(ex["check"])
        assert command[0] == "python", ex["check"]
        monkeypatch.setattr(sys, "argv", command[1:])
        with pytest.raises(SystemExit, match="no checkpoint"):
            runpy.run_path(os.path.join(ROOT, command[1]), run_name="__main__")
