"""`prepare(cfg)`: the whole data preparation, top to bottom.

    check the config -> load the tokenizer -> read the sources      (every bad input fails here)
    -> decide what the output folder holds (up to date / resume / fresh)
    -> tokenise each source, streaming, into .work/ (blocks with completion markers; a resumed run skips
       finished blocks; with data.shard_index set, only this node's blocks, then stop)
    -> per curriculum stage: draw documents, pack rows, write shards (token ids read from disk)
    -> summary.md (the summary table and its legend), manifest.json last; print the summary

Reading a source streams its documents twice (once to check and hash them, once to tokenise them); no list
of documents or of tokens is held in memory: what grows with the corpus is the document offsets (8 bytes
per document) and, per stage, the plan of which document pieces go in which row.

Without data.output_dir the folder is data/<tokenizer>-<sources>-<fingerprint> (manifest.dataset_name):
different data gets its own folder, and the same data is found again by any run that asks for it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from extend.config import ConfigError, DataConfig, ExtendConfig
from extend.corpus import python_version
from extend.data.curriculum import StagePlan, check_curriculum, check_stage_weights, plan_stages
from extend.data.manifest import (
    FORMAT, MANIFEST, SUMMARY, WORK, clear, dataset_config, dataset_dir, file_sha256, fingerprint, made_differently,
    read_manifest, refusal, write_json_atomically, write_shard, write_text_atomically,
)
from extend.data.mixture import draw_stage
from extend.data.packing import DRAW_MARGIN, PACKERS, Piece, materialize
from extend.data.pose import PoseDraw
from extend.data.report import length_histogram, summary
from extend.data.sources import LoadContext, RawSource, SourceError, check_sources, load_source
from extend.data.tokenize import TokenizedSource, tokenize_to_disk
from extend.models.tokenizer import load_tokenizer, tokenizer_fingerprint

MIXTURE_SEMANTICS = (
    "weight is a sampling proportion: a source supplies weight / sum(weights) of every stage's tokens "
    "(a stage's planned_share; a stage with its own curriculum weights uses those, and sampling_proportion is "
    "the token-weighted mean over stages); actual_share is what the packed rows hold; repeat_factor = tokens in "
    "rows over all stages / unique tokens of the source (above 1: documents repeat). upsample factors weight "
    "each document's draw probability by its length bucket, inside its source."
)


def check_data(data: DataConfig) -> list[str]:
    """Problems in the top-level `data` keys (sources are checked by check_sources)."""
    problems = []
    if data.packing not in PACKERS:
        problems.append(f"data.packing={data.packing!r} is unknown; choose one of {', '.join(PACKERS)}")
    if data.num_proc < 1:
        problems.append(f"data.num_proc={data.num_proc} must be >= 1")
    if data.rows_per_shard < 1:
        problems.append(f"data.rows_per_shard={data.rows_per_shard} must be >= 1")
    if data.seed < 0:
        problems.append(f"data.seed={data.seed} must be >= 0")
    if data.num_shards < 1:
        problems.append(f"data.num_shards={data.num_shards} must be >= 1 (the number of nodes tokenising)")
    elif data.shard_index is not None and not 0 <= data.shard_index < data.num_shards:
        problems.append(f"data.shard_index={data.shard_index} must be in 0..{data.num_shards - 1} "
                        f"(data.num_shards={data.num_shards}), or null for the run that finishes the dataset")
    return problems


def prepare(cfg: ExtendConfig, log: Callable[[str], None] = print) -> Path:
    """Write the dataset `cfg` describes to its folder (data.output_dir, by default named after the data), or
    find it already there; its path."""
    data = cfg.data
    problems = (check_data(data) + check_sources(data.sources) + check_curriculum(cfg.curriculum)
                + check_stage_weights(cfg.curriculum, data.sources))
    if problems:
        raise ConfigError(problems)
    tokenizer = load_tokenizer(data.tokenizer, data.cache_dir)
    plans = plan_stages(cfg.curriculum)
    # Sources some stage draws from (a source may be weighted only in a stage's own mixture).
    names = sorted(n for n in data.sources if any(plan.mixture(data.sources)[n] > 0 for plan in plans))
    raws = _read_sources(data, names, tokenizer)

    config = dataset_config(cfg)
    identity = {
        "config_fingerprint": fingerprint(config),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "inputs_fingerprint": fingerprint({n: raws[n].digest for n in names}),
    }
    out = dataset_dir(cfg)
    existing = read_manifest(out)
    if existing is not None and all(existing[k] == v for k, v in identity.items()):
        shutil.rmtree(out / WORK, ignore_errors=True)
        log(f"{out}: up to date with this config, nothing to do (its summary: {out / SUMMARY})")
        return out
    _claim(out, existing, identity, config, data.overwrite)

    sources = _tokenize(raws, names, data, tokenizer, out / WORK)
    if sources is None:
        log(f"{out}: shard {data.shard_index} of {data.num_shards} tokenised; once every shard is, run again "
            "without data.shard_index to finish the dataset")
        return out
    _drop_partial_shards(out)
    stages = [_write_stage(plan, sources, names, data, tokenizer, out, cfg.curriculum.pose_chunks) for plan in plans]
    manifest = _manifest(identity, config, data, cfg.curriculum.tokens_per_step, tokenizer, raws, sources, stages)
    report = summary(manifest)
    write_text_atomically(report, out / SUMMARY)
    write_json_atomically(manifest, out / MANIFEST)
    shutil.rmtree(out / WORK)
    log(report.rstrip("\n"))
    log(f"dataset written to {out} (this summary is saved as {out / SUMMARY})")
    return out


def _read_sources(data: DataConfig, names: list[str], tokenizer) -> dict[str, RawSource]:
    """Every source's documents; every unreadable or empty source is reported at once."""
    problems, raws = [], {}
    needs_template = [n for n in names if data.sources[n].format == "chat" and data.sources[n].type in ("jsonl", "parquet", "hf")]
    if needs_template and tokenizer.chat_template is None:
        raise ConfigError([f"data.sources.{n}: format chat needs a chat template, and data.tokenizer="
                           f"{data.tokenizer!r} has none" for n in needs_template])
    ctx = LoadContext(tokenizer=tokenizer, seed=data.seed)
    for name in names:
        try:
            raw = load_source(name, data.sources[name], ctx)
        except SourceError as err:
            problems.append(str(err))
            continue
        if not raw.documents:
            problems.append(f"data.sources.{name} ({data.sources[name].type}, path={data.sources[name].path!r}) holds "
                            "no documents (every file or record is empty); fix the input or remove the source")
        raws[name] = raw
    if problems:
        raise ConfigError(problems)
    return raws


