"""PoSE position ids (extend/data/pose.py) follow the paper's scheme, are reproducible from the seed, and a
packed PoSE row keeps its documents apart in training attention (the loss and gradients of a packed row
equal those of its documents run alone, with the same ids)."""

import numpy as np
import pytest
import torch

from extend.config import CurriculumConfig, ExtendConfig, StageConfig
from extend.data.curriculum import check_curriculum
from extend.data.manifest import dataset_config, fingerprint
from extend.data.packing import materialize, pack_pretrain
from extend.data.pose import SCHEME, PoseDraw, pose_positions
from extend.training.batches import documents_from_positions, documents_from_seq_lens
from extend.training.loss import causal_lm_loss_sum, next_token_targets
from tests.test_data_packing import PAD, VOCAB, make_source


def jumps(ids: np.ndarray) -> np.ndarray:
    """Indices where an id does not follow its predecessor by 1: the starts of chunks 2, 3, ..."""
    return np.nonzero(np.diff(ids) != 1)[0] + 1


@pytest.mark.parametrize("m,span,chunks", [(64, 1024, 2), (200, 256, 2), (50, 4096, 3), (9, 100, 4)])
def test_ids_start_at_0_increase_and_stay_inside_the_span(m, span, chunks):
    rng = np.random.default_rng(0)
    most = 0
    for _ in range(300):
        ids = pose_positions(m, span, chunks, rng)
        assert ids.dtype == np.int32 and ids.shape == (m,)
        assert ids[0] == 0 and (np.diff(ids) >= 1).all() and ids[-1] < span
        most = max(most, len(jumps(ids)))
    assert most == chunks - 1  # never more chunks than asked, and all of them show up


def test_two_chunks_follow_the_reference_distribution():
    # dwzhu-pku/PoSE train_pose.py: first chunk length uniform on [1, (m + 1) // 2], skip uniform on [0, span - m].
    m, span, n = 10, 30, 20000
    rng = np.random.default_rng(1)
    firsts, skips = [], []
    for _ in range(n):
        ids = pose_positions(m, span, 2, rng)
        cut = jumps(ids)
        first = int(cut[0]) if len(cut) else None
        if first is not None:
            firsts.append(first)
            skips.append(int(ids[first] - first))
    assert set(firsts) == {1, 2, 3, 4, 5}
    assert set(skips) == set(range(1, span - m + 1))  # a skip of 0 shows no jump
    # Uniform skip on 0..20 (21 values): P(skip > 0) = 20/21, each positive value 1/21.
    assert abs(len(skips) / n - 20 / 21) < 0.01
    counts = np.bincount(skips, minlength=span - m + 1)[1:]
    assert counts.min() > 0.8 * n / 21 and counts.max() < 1.2 * n / 21


def test_short_pieces_fall_back_to_fewer_chunks():
    rng = np.random.default_rng(2)
    assert pose_positions(1, 64, 2, rng).tolist() == [0]
    ids = pose_positions(2, 64, 5, rng)  # two tokens: at most two chunks
    assert ids[0] == 0 and ids[1] >= 1 and ids[1] < 64
    with pytest.raises(ValueError, match="cannot span"):
        pose_positions(65, 64, 2, rng)


@pytest.fixture(scope="module")
def packed():
    rng = np.random.default_rng(3)
    text = make_source("text", rng.integers(20, 120, size=40), atomic=False, seed=4)
    order = [(0, int(a), int(b)) for a, b in zip(text.offsets[:-1], text.offsets[1:])]
    return [text], pack_pretrain(order, [text], 128, 12, rng)


