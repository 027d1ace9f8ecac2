"""Each task's items are a function of the seed; perplexity equals a direct computation."""

import json
import math
import re

import pytest
import torch

from extend.config import ConfigError
from extend.eval import TASKS
from extend.eval.perplexity import make_windows, window_nll
from extend.models import build_random
from tests.eval_helpers import compose_cfg, make_tokenizer, tiny_config

GENERATED = ["passkey", "lines", "kv", "numeric_qa"]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _prompts(tokenizer, task, seed):
    cfg = compose_cfg(f"eval.seed={seed}", "eval.lengths=[256,320]", "eval.items_per_cell=2", "eval.depths=[0.0,1.0]")
    return [(p.item.prompt, p.item.answer, p.cell) for p in TASKS[task].prepare(tokenizer, cfg.eval)]


@pytest.mark.parametrize("task", GENERATED)
def test_items_are_deterministic_by_seed(tokenizer, task):
    first, again, other = (_prompts(tokenizer, task, s) for s in (3, 3, 4))
    assert first == again
    assert [a for _, a, _ in first] != [a for _, a, _ in other]
    assert len({a for _, a, _ in first}) > 1  # items within a run differ too
    cells = {c for _, _, c in first}
    assert cells == {"256", "320"}


@pytest.mark.parametrize("task", GENERATED)
def test_answer_is_stated_in_the_prompt_and_items_fit_their_length(tokenizer, task):
    cfg = compose_cfg("eval.lengths=[200]", "eval.items_per_cell=3", "eval.depths=[0.5]")
    for p in TASKS[task].prepare(tokenizer, cfg.eval):
        assert p.item.answer.strip().strip('"<>') in p.item.prompt
        assert p.item.num_tokens <= 200
        assert p.length == 200


def test_numeric_qa_numbers_are_random_not_recallable(tokenizer):
    """Two seeds state different numbers for the facts; the asked number occurs as the answer's fact."""
    cfg = compose_cfg("eval.lengths=[300]", "eval.items_per_cell=1")
    a = TASKS["numeric_qa"].prepare(tokenizer, cfg.eval)[0].item
    b = TASKS["numeric_qa"].prepare(tokenizer, compose_cfg("eval.lengths=[300]", "eval.items_per_cell=1",
                                                           "eval.seed=1").eval)[0].item
    assert set(re.findall(r"\d{2,}", a.prompt)) != set(re.findall(r"\d{2,}", b.prompt))
    assert "Question:" in a.prompt and a.prompt.endswith("Answer:")


def test_passkey_distractors_replace_filler_sentences_and_leave_the_eval_filler_alone(tokenizer):
    """Training items with near misses: seeded, the same key and fit as the plain item, about the asked share
    of sentences replaced, no number but the key; a share of 0 is the eval's item exactly."""
    from extend.tasks.synthetic import FILLER, PASSKEY_DISTRACTORS, generate, passkey

    plain = passkey(tokenizer, 400, 0.5, seed=11)
    assert passkey(tokenizer, 400, 0.5, seed=11, distractors=0.0) == plain
    assert generate("passkey", tokenizer, [300], 2, 5) == generate("passkey", tokenizer, [300], 2, 5, distractors=0.0)
    assert FILLER in plain.prompt and not any(d in plain.prompt for d in PASSKEY_DISTRACTORS)

    item = passkey(tokenizer, 400, 0.5, seed=11, distractors=0.4)
    assert item == passkey(tokenizer, 400, 0.5, seed=11, distractors=0.4)
    assert item.answer == plain.answer and 380 < item.num_tokens <= 400
    assert set(re.findall(r"\d+", item.prompt)) == {item.answer.strip()}
    def sentences(text):
        return re.findall(r"[A-Z][a-z ]+\.", text.split(" Remember it.")[0])

    drawn = [s for seed in range(20) for s in sentences(passkey(tokenizer, 400, 1.0, seed, distractors=0.4).prompt)]
    share = sum(s in PASSKEY_DISTRACTORS for s in drawn) / len(drawn)
    assert 0.3 < share < 0.45, share  # the intro's three sentences are counted among the rest
    assert sentences(passkey(tokenizer, 400, 0.5, seed=12, distractors=0.4).prompt) != sentences(item.prompt)


