"""The import arrows between web/, worker/, models/ and seed/, read from the source (every import, including
those inside functions; relative imports resolved against the module's package).

Allowed across packages: web -> models, web -> worker.handoff (no other worker module), web -> seed,
worker -> models, seed -> models. No circle between top-level packages. Inside models, only models/services
and models/infra may import models.services (the tables and pure rules sit below the services)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("web", "worker", "models", "seed")
ALLOWED = {("web", "models"), ("web", "worker"), ("web", "seed"), ("worker", "models"), ("seed", "models")}
WEB_MAY_IMPORT_FROM_WORKER = {"worker.handoff"}


# --- the checker -------------------------------------------------------------------------------------------

def top(module):
    return module.split(".")[0]


def source_files():
    """{module name: (path, is_package)} for every .py file of the four packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            found[".".join(parts)] = (path, is_package)
    return found


def imports_of(module, source, is_package, known):
    """The modules `source` (the text of `module`) imports, anywhere in its tree. `from X import name` counts as
    X.name when that is a known module, else as X."""
    package = module if is_package else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{module}: relative import beyond the top-level package")
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                targets.add(candidate if candidate in known else base)
    return targets


def import_graph(sources):
    """{module: set of imported modules of the four packages}; `sources` maps module -> (text, is_package)."""
    known = set(sources)
    graph = {}
    for module, (text, is_package) in sources.items():
        graph[module] = {t for t in imports_of(module, text, is_package, known) if top(t) in PACKAGES}
    return graph


def repo_graph():
    return import_graph({m: (path.read_text(), is_pkg) for m, (path, is_pkg) in source_files().items()})


def forbidden_arrows(graph):
    """(importer, imported) pairs that cross packages in a direction not allowed."""
    bad = set()
    for src, targets in graph.items():
        for dst in targets:
            if top(src) == top(dst):
                continue
            if (top(src), top(dst)) not in ALLOWED:
                bad.add((src, dst))
            elif top(src) == "web" and top(dst) == "worker" and dst not in WEB_MAY_IMPORT_FROM_WORKER:
                bad.add((src, dst))
    return bad


def services_imported_from_below(graph):
    """(importer, imported) pairs where a models module outside services/infra imports models.services."""
    below = [m for m in graph if top(m) == "models"
             and not m.startswith(("models.services", "models.infra"))]
    return {(m, d) for m in below for d in graph[m]
            if d == "models.services" or d.startswith("models.services.")}


def package_cycles(graph):
    """Circles in the graph of top-level packages (each as a list of packages, first repeated at the end)."""
    edges = {}
    for src, targets in graph.items():
        for dst in targets:
            if top(src) != top(dst):
                edges.setdefault(top(src), set()).add(top(dst))
    cycles, done = [], set()

    def visit(node, path):
        if node in path:
            cycles.append(path[path.index(node):] + [node])
            return
        if node in done:
            return
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, path + [node])
        done.add(node)

    for node in sorted(edges):
        visit(node, [])
    return cycles


# --- the rules on the real code ----------------------------------------------------------------------------

def test_the_walk_sees_the_code():
    """The scan finds the packages' modules and some arrows known to exist (so an empty scan cannot pass)."""
    graph = repo_graph()
    assert {"web.purchases", "worker.tasks", "models.purchases", "seed.loader"} <= set(graph)
    assert "worker.handoff" in graph["web.purchases"]
    assert "worker.handoff" in graph["web"]  # `from worker import handoff`
    assert "models.purchases" in graph["models.services.performance_queue"]  # `from ..purchases import`
    assert "seed.loader" in graph["web.cli"]  # imported inside a function


def test_no_forbidden_arrows_between_packages():
    """models imports none of web/worker/seed; worker none of web/seed; seed none of web/worker; web reaches
    the worker only through worker.handoff."""
    assert forbidden_arrows(repo_graph()) == set()


def test_no_circle_between_packages():
    """The top-level packages form no cycle."""
    assert package_cycles(repo_graph()) == []


def test_models_below_services_do_not_import_services():
    """No module of models/ outside models/services and models/infra imports models.services."""
    assert services_imported_from_below(repo_graph()) == set()


# --- the checker catches what it must ----------------------------------------------------------------------

def synthetic(modules):
    """A graph from {module: source} (modules named '...__init__' are packages)."""
    sources = {}
    for name, text in modules.items():
        is_package = name.endswith(".__init__")
        sources[name.removesuffix(".__init__")] = (text, is_package)
    return import_graph(sources)


def test_checker_flags_a_forbidden_arrow():
    """`from web import x` placed under models is flagged."""
    graph = synthetic({"models.fake": "from web import x\n", "web.__init__": ""})
    assert forbidden_arrows(graph) == {("models.fake", "web")}


def test_checker_sees_imports_inside_functions_and_other_worker_modules():
    """An import of a worker module other than handoff, hidden in a function of web, is flagged."""
    graph = synthetic({"web.views": "def f():\n    from worker import tasks\n    import worker.celery_app\n",
                       "worker.tasks": "", "worker.handoff": "from .tasks import go\n"})
    assert forbidden_arrows(graph) == {("web.views", "worker.tasks"), ("web.views", "worker.celery_app")}
    ok = synthetic({"web.views": "from worker.handoff import request_settlement\n", "worker.handoff": ""})
    assert forbidden_arrows(ok) == set()


def test_checker_resolves_relative_imports():
    """`from ..x import y` and `from . import z` resolve against the module's package, `__init__` included."""
    graph = synthetic({
        "models.services.__init__": "from . import escrow\n",
        "models.services.escrow": "from ..purchases import Purchase\nfrom .. import ledger\n",
        "models.purchases": "", "models.ledger": "",
        "models.runtime": "def f():\n    from .services.escrow import settle\n",
    })
    assert graph["models.services"] == {"models.services.escrow"}
    assert graph["models.services.escrow"] == {"models.purchases", "models.ledger"}
    assert services_imported_from_below(graph) == {("models.runtime", "models.services.escrow")}
    with pytest.raises(ValueError):
        synthetic({"seed.loader": "from ... import x\n"})


def test_checker_flags_worker_and_seed_reaching_up():
    """worker -> web, worker -> seed and seed -> worker are all flagged."""
    graph = synthetic({"worker.tasks": "import web.auth\nfrom seed.loader import load\n",
                       "seed.loader": "from worker.handoff import x\n"})
    assert forbidden_arrows(graph) == {("worker.tasks", "web.auth"), ("worker.tasks", "seed.loader"),
                                       ("seed.loader", "worker.handoff")}


def test_cycle_detector():
    """A circle between packages is reported; the allowed layering has none."""
    circle = synthetic({"models.a": "import worker.b\n", "worker.b": "import web.c\n", "web.c": "import models.a\n"})
    assert package_cycles(circle) == [["models", "worker", "web", "models"]]
    two = synthetic({"seed.a": "import models.b\n", "models.b": "from seed import a\n"})
    assert package_cycles(two) == [["models", "seed", "models"]]
    layered = synthetic({"web.a": "import worker.handoff\nimport seed.x\nimport models.y\n",
                         "worker.handoff": "import models.y\n", "seed.x": "import models.y\n", "models.y": ""})
    assert package_cycles(layered) == []
