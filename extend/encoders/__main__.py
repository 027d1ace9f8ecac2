"""`python -m extend.encoders recipe=minilm_2k [encoder.key=value ...] [rope=METHOD ...]` is `extend encode ...`.

Extends an embedding encoder (a learned position table by interpolation, a RoPE encoder by a position
method), optionally fine-tunes it contrastively, evaluates the original (truncating), the training-free
extension and the fine-tuned model on LongEmbed-style passkey and needle retrieval, and writes eval.json,
report.md and the export (final/) into outputs/<run_name>. `--help` (extend/commands.py) lists the arguments
and encoder recipes; `--cfg job` prints the composed config.
"""

from extend.cli import run_cli
from extend.commands import command_line
from extend.config import EncoderRootConfig
from extend.encoders.report import averages
from extend.encoders.run import run_encoder
from extend.validation import validate_encoder


def main(cfg: EncoderRootConfig) -> None:
    data = run_encoder(cfg)
    print(f"wrote {cfg.output_dir}/eval.json, report.md and final/")
    for variant, avg in averages(data).items():
        print(f"  {variant}: nDCG@1 <= {data['original_length']}: {avg['short']}, > {data['original_length']}: {avg['long']}")


if __name__ == "__main__":
    run_cli(main, job_name="encoders", program="encoder", validate=validate_encoder, argv=command_line("encode"))
