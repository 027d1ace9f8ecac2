"""Build the exact folder that will be uploaded, from an export: the published files only (layout.py), the
files publish rewrites scrubbed of local paths, and the model card.

Weights are hard-linked where the file system allows (a 7B export is not copied twice), else copied. The
evaluated model's local path becomes the repository id in eval.json and report.md; every other absolute
path in the files publish rewrites becomes `<local>/<last component>` (scrub.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from extend.config import PublishConfig
from extend.eval.report import render_report
from extend.publish import layout
from extend.publish.card import base_license, render_card
from extend.publish.export_info import ExportInfo
from extend.publish.scrub import scrub_paths


def public_view(info: ExportInfo, repo_id: str) -> ExportInfo:
    """`info` with the run card, evaluation and overrides scrubbed of local paths; the export folder, however
    it was spelt when the run recorded it, is called by the repository id."""
    final_spellings = {str(info.final), str(info.final.resolve()), os.path.join(info.config["output_dir"], "final")}
    renames = {os.path.normpath(s): repo_id for s in final_spellings}
    return dataclasses.replace(
        info,
        run_card=scrub_paths(info.run_card, renames),
        eval=scrub_paths(info.eval, renames) if info.eval else None,
        overrides=scrub_paths(info.overrides, renames) if info.overrides is not None else None,
    )


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not supported: copy instead
        shutil.copy2(source, target)


def license_for(cfg: PublishConfig, info: ExportInfo) -> tuple[dict[str, str], str]:
    """(license fields for the card's metadata, where they come from)."""
    if cfg.license:
        return {"license": cfg.license}, "set with publish.license"
    fields = base_license(info.base)
    return fields, "inherited from the base model's card" if fields else ""


def stage(info: ExportInfo, cfg: PublishConfig, folder: Path) -> list[str]:
    """Write the upload folder for `info` into the empty `folder`; returns the export's files left out."""
    name = layout.layout_name(cfg.adapter_only)
    public = public_view(info, cfg.repo_id)
    left_out = []
    for rel in layout.files_under(info.final):
        dest = layout.published_name(rel, name, info.eval_name)
        if dest is None:
            left_out.append(rel)
        elif rel == layout.RUN_CARD:
            _write_json(folder / dest, public.run_card)
        elif dest == "eval/eval.json":
            _write_json(folder / dest, public.eval)
        elif dest == "eval/report.md" and public.eval is not None:
            (folder / dest).write_text(render_report(public.eval))
        elif Path(rel).name == "adapter_config.json":
            # peft records where the base was loaded from (a local cache path for a project-built base):
            # the published adapter names the base by its Hub id, or by nothing.
            adapter = json.loads((info.final / rel).read_text())
            adapter.update(base_model_name_or_path=info.base.hub_id, revision=info.base.revision)
            _write_json(folder / dest, adapter)
        else:
            _link_or_copy(info.final / rel, folder / dest)
    sizes = {rel: (folder / rel).stat().st_size for rel in layout.files_under(folder)}
    license_fields, license_source = license_for(cfg, info)
    card = render_card(public, cfg.repo_id, cfg.adapter_only, sizes, license_fields, license_source)
    card.save(folder / layout.CARD)
    return left_out