def test_passkey_distractor_keys_number_a_share_of_the_near_misses(tokenizer):
    """Keyed near misses: about the asked share of near misses state a 5-digit number, never the key, the
    needle states the key twice; a share of 0 leaves the items of `distractors` alone byte for byte."""
    from extend.tasks.synthetic import PASSKEY_DISTRACTORS, PASSKEY_KEYED_DISTRACTORS, passkey

    assert passkey(tokenizer, 400, 0.5, seed=11, distractors=0.4, distractor_keys=0.0) == \
        passkey(tokenizer, 400, 0.5, seed=11, distractors=0.4)
    keyed = re.compile("|".join(re.escape(t).replace(r"\{\}", r"(\d{5})") for t in PASSKEY_KEYED_DISTRACTORS))
    plain_misses = numbered = 0
    for seed in range(20):
        item = passkey(tokenizer, 400, 1.0, seed, distractors=0.4, distractor_keys=0.5)
        assert item == passkey(tokenizer, 400, 1.0, seed, distractors=0.4, distractor_keys=0.5)
        key = item.answer.strip()
        text = item.prompt.split(" Remember it.")[0]  # the filler before the needle (depth 1)
        numbers = keyed.findall(text)
        assert all(key not in groups for groups in numbers)
        numbered += len(numbers)
        plain_misses += sum(text.count(d) for d in PASSKEY_DISTRACTORS)
        assert item.prompt.count(key) == 2  # the needle's two mentions; no near miss repeats it
    assert 0.4 < numbered / (numbered + plain_misses) < 0.6, (numbered, plain_misses)


def test_copy_items_repeat_the_prompts_tokens_and_fit(tokenizer):
    """The copy task (training data for the tiny base): the answer is the prompt's word list token for token,
    items are a function of the seed, and as many words as fit are used."""
    from extend.tasks.synthetic import COPY_QUESTION, copy, generate

    for length in (24, 64, 200):
        item = copy(tokenizer, length, seed=7)
        prompt = tokenizer.encode(item.prompt, add_special_tokens=False)
        answer = tokenizer.encode(item.answer, add_special_tokens=False)
        tail = len(tokenizer.encode(COPY_QUESTION, add_special_tokens=False))
        assert prompt[-tail - len(answer) : -tail] == answer
        assert item.num_tokens == len(prompt) + len(answer) <= length
        assert item.num_tokens > length - 16  # one more word would not fit; a word is at most 6 letters
        assert copy(tokenizer, length, seed=7) == item != copy(tokenizer, length, seed=8)
    items = generate("copy", tokenizer, [32, 48], num_items=3, seed=0)
    assert [i.target_length for i in items] == [32] * 3 + [48] * 3 and len({i.answer for i in items}) == 6


def test_windows_score_every_token_once():
    doc = list(range(100))
    disjoint = make_windows([doc], 40, 40, 10)
    assert [w.input_ids[0] for w in disjoint] == [0, 40]
    assert [w.first_target for w in disjoint] == [1, 1]  # token 40 has no prediction inside its window
    sliding = make_windows([doc], 40, 20, 10)
    assert [w.input_ids[0] for w in sliding] == [0, 20, 40, 60]
    assert [w.first_target for w in sliding] == [1, 20, 20, 20]
    # Scored targets: 1..39, then 40..59, 60..79, 80..99: each once.
    assert make_windows([list(range(10))], 40, 40, 10) == []


def _scored(windows, doc):
    """Document indices of the targets each window scores (the windows are cut from `doc` = range(n))."""
    return [t for w in windows for t in w.input_ids[w.first_target:]]


@pytest.mark.parametrize("length, stride", [(40, 40), (40, 15), (7, 7), (100, 100), (33, 32)])
def test_same_token_windows_score_every_token_once_at_any_length(length, stride):
    docs = [list(range(100)), list(range(1000, 1230))]
    windows = make_windows(docs, length, stride, None, cover_end=True)
    assert all(len(w.input_ids) == length for w in windows)
    assert sorted(_scored(windows, None)) == list(range(1, 100)) + list(range(1001, 1230))


def test_perplexity_lengths_score_the_same_tokens(tokenizer, tmp_path):
    """eval.perplexity.tokens_per_document: every length scores the same number of tokens; too few windows or
    a length above it is an error naming the key."""
    (tmp_path / "a.txt").write_text(" ".join(f"word{i % 37}" for i in range(3000)))
    base = ["eval.perplexity.source=files", f"eval.perplexity.paths=[{tmp_path / 'a.txt'}]", "eval.lengths=[32,64,96]"]
    cfg = compose_cfg(*base, "eval.perplexity.tokens_per_document=384", "eval.perplexity.max_windows=20")
    windows = TASKS["perplexity"].prepare(tokenizer, cfg.eval)
    assert {length: sum(len(w.input_ids) - w.first_target for w in ws) for length, ws in windows.items()} == {
        32: 383, 64: 383, 96: 383}
    with pytest.raises(ConfigError, match="max_windows=4 to score the same tokens"):
        TASKS["perplexity"].prepare(tokenizer, compose_cfg(*base, "eval.perplexity.tokens_per_document=384").eval)
    with pytest.raises(ConfigError, match="tokens_per_document=64 is below eval length 96"):
        TASKS["perplexity"].prepare(tokenizer, compose_cfg(*base, "eval.perplexity.tokens_per_document=64",
                                                           "eval.perplexity.max_windows=99").eval)


