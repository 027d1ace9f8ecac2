"""The position-method registry: every entry is complete, and nothing outside it tells methods apart by name."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

from extend.config import ModelConfig, RopeConfig
from extend.models import load_base_config
from extend.rope import METHODS, apply_rope, config_served_lengths, resolve_rope, rope_problems
from extend.rope.methods import ScaleParams

EXTEND = Path(__file__).resolve().parent.parent / "extend"
REGISTRY = EXTEND / "rope" / "registry.py"

# A valid value for each required method parameter, keyed by parameter (the tiny model has rotary dim 16).
EXAMPLES = {"rope_theta": 1e6, "power": 0.25, "truncation_length": 16.0,
            "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}
# Defaults that do not fit the 2-layer tiny model.
FOR_TWO_LAYERS = {"exempt_layers": 1}


@pytest.fixture(scope="module")
def tiny():
    return load_base_config(ModelConfig(name_or_path="tiny-llama"))


def _required(method) -> dict:
    fields = [f for f in dataclasses.fields(method.params) if f.default is dataclasses.MISSING]
    missing = [f.name for f in fields if f.name not in EXAMPLES and f.name not in ScaleParams.__dataclass_fields__]
    assert not missing, f"{method.name}: add an example value for {missing} to EXAMPLES"
    values = {f.name: EXAMPLES[f.name] for f in fields if f.name in EXAMPLES}
    return values | {k: v for k, v in FOR_TWO_LAYERS.items() if method.reads(k)}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_frequencies_export_and_check(name, tiny):
    method = METHODS[name]
    assert method.name == name and method.summary
    assert dataclasses.is_dataclass(method.params) and issubclass(method.params, ScaleParams)
    resolved = resolve_rope(RopeConfig(type=name, factor=4.0, **_required(method)), tiny)
    inv_freq, attention = method.inv_freq(16, 1e4, resolved.params, seq_len=None)
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (8,) and attention > 0
    rope_parameters, max_position = method.export(16, 1e4, resolved.params)
    assert isinstance(rope_parameters["rope_type"], str) and isinstance(max_position, int)
    served = config_served_lengths(apply_rope(tiny, resolved), resolved.extended_length)
    assert served["transformers"] == served["vllm"] == resolved.extended_length == 4 * 64
    assert method.check(resolved.params, None) == []
    assert rope_problems(RopeConfig(type=name, factor=4.0, **_required(method)), tiny) == []


METHOD_PARAMETERS = [(m.name, k) for m in METHODS.values() for k in m.param_names
                     if k not in ScaleParams.__dataclass_fields__]


@pytest.mark.parametrize("name,key", METHOD_PARAMETERS)
def test_every_method_parameter_is_checked(name, key, tiny):
    """A negative value of any method parameter is refused with one line naming rope.<key> and a fix."""
    values = {**_required(METHODS[name])}
    values[key] = [-1.0] * 8 if key in ("short_factor", "long_factor") else -1
    for model in (tiny, None):  # with the model and in the model-free validation
        problems = rope_problems(RopeConfig(type=name, factor=4.0, **values), model)
        named = [p for p in problems if p.startswith(f"rope.{key}")]
        assert named, (name, key, model is not None, problems)
        assert all(": " in p and "\n" not in p for p in named), named


def test_model_free_validation_reports_every_problem():
    problems = rope_problems({"type": "yarn", "factor": 0.5, "beta_fast": 1.0, "beta_slow": 2.0})
    assert [p.split("=")[0].split(" ")[0] for p in problems] == ["rope.factor", "rope.beta_fast"]
    assert rope_problems({"type": "linear", "factor": 4, "original_max_position_embeddings": 0}) == [
        "rope.original_max_position_embeddings=0 must be at least 2: set it to the length the base was trained at, "
        "or remove it to use the model's max_position_embeddings"]
    unknown = rope_problems({"type": "yarn", "factor": 4, "unknown_key": 1})
    assert unknown[0].startswith("rope.unknown_key is not a rope setting")
    assert rope_problems({"type": "none"}) == [] and rope_problems({"type": "yarn", "factor": 4}) == []


# The same words in other vocabularies: served_lengths re-implements transformers' and vLLM's rules, which read
# config.json's rope_type; the learning-rate schedules have a `linear` one.
ALLOWED = {("rope/export.py", "served_lengths", name) for name in ("yarn", "longrope", "llama3")} | {
    ("training/schedule.py", None, "linear")}


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def name_tests(source: str, names: set[str]) -> list[tuple[int, str | None, str]]:
    """(line, enclosing function, name) for each comparison with, dict key of, or match case on a name."""
    found = []

    def visit(node: ast.AST, function: str | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        hits: list[str] = []
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                hits += _strings(operand)
        elif isinstance(node, ast.Dict):
            for key in node.keys:
                hits += _strings(key) if key is not None else []
        elif isinstance(node, ast.MatchValue):
            hits += _strings(node.value)
        found.extend((node.lineno, function, s) for s in hits if s in names)
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(source), None)
    return found


def test_the_detector_finds_name_tests():
    source = (
        "def f(cfg):\n"
        "    if cfg.rope.type == 'yarn':\n        pass\n"
        "    if cfg.rope.type not in ('abf', 'entropy_abf'):\n        pass\n"
        "    table = {'linear': 1}\n"
        "    match cfg.rope.type:\n        case 'ntk':\n            pass\n"
        "    return cfg.rope.type == 'none' or {'rope_type': 'yarn'}\n"  # not names: 'none', a dict value
    )
    assert name_tests(source, set(METHODS)) == [
        (2, "f", "yarn"), (4, "f", "abf"), (4, "f", "entropy_abf"), (6, "f", "linear"), (8, "f", "ntk")]


def test_the_registry_is_the_only_place_method_names_are_tested():
    offenders = []
    for path in sorted(EXTEND.rglob("*.py")):
        if path == REGISTRY:
            continue
        relative = path.relative_to(EXTEND).as_posix()
        for line, function, name in name_tests(path.read_text(), set(METHODS)):
            if (relative, function, name) not in ALLOWED:
                offenders.append(f"extend/{relative}:{line} ({function}) tests rope.type against {name!r}: "
                                 "read the method's entry in extend/rope/registry.py instead")
    assert not offenders, "\n".join(offenders)
