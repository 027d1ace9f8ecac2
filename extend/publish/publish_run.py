"""Publish a run: check the inputs -> stage the upload folder -> verify it -> upload it (or, for a dry run,
print what would be uploaded).

Nothing is uploaded unless every check passed. The folder is staged under a temporary name next to its
destination (publish.output_dir, default <run>/publish) and renamed into place only once verified; a
failed check removes it, so no partial output is left behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from extend.config import ConfigError, ExtendConfig, PublishConfig
from extend.publish import layout
from extend.publish.card import human_size, reload_how
from extend.publish.export_info import AFTER_TRAINING, BaseModel, ExportInfo, evaluations
from extend.publish.hub import NO_TOKEN, PublishError, hub_token, repo_id_problems, repo_url, upload
from extend.publish.scrub import machine_paths
from extend.publish.stage import stage
from extend.publish.verify import Expectations, verify


def adapter_only_problems(has_adapter: bool, rope_type: str, base: BaseModel) -> list[str]:
    """Why an adapter alone would not be a faithful publication of this run (layout.py explains the rule)."""
    problems = []
    if not has_adapter:
        problems.append("publish.adapter_only=true, but the run has no adapter (adapter.type=full): publish the merged "
                        "model (drop adapter_only)")
    if rope_type != "none":
        problems.append(
            f"publish.adapter_only=true, but the run changed the position method (rope.type={rope_type}): an adapter "
            "cannot carry a RoPE change (peft and vLLM build the base from its own config), so it would load at the "
            "base's length. Publish the merged model (drop adapter_only); it includes the adapter in adapter/")
    if base.kind != "hub":
        problems.append(f"publish.adapter_only=true needs a base on the Hub for the adapter to apply to; "
                        f"model.name_or_path={base.name!r} is not one: publish the merged model (drop adapter_only)")
    return problems


def training_problems(cfg: ExtendConfig) -> list[str]:
    """What would make publishing at the end of training fail, found before training starts."""
    pub = cfg.publish
    if pub.repo_id is None:
        return []
    problems = repo_id_problems(pub.repo_id)
    if pub.run is not None:
        problems.append(f"publish.run={pub.run!r}: training publishes the run it trains ({cfg.output_dir}); remove "
                        "publish.run, or publish another run with `python -m extend.publish run=...`")
    if not pub.dry_run and not hub_token():
        problems.append(NO_TOKEN)
    if pub.eval is not None and (pub.eval != AFTER_TRAINING or not cfg.eval.after_training):
        problems.append(f"publish.eval={pub.eval!r}: training publishes the evaluation it runs itself "
                        f"({AFTER_TRAINING}, with eval.after_training=true); remove publish.eval, or publish another "
                        "evaluation later with `python -m extend.publish run=... publish.eval=NAME`")
    if pub.adapter_only:
        problems += adapter_only_problems(cfg.adapter.type != "full", cfg.rope.type,
                                          BaseModel.of(cfg.model.name_or_path, cfg.model.revision))
    return problems


def replaceable(out: Path, final: Path) -> bool:
    """Whether the staged folder may replace `out`: it is new, empty or an earlier staged folder, and neither
    is nor holds the export."""
    if not out.exists():
        return True
    if not out.is_dir() or out.resolve() in (final.resolve(), *final.resolve().parents):
        return False
    return all(layout.is_allowed(rel, "merged") or layout.is_allowed(rel, "adapter_only") for rel in layout.files_under(out))


def publish_run(cfg: PublishConfig, run_dir: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Publish `run_dir` (default publish.run) as cfg says; returns the staged folder."""
    if run_dir is None and cfg.run is None:
        raise ConfigError(["publish.run is missing: give run=outputs/RUN (the run folder that holds final/)"])
    run = Path(run_dir if run_dir is not None else cfg.run)
    final = run / "final"
    problems = repo_id_problems(cfg.repo_id)
    if not final.is_dir():
        problems.append(f"publish.run: {run} has no final/ folder (extend/train.py's export writes it when a run "
                        "ends): give the run folder of a finished run")
    token = hub_token()  # a dry run needs none, but no file may contain the one this machine has
    if not cfg.dry_run and not token:
        problems.append(NO_TOKEN)
    if problems:
        raise ConfigError(problems)
    info = ExportInfo.read(final, cfg.eval)
    if cfg.adapter_only:
        problems = adapter_only_problems(info.has_adapter, info.config["rope"]["type"], info.base)
        if problems:
            raise ConfigError(problems)

    out = Path(cfg.output_dir) if cfg.output_dir else run / "publish"
    if not replaceable(out, final):
        raise ConfigError([f"publish.output_dir={out} holds files publish did not stage (or the export itself), which "
                           "staging would replace: choose a new or empty folder"])
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    name = layout.layout_name(cfg.adapter_only)
    expect = Expectations(
        layout=name, promised_length=info.promised_length, with_extend=info.needs_extend,
        adapter_base=info.base.hub_id if cfg.adapter_only else None, evaluated=info.eval is not None, token=token,
        local_paths=machine_paths(run.resolve(), out.resolve()),
    )
    try:
        left_out = stage(info, cfg, tmp)
        problems = verify(tmp, expect)
        if problems:
            raise PublishError("verification failed, nothing was uploaded:\n" + "\n".join(f"  - {p}" for p in problems))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)

    files = {rel: (out / rel).stat().st_size for rel in layout.files_under(out)}
    log(f"staged {out} ({name}): verified, reloads {reload_how(info.needs_extend, cfg.adapter_only)} at "
        f"{info.promised_length:,} tokens")
    width = max(map(len, files))
    for rel, size in files.items():
        log(f"  {rel:<{width}}  {human_size(size):>10}")
    others = [name for name in evaluations(final) if name != info.eval_name]
    log(f"evaluation in the card and in eval/: {info.eval_name} ({final / 'eval' / info.eval_name})"
        if info.eval_name else "no evaluation in the card (final/eval/ holds none)")
    if others:
        log(f"other evaluations, not published (publish.eval=NAME picks another): {', '.join(others)}")
    left_out = [rel for rel in left_out if not rel.startswith("eval/")]
    if left_out:
        log(f"left out of the export (not part of a published checkpoint): {', '.join(left_out)}")
    visibility = "private" if cfg.private else "public"
    total = f"{len(files)} files ({human_size(sum(files.values()))})"
    if cfg.dry_run:
        log(f"dry run: nothing was sent; without dry_run these {total} go to {repo_url(cfg.repo_id)} ({visibility})")
        return out
    log(f"uploading {total} to {repo_url(cfg.repo_id)} ({visibility})")
    commit = upload(out, cfg.repo_id, token, cfg.private, cfg.commit_message or f"Publish {info.run_name} with extend")
    log(f"published {repo_url(cfg.repo_id)} ({commit})")
    return out
