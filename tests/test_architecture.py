"""The layering of docs/architecture.md holds: every import of every module of vla_rl_lib (module-level
and inside functions, read with ast; names from the packages' lazy facades resolved to the module
that defines them) points down or sideways, never up, and none of the forbidden arrows exists."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vla_rl_lib"

# (module prefix, part): the first match names a module's part; the order of PARTS is the layering
LAYERS = {
    "core": 0,        # errors, config, compat, checkpoint, logging, callbacks, compile, the package facade
    "nets": 1,        # networks and shared update pieces (nets, losses)
    "envs": 1,        # simulators and wrappers
    "models": 2,      # the VLA network and its policy (vla.model, vla.tokenizer, vla.policy)
    "data": 2,        # datasets, buffers, readers
    "tools-lite": 2,  # video, diagnostics (read envs and metrics, know no learner)
    "trainer": 3,     # the shared loop
    "algorithms": 4,  # offline/, online/, vla.bc
    "top": 5,         # cli, notebooks' runner, exercises, vla.pipeline, quickstart, chooser
}
PARTS = [
    ("vla_rl_lib.vla.pipeline", "top"), ("vla_rl_lib.vla.bc", "algorithms"), ("vla_rl_lib.vla", "models"),
    ("vla_rl_lib.offline", "algorithms"), ("vla_rl_lib.online", "algorithms"),
    ("vla_rl_lib.data", "data"), ("vla_rl_lib.envs", "envs"),
    ("vla_rl_lib.nets", "nets"), ("vla_rl_lib.losses", "nets"),
    ("vla_rl_lib.trainer", "trainer"),
    ("vla_rl_lib.video", "tools-lite"), ("vla_rl_lib.diagnostics", "tools-lite"),
    ("vla_rl_lib.cli", "top"), ("vla_rl_lib.__main__", "top"), ("vla_rl_lib.notebook", "top"),
    ("vla_rl_lib.quickstart", "top"), ("vla_rl_lib.chooser", "top"), ("vla_rl_lib.exercises", "top"),
    ("vla_rl_lib.comparison", "top"),
    ("vla_rl_lib", "core"),
]
# modules of the algorithm layer that are shared machinery, not an algorithm
SHARED = {"vla_rl_lib.online.rollout", "vla_rl_lib.online.replay", "vla_rl_lib.online.groups",
          "vla_rl_lib.offline", "vla_rl_lib.online"}

# Known violations, each with the issue that removes it.
EXCEPTIONS = {
    # issue 18: dataset generation trains SAC experts; it moves to a tools layer above the trainers
    ("vla_rl_lib.data.generate", "vla_rl_lib.online.sac"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part_of(module: str) -> str:
    for prefix, part in PARTS:
        if module == prefix or module.startswith(prefix + "."):
            return part
    raise AssertionError(f"{module} belongs to no part: add it to PARTS in tests/test_architecture.py and "
                         "docs/architecture.md")


def lazy_map(init: Path) -> dict:
    """name -> module of a package facade's lazy exports (its ``_EXPORTS`` / ``_LAZY`` dict literal)."""
    found = {}
    for node in ast.walk(ast.parse(init.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and \
                any(isinstance(t, ast.Name) and t.id in ("_EXPORTS", "_LAZY") for t in node.targets):
            found.update(ast.literal_eval(node.value))
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
FACADES = {name: lazy_map(path) for name, path in MODULES.items() if path.name == "__init__.py"}


def imports_of(path: Path) -> set:
    """The kit modules ``path`` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vla_rl_lib"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "vla_rl_lib":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES:
                    found.add(sub)
                elif alias.name in FACADES.get(node.module, {}):
                    found.add(FACADES[node.module][alias.name])
                else:
                    found.add(node.module)
    return found


def arrows() -> set:
    return {(src, dst) for src, path in MODULES.items() for dst in imports_of(path) if dst != src}


# what each part may import (docs/architecture.md's table)
ALLOWED = {
    "top": set(LAYERS),
    "algorithms": {"algorithms", "trainer", "data", "models", "nets", "envs", "core"},
    "trainer": {"trainer", "data", "nets", "envs", "tools-lite", "core"},
    "data": {"data", "nets", "envs", "core"},
    "models": {"models", "nets", "envs", "core"},
    "tools-lite": {"tools-lite", "envs", "core"},
    "nets": {"nets", "core"},
    "envs": {"envs", "core"},
    "core": {"core"},
}


def forbidden(src: str, dst: str):
    """Why ``src -> dst`` must not exist, or None."""
    a, b = part_of(src), part_of(dst)
    if b not in ALLOWED[a]:
        return f"{'upward' if LAYERS[b] > LAYERS[a] else 'sideways'}: {a} -> {b}"
    if a == "algorithms" and b in ("algorithms", "models"):
        if dst.startswith("vla_rl_lib.vla") and not src.startswith("vla_rl_lib.vla"):  # (vla.bc trains the VLA itself)
            return "an algorithm imports vla/ (the VLA policy is built at the top and passed as policy=)"
        if b == "algorithms" and src.split(".")[1] != dst.split(".")[1]:
            return "offline/ and online/ import each other (the hand-off is a policy object)"
        if b == "algorithms" and src not in SHARED and dst not in SHARED:
            return "an algorithm imports another algorithm (shared pieces live in shared modules)"
    return None


def test_every_module_belongs_to_a_part():
    for module in MODULES:
        part_of(module)


def test_no_forbidden_arrow():
    found = arrows()
    bad = sorted(f"{src} -> {dst}: {why}" for src, dst in found
                 if (src, dst) not in EXCEPTIONS and (why := forbidden(src, dst)))
    assert not bad, "imports that break docs/architecture.md:\n" + "\n".join(bad)


def test_the_listed_exceptions_still_exist():
    """An exception that no longer occurs is removed from EXCEPTIONS (and docs/architecture.md)."""
    assert EXCEPTIONS <= arrows()


@pytest.mark.parametrize("src, dst", [("vla_rl_lib.offline.iql", "vla_rl_lib.vla.policy"),
                                      ("vla_rl_lib.online.rollout", "vla_rl_lib.vla.policy"),
                                      ("vla_rl_lib.offline.cql", "vla_rl_lib.offline.iql"),
                                      ("vla_rl_lib.trainer", "vla_rl_lib.online.ppo"),
                                      ("vla_rl_lib.nets", "vla_rl_lib.trainer"),
                                      ("vla_rl_lib.online.sac", "vla_rl_lib.offline.cql"),
                                      ("vla_rl_lib.envs.driving", "vla_rl_lib.nets"),
                                      ("vla_rl_lib.trainer", "vla_rl_lib.vla.policy"),
                                      ("vla_rl_lib.data.buffer", "vla_rl_lib.trainer")])
def test_the_arrows_this_test_exists_for_are_caught(src, dst):
    assert forbidden(src, dst)


def test_widgets_are_never_imported_by_the_library():
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "widgets" for n in names), f"{path} imports widgets"
