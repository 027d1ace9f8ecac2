"""Curriculum stages: each has a sequence length and a number of optimizer steps, at a constant token
budget per step, so a stage at length L packs exactly steps x tokens_per_step / L rows."""

from __future__ import annotations

from dataclasses import dataclass, field

from extend.config import CurriculumConfig, SourceConfig


@dataclass(frozen=True)
class StagePlan:
    index: int
    length: int
    steps: int
    rows_per_step: int
    # The stage's own mixture weights ({} = the sources' weights).
    weights: dict[str, float] = field(default_factory=dict)
    # PoSE: the position span of the stage's rows (None = plain positions).
    span: int | None = None

    def mixture(self, sources: dict[str, SourceConfig]) -> dict[str, float]:
        """Weight of every source in this stage."""
        if self.weights:
            return {name: float(self.weights.get(name, 0.0)) for name in sources}
        return {name: src.weight for name, src in sources.items()}

    @property
    def rows(self) -> int:
        return self.steps * self.rows_per_step

    @property
    def tokens(self) -> int:
        """Token slots in the stage (padding included): steps x tokens_per_step, exactly."""
        return self.rows * self.length

    @property
    def folder(self) -> str:
        return f"stage-{self.index:02d}-L{self.length}"


def check_curriculum(cur: CurriculumConfig) -> list[str]:
    """Every problem in `curriculum`, each naming its key and the fix."""
    problems = []
    if cur.tokens_per_step < 2:
        problems.append(f"curriculum.tokens_per_step={cur.tokens_per_step} must be >= 2")
    if not cur.stages:
        problems.append("curriculum.stages is empty: give at least one {length, steps} stage")
    for i, stage in enumerate(cur.stages):
        key = f"curriculum.stages[{i}]"
        if stage.length < 2:
            problems.append(f"{key}.length={stage.length} must be >= 2 (a row needs an input and a target)")
        elif cur.tokens_per_step % stage.length:
            problems.append(f"{key}.length={stage.length} does not divide curriculum.tokens_per_step="
                            f"{cur.tokens_per_step}; every step must hold whole rows (use a power of two for both)")
        if (stage.steps is None) == (stage.tokens is None):
            problems.append(f"{key}: set exactly one of steps and tokens (got steps={stage.steps}, tokens={stage.tokens})")
        elif stage.steps is not None and stage.steps < 1:
            problems.append(f"{key}.steps={stage.steps} must be >= 1")
        elif stage.tokens is not None and (stage.tokens < 1 or stage.tokens % cur.tokens_per_step):
            problems.append(f"{key}.tokens={stage.tokens} must be a positive multiple of curriculum.tokens_per_step="
                            f"{cur.tokens_per_step}")
        if stage.span is not None and stage.span <= stage.length:
            problems.append(f"{key}.span={stage.span} must be > its length={stage.length} (PoSE positions span more "
                            "than the row), or null for plain positions")
    if cur.pose_chunks < 1:
        problems.append(f"curriculum.pose_chunks={cur.pose_chunks} must be >= 1 (2 in the PoSE paper)")
    for i, stage in enumerate(cur.stages):
        if stage.span is not None and cur.pose_chunks > stage.length >= 2:
            problems.append(f"curriculum.pose_chunks={cur.pose_chunks} exceeds curriculum.stages[{i}].length="
                            f"{stage.length}; use at most one chunk per token")
    return problems


def check_stage_weights(cur: CurriculumConfig, sources: dict[str, SourceConfig]) -> list[str]:
    """Problems in the stages' own mixtures: unknown sources, negative or all-zero weights."""
    problems = []
    for i, stage in enumerate(cur.stages):
        key = f"curriculum.stages[{i}].weights"
        for name, weight in stage.weights.items():
            if name not in sources:
                problems.append(f"{key} names {name!r}, which is not in data.sources ({', '.join(sources) or 'none'})")
            elif weight < 0:
                problems.append(f"{key}.{name}={weight} must be >= 0")
        if stage.weights and sum(w for w in stage.weights.values() if w > 0) <= 0:
            problems.append(f"{key}: every weight is 0, so the stage's mixture is empty; give a source a weight > 0")
    return problems


def plan_stages(cur: CurriculumConfig) -> list[StagePlan]:
    """The stages in order; call check_curriculum first."""
    return [
        StagePlan(i, s.length, s.steps if s.steps is not None else s.tokens // cur.tokens_per_step,
                  cur.tokens_per_step // s.length, dict(s.weights), s.span)
        for i, s in enumerate(cur.stages)
    ]
