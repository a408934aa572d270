"""Every ``graft.x.y`` the source names exists, and every doctest import in it works.

Docstrings, comments and strings name modules and functions (``:func:`graft.data.check.check```,
"see ``graft.core.preprocessing``"); when a module moves, those names rot silently, and a
reader following one lands nowhere. This test resolves each of them to an importable module
or attribute, runs every import line of every doctest (skipped examples included: a reader
copies them), and runs the examples that are not skipped.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import re
import types
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "graft"
#: ``graft.`` followed by dotted identifiers, not preceded by a word character or a dot
#: (``.graft.lock`` is a file, not a module path).
NAME = re.compile(r"(?<![\w.])graft(?:\.[A-Za-z_]\w*)+")
#: A last part that makes the name a file name (``graft.toml``), not a module path.
FILE_SUFFIXES = {"lock", "toml", "yaml", "yml", "json", "csv", "log", "txt", "md", "html"}
#: Doctest directive that marks an example as not run.
SKIP = re.compile(r"#\s*doctest:.*\+SKIP")


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if parts[-1] == "__main__":
            continue  # running it would start the CLI
        yield ".".join(parts), path


def resolves(name: str) -> bool:
    """Whether ``name`` is an importable module or an attribute of one (``a.b.c`` tries
    module ``a.b.c``, then attribute ``c`` of module ``a.b``, and so on)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for part in parts[i:]:
            try:
                obj = getattr(obj, part)
            except AttributeError:
                return False
        return True
    return False


def named_references(text: str) -> list[tuple[int, str]]:
    """``(line, name)`` for every dotted ``graft.`` name in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in NAME.finditer(line):
            name = match.group(0)
            if name.rsplit(".", 1)[-1] not in FILE_SUFFIXES:
                found.append((number, name))
    return found


def stale_references() -> list[str]:
    stale = []
    for _, path in _modules():
        for number, name in named_references(path.read_text("utf-8")):
            if not resolves(name):
                stale.append(f"{path.relative_to(SRC.parent)}:{number}: {name}")
    return stale


def test_every_named_graft_path_resolves():
    stale = stale_references()
    assert not stale, "names of modules/attributes that do not exist:\n" + "\n".join(stale)


def test_the_resolver_can_fail(tmp_path):
    """The check above is only worth something if a stale name makes it fail."""
    assert resolves("graft.data.check.KINDS") and resolves("graft.core.preprocessing")
    bad = "graft.data.check.no_such_function_" + tmp_path.name.replace("-", "_")
    assert not resolves(bad)
    assert not resolves("graft.datacheck.check")  # the module that moved to graft.data.check
    text = f"see :func:`{bad}` and ``.graft.lock`` and graft.toml\n"
    assert named_references(text) == [(1, bad)]


def _examples():
    """``(module name, docstring name, examples, globals)`` of every docstring with examples."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name, _ in _modules():
        module = importlib.import_module(name)
        for test in finder.find(module):
            if test.examples:
                yield name, test


def _module_attributes(source: str, namespace: dict) -> list[str]:
    """``alias.attr`` chains in ``source`` whose root is a module bound in ``namespace``."""
    chains = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            root = namespace.get(node.value.id)
            if isinstance(root, types.ModuleType):
                chains.append((root, f"{node.value.id}.{node.attr}", node.attr))
    return [text for root, text, attr in chains if not hasattr(root, attr)]


def _is_import(source: str) -> bool:
    return isinstance(ast.parse(source).body[0], ast.Import | ast.ImportFrom)


@pytest.fixture(scope="module")
def examples():
    return list(_examples())


def test_every_doctest_import_runs_and_names_what_exists(examples):
    """Skipped examples too: their imports and ``module.function`` names must be real."""
    problems = []
    for _, test in examples:
        namespace = dict(test.globs)
        for example in test.examples:
            where = f"{test.name} (line {test.lineno + example.lineno + 1})"
            if _is_import(example.source):
                try:
                    exec(compile(example.source, where, "exec"), namespace)
                except ImportError as error:
                    problems.append(f"{where}: {example.source.strip()} -> {error}")
                    continue
            for missing in _module_attributes(example.source, namespace):
                problems.append(f"{where}: {missing} does not exist")
    assert not problems, "\n".join(problems)


def test_examples_that_are_not_skipped_pass(examples):
    """An example shown with its output is a promise: it runs and prints that."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    ran = 0
    for _, test in examples:
        if all(SKIP.search(e.source) or e.options.get(doctest.SKIP) for e in test.examples):
            continue
        ran += 1
        runner.run(test, clear_globs=False)
    result = runner.summarize(verbose=False)
    assert ran and result.failed == 0, f"{result.failed} doctest example(s) failed (see above)"


def test_the_doctest_check_can_fail():
    """A doctest that imports a module that does not exist is reported."""
    parser = doctest.DocTestParser()
    test = parser.get_doctest(
        ">>> from graft import datacheck  # doctest: +SKIP\n", {}, "bad", "bad.py", 0
    )
    namespace = {}
    with pytest.raises(ImportError):
        exec(test.examples[0].source, namespace)
    namespace = {"graft": importlib.import_module("graft")}
    assert _module_attributes("graft.no_such_thing()", namespace) == ["graft.no_such_thing"]
