"""One `validate` per program: every problem with a composed config, found at once, before anything is
written, trained or prepared (litgpt's validate_args, torchtune's config checks).

    validate_training(cfg)  the decoder program's training run (python extend/train.py, --check)
    validate_prep(cfg)      data preparation (python -m data_prep)
    validate_encoder(cfg)   python -m extend.encoders
    validate_vision(cfg)    python -m extend.vision

Each raises one ConfigError listing every problem, one line each, naming the key and the fix. The checks of
each area stay in their modules (data, rope, adapters, accelerate, eval, publish); this module is the one
place that calls them. Validation only reads: the `tiny` tokenizer and the `tiny-base` model are built on
first use, so where they are not cached yet the checks that need them (the dataset's tokenizer) are left to
the run, and everything else is checked from the config and the base's config alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from extend.config import ConfigError, DecoderConfig, EncoderRootConfig, TrainConfig, VisionRootConfig

MIXED_PRECISION = ("no", "bf16", "fp16")
RESUME = ("auto", "never")


def validate_training(cfg: DecoderConfig, processes: int | None = None) -> None:
    """Every problem of a training run. `processes`: the count a launcher is about to start (--check before
    launching); default: what this process was launched with."""
    problems = training_problems(cfg, processes)
    if problems:
        raise ConfigError(problems)


def validate_prep(cfg: DecoderConfig, processes: int | None = None) -> None:
    problems = writable_problems("data.output_dir", cfg.data.output_dir) + _data_problems(cfg)
    problems += writable_problems("data.cache_dir", cfg.data.cache_dir)
    if problems:
        raise ConfigError(problems)


def validate_encoder(cfg: EncoderRootConfig, processes: int | None = None) -> None:
    from transformers import AutoConfig

    from extend.encoders.run import check_encoder, model_path

    enc = cfg.encoder
    problems = writable_problems("output_dir", cfg.output_dir) + derived_factor_problems(cfg.rope.factor, "encoder")
    if problems:
        raise ConfigError(problems)  # the model's checks below would report the factor a second time
    if enc.model is None:
        problems.append("encoder.model: not set; pick an encoder recipe (recipe=minilm_2k) or set "
                        "encoder.model=FOLDER_OR_ID")
        raise ConfigError(problems)
    try:
        config = AutoConfig.from_pretrained(model_path(enc.model))
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    except (OSError, ValueError) as err:
        raise ConfigError(problems + [f"encoder.model={enc.model!r} could not be loaded ({err.__class__.__name__}); "
                                      "give a model folder or a Hub id in the local cache"]) from None
    problems += check_encoder(enc, config, cfg.rope)
    if problems:
        raise ConfigError(problems)


def validate_vision(cfg: VisionRootConfig, processes: int | None = None) -> None:
    from extend.vision.model import load_config
    from extend.vision.run import check_vision

    problems = writable_problems("output_dir", cfg.output_dir) + derived_factor_problems(cfg.rope.factor, "vision")
    if problems:
        raise ConfigError(problems)  # the model's checks below would report the factor a second time
    if cfg.vision.model is None:
        problems.append("vision.model: not set; pick a vision recipe (recipe=internvl_tiny_v2pe) or set "
                        "vision.model=FOLDER_OR_ID")
        raise ConfigError(problems)
    try:
        config = load_config(cfg.vision.model)
    except ConfigError as err:
        raise ConfigError(problems + err.problems) from None
    problems += check_vision(cfg, config)[1]
    if problems:
        raise ConfigError(problems)


def derived_factor_problems(factor: float, program: str) -> list[str]:
    """Encoders and vision state the target length once, as <program>.target_length; rope.factor follows."""
    if factor == 1:
        return []
    return [f"rope.factor={factor:g}: the {program} program derives the factor from {program}.target_length; "
            f"remove rope.factor and set {program}.target_length to the length you want"]


def writable_problems(key: str, path: str | None) -> list[str]:
    """Whether the folder `path` exists as a folder or can be made, found by making (and removing) a
    temporary folder in its nearest existing parent: permissions, read-only mounts and files in the way."""
    if path is None:
        return []
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        return [f"{key}={path} is a file; give a folder"]
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return [f"{key}={path}: {parent} is a file, so the folder cannot be made; choose another {key}"]
    try:
        tempfile.TemporaryDirectory(dir=parent).cleanup()
    except OSError as err:
        return [f"{key}={path} cannot be written ({err.strerror} in {parent}); choose another {key}"]
    return []


def train_value_problems(t: TrainConfig) -> list[str]:
    """Ranges and choices of `train.*`."""
    import torch

    from extend.training.loss import loss_problem
    from extend.training.run_config import tracker_problems
    from extend.training.schedule import SCHEDULES

    problems = []
    if t.lr_schedule not in SCHEDULES:
        problems.append(f"train.lr_schedule={t.lr_schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
    if t.mixed_precision not in MIXED_PRECISION:
        problems.append(f"train.mixed_precision={t.mixed_precision!r}: choose {', '.join(MIXED_PRECISION)}")
    if t.resume not in RESUME:
        problems.append(f"train.resume={t.resume!r}: choose auto (continue the newest checkpoint) or never")
    for key, low in (("micro_batch_size", 1), ("keep_checkpoints", 1), ("log_every", 1), ("warmup_steps", 0),
                     ("checkpoint_every", 0), ("loss_chunk_size", 0)):
        if getattr(t, key) < low:
            problems.append(f"train.{key}={getattr(t, key)} must be >= {low}")
    if t.max_steps is not None and t.max_steps < 1:
        problems.append(f"train.max_steps={t.max_steps} must be >= 1 (or null: the whole curriculum)")
    if not t.learning_rate > 0:
        problems.append(f"train.learning_rate={t.learning_rate} must be > 0")
    if t.weight_decay < 0 or t.max_grad_norm < 0:
        problems.append("train.weight_decay and train.max_grad_norm must be >= 0 (max_grad_norm 0 = no clipping)")
    if not 0 <= t.min_lr_ratio <= 1:
        problems.append(f"train.min_lr_ratio={t.min_lr_ratio} must lie in [0, 1]")
    if len(t.adam_betas) != 2 or not all(0 <= b < 1 for b in t.adam_betas):
        problems.append(f"train.adam_betas={t.adam_betas} must be two numbers in [0, 1)")
    loss = loss_problem(t.loss, "cuda" if torch.cuda.is_available() else "cpu")
    return problems + ([loss] if loss else []) + tracker_problems(t.tracker) + _attention_value_problems(t)


def _attention_value_problems(t: TrainConfig) -> list[str]:
    from extend.models.training_attention import TRAINING_ATTENTION, groups_per_row

    if t.attention not in TRAINING_ATTENTION:
        return [f"train.attention={t.attention!r} is unknown; choose one of {', '.join(TRAINING_ATTENTION)}"]
    if not groups_per_row(t.s2_group_fraction):
        return [f"train.s2_group_fraction={t.s2_group_fraction} must be 1/n for a whole number n of groups per row "
                "(LongLoRA: 0.25; also 0.5, 0.125, 1.0)"]
    return []


def _attention_length_problems(cfg: DecoderConfig) -> list[str]:
    """Stages the training attention cannot train: lengths it cannot cut (S²-Attn: into whole groups), PoSE
    spans under an option that places the row at positions 0..T-1 (cross_document, anchor)."""
    from extend.models.training_attention import TRAINING_ATTENTION

    option = TRAINING_ATTENTION.get(cfg.train.attention)
    problems = [option and option.length_problem(cfg.train, s.length) for s in cfg.curriculum.stages]
    found = [f"curriculum.stages[{i}].length={s.length} {p}"
             for i, (s, p) in enumerate(zip(cfg.curriculum.stages, problems)) if p]
    if option is not None and option.row_positions:
        found += [f"curriculum.stages[{i}].span={s.span} (PoSE) cannot train under "
                  f"train.attention={cfg.train.attention}, which places the row at positions 0..T-1 and would drop "
                  "PoSE's skipped positions: remove the span or use train.attention=full"
                  for i, s in enumerate(cfg.curriculum.stages) if s.span is not None]
    return found


def _pose_temperature_problems(cfg: DecoderConfig) -> list[str]:
    """curriculum.pose_temperature: `span` or `window`; `window` needs a method whose temperature follows the
    length (its registry entry's `temperature`) and a PoSE stage."""
    from extend.rope import METHODS

    value = cfg.curriculum.pose_temperature
    if value not in ("span", "window"):
        return [f"curriculum.pose_temperature={value!r} is unknown; choose span (the paper) or window"]
    if value == "span":
        return []
    method = METHODS.get(cfg.rope.type)
    if method is None or method.temperature is None:
        with_one = ", ".join(f"rope={m.name}" for m in METHODS.values() if m.temperature is not None)
        return [f"curriculum.pose_temperature=window sets the attention temperature of the rows' length, and "
                f"rope.type={cfg.rope.type} has none that follows the length: use {with_one} or pose_temperature=span"]
    if cfg.rope.attention_factor is not None:
        return [f"curriculum.pose_temperature=window computes the training temperature from the row length, but "
                f"rope.attention_factor={cfg.rope.attention_factor:g} fixes it: remove one of the two"]
    if all(s.span is None for s in cfg.curriculum.stages):
        return ["curriculum.pose_temperature=window applies to PoSE stages, and no curriculum stage sets a span: "
                "add spans or remove the option"]
    return []


def check_training(cfg: DecoderConfig, world_size: int, addressable: int | None) -> list[str]:
    """The training loop's own problems, from the config alone: `train.*` values, per-stage bases and
    mixtures, the split of each step's rows over micro-batches and `world_size` processes, and stage lengths
    beyond the `addressable` positions of the model with its position method (None: not known)."""
    from extend.data.curriculum import check_stage_weights

    problems = train_value_problems(cfg.train) + check_stage_weights(cfg.curriculum, cfg.data.sources)
    if _curriculum_problems(cfg):
        return problems  # reported by check_curriculum; the lengths below would be meaningless
    problems += _stage_problems(cfg, world_size) + _attention_length_problems(cfg) + _pose_temperature_problems(cfg)
    for i, stage in enumerate(cfg.curriculum.stages):
        if addressable is not None and stage.length > addressable:
            problems.append(f"curriculum.stages[{i}].length={stage.length} is longer than the {addressable} positions "
                            "the model addresses with this rope config: raise rope.factor or shorten the stage")
    return problems


def training_problems(cfg: DecoderConfig, processes: int | None = None) -> list[str]:
    """Every problem of a training run, as a list (see validate_training)."""
    from extend.data.prepare import check_data
    from extend.data.sources import check_sources
    from extend.training.distributed import launched_processes

    world = launched_processes() if processes is None else processes
    problems = writable_problems("output_dir", cfg.output_dir) + _run_value_problems(cfg)
    problems += check_data(cfg.data) + check_sources(cfg.data.sources) + _curriculum_problems(cfg)
    problems += writable_problems("data.cache_dir", cfg.data.cache_dir) + writable_problems("model.cache_dir", cfg.model.cache_dir)
    addressable, model_problems = _adapter_and_model_problems(cfg, world, processes is not None)
    problems += check_training(cfg, world, addressable) + model_problems + _side_problems(cfg)
    if not problems:  # what is on disk matters only for a config that is itself sound
        problems += _dataset_problems(cfg, world) + _resume_problems(cfg, world)
    return problems


def _run_value_problems(cfg: DecoderConfig) -> list[str]:
    problems = []
    if cfg.seed < 0:
        problems.append(f"seed={cfg.seed} must be >= 0")
    if cfg.accelerate.peer_timeout < 0 or 0 < cfg.accelerate.peer_timeout < 3:
        problems.append(f"accelerate.peer_timeout={cfg.accelerate.peer_timeout:g} must be 0 (off) or >= 3 seconds "
                        "(the heartbeat beats every sixth of it)")
    a = cfg.adapter
    if a.type in ("lora", "longlora") and (a.r < 1 or a.alpha <= 0 or not 0 <= a.dropout < 1):
        problems.append(f"adapter.r={a.r}, adapter.alpha={a.alpha}, adapter.dropout={a.dropout}: r must be >= 1, "
                        "alpha > 0 and dropout in [0, 1)")
    return problems  # rope.* values are the rope registry's to check (rope_problems)


def _inference_only_problems(rope_type: str) -> list[str]:
    """LM-Infinite and SelfExtend are training-free: they are evaluated, never trained."""
    from extend.rope import METHODS

    method = METHODS.get(rope_type)
    if method is None or not method.inference_only:
        return []
    return [f"rope.type={rope_type} is a training-free inference method and is not trained: evaluate with it "
            f"(python -m extend.eval model=PATH rope={rope_type}, or in eval.comparisons) and train with another "
            "method (e.g. rope=yarn)"]


def _curriculum_problems(cfg: DecoderConfig) -> list[str]:
    from extend.data.curriculum import check_curriculum

    return check_curriculum(cfg.curriculum)


def _data_problems(cfg: DecoderConfig) -> list[str]:
    from extend.data.curriculum import check_stage_weights
    from extend.data.prepare import check_data
    from extend.data.sources import check_sources

    return (check_data(cfg.data) + check_sources(cfg.data.sources) + _curriculum_problems(cfg)
            + check_stage_weights(cfg.curriculum, cfg.data.sources))


def _stage_problems(cfg: DecoderConfig, world: int) -> list[str]:
    """Per-stage rope bases and the split of each step's rows into micro-batches and processes."""
    from extend.rope import methods_reading

    problems, t = [], cfg.train
    stage_bases = [s.rope_theta for s in cfg.curriculum.stages]
    if any(b is not None for b in stage_bases):
        if cfg.rope.type not in methods_reading("rope_theta"):
            problems.append(f"curriculum.stages[].rope_theta needs rope.type {' or '.join(methods_reading('rope_theta'))}, "
                            f"not {cfg.rope.type!r}")
        elif stage_bases[-1] is not None and stage_bases[-1] != cfg.rope.rope_theta:
            problems.append(f"the last curriculum stage's rope_theta={stage_bases[-1]} differs from rope.rope_theta="
                            f"{cfg.rope.rope_theta}, which the export carries: make them equal")
    if t.micro_batch_size < 1:
        return problems
    sp = cfg.accelerate.sequence_parallel_size
    groups = world // sp if sp >= 1 and world % sp == 0 else world  # a bad size is check_accelerate's to report
    for i, stage in enumerate(cfg.curriculum.stages):
        rows = cfg.curriculum.tokens_per_step // stage.length
        if rows % (t.micro_batch_size * groups):
            where = f"{world} process(es)" if groups == world else f"{groups} sequence-parallel group(s) of {sp} processes"
            problems.append(f"curriculum.stages[{i}]: {rows} rows per step do not split into micro-batches of "
                            f"{t.micro_batch_size} on {where}; change train.micro_batch_size or "
                            "curriculum.tokens_per_step")
    return problems


def _adapter_and_model_problems(cfg: DecoderConfig, world: int, launching: bool) -> tuple[int | None, list[str]]:
    """The adapter, the position method, the lengths it addresses and the distribution, on the base's config
    and a weightless (meta-device) copy of the model: no weights, no I/O beyond config.json."""
    import torch
    from transformers import AutoModelForCausalLM

    from extend.adapters import build_adapter
    from extend.models import attention_for, load_base_config
    from extend.models.training_attention import TRAINING_ATTENTION
    from extend.rope import apply_rope, config_served_lengths, resolve_rope
    from extend.training.distributed import check_accelerate

    problems = []
    try:
        adapter = build_adapter(cfg.adapter)
    except ConfigError as err:
        problems += err.problems
        adapter = None
    if adapter is not None and not _curriculum_problems(cfg):
        from extend.data.curriculum import plan_stages

        problems += adapter.check_steps(sum(s.steps for s in plan_stages(cfg.curriculum)))
    try:
        base_config = load_base_config(cfg.model)  # never builds tiny-base: its preset's config stands in
        model_config = apply_rope(base_config, resolve_rope(cfg.rope, base_config))
    except ConfigError as err:
        return None, problems + err.problems + check_accelerate(cfg, None, world, launched=launching or None)
    problems += _inference_only_problems(cfg.rope.type)  # a valid method that is not trained
    addressable = config_served_lengths(model_config, None)["transformers"]
    if cfg.eval.after_training and not cfg.eval.extrapolate:
        too_long = [n for n in cfg.eval.lengths if n > addressable]
        if too_long:
            problems.append(f"eval.lengths {too_long} exceed the {addressable} positions the export will address; "
                            "drop them or set eval.extrapolate=true")
    option = TRAINING_ATTENTION.get(cfg.train.attention)
    kernel_problem = option and option.kernel_problem(attention_for(model_config, cfg.model.attn_implementation))
    if kernel_problem:
        problems.append(f"train.attention={cfg.train.attention} {kernel_problem}")
    heads = getattr(model_config, "num_attention_heads", None)
    problems += check_accelerate(cfg, heads, world, launched=launching or None,
                                 kv_heads=getattr(model_config, "num_key_value_heads", None))
    if adapter is not None:
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(model_config, attn_implementation=attention_for(model_config, "sdpa"))
        problems += adapter.check(meta)
    return addressable, problems


def _side_problems(cfg: DecoderConfig) -> list[str]:
    """Evaluation after training and publishing at the end, checked now rather than after training."""
    problems = []
    if cfg.eval.after_training:
        from extend.eval.runner import check_eval_config

        problems += check_eval_config(cfg.eval)
        problems += writable_problems("eval.output_dir", cfg.eval.output_dir)
    if cfg.publish.repo_id is not None:
        from extend.publish import training_problems as publish_problems

        problems += publish_problems(cfg) + writable_problems("publish.output_dir", cfg.publish.output_dir)
    return problems


def _cached_tokenizer(cfg: DecoderConfig):
    """The run's tokenizer where it can be read without building anything; None for `tiny` not cached yet
    (training trains it on first use)."""
    from extend.models.tokenizer import TINY, load_tokenizer, tiny_is_cached

    if cfg.data.tokenizer == TINY and not tiny_is_cached(cfg.data.cache_dir):
        return None
    return load_tokenizer(cfg.data.tokenizer, cfg.data.cache_dir)


def _dataset_problems(cfg: DecoderConfig, world: int) -> list[str]:
    """The prepared dataset, when there is one, was made from this config (and tokenizer); several processes
    need it prepared first."""
    from extend.data.manifest import read_manifest, verify_dataset

    folder = Path(cfg.data.output_dir)
    try:
        tokenizer = _cached_tokenizer(cfg)
        if read_manifest(folder) is not None:
            verify_dataset(folder, cfg, tokenizer, check_checksums=False)  # training verifies the checksums
            return []
    except ConfigError as err:
        return err.problems
    problems = writable_problems("data.output_dir", cfg.data.output_dir)
    if world > 1:
        # Tokenising inside a multi-process job races the distributed timeout (LongLoRA #45).
        problems.append(f"data.output_dir={cfg.data.output_dir} has no prepared dataset; run `python -m data_prep` "
                        "with the same recipe and overrides before launching on several processes")
    return problems


def _resume_problems(cfg: DecoderConfig, world: int) -> list[str]:
    """A checkpoint in the run folder that this run could not continue exactly."""
    from extend.training.checkpoint import TrainState, load_latest, resume_problems
    from extend.training.run_config import config_fingerprint, fingerprinted_config

    checkpoint = load_latest(Path(cfg.output_dir) / "checkpoints")
    if checkpoint is None:
        return []
    state = TrainState(config_fingerprint=config_fingerprint(cfg), config=fingerprinted_config(cfg),
                       format="deepspeed" if cfg.accelerate.strategy == "deepspeed" else "trainable",
                       processes=world, accelerate=cfg.accelerate.name)
    return resume_problems(checkpoint, state, cfg.train.resume)
