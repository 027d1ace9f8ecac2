"""`python -m data_prep [recipe=NAME] [data=...] [curriculum=...] [data.KEY=VALUE ...]` is `extend prep ...`.

Composes the same config as training and writes the dataset folder `data.output_dir`: parquet shards per
curriculum stage and manifest.json (written last). Rerunning with the same config is a no-op; rerunning an
interrupted run resumes it. `--help` (extend/commands.py) lists the data, curriculum and recipe options.
"""

import extend  # noqa: F401  (registers entropy_abf, so every recipe composes)
from extend.cli import run_cli
from extend.commands import command_line
from extend.data.prepare import prepare
from extend.validation import validate_prep

if __name__ == "__main__":
    # The dataset folder describes itself (manifest.json): no Hydra run folder or log files.
    run_cli(prepare, job_name="data_prep", quiet=True, validate=validate_prep, argv=command_line("prep"))