def _claim(out: Path, existing: dict | None, identity: dict, config: dict, overwrite: bool) -> None:
    """Make `out` ready for this run: resume a matching interrupted run, or start clean."""
    run_file = out / WORK / "run.json"
    if existing is not None:
        if not overwrite:
            raise ConfigError([refusal(out, made_differently(existing, {**identity, "config": config}), config)])
        clear(out)
    elif (out / WORK).exists():
        # An interrupted run: resume it if it had the same identity, else nothing in it is reusable.
        if not run_file.exists() or json.loads(run_file.read_text())["identity"] != identity:
            clear(out)
    elif out.exists() and any(out.iterdir()):
        raise ConfigError([f"data.output_dir={str(out)!r} is not empty and was not written by data_prep; "
                           "choose a new or empty folder"])
    (out / WORK).mkdir(parents=True, exist_ok=True)
    if not run_file.exists():
        write_json_atomically({"identity": identity, "config": config}, run_file)


def _tokenize(raws: dict[str, RawSource], names: list[str], data: DataConfig, tokenizer,
              work: Path) -> list[TokenizedSource] | None:
    """Tokenised sources in `names` order, read from `work` (a resumed run skips finished blocks);
    None when data.shard_index is set (this node's share is done)."""
    out = []
    for i, name in enumerate(names):
        out.append(tokenize_to_disk(raws[name], tokenizer, work / f"tokens-{i:03d}",
                                    mask_prompt=data.sources[name].mask_prompt, add_bos=data.add_bos,
                                    num_proc=data.num_proc, shard_index=data.shard_index, num_shards=data.num_shards))
    return None if data.shard_index is not None else out


def _drop_partial_shards(out: Path) -> None:
    """Temporary files a killed run left in the stage folders (whole shards are kept and reused)."""
    for tmp in out.glob("stage-*/*.tmp*"):
        tmp.unlink()


