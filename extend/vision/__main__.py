"""`python -m extend.vision recipe=internvl_tiny_v2pe [vision.key=value ...]` is `extend vision ...`.

Builds or loads an InternVL model with the `rope` method on its language model, scores the synthetic
colour task with V2PE positions, fine-tunes a few steps, scores again, and writes eval.json and the export
(final/) into outputs/<run_name>. `--help` (extend/commands.py) lists the arguments and vision recipes;
`--cfg job` prints the composed config.
"""

from extend.cli import run_cli
from extend.commands import command_line
from extend.config import VisionRootConfig
from extend.vision.run import run_vision
from extend.validation import validate_vision


def main(cfg: VisionRootConfig) -> None:
    data = run_vision(cfg)
    print(f"wrote {cfg.output_dir}/eval.json and final/ ({data['seconds']} s)")
    for stage, per_length in data["results"].items():
        for filler, r in per_length.items():
            print(f"  {stage}: filler {filler} ({r['length']} tokens): accuracy {r['accuracy']}, loss {r['loss']}")


if __name__ == "__main__":
    run_cli(main, job_name="vision", program="vision", validate=validate_vision, argv=command_line("vision"))
