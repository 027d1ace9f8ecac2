"""`python -m extend.publish run=outputs/RUN repo_id=ORG/NAME [private] [adapter_only] [dry_run]`: `extend publish`.

Stages outputs/RUN/final as the exact folder to upload (outputs/RUN/publish, or publish.output_dir) with its
model card, verifies it (fresh-process reload, lengths, safetensors only, no local path or token), then
uploads it, or with dry_run prints what would be uploaded. The short keys are publish.* keys: `run=X` is
`publish.run=X`, and a bare flag (`private`) means `publish.private=true`. Other publish.* keys
(publish.output_dir, publish.license, publish.commit_message) work as in every entry point; `--help` is
extend/commands.py's.
Exit codes: 2 for bad input, 1 for a folder that failed verification or an upload the Hub refused.
"""

from dataclasses import fields

from extend.cli import run_cli
from extend.commands import command_line
from extend.config import ExtendConfig, PublishConfig
from extend.publish import publish_run

# Publish keys that may be given without `publish.` (those that are not also top-level keys of the config).
SHORT_KEYS = {f.name for f in fields(PublishConfig)} - {f.name for f in fields(ExtendConfig)}
FLAGS = {f.name for f in fields(PublishConfig) if f.type in (bool, "bool")}


def expand_short_keys(argv: list[str]) -> list[str]:
    """`run=X` -> `publish.run=X`; a bare flag such as `private` -> `publish.private=true`."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key in SHORT_KEYS and (sep or key in FLAGS):
            out.append(f"publish.{key}={value if sep else 'true'}")
        else:
            out.append(arg)
    return out


def main(cfg: ExtendConfig) -> None:
    publish_run(cfg.publish)


if __name__ == "__main__":
    # The staged folder describes itself; Hydra writes no run folder or log files of its own.
    run_cli(main, job_name="publish", quiet=True, argv=expand_short_keys(command_line("publish")))
