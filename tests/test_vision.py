"""Vision-language models (extend/vision/): V2PE positions by hand, delta = 1 is the model's own
positions, attention stays causal across the image, training moves only what it should, the export
reloads in stock transformers, bad input fails before any weights, and the recipes validate against the
published InternVL3-1B geometry."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import save_file
from transformers import InternVLConfig, LlamaConfig

from extend.config import CONF_DIR, REPO_ROOT, ConfigError
from extend.vision import v2pe_position_ids
from extend.vision.data import make_batch, tiny_vocab
from extend.vision.model import PRESETS, TINY_VOCAB, build_model, extended_config
from extend.vision.run import check_vision, run_vision
from extend.vision.train import forward_logits, fine_tune

IMG = TINY_VOCAB["image"]

# config.json of OpenGVLab/InternVL3-1B-hf (InternViT-300M + Qwen2.5-0.5B), the geometry internvl_v2pe names.
STAND_INS = {
    "OpenGVLab/InternVL3-1B-hf": lambda: InternVLConfig(
        vision_config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                           image_size=448, patch_size=14, norm_type="layer_norm"),
        text_config=dict(model_type="qwen2", vocab_size=151674, hidden_size=896, num_hidden_layers=24,
                         num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864,
                         max_position_embeddings=32768, rope_theta=1000000.0),
        image_token_id=151667, image_seq_length=256, downsample_ratio=0.5),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors this small gain nothing from conftest's second thread, and when the other core is busy every
    op waits for it: the tiny run took 79 s with 2 threads on a loaded 2-core machine, 2.3 s with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def typed(recipe: str, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_object(compose("vision", overrides=[f"recipe={recipe}", *overrides]))


def tiny_model(seed: int = 0):
    return build_model("tiny-internvl", PRESETS["tiny-internvl"](), torch.float32, "sdpa", seed=seed).eval()


def tiny_batch(filler: int = 6, size: int = 2, seed: int = 0):
    import random
    return make_batch(tiny_vocab(4), size, filler, 4, 28, 0.5, torch.Generator().manual_seed(seed), random.Random(seed))


# --- positions -------------------------------------------------------------------------------------------

def test_v2pe_positions_by_hand():
    t = 9  # any text token
    ids = torch.tensor([[t, t, IMG, IMG, IMG, t, t]])
    # text advances 1, each image token 1/4, the text after the image continues from the last image position
    assert v2pe_position_ids(ids, IMG, 0.25).tolist() == [[0, 1, 1.25, 1.5, 1.75, 2.75, 3.75]]
    assert v2pe_position_ids(torch.tensor([[IMG, IMG, t]]), IMG, 0.5).tolist() == [[0, 0.5, 1.5]]
    # two images: each image token advances delta, the text between and after them 1
    assert v2pe_position_ids(torch.tensor([[t, IMG, IMG, t, IMG, IMG, t]]), IMG, 0.125).tolist() == [
        [0, 0.125, 0.25, 1.25, 1.375, 1.5, 2.5]]


def test_v2pe_positions_with_padding_are_per_row():
    t, p = 9, 0
    ids = torch.tensor([[p, p, t, IMG, IMG, t], [t, IMG, IMG, t, p, p]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    positions = v2pe_position_ids(ids, IMG, 1 / 16, mask)
    assert positions.dtype == torch.float32
    # padded slots advance nothing and read 1 (as transformers' generation fills them); the mask hides them
    assert positions.tolist() == [[1, 1, 0, 0.0625, 0.125, 1.125], [0, 0.0625, 0.125, 1.125, 1, 1]]


def test_v2pe_delta_per_row():
    t = 9
    ids = torch.tensor([[t, IMG, IMG, t], [t, IMG, IMG, t]])
    assert v2pe_position_ids(ids, IMG, torch.tensor([0.5, 0.25])).tolist() == [[0, 0.5, 1, 2], [0, 0.25, 0.5, 1.5]]
    with pytest.raises(ValueError, match="must be > 0"):
        v2pe_position_ids(ids, IMG, torch.tensor([0.5, 0.0]))


def test_v2pe_delta_one_is_the_default_numbering():
    ids = tiny_batch().input_ids
    assert torch.equal(v2pe_position_ids(ids, IMG, 1.0), torch.arange(ids.shape[1], dtype=torch.float32).expand_as(ids))
    with pytest.raises(ValueError, match="must be > 0"):
        v2pe_position_ids(ids, IMG, 0.0)


def test_a_left_padded_row_gives_the_logits_it_gives_alone():
    """Padding through the model: the mask keeps a short row's logits as they are (RoPE is relative, so this
    checks the mask path; the per-row offsets are checked by hand above)."""
    model = tiny_model()
    short, long = tiny_batch(filler=4, size=1, seed=1), tiny_batch(filler=9, size=1, seed=2)
    pad = long.input_ids.shape[1] - short.input_ids.shape[1]
    ids = torch.cat([torch.cat([torch.full((1, pad), TINY_VOCAB["pad"]), short.input_ids], 1), long.input_ids])
    mask = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(short.input_ids)], 1),
                      torch.ones_like(long.input_ids)])
    with torch.no_grad():
        alone = forward_logits(model, short.input_ids, short.pixel_values, 1 / 16)
        batched = forward_logits(model, ids, torch.cat([short.pixel_values, long.pixel_values]), 1 / 16, mask)
    torch.testing.assert_close(batched[:1, pad:], alone, atol=1e-5, rtol=1e-5)


def test_multi_image_samples_put_the_answer_image_first_in_placeholder_order():
    import random
    from extend.vision.data import COLOURS
    batch = make_batch(tiny_vocab(4), 3, 5, 4, 28, 0.1, torch.Generator().manual_seed(0), random.Random(0), images=3)
    assert batch.pixel_values.shape == (9, 3, 28, 28)  # sample-major, as InternVL scatters image features
    assert (batch.input_ids == IMG).sum(1).tolist() == [12, 12, 12]
    palette = torch.tensor(list(COLOURS.values()))
    for s, answer in enumerate(batch.answers.tolist()):
        torch.testing.assert_close(batch.pixel_values[3 * s].mean((1, 2)), palette[answer], atol=0.05, rtol=0)
    model = tiny_model()
    with torch.no_grad():
        logits = forward_logits(model, batch.input_ids, batch.pixel_values, 1 / 16)
    assert logits.shape[:2] == batch.input_ids.shape and torch.isfinite(logits).all()


# --- the model reads them ---------------------------------------------------------------------------------

def test_delta_one_gives_the_model_default_logits_and_a_smaller_delta_does_not():
    model, batch = tiny_model(), tiny_batch()
    with torch.no_grad():
        default = model(input_ids=batch.input_ids, pixel_values=batch.pixel_values).logits
        same = forward_logits(model, batch.input_ids, batch.pixel_values, delta=1.0)
        v2pe = forward_logits(model, batch.input_ids, batch.pixel_values, delta=1 / 16)
    torch.testing.assert_close(same, default, atol=0, rtol=0)
    image_end = (batch.input_ids[0] == IMG).nonzero().max().item()
    torch.testing.assert_close(v2pe[:, :image_end + 1 - 4], default[:, :image_end + 1 - 4])  # before the first image token
    assert (v2pe[:, image_end + 1:] - default[:, image_end + 1:]).abs().max() > 1e-4  # after it positions differ


def test_attention_stays_causal_across_the_image_without_a_cache():
    """The training path (use_cache=False): the text after the image must still see the image and the text
    before it. transformers would read V2PE's fractional steps as packed-sequence boundaries if no mask
    were passed; forward_logits always passes one."""
    model, batch = tiny_model(), tiny_batch(size=1)
    ids, pixels = batch.input_ids, batch.pixel_values
    changed_text = ids.clone()
    changed_text[0, 1] = TINY_VOCAB["filler"] + (ids[0, 1].item() - TINY_VOCAB["filler"] + 1) % 40
    with torch.no_grad():
        base = forward_logits(model, ids, pixels, 1 / 16)[0, -1]
        other_text = forward_logits(model, changed_text, pixels, 1 / 16)[0, -1]
        other_image = forward_logits(model, ids, pixels + 1.0, 1 / 16)[0, -1]
        positions = v2pe_position_ids(ids, IMG, 1 / 16)
        unmasked = model(input_ids=ids, pixel_values=pixels, position_ids=positions, use_cache=False).logits[0, -1]
        unmasked_other = model(input_ids=changed_text, pixel_values=pixels, position_ids=positions,
                               use_cache=False).logits[0, -1]
    assert (other_text - base).abs().max() > 1e-4, "the last token must see the text before the image"
    assert (other_image - base).abs().max() > 1e-4, "the last token must see the image"
    # The hazard the explicit mask avoids: without it, the last token no longer sees the first text.
    torch.testing.assert_close(unmasked, unmasked_other, atol=0, rtol=0)


def test_fine_tune_moves_trainable_parameters_only():
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log = fine_tune(model, tiny_vocab(4), steps=3, batch_size=4, learning_rate=1e-2, filler_tokens=[4, 8],
                    trainable=["multi_modal_projector"], delta=1 / 16, noise=0.5, seed=1)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    for name, param in model.named_parameters():
        moved = not torch.equal(param, before[name])
        assert moved == ("multi_modal_projector" in name), name
    drawn = fine_tune(model, tiny_vocab(4), steps=2, batch_size=4, learning_rate=1e-2, filler_tokens=[4],
                      trainable=["multi_modal_projector"], delta=1 / 16, noise=0.5, seed=1, deltas=[1.0, 1 / 256])
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in drawn)
    with pytest.raises(ConfigError, match="matches no parameter"):
        fine_tune(model, tiny_vocab(4), steps=1, batch_size=2, learning_rate=1e-2, filler_tokens=[4],
                  trainable=["no_such_module"], delta=1 / 16, noise=0.5, seed=1)


# --- the tiny recipe end to end, and its export in stock transformers -------------------------------------

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("internvl_tiny_v2pe")
    return out, run_vision(typed("internvl_tiny_v2pe", f"output_dir={out}"))


@pytest.mark.slow
def test_tiny_recipe_learns_the_task_with_v2pe_positions(tiny_run):
    out, data = tiny_run
    assert json.loads((out / "eval.json").read_text()) == data
    assert data["extended_length"] == 256 and data["original_length"] == 128 and data["rope"]["type"] == "yarn"
    assert data["train"]["last_loss"] < data["train"]["first_loss"] / 4
    for filler, after in data["results"]["after"].items():
        assert after["accuracy"] >= 0.9 > data["results"]["before"][filler]["accuracy"] + 0.3, filler
    assert data["results"]["after"]["160"]["length"] > 128  # scored beyond the original length


FRESH = """
import sys, json, torch
from safetensors.torch import load_file
from transformers import InternVLForConditionalGeneration
folder, ref = sys.argv[1], load_file(sys.argv[2])
model = InternVLForConditionalGeneration.from_pretrained(folder).eval()
with torch.no_grad():
    logits = model(input_ids=ref["input_ids"], pixel_values=ref["pixel_values"], attention_mask=ref["mask"],
                   position_ids=ref["positions"], use_cache=False).logits
