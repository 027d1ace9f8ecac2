"""Length upsampling, mixture weights and curriculum arithmetic."""

import numpy as np
import pytest

from extend.config import CurriculumConfig, StageConfig
from extend.data.curriculum import check_curriculum, plan_stages
from extend.data.mixture import doc_factors, draw_documents, draw_stage, token_quotas
from extend.data.tokenize import TokenizedSource


def source(name, lengths):
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedSource(name, np.zeros(offsets[-1], np.int32), np.ones(offsets[-1], bool), offsets, False)


def test_upsampling_ratios_match_the_configured_factors():
    # 1000 documents in each of three length buckets; factors 1, 3 and 8.
    lengths = np.repeat([20, 200, 2000], 1000)
    upsample = {0: 1.0, 100: 3.0, 1000: 8.0}
    factors = doc_factors(lengths, upsample)
    drawn = draw_documents(lengths, factors, quota=30_000_000, rng=np.random.default_rng(0))
    per_doc = np.bincount(drawn, minlength=len(lengths)).reshape(3, 1000).mean(axis=1)
    ratios = per_doc / per_doc[0]
    # ~37k draws in all: the ratios are within 5 % of 3 and 8 (several standard errors).
    np.testing.assert_allclose(ratios[1:], [3.0, 8.0], rtol=0.05)
    # and the quota is met with the last draw, not more
    assert lengths[drawn].sum() >= 30_000_000 > lengths[drawn[:-1]].sum()


def test_upsampling_keeps_the_source_mixture():
    rng = np.random.default_rng(1)
    sources = {"books": source("books", rng.integers(10, 5000, 2000)), "web": source("web", rng.integers(10, 500, 2000))}
    weights = {"books": 1.0, "web": 3.0}
    total = 4_000_000
    order = draw_stage(sources, weights, {"books": {1000: 10.0}, "web": {}}, total, max_atomic_length=64, seed=0, stage=0)
    tokens = {n: 0 for n in sources}
    for s, a, b in order:
        tokens[list(sources)[s]] += b - a
    # Text sources meet their quota exactly (the last document is cut), so shares equal weights.
    assert tokens == token_quotas(weights, total) == {"books": 1_000_000, "web": 3_000_000}
    # upsampling did raise the share of long books
    books = sources["books"]
    long_share = np.mean([books.lengths[np.searchsorted(books.offsets, a, side="right") - 1] >= 1000
                          for s, a, b in order if s == 0])
    assert long_share > 0.9 > np.mean(sources["books"].lengths >= 1000)


def test_quotas_split_exactly():
    quotas = token_quotas({"a": 1.0, "b": 1.0, "c": 1.0}, 1000)
    assert sum(quotas.values()) == 1000 and sorted(quotas.values()) == [333, 333, 334]


def test_draws_are_reproducible_and_depend_on_the_seed():
    sources = {"a": source("a", np.arange(1, 300)), "b": source("b", np.arange(1, 100))}
    args = (sources, {"a": 1.0, "b": 2.0}, {"a": {}, "b": {50: 2.0}}, 50_000, 64)
    assert draw_stage(*args, seed=4, stage=1) == draw_stage(*args, seed=4, stage=1)
    assert draw_stage(*args, seed=4, stage=1) != draw_stage(*args, seed=5, stage=1)
    assert draw_stage(*args, seed=4, stage=1) != draw_stage(*args, seed=4, stage=2)


def test_curriculum_rows_and_token_budgets_are_exact():
    cur = CurriculumConfig(tokens_per_step=8192, stages=[StageConfig(length=512, steps=10), StageConfig(length=2048, tokens=81920),
                                                         StageConfig(length=8192, steps=3)])
    assert check_curriculum(cur) == []
    plans = plan_stages(cur)
    assert [(p.length, p.steps, p.rows_per_step, p.rows, p.tokens) for p in plans] == [
        (512, 10, 16, 160, 81920), (2048, 10, 4, 40, 81920), (8192, 3, 1, 3, 24576)]
    assert all(p.rows_per_step * p.length == cur.tokens_per_step for p in plans)


@pytest.mark.parametrize("stage, message", [
    (StageConfig(length=1, steps=1), "must be >= 2"),
    (StageConfig(length=3000, steps=1), "does not divide"),
    (StageConfig(length=512), "exactly one of steps and tokens"),
    (StageConfig(length=512, steps=1, tokens=8192), "exactly one of steps and tokens"),
    (StageConfig(length=512, tokens=1000), "multiple of curriculum.tokens_per_step"),
])
def test_bad_stages_are_reported(stage, message):
    problems = check_curriculum(CurriculumConfig(tokens_per_step=8192, stages=[stage]))
    assert len(problems) == 1 and message in problems[0] and "curriculum.stages[0]" in problems[0]


def test_atomic_sources_overshoot_by_less_than_one_document_and_skip_too_long_ones():
    lengths = np.arange(10, 400)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    chats = TokenizedSource("chats", np.zeros(offsets[-1], np.int32), np.ones(offsets[-1], bool), offsets, True)
    order = draw_stage({"chats": chats}, {"chats": 1.0}, {"chats": {}}, 100_000, max_atomic_length=128, seed=0, stage=0)
    spans = [(a, b) for _, a, b in order]
    assert all(b - a <= 128 for a, b in spans)
    assert all(a in set(offsets[:-1].tolist()) and b - a in set(lengths.tolist()) for a, b in spans)  # whole documents
    assert 100_000 <= sum(b - a for a, b in spans) < 100_000 + 128
