"""The engine's layering, read from the source: no import circles, models import no pipeline, importer or
trainer, the engine never imports Qt, and every part the registry names exists."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "app")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(p, root): p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path], root: Path = ROOT) -> set[str]:
    """Every module of ours that `path` imports, at the top or inside a function."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # "from engine import composite" names the module engine.composite; else take the longest known prefix
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = source_modules(root)
    return {name: imports_of(path, modules, root) for name, path in modules.items()}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the import circles (components of more than one module)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_module_imports_one_that_imports_it_back():
    circles = strongly_connected(import_graph())
    assert circles == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_finder_finds_a_circle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("forbidden", ["engine.pipelines", "engine.importers", "engine.train", "engine.jobs",
                                       "engine.registry", "engine.commands", "engine.model_store", "app"])
def test_models_import_no_pipeline_importer_or_trainer(forbidden):
    graph = import_graph()
    offenders = {name: sorted(t for t in targets if t == forbidden or t.startswith(forbidden + "."))
                 for name, targets in graph.items() if name.startswith("engine.models")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_engine_never_imports_qt():
    offenders = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("PySide6", "shiboken6")]
    assert offenders == []


def test_the_import_walker_sees_function_level_and_relative_imports(tmp_path):
    (tmp_path / "engine").mkdir()
    path = tmp_path / "engine" / "a.py"
    path.write_text("import os\n\ndef f():\n    from engine import b\n    from . import c\n")
    modules = {"engine": tmp_path / "engine" / "__init__.py", "engine.a": path, "engine.b": path, "engine.c": path}
    assert imports_of(path, modules, tmp_path) == {"engine", "engine.b", "engine.c"}


def test_every_part_the_registry_names_exists():
    from engine import registry

    for spec in registry.SPECS:
        assert spec.modes == tuple(m for m in spec.modes if m in registry.MODES), spec.kind
        module = __import__(spec.models, fromlist=["_"])
        assert module.__name__ == spec.models
        if spec.backend:
            backend = registry.create_backend(spec.kind)
            assert backend.name == spec.kind and callable(backend.run)
        if spec.importer:
            importer = registry.resolve(spec.importer)
            assert importer.kind == spec.kind and callable(importer.run) and callable(importer.add_arguments)
        for task in spec.tasks:
            assert callable(registry.task_factory(task))


def test_a_broken_engine_is_named_with_its_error():
    from engine import registry
    from engine.errors import InputError

    registry.add_spec(registry.ModelSpec(kind="broken", title="broken", models="engine.models.asset",
                                         backend="engine.pipelines.no_such_module:Backend"))
    try:
        with pytest.raises(InputError, match=r"the broken engine failed to load .*no_such_module"):
            registry.create_backend("broken")
        with pytest.raises(InputError, match=r"no engine backend named 'nothing' \(available: .*asset"):
            registry.create_backend("nothing")
    finally:
        registry.remove_spec("broken")