def test_materialized_rows_get_their_own_ids_per_document_and_are_seeded(packed):
    sources, rows = packed
    pose = PoseDraw(span=2048, chunks=2, seed=7, stage=0)
    out = materialize(rows, sources, 128, PAD, pose)
    plain = materialize(rows, sources, 128, PAD)
    np.testing.assert_array_equal(out["input_ids"], plain["input_ids"])
    np.testing.assert_array_equal(out["labels"], plain["labels"])
    np.testing.assert_array_equal(out["seq_lens"], plain["seq_lens"])
    docs = documents_from_seq_lens([out["seq_lens"][a:b] for a, b in zip(out["seq_offsets"][:-1], out["seq_offsets"][1:])], 128)
    skipped = 0
    for r in range(len(rows)):
        for d in np.unique(docs[r]):
            ids = out["position_ids"][r][docs[r] == d]
            assert ids[0] == 0 and (np.diff(ids) >= 1).all() and ids[-1] < 2048
            skipped += len(jumps(ids))
    assert skipped > len(rows)  # the ids do skip (plain ids never do)
    # Same seed, same ids, whatever the sharding; another seed or stage, other ids.
    again = np.concatenate([materialize(rows[:5], sources, 128, PAD, pose)["position_ids"],
                            materialize(rows[5:], sources, 128, PAD, pose, first_row=5)["position_ids"]])
    np.testing.assert_array_equal(again, out["position_ids"])
    for other in (PoseDraw(2048, 2, 8, 0), PoseDraw(2048, 2, 7, 1)):
        assert (materialize(rows, sources, 128, PAD, other)["position_ids"] != out["position_ids"]).any()


def test_config_checks_and_fingerprint():
    def cur(**kw):
        return CurriculumConfig(tokens_per_step=512, stages=[StageConfig(length=128, steps=1, **kw)])

    assert check_curriculum(cur(span=1024)) == []
    assert any("span=128 must be > its length=128" in p for p in check_curriculum(cur(span=128)))
    bad = cur(span=1024)
    bad.pose_chunks = 0
    assert any("curriculum.pose_chunks=0 must be >= 1" in p for p in check_curriculum(bad))
    bad.pose_chunks = 200
    assert any("exceeds curriculum.stages[0].length=128" in p for p in check_curriculum(bad))

    def config(curriculum):
        cfg = ExtendConfig()
        cfg.curriculum = curriculum
        return dataset_config(cfg)

    plain = config(cur())
    assert "span" not in plain["curriculum"]["stages"][0] and "pose_chunks" not in plain["curriculum"]
    # A plain config's identity does not depend on the PoSE knobs; a span (or its chunks) changes it.
    chunks3 = cur()
    chunks3.pose_chunks = 3
    assert fingerprint(config(chunks3)) == fingerprint(plain)
    with_span = config(cur(span=1024))
    assert fingerprint(with_span) != fingerprint(plain) != fingerprint(config(cur(span=2048)))
    pose3 = cur(span=1024)
    pose3.pose_chunks = 3
    assert fingerprint(config(pose3)) != fingerprint(with_span)
    assert PoseDraw(1024, 2, 0, 0).record() == {"scheme": SCHEME, "span": 1024, "chunks": 2}


