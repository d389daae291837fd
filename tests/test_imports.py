"""The import direction (docs/ARCHITECTURE.md): every module sits in a layer and imports only from its own
layer or the ones below, with no circle anywhere; `fada --help` imports neither torch nor the curation stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fada_cli", "pipelines", "filters")

# lowest first: a module may import from its own layer (without a circle) and from the layers before it
LAYERS = {
    "foundations": [
        "pipelines.errors", "pipelines.extras", "pipelines.devices", "pipelines.rendezvous", "pipelines.progress",
        "pipelines.media",
        "pipelines.manifest", "pipelines.checkpoint", "pipelines.faces", "pipelines.fada_math",
        "pipelines.schedulers", "pipelines.model_config", "pipelines.metrics", "pipelines.metrics.*",
    ],
    "curation scorers": ["filters", "filters.*"],
    "the diffusion model": [
        "pipelines.audio", "pipelines.attention", "pipelines.hallo_modules", "pipelines.hallo_inputs",
        "pipelines.model",
    ],
    "training and generation": [
        "pipelines.data", "pipelines.latent_cache", "pipelines.training", "pipelines.train_teacher",
        "pipelines.distill", "pipelines.generate", "pipelines.pipeline", "pipelines", "pipelines.info",
        "pipelines.app", "pipelines.hallo",
    ],
    "workflows": [
        "pipelines.curate_ray", "pipelines.curate", "pipelines.evaluate", "pipelines.cfg_sweep",
        "pipelines.demo_data", "pipelines.demo",
    ],
    "commands": ["fada_cli", "fada_cli.*"],
}  # fmt: skip


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def layer_of(module: str) -> int:
    for index, patterns in enumerate(LAYERS.values()):
        for pattern in patterns:
            if module == pattern or (pattern.endswith(".*") and module.startswith(pattern[:-1])):
                return index
    raise AssertionError(f"{module} is in no layer of tests/test_imports.py; place it (and in docs/ARCHITECTURE.md)")


def imports_of(module: str, known: set[str]) -> set[str]:
    """Every project module ``module`` imports, at the top or inside a function (not under TYPE_CHECKING)."""
    path = ROOT / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text())
    skipped = {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for statement in branch.body
        for node in ast.walk(statement)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from pipelines import media` imports the module pipelines.media
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    known = set(module_names())
    return {module: imports_of(module, known) for module in known}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_imports_point_down_the_layers():
    names = list(LAYERS)
    upward = [
        f"{module} ({names[layer_of(module)]}) imports {target} ({names[layer_of(target)]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_the_named_rules_hold():
    """The three rules of the direction, checked on what each side reaches (transitively)."""
    graph = import_graph()

    def reach(module: str) -> set[str]:
        seen, todo = set(), [module]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        return seen

    for module in graph:
        if module.startswith("filters"):  # filters never import the diffusion model
            assert "pipelines.model" not in reach(module), module
        if module.startswith("pipelines.metrics") or module == "pipelines.evaluate":  # shared metrics, not scorers
            assert not any(m.startswith("filters") for m in reach(module)), module
    model_side = reach("pipelines.model") | {"pipelines.model"}  # the model knows nothing of training
    assert not model_side & {"pipelines.training", "pipelines.train_teacher", "pipelines.distill", "pipelines.data"}


def test_fada_help_imports_neither_torch_nor_the_curation_stack():
    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from fada_cli.main import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0 and 'train-teacher' in result.output and 'cfg-sweep' in result.output\n"
        "result = CliRunner().invoke(app, ['import', '--help'])\n"  # a group lists its subcommands as lazily
        "assert result.exit_code == 0 and 'hallo' in result.output, result.output\n"
        "heavy = ['torch', 'gradio', 'ray', 'mediapipe', 'cv2', 'pandas', 'scipy', 'filters', 'pipelines.curate',\n"
        "         'fada_cli.import_hallo']\n"
        "print(','.join(name for name in heavy if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == ""
