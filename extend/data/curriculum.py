"""Curriculum stages: each has a sequence length and a number of optimizer steps, at a constant token
budget per step, so a stage at length L packs exactly steps x tokens_per_step / L rows."""

from __future__ import annotations

from dataclasses import dataclass

from extend.config import CurriculumConfig


@dataclass(frozen=True)
class StagePlan:
    index: int
    length: int
    steps: int
    rows_per_step: int

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
    return problems


def plan_stages(cur: CurriculumConfig) -> list[StagePlan]:
    """The stages in order; call check_curriculum first."""
    return [
        StagePlan(i, s.length, s.steps if s.steps is not None else s.tokens // cur.tokens_per_step,
                  cur.tokens_per_step // s.length)
        for i, s in enumerate(cur.stages)
    ]
