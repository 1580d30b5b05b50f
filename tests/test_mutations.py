"""tools/mutations.py stays usable: every breakage still applies to the source, and names a test that exists.
(Running the breakages takes minutes: `python tools/mutations.py`.)"""

import ast
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_mutations():
    spec = importlib.util.spec_from_file_location("vla_tools_mutations", ROOT / "tools" / "mutations.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module.MUTATIONS


def test_every_mutation_applies_once_and_names_existing_tests():
    mutations = load_mutations()
    assert len({m.id for m in mutations}) == len(mutations) >= 30
    for m in mutations:
        source = (ROOT / m.path).read_text()
        assert source.count(m.old) == 1, f"{m.id}: the snippet occurs {source.count(m.old)} times in {m.path}"
        assert m.new != m.old
        for test in m.tests:
            path, name = test.split("::")
            tree = ast.parse((ROOT / path).read_text())
            functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name.split("[")[0] in functions, f"{m.id}: no test {test}"
