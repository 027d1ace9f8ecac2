"""The `extend` command: one verb per program, each with `--help` written for that verb.

`extend VERB ARGS` runs exactly what `python -m MODULE ARGS` runs (the module is run as `__main__`), so the
verbs and the older entry points cannot drift apart. Every entry point calls `command_line(verb)` first: it
answers `-h`/`--help` with the verb's help below (before Hydra, whose own `--help` is a config dump) and
expands the shorthands (`model=PATH`). Help reads only recipes/ and conf/: nothing heavy is imported.
"""

from __future__ import annotations

import difflib
import re
import runpy
import sys
import textwrap
from dataclasses import dataclass

from extend.config import CONF_DIR, RECIPES_DIR

HELP_FLAGS = ("-h", "--help")
WIDTH = 110  # help lines wrap here


@dataclass(frozen=True)
class Verb:
    name: str
    module: str  # what `python -m` runs; `extend VERB` runs the same module as __main__
    summary: str  # its line in `extend --help`
    description: str
    also: tuple[str, ...]  # the same command in its older forms
    arguments: tuple[tuple[str, str], ...]
    examples: tuple[str, ...]
    recipes: str  # which recipes it takes: decoder, encoder or vision (see recipe_kind)
    groups: tuple[str, ...]  # the config groups it reads, listed with their options
    takes_model: bool = False  # accepts the model=PATH shorthand


# Arguments several verbs share (Hydra's override grammar); group= and group.key= take an example per verb.
_RECIPE = ("recipe=NAME", "load a whole experiment from recipes/ (listed below); later arguments override it")
_MODEL = ("model=PATH", "a local model folder or a Hub id in the local cache: shorthand for model=hf "
                        "model.name_or_path=PATH (a name in conf/model/, e.g. model=tiny_llama, picks that preset)")
_RUN_NAME = ("run_name=NAME", "names the run folder outputs/NAME (output_dir=DIR to put it elsewhere)")


def _group(example: str) -> tuple[str, str]:
    return "group=option", f"pick one option of a config group (listed below), e.g. {example}"


def _key(example: str) -> tuple[str, str]:
    return "group.key=value", f"set one value, e.g. {example}; lists as [a,b], quoted where the shell would expand"


