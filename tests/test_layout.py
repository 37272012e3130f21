"""The library's layout: the method (minift/*.py) and the synthetic world (minift/synthetic/) import
each other only where DESIGN.md says, and no minift modules import each other in a cycle."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_ALLOWED_SYNTHETIC = {"minift.evaluation": {"minift.synthetic.scoring"}}
SYNTHETIC_ALLOWED_METHOD = set()  # the synthetic world needs nothing of the method


def minift_modules():
    """{"minift.synthetic.world": path, ...} for every module under minift/."""
    modules = {}
    for folder, _, names in os.walk(os.path.join(ROOT, "minift")):
        for name in names:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), ROOT).removesuffix(".py")
                modules[rel.replace(os.sep, ".").removesuffix(".__init__")] = os.path.join(folder, name)
    return modules


def imports(path, known):
    """The minift modules that the file imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from minift.synthetic import world` imports a module; `from minift.x import f` a name
            found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                      for alias in node.names}
    return {name for name in found if name in known}


def import_graph():
    modules = minift_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def is_synthetic(name):
    return name == "minift.synthetic" or name.startswith("minift.synthetic.")


def test_the_modules_are_found():
    graph = import_graph()
    assert {"minift.model", "minift.evaluation", "minift.synthetic.world", "minift.synthetic.gold"} <= set(graph)
    assert graph["minift.synthetic.gold"] >= {"minift.synthetic.world", "minift.synthetic.tasks"}
    assert graph["minift.evaluation"] == {"minift.engine", "minift.formats", "minift.synthetic.scoring"}


def test_method_imports_synthetic_only_in_evaluation():
    for name, deps in import_graph().items():
        if not is_synthetic(name) and name != "minift":
            assert {d for d in deps if is_synthetic(d)} <= METHOD_ALLOWED_SYNTHETIC.get(name, set()), name


def test_synthetic_imports_nothing_of_the_method():
    for name, deps in import_graph().items():
        if is_synthetic(name):
            assert {d for d in deps if not is_synthetic(d)} <= SYNTHETIC_ALLOWED_METHOD, name


def find_cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None
