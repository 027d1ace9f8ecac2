"""`python -m extend.rope [recipe=NAME] [model=...] [rope=METHOD] [rope.KEY=VALUE ...]` is `extend inspect`.

Prints what a position method does to a model: wavelengths per dimension before and after, the
attention factor, the extended length as transformers, the tokenizer and vLLM will read it, and the
exact config export writes. Nothing is loaded but the model's config. `--help` lists methods and recipes;
`model=PATH` is shorthand for `model=hf model.name_or_path=PATH`, as in eval.
"""

import extend  # noqa: F401  (registers entropy_abf)
from extend.cli import run_cli
from extend.commands import command_line
from extend.inspection import rope_report

if __name__ == "__main__":
    # The report only prints: no run folder, no log files.
    run_cli(lambda cfg: print(rope_report(cfg)), job_name="rope", quiet=True, argv=command_line("inspect"))
