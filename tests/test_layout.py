"""The shape of the package, kept the way issue 22 set it: no import circles among tinyddpm's files, at most 10
files flat in tinyddpm/, no module importing another package's underscore names, a README that stays a guide, and
every name of the td.* API that existed before the layout change still importable."""
import ast
from pathlib import Path

import pytest

import tinyddpm

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tinyddpm"
MAX_FLAT_FILES = 10
MAX_README_LINES = 300

# td.* before the layout change (commit be5a8f0's __all__, plus viz): each must still import
API_BEFORE = [
    "diffusion", "ops", "UNetConfig", "count_params", "init_params", "unet_backward", "unet_forward", "unet_model",
    "GuidedModel", "Trajectory", "make_schedule", "q_sample", "sample", "sample_digits", "PRESETS", "TrainConfig",
    "TrainState", "default_preset", "make_run_schedule", "new_state", "preset", "train", "train_step",
    "load_checkpoint", "load_for_sampling", "resume_state", "save_state", "from_model_range", "load_dataset",
    "load_image_folder", "load_mnist", "to_model_range", "device_xp", "get_device", "get_xp", "make_rng",
    "seed_everything", "set_device", "to_device", "to_numpy", "viz",
]


def modules() -> dict:
    """{dotted module name: path} of every .py file in the package (a package is named by its __init__.py)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> list:
    """[(target module, imported names)] of every import in the file, inside functions too, made absolute."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            target = (base + ("." + node.module if node.module else "")) if node.level else node.module
            out.append((target, [alias.name for alias in node.names]))
    return out


def import_graph() -> dict:
    """{module: modules it imports}, counting `from package import module` as importing that module. Edges into a
    package's __init__ are left out: a package re-exporting its files' names is not a circle of files."""
    mods = modules()
    packages = {m for m, p in mods.items() if p.name == "__init__.py"}
    graph = {}
    for name, path in mods.items():
        edges = set()
        for target, names in imports(name, path):
            for candidate in [target] + [f"{target}.{n}" for n in names]:
                if candidate in mods and candidate != name and candidate not in packages:
                    edges.add(candidate)
        graph[name] = edges
    return graph


def circles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_the_circle_finder_finds_a_circle():
    # the control: a graph with a circle through three modules and one without
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_at_most_ten_files_flat_in_the_package():
    flat = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(flat) <= MAX_FLAT_FILES, flat


def test_no_module_imports_another_packages_private_names():
    offenders = []
    for name, path in modules().items():
        own_package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for target, names in imports(name, path):
            if not target.startswith("tinyddpm"):
                continue
            target_package = target if (PACKAGE.parent / target.replace(".", "/")).is_dir() else target.rsplit(".", 1)[0]
            private = [n for n in names if n.startswith("_") and n != "__future__"]
            if private and target_package != own_package:
                offenders.append(f"{name} imports {private} from {target}")
    assert offenders == []


def test_readme_is_a_guide_not_a_notebook():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; results go to docs/, history to NOTES"


@pytest.mark.parametrize("name", API_BEFORE)
def test_every_name_of_the_api_before_the_layout_change_still_imports(name):
    assert getattr(tinyddpm, name) is not None