assert "extend" not in sys.modules
text = model.config.text_config
print(json.dumps({"diff": (logits - ref["logits"]).abs().max().item(), "v2pe": model.config.extend_v2pe,
                  "rope": text.rope_parameters, "max_position_embeddings": text.max_position_embeddings}))
"""


@pytest.mark.slow
def test_export_reloads_in_stock_transformers_with_the_same_logits(tiny_run, tmp_path):
    out, data = tiny_run
    from transformers import InternVLForConditionalGeneration
    model = InternVLForConditionalGeneration.from_pretrained(out / "final").eval()
    batch = tiny_batch(filler=150, seed=3)  # longer than the original 128 positions
    mask = torch.ones_like(batch.input_ids)
    positions = v2pe_position_ids(batch.input_ids, IMG, data["v2pe_delta"], mask)
    with torch.no_grad():
        logits = forward_logits(model, batch.input_ids, batch.pixel_values, data["v2pe_delta"])
    save_file({"input_ids": batch.input_ids, "pixel_values": batch.pixel_values, "mask": mask,
               "positions": positions, "logits": logits}, tmp_path / "ref.safetensors")
    run = subprocess.run([sys.executable, "-c", FRESH, str(out / "final"), str(tmp_path / "ref.safetensors")],
                         capture_output=True, text=True, cwd=tmp_path, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    fresh = json.loads(run.stdout.strip().splitlines()[-1])
    assert fresh["diff"] < 1e-5
    assert fresh["v2pe"]["delta"] == 0.0625 and fresh["v2pe"]["image_token_id"] == IMG
    assert fresh["rope"]["rope_type"] == "yarn" and fresh["rope"]["factor"] == 2.0
    assert fresh["max_position_embeddings"] == 256
    note = json.loads((out / "final" / "extend_vision.json").read_text())
    assert note["v2pe"]["delta"] == 0.0625 and note["original_length"] == 128


# --- bad input: one clear line each, before any weights ---------------------------------------------------

@pytest.fixture
def no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the config was checked")
    monkeypatch.setattr("extend.vision.run.build_model", refuse)


@pytest.mark.parametrize("overrides, message", [
    (["vision.v2pe_delta=0"], r"vision.v2pe_delta=0.0 must be > 0"),
    (["vision.v2pe_delta=-0.5"], r"vision.v2pe_delta=-0.5 must be > 0"),
    (["vision.train.v2pe_deltas=[0.5,0]"], r"vision.train.v2pe_deltas=\[0.5, 0.0\]: every increment must be > 0"),
    (["vision.target_length=64"], r"vision.target_length=64 is below the language model's original length 128"),
    (["rope.type=spiral"], r"rope.type='spiral' is not a known position method"),
    (["rope.factor=4"], r"rope.factor=4.0 disagrees with vision.target_length=256"),
    (["rope.type=entropy_abf"], r"rope.type=entropy_abf: its query scaling is an attention wrapper"),
    (["vision.eval.filler_tokens=[400]"], r"vision.eval.filler_tokens: 400 filler tokens make samples span"),
], ids=["delta-zero", "delta-negative", "train-deltas", "target-below-original", "unknown-rope", "two-knobs", "entropy-abf",
        "too-long"])
def test_bad_input_fails_before_weights(overrides, message, no_weights, tmp_path):
    with pytest.raises(ConfigError, match=message) as err:
        run_vision(typed("internvl_tiny_v2pe", f"output_dir={tmp_path}", *overrides))
    assert len(err.value.problems) == 1


def test_unsupported_family_is_named(no_weights, tmp_path):
    LlamaConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"model type 'llama' is not a supported vision-language model; supported: \['internvl'\]"):
        run_vision(typed("internvl_tiny_v2pe", f"output_dir={tmp_path}", f"vision.model={tmp_path}"))


def test_a_model_that_is_not_there_is_named(no_weights, tmp_path):
    with pytest.raises(ConfigError, match=r"vision.model: .*no_such_folder.* is not tiny-internvl, a folder with a config.json"):
        run_vision(typed("internvl_tiny_v2pe", f"output_dir={tmp_path}", f"vision.model={tmp_path}/no_such_folder"))


@pytest.mark.slow
def test_cli_reports_a_bad_increment_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "extend.vision", "recipe=internvl_tiny_v2pe", "vision.v2pe_delta=0",
                          f"output_dir={tmp_path}"], capture_output=True, text=True, cwd=REPO_ROOT,
                         env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "PATH": ""})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["error: vision.v2pe_delta=0.0 must be > 0 (1 = the model's own "
                                                "positions; the paper uses 1/256 ... 1, e.g. 0.0625)"]
    assert list(tmp_path.iterdir()) == []  # refused before the run folder was made


# --- recipes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["internvl_tiny_v2pe", "internvl_v2pe"])
def test_vision_recipes_validate_against_their_model(recipe):
    from tests.test_recipes import assert_recipe_header
    assert_recipe_header(recipe)
    cfg = typed(recipe)
    base = PRESETS[cfg.vision.model]() if cfg.vision.model in PRESETS else STAND_INS[cfg.vision.model]()
    resolved, problems = check_vision(cfg, base)
    assert problems == []
    config = extended_config(base, resolved)
    assert config.text_config.max_position_embeddings == cfg.vision.target_length
    assert config.text_config.rope_parameters["factor"] == cfg.vision.target_length / base.text_config.max_position_embeddings
    from transformers import InternVLForConditionalGeneration
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    assert any(any(p in n for p in cfg.vision.train.trainable) for n, _ in model.named_parameters())


def test_a_checkpoint_folder_with_a_tokenizer_runs_and_exports_it(tmp_path):
    """The path a real checkpoint takes (from_pretrained, the tokenizer's ids, the tokenizer in the export),
    on a tiny InternVL saved with all-MiniLM-L6-v2's tokenizer plus InternVL's image tokens."""
    from transformers import AutoTokenizer, InternVLForConditionalGeneration
    from extend.encoders.run import model_path
    tokenizer = AutoTokenizer.from_pretrained(model_path("all-minilm-l6-v2"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<img>", "</img>", "<IMG_CONTEXT>"]})
    config = PRESETS["tiny-internvl"]()
    config.text_config.vocab_size = len(tokenizer)
    config.image_token_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    torch.manual_seed(0)
    InternVLForConditionalGeneration(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    data = run_vision(typed("internvl_tiny_v2pe", f"output_dir={tmp_path / 'run'}", f"vision.model={tmp_path / 'base'}",
                            "vision.train.steps=2", "vision.eval.samples=4", "vision.eval.filler_tokens=[8]"))
    assert data["train"]["steps"] == 2 and data["results"]["after"]["8"]["length"] > 8 + 4
    final = tmp_path / "run" / "final"
    assert AutoTokenizer.from_pretrained(final).convert_tokens_to_ids("<img>") == tokenizer.convert_tokens_to_ids("<img>")
    assert json.loads((final / "extend_vision.json").read_text())["vocab"] is None  # the tokenizer says it


# --- generation with V2PE positions and a KV cache ----------------------------------------------------------

def full_forward_greedy(model, ids, pixels, delta, steps):
    """The reference: no cache; each step re-reads prompt + answer so far, the answer numbered on from the
    prompt's last V2PE position."""
    prompt = v2pe_position_ids(ids, IMG, delta)
    out = []
    with torch.no_grad():
        for k in range(steps):
            seq = torch.cat([ids, torch.tensor([out], dtype=ids.dtype)], 1) if out else ids
            positions = torch.cat([prompt, prompt[:, -1:] + torch.arange(1, k + 1)], 1)
            logits = model(input_ids=seq, pixel_values=pixels, attention_mask=torch.ones_like(seq),
                           position_ids=positions, use_cache=False).logits
            out.append(int(logits[0, -1].argmax()))
    return out


def peaked_model():
    """tiny_model with larger random weights: a 0.02-init model emits one token forever, which would let a
    wrong position pass unnoticed."""
    model, generator = tiny_model(), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return model


def test_cached_generation_continues_the_v2pe_positions():
    from extend.vision import generate_v2pe
    model, batch = peaked_model(), tiny_batch(size=1)
    ids = batch.input_ids[:, :-1]  # the prompt, without the answer
    cached = generate_v2pe(model, ids, batch.pixel_values, 1 / 16, max_new_tokens=6)
    assert cached[0].tolist() == full_forward_greedy(model, ids, batch.pixel_values, 1 / 16, 6)
    assert len(set(cached[0].tolist())) > 2  # a varied continuation, so positions matter
    # stock generate numbers new tokens by cache length: right only when delta = 1
    stock = model.generate(input_ids=ids, pixel_values=batch.pixel_values, attention_mask=torch.ones_like(ids),
                           max_new_tokens=6, do_sample=False)[:, ids.shape[1]:]
    assert torch.equal(generate_v2pe(model, ids, batch.pixel_values, 1.0, max_new_tokens=6), stock)


def test_left_padded_generation_matches_each_row_alone_and_right_padding_is_refused():
    from extend.vision import generate_v2pe
    model = peaked_model()
    short, long = tiny_batch(filler=4, size=1, seed=1), tiny_batch(filler=9, size=1, seed=2)
    a, b = short.input_ids[:, :-1], long.input_ids[:, :-1]
    pad = b.shape[1] - a.shape[1]
    ids = torch.cat([torch.cat([torch.full((1, pad), TINY_VOCAB["pad"]), a], 1), b])
    mask = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(a)], 1), torch.ones_like(b)])
    pixels = torch.cat([short.pixel_values, long.pixel_values])
    batched = generate_v2pe(model, ids, pixels, 1 / 16, attention_mask=mask, max_new_tokens=5)
    alone = [generate_v2pe(model, x, p, 1 / 16, max_new_tokens=5) for x, p in ((a, short.pixel_values),
                                                                             (b, long.pixel_values))]
    assert torch.equal(batched, torch.cat(alone))
    eos = int(batched[0, 1])  # pretend the first row's second token is EOS: that row stops there, padded after
    stopped = generate_v2pe(model, ids, pixels, 1 / 16, attention_mask=mask, max_new_tokens=5, eos_token_id=eos,
                            pad_token_id=-1)
    assert stopped[0, :2].tolist() == batched[0, :2].tolist() and (stopped[0, 2:] == -1).all()
    with pytest.raises(ValueError, match="needs left padding"):
        generate_v2pe(model, ids, pixels, 1 / 16, attention_mask=mask.flip(1), max_new_tokens=2)
