"""dvc.yaml's code deps are exactly what each stage imports, so a code change reruns exactly the stages
that import it; and no import runs in a circle or back up the floors (config < core, io, data < stages < cli)."""
from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# What a module reads from the repository at run time, besides its imports.
DATA_DEPS = {"pipeline/core/models.py": ["pipeline/core/model_configs"]}
# A module may import from its own floor and the floors below.
FLOORS = {"config": 0, "core": 1, "io": 1, "data": 1, "stages": 2, "plan": 3, "cli": 3}


def module_file(module: str) -> str | None:
    path = ROOT / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(ROOT).as_posix()
    return None


def imported_modules(path: str) -> set[str]:
    """Every pipeline module a file imports, at the top or inside functions, with the packages above it."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] == "pipeline" and module_file(name):
                parts = name.split(".")
                found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return found


def closure(files: list[str]) -> set[str]:
    seen, todo = set(), list(files)
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        if not f.endswith(".py"):
            continue
        todo += [module_file(m) for m in imported_modules(f)]
        todo += [d for d in DATA_DEPS.get(f, []) if d not in seen]
    return seen


def stage_code(cmd: str) -> set[str]:
    """A stage runs stages/<name>.py, which runs the command of pipeline/stages/<name>.py through the CLI."""
    name = re.search(r"stages/(\w+)\.py", cmd).group(1)
    return closure([f"stages/{name}.py", f"pipeline/stages/{name}.py"])


def dep_errors(dvc: dict) -> list[str]:
    errors = []
    for stage, spec in dvc["stages"].items():
        listed = {d for d in spec.get("deps", []) if d.startswith(("pipeline/", "stages/"))}
        wanted = stage_code(spec["cmd"])
        errors += [f"{stage}: missing dep {d}" for d in sorted(wanted - listed)]
        errors += [f"{stage}: dep {d} is not imported" for d in sorted(listed - wanted)]
    return errors


def load_dvc() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_lists_exactly_the_code_it_imports():
    assert dep_errors(load_dvc()) == []


def test_a_missing_or_stray_dep_is_named():
    dvc = copy.deepcopy(load_dvc())
    deps = dvc["stages"]["train"]["deps"]
    deps.remove("pipeline/core/losses.py")
    deps.append("pipeline/stages/report.py")
    assert dep_errors(dvc) == ["train: missing dep pipeline/core/losses.py",
                               "train: dep pipeline/stages/report.py is not imported"]


def _floor(module: str) -> int:
    parts = module.split(".")
    return FLOORS[parts[1]] if len(parts) > 1 else -1


def test_no_import_runs_up_the_floors_or_between_stages():
    offences = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        module = rel[:-3].replace("/", ".").removesuffix(".__init__")
        for imported in imported_modules(rel):
            if len(imported.split(".")) < 2 or module.startswith(imported):
                continue
            if _floor(imported) > _floor(module):
                offences.append(f"{module} imports {imported} (a higher floor)")
            elif module.startswith("pipeline.stages.") and imported.startswith("pipeline.stages.") \
                    and imported.split(".")[2] != "_command" and imported.split(".")[2] != module.split(".")[2]:
                offences.append(f"{module} imports another stage, {imported}")
    assert offences == []


def test_the_import_graph_has_no_circle():
    graph = {}
    for path in (ROOT / "pipeline").rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        graph[rel] = {module_file(m) for m in imported_modules(rel)} - {rel}
    # a package's __init__ is imported on the way to its modules; only cycles between modules count
    graph = {f: {g for g in deps if not (g.endswith("__init__.py") and f.startswith(g[:-len("__init__.py")]))}
             for f, deps in graph.items()}
    done, stack = set(), []

    def visit(f):
        if f in stack:
            raise AssertionError(" -> ".join(stack[stack.index(f):] + [f]))
        if f in done:
            return
        stack.append(f)
        for g in sorted(graph.get(f, ())):
            visit(g)
        stack.pop()
        done.add(f)

    for f in sorted(graph):
        visit(f)



def test_every_stage_is_one_file_one_params_section_one_command_by_its_name():
    """From a dvc.yaml stage name a newcomer finds its code, its entry point, its params and its command."""
    import click
    from typer.main import get_command

    from pipeline import config
    from pipeline.cli import app
    from pipeline.stages import load_all, stage_names

    modules = load_all()
    group = get_command(app)
    ctx = click.Context(group, info_name="arf")
    # the commands that run a stage module's own `command` (typer wraps it)
    commands = {name for name in group.list_commands(ctx) if name in modules
                and group.resolve_command(ctx, [name])[1].callback.__wrapped__ is modules[name].command}
    # a section belongs to the stage module that holds its class (build_data's is defined in pipeline.data)
    owner = {name: next((f"pipeline.stages.{m}" for m, mod in modules.items() if cls in vars(mod).values()),
                        cls.__module__) for name, cls in config._SECTIONS.items()}
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    problems = []
    for stage, spec in load_dvc()["stages"].items():
        if not (ROOT / "pipeline" / "stages" / f"{stage}.py").is_file():
            problems.append(f"{stage}: no pipeline/stages/{stage}.py")
        if not spec["cmd"].startswith(f"python stages/{stage}.py "):
            problems.append(f"{stage}: cmd does not run stages/{stage}.py")
        if stage not in commands:
            problems.append(f"{stage}: no `arf {stage}` command")
        own = sorted(s for s, module in owner.items() if module == f"pipeline.stages.{stage}")
        if own not in ([], [stage]):
            problems.append(f"{stage}: registers params sections {own}")
        # a stage reads its own section (when it has parameters) and, for train, its method's knobs
        read = [p.split(".")[0] for p in spec.get("params", [])]
        if read != own + (["methods"] if stage == "train" else []) or any(s not in params for s in own):
            problems.append(f"{stage}: dvc.yaml lists params {spec.get('params')}, params.yaml sections {own}")
    assert problems == []
    assert set(load_dvc()["stages"]) == set(stage_names())  # and no stage module without its DVC stage
    assert sorted(s for s, module in owner.items() if not module.startswith("pipeline.stages.")) == ["methods"]
