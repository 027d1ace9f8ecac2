"""Imports inside `extend/` only go down the layers of docs/architecture.md.

Each module belongs to a package: the first part of its path under extend/ (`rope` for extend/rope/apply.py,
`train` for extend/train.py), `__init__` for the package root, `__main__` for every `__main__.py` (entry
points, which nothing imports). A module may import its own package and packages in LOWER layers; packages
in the same layer are independent of each other. Every import counts: top-level, inside functions and under
TYPE_CHECKING alike.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

EXTEND = Path(__file__).resolve().parent.parent / "extend"

# Bottom to top.
LAYERS: list[tuple[set[str], str]] = [
    ({"config"}, "typed config schemas and ConfigError: no other extend import"),
    ({"commands"}, "the `extend` command: verb table and help; runs each program by module name, imports none"),
    ({"cli"}, "Hydra composition of conf/ into the typed config"),
    ({"corpus", "tasks"}, "text without a model: the built-in stdlib corpus, synthetic long-context tasks"),
    ({"rope"}, "position methods: registry, frequencies, portable export, the entropy_abf, lm_infinite and self_extend registrations, CLEX's ODE"),
    ({"models"}, "loading (attaching CLEX's ODE), tokenizer, presets, the training attentions (packed, S²-Attn, anchor), saving an extended model"),
    ({"adapters", "data"}, "LoRA/LoFiT/full adapters; data preparation (sources, tokenize, pack, curriculum)"),
    ({"__init__"}, "the package root: `import extend` registers entropy_abf with transformers and the dataset-folder resolver"),
    ({"training"}, "the training loop's pieces: batches, loss, schedule, checkpoints, distributed, sequence "
                   "parallelism, long-length memory, run shell"),
    ({"eval", "inspection", "plan"}, "evaluation of a model; the rope inspection report and the memory planner "
                                     "(read a model config)"),
    ({"publish"}, "staging, card and upload of a finished run (reads its evaluation)"),
    ({"encoders", "vision"}, "the encoder and vision-language programs, beside the decoder pipeline"),
    ({"validation"}, "one validate per program: calls every area's checks once, before anything is written"),
    ({"train"}, "the decoder training program: validate, setup, fit, export, then eval and publish"),
    ({"__main__"}, "entry points (`python -m extend[.X]`)"),
]
LAYER_OF = {package: i for i, (packages, _) in enumerate(LAYERS) for package in packages}


def package_of(relative: Path) -> str:
    """The layering package of a module, from its path under extend/."""
    if relative.name == "__main__.py":
        return "__main__"
    if relative.as_posix() == "__init__.py":
        return "__init__"
    return relative.parts[0].removesuffix(".py")


def _target(name: str, root: Path) -> str:
    """The package an absolute `extend...` module name belongs to."""
    parts = name.split(".")
    if len(parts) == 1:
        return "__init__"
    first = parts[1]
    return first if (root / first).is_dir() or (root / f"{first}.py").exists() else "__init__"


def imports_of(source: str, module: str, root: Path) -> list[tuple[int, str, str]]:
    """(line, imported module name, its package) for every import of an extend module in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing module's package
                anchor = module.split(".")[: -node.level]
                base = ".".join(anchor + ([base] if base else []))
            # `from extend import rope` imports the package rope; `from extend.rope import x` the package rope.
            names = [f"{base}.{a.name}" for a in node.names] if base == "extend" else [base]
        else:
            continue
        found += [(node.lineno, n, _target(n, root)) for n in names if n == "extend" or n.startswith("extend.")]
    return found


def violations(root: Path) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        module = ".".join(("extend", *relative.with_suffix("").parts))
        if path.name == "__init__.py":
            module = module.removesuffix(".__init__")
        source_package = package_of(relative)
        if source_package not in LAYER_OF:
            problems.append(f"extend/{relative.as_posix()}: package {source_package!r} is in no layer: add it to "
                            "LAYERS in tests/test_layering.py and to docs/architecture.md")
            continue
        for line, name, target in imports_of(path.read_text(), module, root):
            if target == source_package:
                continue
            if target not in LAYER_OF:
                problems.append(f"extend/{relative.as_posix()}:{line} imports {name}, whose package {target!r} is in "
                                "no layer: add it to LAYERS")
            elif LAYER_OF[target] >= LAYER_OF[source_package]:
                problems.append(
                    f"extend/{relative.as_posix()}:{line} imports {name}: {source_package} (layer "
                    f"{LAYER_OF[source_package]}) may only import lower layers, and {target} is layer {LAYER_OF[target]}"
                )
    return problems


def test_imports_only_go_down():
    problems = violations(EXTEND)
    assert not problems, "\n".join(problems)


def test_every_package_has_one_layer():
    packages = [p for packages, _ in LAYERS for p in packages]
    assert len(packages) == len(set(packages))
    present = {package_of(p.relative_to(EXTEND)) for p in EXTEND.rglob("*.py")}
    assert present <= set(packages), present - set(packages)


def test_an_upward_import_is_named(tmp_path):
    """The check itself: upward, sibling, relative and unlisted imports are each reported with file and line."""
    root = tmp_path / "extend"
    for folder in ("rope", "models", "data", "adapters", "scratch"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "config.py").write_text("")
    (root / "rope" / "inspect.py").write_text("import math\nfrom extend.models import load_base_config\n")
    (root / "data" / "corpus.py").write_text("def f():\n    from extend.adapters import lora\n")
    (root / "models" / "tokenizer.py").write_text("from ..data import corpus\nfrom extend import rope, config\n")
    (root / "scratch" / "x.py").write_text("from extend import config\n")
    assert violations(root) == [
        "extend/data/corpus.py:2 imports extend.adapters: data (layer 6) may only import lower layers, and adapters is layer 6",
        "extend/models/tokenizer.py:1 imports extend.data: models (layer 5) may only import lower layers, and data is layer 6",
        "extend/rope/inspect.py:2 imports extend.models: rope (layer 4) may only import lower layers, and models is layer 5",
        "extend/scratch/__init__.py: package 'scratch' is in no layer: add it to LAYERS in tests/test_layering.py and to "
        "docs/architecture.md",
        "extend/scratch/x.py: package 'scratch' is in no layer: add it to LAYERS in tests/test_layering.py and to "
        "docs/architecture.md",
    ]


def test_docs_state_the_same_table():
    """docs/architecture.md's "What may import what" table lists the same packages per layer as LAYERS."""
    text = (EXTEND.parent / "docs" / "architecture.md").read_text().split("## What may import what", 1)[1]
    documented = {}
    for row in re.findall(r"^\| (\d+) \| (.+?) \|", text, flags=re.MULTILINE):
        names = re.findall(r"`([^`]+)`", row[1])
        documented[int(row[0])] = {{"extend/__init__.py": "__init__", "__main__.py": "__main__"}.get(n, n) for n in names}
    assert documented == dict(enumerate(packages for packages, _ in LAYERS))
