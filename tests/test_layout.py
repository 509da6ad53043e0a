"""The package layout's one-way import rule, read from the source (ast), so a stray upward import fails here.

Library (what a user imports: config, model, allocator, adapter, processor, LoRA, the method vocabulary, metrics)
-> never imports data, training, evaluation or explanation. Data never imports model code. Training and
evaluation never import each other. The allocator and the adapter never import the model. Metrics stand alone.
Nothing in the package imports the scripts (train.py, eval.py, app.py, bench/, tools/). And the scripts import no
scripts: what train.py, eval.py, app.py, tools/ and bench/ share lives in the package. bench/ is one package (`bench`)
whose modules share its helpers (bench.common, bench.flops, ...), so imports inside bench/ are allowed; bench/ from
outside it is not. No script or test edits sys.path: scripts run as modules from the repository root.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "modeling_arrcoc"
UPPER = ("data", "training", "evaluation", "explanation")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_imports(path: Path, source: str | None = None) -> set:
    """Every module `path` (or `source` as if it were there) imports, `from m import n` also as `m.n`, relative
    imports resolved."""
    name = module_name(path)
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - node.level + 1]
                target = ".".join(parent + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def package_imports(path: Path, source: str | None = None) -> set:
    """Modules of the package (and top-level scripts) that `path` (or `source` as if it were there) imports."""
    return {m for m in all_imports(path, source)
            if m.split(".")[0] in ("modeling_arrcoc", "bench", "tools", "train", "eval", "app")}


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in UPPER:
        return parts[1]
    return "library" if parts[0] == "modeling_arrcoc" else "script"


MODULES = sorted(PACKAGE.rglob("*.py"))


def check_one_way(path, text=None):
    source, imports = layer(module_name(path)), package_imports(path, text)
    targets = {layer(m) for m in imports}
    assert "script" not in targets, f"{module_name(path)} imports a script: {sorted(imports)}"
    forbidden = {
        "library": set(UPPER),
        "data": {"training", "evaluation", "explanation"},
        "explanation": {"training", "evaluation"},
        "training": {"evaluation", "explanation"},
        "evaluation": {"training"},
    }[source]
    assert not targets & forbidden, f"{module_name(path)} ({source}) imports {sorted(targets & forbidden)}: {sorted(imports)}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_run_one_way(path):
    check_one_way(path)


def test_data_never_imports_model_code():
    for path in (PACKAGE / "data").rglob("*.py"):
        model_code = {m for m in package_imports(path) if m.startswith("modeling_arrcoc.modeling_arrcoc")}
        assert not model_code, f"{module_name(path)} imports {model_code}"


# The model file's seams (#24): the selection and loss tables, the records it returns, the splice and generation by
# tier are building blocks the model imports, never the other way round.
SEAMS = ["registry", "selection", "losses", "outputs_arrcoc", "splice_arrcoc", "generation_arrcoc"]


@pytest.mark.parametrize("name", ["allocator_arrcoc", "adapter_arrcoc", "configuration_arrcoc", "metrics", *SEAMS])
def test_building_blocks_never_import_the_model(name):
    imports = package_imports(PACKAGE / f"{name}.py")
    assert not any(m.startswith("modeling_arrcoc.modeling_arrcoc") for m in imports), imports
    if name == "metrics":
        assert not imports, f"metrics stand alone, but import {imports}"


def test_the_model_names_no_trainer_term():
    """The trainer's own loss terms (losses.TRAINER_TERMS) are weighted by the loss table, never named in the model."""
    from modeling_arrcoc.losses import TRAINER_TERMS

    tree = ast.parse((PACKAGE / "modeling_arrcoc.py").read_text())
    named = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value in TRAINER_TERMS}
    assert TRAINER_TERMS and not named, f"modeling_arrcoc.py names the trainer's terms {sorted(named)}"


def test_the_rule_catches_an_upward_import():
    """The checker itself: a library module importing the trainer is reported."""
    path = PACKAGE / "lora.py"
    with pytest.raises(AssertionError, match="imports"):
        check_one_way(path, path.read_text() + "\nfrom .training.trainer import ArrCocTrainer\n")


# -- scripts import no scripts -------------------------------------------------------------------------------------

SCRIPTS = sorted([*ROOT.glob("*.py"), *(ROOT / "tools").glob("*.py"), *(ROOT / "bench").glob("*.py")])
TOP_LEVEL = {path.stem for path in ROOT.glob("*.py")}  # train, eval, app
TOOLS = {path.stem for path in (ROOT / "tools").glob("*.py")}  # also caught bare, as after a sys.path insert of tools/


def check_imports_no_script(path, text=None):
    in_bench = path.parent.name == "bench"
    found = set()
    for module in all_imports(path, text):
        top = module.split(".")[0]
        if top in TOP_LEVEL or top == "tools" or top in TOOLS or (top == "bench" and not in_bench):
            found.add(module)
    assert not found, f"{path.relative_to(ROOT)} imports a script: {sorted(found)}"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_scripts_import_no_scripts(path):
    check_imports_no_script(path)


def test_the_script_rule_catches_a_script_import():
    """The checker itself: a tool importing another tool, a benchmark importing train.py and a top-level script
    importing bench/ are reported; a benchmark importing bench's own helpers is not."""
    for name, line in [("tools/probe_report.py", "from tools.render_readme import blocks"),
                       ("tools/probe_report.py", "import render_readme"),
                       ("bench/run_all.py", "import train"),
                       ("eval.py", "from bench import common")]:
        path = ROOT / name
        with pytest.raises(AssertionError, match="imports a script"):
            check_imports_no_script(path, path.read_text() + f"\n{line}\n")
    path = ROOT / "bench/token_cost.py"
    check_imports_no_script(path, path.read_text() + "\nfrom bench.flops import generate_flops\n")


# -- no sys.path edits ---------------------------------------------------------------------------------------------

# Scripts run as modules from the repository root (`python -m bench.run_all`, `python -m tools.export_base`), tests get
# the root and the fetched transformers suite (`.transformers_tests/current`, which the fetch tool points at the
# installed version) from setup.cfg's `pythonpath`, and the package is installed (editable) by `make venv`: no file
# puts a directory on sys.path.
SYS_PATH_EDIT = re.compile(r"sys\.path\.(insert|append|extend)\(")
EDITABLE = sorted([*ROOT.glob("*.py"), *(ROOT / "tools").rglob("*.py"), *(ROOT / "bench").rglob("*.py"),
                   *(ROOT / "tests").rglob("*.py")])


def check_no_sys_path_edit(path, text=None):
    lines = [number for number, line in enumerate((path.read_text() if text is None else text).splitlines(), 1)
             if SYS_PATH_EDIT.search(line)]
    assert not lines, f"{path.relative_to(ROOT)} edits sys.path (lines {lines}): run it as a module from the root"


@pytest.mark.parametrize("path", EDITABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_file_edits_sys_path(path):
    check_no_sys_path_edit(path)


def test_the_sys_path_rule_catches_an_insert():
    path = ROOT / "tools/probe_report.py"
    with pytest.raises(AssertionError, match="edits sys.path"):
        check_no_sys_path_edit(path, path.read_text() + "\nsys.path." + "insert(0, str(ROOT))\n")  # split: not here