def test_perplexity_equals_a_direct_computation(tokenizer):
    model = build_random(tiny_config(len(tokenizer), 64), seed=1)
    ids = torch.randint(0, len(tokenizer), (2, 48), generator=torch.Generator().manual_seed(0))
    nll, count = window_nll(model, ids, [1, 1])
    direct = [model(ids[i:i + 1], labels=ids[i:i + 1]).loss.item() for i in range(2)]
    assert count == 2 * 47
    assert math.exp(nll / count) == pytest.approx(math.exp(sum(direct) / 2), rel=1e-5)
    # A later sliding window scores only its last tokens: the mean over those targets.
    nll_tail, n_tail = window_nll(model, ids[:1], [40])
    logits = model(ids[:1]).logits[0, 39:47]
    expected = torch.nn.functional.cross_entropy(logits, ids[0, 40:48], reduction="sum").item()
    assert n_tail == 8 and nll_tail == pytest.approx(expected, rel=1e-5)


def test_perplexity_task_over_local_files(tokenizer, tmp_path):
    (tmp_path / "a.txt").write_text("The grass is green. The sky is blue. " * 60)
    cfg = compose_cfg("eval.tasks=[perplexity]", "eval.lengths=[32,64]", "eval.perplexity.source=files",
                      f"eval.perplexity.paths=[{tmp_path}/*.txt]", "eval.perplexity.max_windows=2")
    prepared = TASKS["perplexity"].prepare(tokenizer, cfg.eval)
    assert {k: len(v) for k, v in prepared.items()} == {32: 2, 64: 2}
    model = build_random(tiny_config(len(tokenizer), 64), seed=1)
    out = TASKS["perplexity"].run(model, tokenizer, prepared, cfg.eval, 64)
    cell = out["by_length"]["64"]
    assert cell["tokens"] == 2 * 63 and cell["windows"] == 2
    assert cell["value"] == pytest.approx(math.exp(cell["nll"]))
    too_long = compose_cfg("eval.tasks=[perplexity]", "eval.lengths=[100000]", "eval.perplexity.source=files",
                           f"eval.perplexity.paths=[{tmp_path}/*.txt]")
    with pytest.raises(ConfigError, match="no document .* is that long"):
        TASKS["perplexity"].prepare(tokenizer, too_long.eval)


def test_hub_rows_become_prompts_scored_like_giraffe(tokenizer):
    """Rows shaped like Giraffe's sets (no network): seeded choice per split, splits too long are left out."""
    from extend.eval.hub import _lines_row, _wikiqa_row, hub_prompts

    cfg = compose_cfg("eval.lengths=[256]", "eval.items_per_cell=2").eval
    rows = {"200": [{"prompt": f"line {i}: REGISTER_CONTENT is <{1000 + i}>", "expected_number": 1000 + i}
                    for i in range(5)],
            "900": [{"prompt": "The grass is green. " * 200, "expected_number": 1}]}
    prompts = hub_prompts(tokenizer, cfg, "abacusai/LongChat-Lines", rows, _lines_row)
    assert {p.cell for p in prompts} == {"200"} and len(prompts) == 2
    assert prompts == hub_prompts(tokenizer, cfg, "abacusai/LongChat-Lines", rows, _lines_row)
    assert all(p.item.answer == f" {1000 + p.item.seed}" for p in prompts)
    assert TASKS["abacusai/LongChat-Lines"].scorer == "first_number"
    qa = {"conversations": [{"value": "Document ... When was it founded?"}, {"value": "1887"}]}
    assert _wikiqa_row(qa) == ("Document ... When was it founded?", " 1887")
    assert TASKS["abacusai/WikiQA-Altered_Numeric_QA"].scorer == "presence"
    with pytest.raises(ConfigError, match="no split fits"):
        hub_prompts(tokenizer, cfg, "abacusai/LongChat-Lines", {"900": rows["900"]}, _lines_row)


def test_perplexity_documents_from_a_local_dataset_folder(tokenizer, tmp_path):
    rows = [{"text": "The sky is blue. " * 40, "id": 1}, {"text": "short", "id": 2}]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = compose_cfg("eval.lengths=[64]", "eval.perplexity.source=dataset",
                      f"eval.perplexity.dataset={tmp_path / 'data'}", "eval.perplexity.split=test")
    windows = TASKS["perplexity"].prepare(tokenizer, cfg.eval)[64]
    assert len(windows) == 2 and windows[0].input_ids == tokenizer.encode("The sky is blue. " * 40)[:64]
    wrong = compose_cfg("eval.lengths=[64]", "eval.perplexity.source=dataset",
                        f"eval.perplexity.dataset={tmp_path / 'data'}", "eval.perplexity.split=test",
                        "eval.perplexity.text_column=body")
    with pytest.raises(ConfigError, match=r"text_column=.body. is not a column .* \(columns: text, id\)"):
        TASKS["perplexity"].prepare(tokenizer, wrong.eval)