def _write_stage(plan: StagePlan, sources: list[TokenizedSource], names: list[str], data: DataConfig, tokenizer,
                 out: Path, pose_chunks: int) -> dict:
    """Draw, pack and write one stage (skipping shards a previous run of the same config wrote); its report."""
    by_name = dict(zip(names, sources))
    try:
        mixture = plan.mixture(data.sources)
        order = draw_stage(by_name, {n: mixture[n] for n in names},
                           {n: dict(data.sources[n].upsample) for n in names},
                           int(plan.tokens * DRAW_MARGIN[data.packing]) + plan.length, plan.length,
                           data.seed, plan.index)
    except ValueError as err:
        raise ConfigError([f"curriculum stage {plan.index} (length {plan.length}): {err}"]) from err
    rows = PACKERS[data.packing](order, sources, plan.length, plan.rows, np.random.default_rng([data.seed, plan.index, 1]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pose = PoseDraw(plan.span, pose_chunks, data.seed, plan.index) if plan.span is not None else None
    folder = out / plan.folder
    folder.mkdir(exist_ok=True)
    shards = []
    for k, start in enumerate(tqdm(range(0, plan.rows, data.rows_per_shard), desc=f"write {plan.folder}", unit="shard",
                                   leave=False)):
        path = folder / f"part-{k:05d}.parquet"
        chunk = rows[start : start + data.rows_per_shard]
        if not path.exists():
            write_shard(materialize(chunk, sources, plan.length, pad, pose, first_row=start), path)
        shards.append({"file": path.relative_to(out).as_posix(), "rows": len(chunk), "sha256": file_sha256(path)})
    report = _stage_report(plan, rows, order, sources, names, shards, mixture)
    if pose is not None:
        report["positions"] = pose.record()
    return report


def _stage_report(plan: StagePlan, rows: list[list[Piece]], order: list[Piece], sources: list[TokenizedSource],
                  names: list[str], shards: list[dict], mixture: dict[str, float]) -> dict:
    real, target, docs = np.zeros(len(sources), np.int64), np.zeros(len(sources), np.int64), np.zeros(len(sources), np.int64)
    for row in rows:
        for s, a, b in row:
            real[s] += b - a
            # The first token of every piece has no label (see packing.py). Targets may be on disk:
            # summed piece by piece, never as a cumulative array over the whole source.
            target[s] += int(np.count_nonzero(sources[s].targets[a + 1 : b]))
    for s, src in enumerate(sources):
        starts = np.array([a for row in rows for t, a, _ in row if t == s], dtype=np.int64)
        at = np.searchsorted(src.offsets, starts)
        docs[s] = int(np.count_nonzero(src.offsets[np.minimum(at, len(src.offsets) - 1)] == starts))
    drawn = {n: [] for n in names}
    for s, a, b in order:
        drawn[names[s]].append(b - a)
    return {
        "index": plan.index, "folder": plan.folder, "length": plan.length, "steps": plan.steps,
        "rows_per_step": plan.rows_per_step, "rows": plan.rows, "tokens": plan.tokens,
        "real_tokens": int(real.sum()), "target_tokens": int(target.sum()),
        "efficiency": round(float(real.sum()) / plan.tokens, 6),
        "sources": {n: {"planned_share": round(mixture[n] / sum(mixture[m] for m in names), 6),
                        "documents_started": int(docs[i]), "tokens": int(real[i]), "target_tokens": int(target[i]),
                        "too_long_skipped": int((sources[i].lengths > plan.length).sum()) if sources[i].atomic else 0,
                        "drawn_length_histogram": length_histogram(np.array(drawn[n], dtype=np.int64))}
                    for i, n in enumerate(names)},
        "shards": shards,
    }


def _manifest(identity: dict, config: dict, data: DataConfig, tokens_per_step: int, tokenizer,
              raws: dict[str, RawSource], sources: list[TokenizedSource], stages: list[dict]) -> dict:
    all_tokens = sum(st["tokens"] for st in stages)
    all_real = sum(st["real_tokens"] for st in stages)
    source_reports = {}
    for src in sources:
        n = src.name
        in_rows = sum(st["sources"][n]["tokens"] for st in stages)
        source_reports[n] = {
            "type": data.sources[n].type, "kind": raws[n].kind, "info": raws[n].info,
            "documents": len(src.lengths), "unique_tokens": src.num_tokens,
            "weight": data.sources[n].weight,
            # Over the whole dataset: the stages' planned shares weighted by their tokens.
            "sampling_proportion": round(
                sum(st["sources"][n]["planned_share"] * st["tokens"] for st in stages) / all_tokens, 6),
            "actual_share": round(in_rows / all_real, 6),
            "repeat_factor": round(in_rows / src.num_tokens, 6),
            "too_long_for_stage": "/".join(str(st["sources"][n]["too_long_skipped"]) for st in stages),
            "length_histogram": length_histogram(src.lengths),
        }
    return {
        "format": FORMAT, **identity, "config": config, "python_version": python_version(),
        "tokenizer": {"name": data.tokenizer, "fingerprint": identity["tokenizer_fingerprint"],
                      "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                      "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        "packing": data.packing, "tokens_per_step": tokens_per_step, "mixture_semantics": MIXTURE_SEMANTICS,
        "columns": {
            "input_ids": "token ids, one row = one sequence of the stage's length",
            "labels": "targets; -100 on prompts, padding and the first token of every document piece",
            "position_ids": "0, 1, ... restarting at every document piece and at the padding; in a stage with "
                            "`positions` (PoSE) each piece starts at 0 and skips ahead between its chunks",
            "seq_lens": "lengths of the row's document pieces then its padding; they sum to the row length (training "
                        "keeps attention inside these segments)",
        },
        "sources": source_reports, "stages": stages,
    }