@pytest.mark.parametrize("attention", ["packed-per-document", "packed-masked", "sdpa", "eager"])
def test_packed_pose_row_never_attends_across_documents(attention, monkeypatch):
    from extend.models import PRESETS, build_random
    from extend.models import packed_attention
    from extend.training.model import ChunkedCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = PRESETS["tiny-llama"]()
    config.vocab_size = VOCAB
    model = build_random(config, seed=0)
    if attention.startswith("packed"):
        assert packed_attention.use_packed_attention(model)
        if attention == "packed-per-document":
            monkeypatch.setattr(packed_attention, "MASKED_BYTES", 0)
    elif attention == "eager":
        model.set_attn_implementation("eager")
    lengths = [30, 20, 14]
    text = make_source("text", lengths, atomic=False, seed=8)
    plan = pack_pretrain([(0, int(a), int(b)) for a, b in zip(text.offsets[:-1], text.offsets[1:])], [text], 64, 1,
                         np.random.default_rng(0))
    out = materialize(plan, [text], 64, PAD, PoseDraw(span=512, chunks=2, seed=1, stage=0))
    row = {k: torch.from_numpy(out[k][:, :64]).long() for k in ("input_ids", "labels", "position_ids")}
    docs = torch.from_numpy(documents_from_seq_lens([out["seq_lens"]], 64)).long()
    assert len(jumps(out["position_ids"][0])) > len(lengths)  # skips inside documents, not only at their starts
    lm = ChunkedCausalLM(model, chunk_size=16)
    embed = model.get_input_embeddings()

    def loss_and_grads(ids, labels, positions, documents=None):
        """Loss sum and the gradient of the whole loss w.r.t. each token's input embedding."""
        grads = {}
        handle = embed.register_forward_hook(lambda m, i, o: (o.retain_grad(), grads.setdefault("e", o))[1])
        if documents is None:
            documents = torch.from_numpy(documents_from_positions(positions.numpy())).long()
        loss, _ = lm(ids, positions, next_token_targets(labels, positions), documents)
        handle.remove()
        loss.backward()
        return loss.detach(), grads["e"].grad[0].detach()

    packed_loss, packed_grad = loss_and_grads(row["input_ids"], row["labels"], row["position_ids"], docs)
    alone_loss, at = 0.0, 0
    for n in lengths:
        sl = slice(at, at + n)
        loss, grad = loss_and_grads(row["input_ids"][:, sl], row["labels"][:, sl], row["position_ids"][:, sl])
        alone_loss += loss
        # Each document's tokens get exactly the gradient they get alone: nothing flows between documents.
        torch.testing.assert_close(packed_grad[sl], grad, rtol=1e-4, atol=1e-6)
        at += n
    torch.testing.assert_close(packed_loss, alone_loss, rtol=1e-5, atol=1e-4)
    if attention in ("sdpa", "eager"):
        # The check can fail: transformers' own inference from position ids splits every document at its skips.
        with torch.no_grad():
            hidden = model.get_decoder()(input_ids=row["input_ids"], position_ids=row["position_ids"],
                                         use_cache=False).last_hidden_state
            wrong, _ = causal_lm_loss_sum(hidden, model.get_output_embeddings(), row["labels"], row["position_ids"], 16)
        assert abs(float(wrong - alone_loss)) > 1e-2


def test_batches_carry_document_ids_from_seq_lens_or_positions(packed, tmp_path):
    import pyarrow.parquet as pq

    from extend.data.manifest import write_shard
    from extend.training.batches import Stage, StageRows

    sources, rows = packed
    out = materialize(rows, sources, 128, PAD, PoseDraw(span=4096, chunks=2, seed=0, stage=0))
    write_shard(out, tmp_path / "new.parquet")
    old = pq.read_table(tmp_path / "new.parquet").drop(["seq_lens"])  # a shard written before seq_lens were read
    pq.write_table(old, tmp_path / "old.parquet")
    new_rows = StageRows(Stage(0, 128, 3, 4, (tmp_path / "new.parquet",))).rows(0, 12)
    want = documents_from_seq_lens([out["seq_lens"][a:b] for a, b in zip(out["seq_offsets"][:-1], out["seq_offsets"][1:])], 128)
    np.testing.assert_array_equal(new_rows["document_ids"].numpy(), want)
    np.testing.assert_array_equal(new_rows["position_ids"].numpy(), out["position_ids"])
    old_rows = StageRows(Stage(0, 128, 3, 4, (tmp_path / "old.parquet",))).rows(0, 12)
    np.testing.assert_array_equal(old_rows["document_ids"].numpy(), documents_from_positions(out["position_ids"]))
    # Every PoSE piece starts at 0, so the fallback finds the same documents here (numbered from 1).
    np.testing.assert_array_equal(old_rows["document_ids"].numpy(), want + 1)
