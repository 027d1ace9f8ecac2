"""The `extend` command: one help per verb (not a config dump), the older entry points answering `--help`
with the same text, the model=PATH shorthand, and no bitsandbytes noise on help."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from extend import commands
from extend.commands import VERBS, command_line, main, main_help, recipe_kind, recipes, verb_help

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

# Every way to start each verb before `extend` existed: (module run by `python -m`, verb).
OLD_FORMS = [("data_prep", "prep"), ("extend.train", "train"), ("extend.eval", "eval"), ("extend.rope", "inspect"),
             ("extend.publish", "publish"), ("extend.encoders", "encode"), ("extend.vision", "vision"),
             ("extend.plan", "plan")]


def exit_code(fn, *args) -> int:
    with pytest.raises(SystemExit) as stopped:
        fn(*args)
    return stopped.value.code


def test_the_script_entry_point_is_commands_main():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"extend": "extend.commands:main"}
    assert {module for module, _ in OLD_FORMS} == {v.module for v in VERBS.values()}


def test_main_help_lists_each_verb_on_one_line(capsys):
    assert exit_code(main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert out == main_help()
    verb_lines = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert verb_lines == ["prep", "train", "eval", "inspect", "plan", "publish", "encode", "vision"]
    assert "extend VERB --help" in out and "./launch.sh --help" in out


@pytest.mark.parametrize("name", list(VERBS))
def test_each_verb_has_its_own_help(name, capsys):
    assert exit_code(main, [name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out == verb_help(name)
    assert out.startswith(f"usage: extend {name} ")
    for example in VERBS[name].examples:
        assert f"  {example}\n" in out
    assert "--cfg job" in out and "--info defaults" in out
    # Written for the verb, not the composed config: short, and no dump of keys.
    assert len(out.splitlines()) < 70
    assert "_target_" not in out and "learning_rate: " not in out and "hydra:" not in out


def test_verb_helps_are_distinct():
    helps = [verb_help(name) for name in VERBS]
    assert len(set(helps)) == len(helps)
    descriptions = [VERBS[name].description for name in VERBS]
    assert len(set(descriptions)) == len(descriptions)


def test_each_verb_lists_the_recipes_it_takes():
    decoder, encoder, vision = recipes("decoder"), recipes("encoder"), recipes("vision")
    every = {p.stem for p in (REPO / "recipes").glob("*.yaml")}
    assert set(decoder) | set(encoder) | set(vision) == every
    assert {"tiny", "giraffe_16k"} <= set(decoder) and {"minilm_2k", "e5_4k"} <= set(encoder)
    assert set(vision) == {"internvl_tiny_v2pe", "internvl_v2pe"}
    assert decoder["tiny"].startswith("The CPU default: extend the project's own tiny base 8x")
    for name in ("prep", "train", "eval", "inspect"):
        text = verb_help(name)
        assert "  tiny  " in text and "giraffe_16k" in text and "minilm_2k" not in text and "internvl_v2pe" not in text
    assert "minilm_2k " in verb_help("encode") and "  tiny " not in verb_help("encode")
    assert "internvl_tiny_v2pe" in verb_help("vision") and "giraffe_16k" not in verb_help("vision")
    assert "recipes (" not in verb_help("publish")  # publish takes a run folder, not a recipe


def test_recipes_are_told_apart_by_what_they_set():
    assert recipe_kind("# @package _global_\nrun_name: x\nencoder:\n  model: m\n") == "encoder"
    assert recipe_kind("run_name: x\nrope:\n  type: yarn\nvision:\n  model: tiny-internvl\n") == "vision"
    # A nested key of that name is not the section.
    assert recipe_kind("rope:\n  type: yarn\ndata:\n  sources:\n    encoder:\n      type: text\n") == "decoder"


@pytest.mark.parametrize("module, name", OLD_FORMS)
def test_python_m_forms_print_the_same_help(module, name, monkeypatch, capsys):
    # Run each module as `python -m` does (in this process: its imports are shared with the other tests).
    monkeypatch.delitem(sys.modules, f"{module}.__main__", raising=False)  # imported by other tests
    monkeypatch.setattr(sys, "argv", [module, "recipe=tiny", "-h"])
    assert exit_code(runpy.run_module, module, None, "__main__") == 0
    assert capsys.readouterr().out == verb_help(name)


def test_train_script_form_prints_the_train_help(monkeypatch, capsys):
    # `python extend/train.py --help` and `accelerate launch extend/train.py --help` run the file as __main__.
    monkeypatch.setattr(sys, "argv", ["extend/train.py", "--help"])
    assert exit_code(runpy.run_path, str(REPO / "extend" / "train.py"), None, "__main__") == 0
    assert capsys.readouterr().out == verb_help("train")


def test_model_shorthand_for_every_verb_that_takes_a_model():
    for name in ("train", "eval", "inspect"):
        assert command_line(name, ["model=out/run/final", "rope=yarn"]) == [
            "model=hf", "model.name_or_path=out/run/final", "rope=yarn"]
        assert command_line(name, ["model=tiny_qwen2"]) == ["model=tiny_qwen2"]  # a preset of conf/model/
        assert command_line(name, ["model.dtype=bfloat16"]) == ["model.dtype=bfloat16"]
    for name in ("prep", "publish", "encode", "vision"):
        assert command_line(name, ["model=x"]) == ["model=x"]


def test_inspect_accepts_a_model_folder(tmp_path, monkeypatch, capsys):
    from transformers import LlamaConfig

    folder = tmp_path / "my model"
    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, vocab_size=128).save_pretrained(folder)
    monkeypatch.chdir(tmp_path)
    try:
        main(["inspect", f"model={folder}", "rope=linear", "rope.factor=4"])
    except SystemExit as stopped:  # Hydra may exit 0 after the job
        assert stopped.code in (0, None)
    out = capsys.readouterr().out
    assert "original length L = 256, factor s = 4 -> extended length 1024" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my model"]  # inspecting writes nothing


def test_hydra_flags_still_print_the_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    try:
        main(["inspect", "recipe=tiny", "model=/some/folder", "--cfg", "job"])
    except SystemExit as stopped:
        assert stopped.code in (0, None)
    out = capsys.readouterr().out
    assert "name_or_path: /some/folder" in out and "type: yarn" in out  # the recipe, then the shorthand
    assert not any(tmp_path.iterdir())


def test_unknown_or_missing_verb_is_one_line_and_exit_2(capsys):
    assert exit_code(main, ["trian", "recipe=tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown verb 'trian'" in err and "extend train" in err
    assert exit_code(main, []) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == main_help()


# Makes bitsandbytes believe the CPU has AVX512-BF16 and that `kernels` is not installed, the machine on
# which it logs "Failed to load CPU gemm_4bit_forward ... pip install kernels" when imported.
FORCE_BNB_WARNING = '''
import importlib.abc, importlib.machinery, sys
sys.modules["kernels"] = None
class PatchLib(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "bitsandbytes.cextension":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            module.lib.has_avx512bf16_cpu = lambda: True
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, PatchLib())
'''

QUIET_RUN = FORCE_BNB_WARNING + '''
import time
start = time.perf_counter()
from extend.commands import main
for argv in (["--help"], ["train", "--help"]):
    try:
        main(argv)
    except SystemExit as stopped:
        assert stopped.code == 0, stopped.code
print(f"help seconds {time.perf_counter() - start:.1f}")
print("bitsandbytes after help:", "bitsandbytes" in sys.modules)
import peft  # imports bitsandbytes (peft/helpers.py), as training does
import bitsandbytes.backends.cpu.ops as ops
print("bitsandbytes after peft:", "bitsandbytes" in sys.modules)
# Defined only in the branch that logs the warning: the stand-in CPU did reach it.
print("warning branch taken:", hasattr(ops, "gemm_4bit_forward_kernel"))
'''


@pytest.mark.slow  # starts Python processes
def test_help_and_runs_are_quiet():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", QUIET_RUN], cwd=REPO, env=ENV, capture_output=True, text=True,
                         timeout=600)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    assert out.stderr == "", out.stderr  # no "Failed to load CPU gemm_4bit_forward", nothing else
    assert main_help() in out.stdout and verb_help("train") in out.stdout
    # Help never imports bitsandbytes; training (peft) does, and then it says nothing.
    assert "bitsandbytes after help: False" in out.stdout and "bitsandbytes after peft: True" in out.stdout
    assert "warning branch taken: True" in out.stdout
    print(f"process {seconds:.1f} s; {out.stdout.splitlines()[-4]}")


@pytest.mark.slow  # starts Python processes
def test_extend_command_runs_as_a_process():
    out = subprocess.run([sys.executable, "-m", "extend", "inspect", "--help"], cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout == verb_help("inspect")


def test_help_reads_conf_groups():
    assert commands.group_default("rope") == "none" and "yarn" in commands.group_options("rope")