VERBS: dict[str, Verb] = {v.name: v for v in (
    Verb(
        name="prep",
        module="data_prep",
        summary="prepare a dataset: tokenise, mix and pack the sources into one shard set per curriculum stage",
        description=(
            "Composes the same config as training and writes the dataset folder data.output_dir: parquet\n"
            "shards per curriculum stage and manifest.json (written last). Rerunning with the same config is a\n"
            "no-op; rerunning an interrupted preparation resumes it. `extend train` prepares a missing dataset\n"
            "itself; run this first to prepare on another machine or to inspect the data."),
        also=("python -m data_prep ...",),
        arguments=(_RECIPE, _group("data=jsonl"), _key("data.seed=1"),
                   ("data.output_dir=DIR", "where the dataset folder goes"),
                   ("data.tokenizer=PATH", "a tokenizer folder, a cached Hub id, or tiny (built here)"),
                   ("data.num_proc=N", "tokenisation processes")),
        examples=("extend prep recipe=tiny",
                  "extend prep data=jsonl data.sources.corpus.path='corpus/*.jsonl' data.tokenizer=PATH",
                  "extend prep recipe=giraffe_16k data.num_proc=16"),
        recipes="decoder",
        groups=("data", "curriculum"),
    ),
    Verb(
        name="train",
        module="extend.train",
        summary="fine-tune a decoder to a longer context and export it (accelerate launch extend/train.py ...)",
        description=(
            "Composes and validates the config, prepares the dataset if it is missing, applies the position\n"
            "method to the model, trains the curriculum stages (checkpoints, resumes from the newest one), and\n"
            "exports outputs/<run_name>/final (merged model, adapter, run card); then evaluates it\n"
            "(eval.after_training) and publishes it (publish.repo_id) when the config asks for that.\n"
            "Several processes: accelerate launch extend/train.py ... (one node) or ./launch.sh --help (nodes)."),
        also=("accelerate launch extend/train.py ...", "python extend/train.py ...", "python -m extend.train ..."),
        arguments=(_RECIPE, _MODEL, _RUN_NAME, _group("adapter=lora"), _key("rope.factor=8"),
                   ("train.max_steps=N", "stop after N optimizer steps (a smoke run)")),
        examples=("extend train recipe=tiny",
                  "extend train recipe=tiny adapter=lora run_name=tiny_lora train.max_steps=20",
                  "accelerate launch extend/train.py recipe=giraffe_16k accelerate=zero3 model=PATH"),
        recipes="decoder",
        groups=("model", "rope", "adapter", "data", "curriculum", "train", "accelerate", "eval", "publish"),
        takes_model=True,
    ),
    Verb(
        name="eval",
        module="extend.eval",
        summary="evaluate a checkpoint: perplexity and retrieval at each length, next to comparison models",
        description=(
            "Scores a model (a trained run's final/, any local folder, a cached Hub id, or a preset with\n"
            "eval.tokenizer=...) on the eval.tasks at each of eval.lengths: perplexity on held-out long text,\n"
            "passkey over lengths x depths, line and key-value retrieval, numeric QA; eval.comparisons put other\n"
            "models, or this one with a training-free rope method, next to it on the same items. Writes\n"
            "eval.json, report.md and plots into an eval folder beside the model (eval.output_dir to choose)."),
        also=("python -m extend.eval ...",),
        arguments=(_MODEL, _group("eval=quick"), _key("eval.items_per_cell=10"),
                   ("eval=quick|scaling", "a smaller look, or the model next to training-free scaling of itself"),
                   ("eval.lengths=[...]", "context lengths in tokens; beyond the model's length needs "
                                          "eval.extrapolate=true"),
                   ("rope=METHOD rope.factor=S", "evaluate the model with a training-free position method")),
        examples=("extend eval model=outputs/tiny/final eval=quick",
                  "extend eval model=PATH eval=scaling eval.lengths=[4096,8192,16384]",
                  "extend eval model=PATH eval.tasks=[perplexity,passkey] rope=yarn rope.factor=4"),
        recipes="decoder",
        groups=("model", "rope", "eval"),
        takes_model=True,
    ),
    Verb(
        name="inspect",
        module="extend.rope",
        summary="print what a position method does to a model (wavelengths, lengths, exported config)",
        description=(
            "Reads only the model's config (no weights) and prints what the position method does to it:\n"
            "wavelengths per dimension before and after, the attention factor, the extended length as\n"
            "transformers, the tokenizer and vLLM will read it, and the exact rope config the export writes.\n"
            "Writes nothing. Use it to check a recipe before spending GPU hours on it."),
        also=("python -m extend.rope ...",),
        arguments=(_RECIPE, _MODEL,
                   ("rope=METHOD", "the position method (listed below with the rope group)"),
                   ("rope.key=value", "its settings, e.g. rope.factor=8 rope.beta_fast=32"), _group("model=tiny_qwen2")),
        examples=("extend inspect recipe=tiny",
                  "extend inspect model=PATH rope=yarn rope.factor=4",
                  "extend inspect model=tiny_qwen2 rope=llama3 rope.factor=8"),
        recipes="decoder",
        groups=("model", "rope"),
        takes_model=True,
    ),
    Verb(
        name="plan",
        module="extend.plan",
        summary="estimate a recipe's memory per GPU at each stage length and say whether it fits",
        description=(
            "Composes the config as training does and reads only the base model's config (no weights), then\n"
            "estimates per GPU, for each curriculum stage: weights, gradients and optimizer states (adapter,\n"
            "dtype, ZeRO stage, offload), activations (micro-batch, checkpointing, attention kernel, sequence\n"
            "parallel size) and the loss's logits; their total against gpu_memory, and when it does not fit,\n"
            "one line per change (sequence parallelism, offload, checkpointing, micro-batch) with its new peak.\n"
            "Writes nothing. Formulas and their validation: docs/memory-planner.md."),
        also=("python -m extend.plan ...",),
        arguments=(_RECIPE, _MODEL,
                   ("gpus=N", "GPUs (processes) the run is launched on; ZeRO shards over them (default 1)"),
                   ("gpu_memory=GB", "one GPU's memory in GB (default 80)"),
                   ("base_config=PATH", "a config.json (or its folder) with the base's geometry, for a Hub base "
                                        "that is not on this machine"),
                   ("offload_activations", "what-if: checkpointed layer inputs in host memory (ALST)"),
                   ("tiled_mlp", "what-if: the MLP computed in sequence tiles (ALST)"),
                   _group("accelerate=zero3"), _key("accelerate.sequence_parallel_size=4")),
        examples=("extend plan recipe=yarn_64k gpus=8",
                  "extend plan recipe=longlora_100k gpus=8 base_config=PATH/config.json",
                  "extend plan recipe=tiny train.gradient_checkpointing=false gpu_memory=24"),
        recipes="decoder",
        groups=("model", "adapter", "curriculum", "train", "accelerate"),
        takes_model=True,
    ),
    Verb(
        name="publish",
        module="extend.publish",
        summary="stage, verify and upload a trained run to the Hugging Face Hub (dry_run: upload nothing)",
        description=(
            "Stages outputs/RUN/final as the exact folder to upload (outputs/RUN/publish, or publish.output_dir)\n"
            "with its model card, verifies it (reload in a fresh process, lengths, safetensors only, no local\n"
            "path or token), then uploads it; with dry_run it prints what would be uploaded and sends nothing.\n"
            "Exit code 1: the folder failed verification or the Hub refused the upload."),
        also=("python -m extend.publish ...",),
        arguments=(("run=DIR", "the run folder whose final/ is published (publish.run)"),
                   ("repo_id=ORG/NAME", "the Hub repository (publish.repo_id)"),
                   ("dry_run", "build and verify the folder and card, print what would be uploaded (publish.dry_run)"),
                   ("private", "create the repository private (publish.private)"),
                   ("adapter_only", "upload only the LoRA adapter (publish.adapter_only)"),
                   ("publish.key=value", "the other publish settings: output_dir, license, commit_message")),
        examples=("extend publish run=outputs/tiny repo_id=me/tiny-1k dry_run",
                  "extend publish run=outputs/giraffe_16k repo_id=my-org/giraffe-16k private",
                  "extend publish run=outputs/giraffe_16k repo_id=my-org/giraffe-16k-lora adapter_only"),
        recipes="",
        groups=(),
    ),
    Verb(
        name="encode",
        module="extend.encoders",
        summary="extend an embedding encoder and evaluate it on long-document retrieval",
        description=(
            "Extends an embedding encoder: a learned position table (BERT, E5) by interpolation, a RoPE\n"
            "encoder (ModernBERT, decoder-based embedders) by a position method; optionally fine-tunes it\n"
            "contrastively; evaluates the original (truncating), the training-free extension and the\n"
            "fine-tuned model on LongEmbed-style passkey and needle retrieval; writes eval.json, report.md and\n"
            "the export (final/) into outputs/<run_name>."),
        also=("python -m extend.encoders ...",),
        arguments=(_RECIPE, _RUN_NAME,
                   ("encoder.model=PATH", "a local folder, a cached Hub id, or all-minilm-l6-v2"),
                   ("encoder.target_length=N", "the new maximum input length in tokens"),
                   ("encoder.train.steps=N", "contrastive fine-tuning steps (0: training-free only)"),
                   ("rope=METHOD", "the position method of a RoPE encoder"), _key("encoder.eval.lengths=[1024,4096]")),
        examples=("extend encode recipe=minilm_2k",
                  "extend encode recipe=minilm_2k encoder.train.steps=0 run_name=minilm_free",
                  "extend encode recipe=modernbert_embed_32k encoder.model=PATH"),
        recipes="encoder",
        groups=("rope",),
    ),
    Verb(
        name="vision",
        module="extend.vision",
        summary="extend a vision-language model's language model, with V2PE positions for image tokens",
        description=(
            "Builds or loads an InternVL model, puts the position method on its language model and V2PE\n"
            "positions on image tokens, scores the synthetic colour task, fine-tunes a few steps, scores\n"
            "again, and writes eval.json and the export (final/) into outputs/<run_name>."),
        also=("python -m extend.vision ...",),
        arguments=(_RECIPE, _RUN_NAME,
                   ("vision.model=PATH", "tiny-internvl (built here), a local folder or a cached Hub id"),
                   ("vision.target_length=N", "the language model's new length in positions"),
                   ("vision.v2pe_delta=D", "position increment per image token (1 = the model's own)"),
                   ("vision.train.steps=N", "fine-tuning steps (0: score only)"), _key("vision.eval.samples=128")),
        examples=("extend vision recipe=internvl_tiny_v2pe",
                  "extend vision recipe=internvl_tiny_v2pe vision.v2pe_delta=1 run_name=no_v2pe",
                  "extend vision recipe=internvl_v2pe vision.model=PATH"),
        recipes="vision",
        groups=("rope",),
    ),
)}

_MORE = ("--cfg job prints the config these arguments compose (nothing runs); --info defaults shows which\n"
         "file each group came from; --hydra-help lists Hydra's own flags.")


def recipe_kind(text: str) -> str:
    """encoder or vision for recipes that set those sections, else decoder (what prep/train/eval/inspect take)."""
    for kind in ("encoder", "vision"):
        if re.search(rf"^{kind}:", text, re.MULTILINE):
            return kind
    return "decoder"


def recipe_summary(text: str) -> str:
    """The first line of a recipe's header comment (after `# @package`)."""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            return line.lstrip("#").strip()
    return ""


def recipes(kind: str) -> dict[str, str]:
    """{name: first header line} of the recipes of one kind, by name."""
    found = {}
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        text = path.read_text()
        if recipe_kind(text) == kind:
            found[path.stem] = recipe_summary(text)
    return found


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def group_default(group: str) -> str | None:
    match = re.search(rf"^\s*-\s*{group}:\s*(\S+)", (CONF_DIR / "config.yaml").read_text(), re.MULTILINE)
    return match.group(1) if match else None


def _table(rows: list[tuple[str, str]], wrap: bool = True) -> list[str]:
    """Two columns; the second wrapped at WIDTH under itself (recipe lines are kept whole: one line each)."""
    width = max(len(k) for k, _ in rows)
    lines = []
    for key, value in rows:
        head = f"  {key.ljust(width)}  "
        parts = textwrap.wrap(value, WIDTH - len(head)) if wrap and value else [value]
        lines += [(head if i == 0 else " " * len(head)) + part for i, part in enumerate(parts)]
    return [line.rstrip() for line in lines]


def verb_help(name: str) -> str:
    verb = VERBS[name]
    usage = "[recipe=NAME] " if verb.recipes else ""
    lines = [f"usage: extend {name} {usage}[arguments ...] [--cfg job]", "", verb.summary[0].upper() + verb.summary[1:] + ".",
             "", verb.description, "", "Same command: " + "; ".join(verb.also), "", "arguments:"]
    lines += _table(list(verb.arguments))
    lines += ["", "examples:"] + [f"  {e}" for e in verb.examples]
    if verb.recipes:
        found = recipes(verb.recipes)
        lines += ["", f"recipes ({verb.recipes}; recipes/NAME.yaml, each headed by its command and results):"]
        lines += _table(list(found.items()), wrap=False) if found else ["  (none)"]
    if verb.groups:
        lines += ["", "groups (conf/GROUP/OPTION.yaml; * = default):"]
        rows = []
        for group in verb.groups:
            default = group_default(group)
            rows.append((group, " ".join(o + ("*" if o == default else "") for o in group_options(group))))
        lines += _table(rows)
    lines += ["", _MORE]
    return "\n".join(lines) + "\n"


def main_help() -> str:
    lines = ["usage: extend VERB [arguments ...]      extend VERB --help: that verb's arguments, examples and recipes",
             "",
             "Extend the context window of a pretrained transformer. Every verb composes its config with Hydra",
             "from conf/ and recipes/: recipe=NAME loads an experiment, group=option picks an option,",
             "group.key=value sets one value, --cfg job prints the result without running anything.",
             "", "verbs:"]
    lines += _table([(v.name, v.summary) for v in VERBS.values()])
    lines += ["", "Several processes: accelerate launch extend/train.py ...; several nodes or SLURM: ./launch.sh --help."]
    return "\n".join(lines) + "\n"


def expand_model_shortcut(argv: list[str]) -> list[str]:
    """`model=VALUE` -> `model=hf model.name_or_path=VALUE` unless VALUE names a file in conf/model/."""
    options = set(group_options("model"))
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key == "model" and sep and value not in options:
            out += ["model=hf", f"model.name_or_path={value}"]
        else:
            out.append(arg)
    return out


def command_line(name: str, argv: list[str] | None = None) -> list[str]:
    """The arguments of verb `name` (default: the command line), shorthands expanded; `-h`/`--help` prints
    the verb's help and exits before anything is composed."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in HELP_FLAGS for a in args):
        sys.stdout.write(verb_help(name))
        sys.exit(0)
    return expand_model_shortcut(args) if VERBS[name].takes_model else args


def main(argv: list[str] | None = None) -> None:
    """`extend VERB ARGS`: help, or run the verb's module as `python -m` would."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in HELP_FLAGS:  # no verb at all is a mistake: the same text, on stderr, exit 2
        (sys.stdout if args else sys.stderr).write(main_help())
        sys.exit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in VERBS:
        close = difflib.get_close_matches(name, VERBS, n=1)
        hint = f"did you mean `extend {close[0]}`? " if close else ""
        print(f"extend: unknown verb {name!r}; {hint}verbs: {', '.join(VERBS)} (extend --help)", file=sys.stderr)
        sys.exit(2)
    if any(a in HELP_FLAGS for a in rest):
        command_line(name, rest)
    sys.argv = [f"extend {name}", *rest]
    runpy.run_module(VERBS[name].module, run_name="__main__", alter_sys=True)
