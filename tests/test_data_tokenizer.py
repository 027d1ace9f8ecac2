"""The built-in `tiny` tokenizer, tokenizer loading errors, and chat masking."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from extend.config import ConfigError
from extend.data.sources import RawSource
from extend.data.tokenize import chat_segments, tokenize_source
from extend.models.tokenizer import TINY_VOCAB_SIZE, load_tokenizer, tokenizer_fingerprint


@pytest.fixture(scope="module")
def tiny(request):
    # Cached across sessions in .pytest_cache, so the suite trains it once per machine.
    return load_tokenizer("tiny", request.config.cache.mkdir("extend-cache"))


def test_tiny_tokenizer_shape(tiny):
    assert len(tiny) == TINY_VOCAB_SIZE
    ids = {tiny.bos_token_id, tiny.eos_token_id, tiny.pad_token_id}
    assert None not in ids and len(ids) == 3
    tokens = tiny.convert_ids_to_tokens(tiny.encode("The pass key is 90817.", add_special_tokens=False))
    assert tokens[-6:] == ["9", "0", "8", "1", "7", "."]  # every digit its own token
    text = "def f(x):\n    return x ** 2  # ünïcode\n"
    assert tiny.decode(tiny.encode(text, add_special_tokens=False)) == text
    assert tiny.chat_template is not None


def test_tiny_tokenizer_is_deterministic_and_cached(tiny, tmp_path):
    fresh = load_tokenizer("tiny", tmp_path)  # trained again from scratch
    assert tokenizer_fingerprint(fresh) == tokenizer_fingerprint(tiny)
    [folder] = (tmp_path / "tokenizers").iterdir()
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    load_tokenizer("tiny", tmp_path)
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "tokenizers").iterdir()] == [folder.name]


def test_tokenizer_without_eos_is_an_error(tmp_path):
    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]").save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="has no EOS token"):
        load_tokenizer(str(tmp_path))


def test_missing_tokenizer_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="could not be loaded"):
        load_tokenizer(str(tmp_path / "nowhere"))


def test_chat_loss_is_on_assistant_turns_only(tiny):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Key?"},
                {"role": "assistant", "content": "12345"}, {"role": "user", "content": "Again?"},
                {"role": "assistant", "content": "67890"}]
    segments = chat_segments(messages, tiny, mask_prompt=True)
    assert "".join(t for t, _ in segments) == tiny.apply_chat_template(messages, tokenize=False)
    assert [t for t, target in segments if target] == ["12345<|end|>\n", "67890<|end|>\n"]
    tok = tokenize_source(RawSource("c", "chat", [messages], "x"), tiny, mask_prompt=True, add_bos=True, num_proc=1)
    kept = tiny.decode(tok.ids[tok.targets])
    assert kept == "12345<|end|>\n67890<|end|>\n<|eos|>"
    assert tok.ids[0] == tiny.bos_token_id and tok.ids[-1] == tiny.eos_token_id


def test_parallel_tokenisation_matches_one_process(tiny):
    docs = [f"document {i}: " + "word " * (i % 37) for i in range(700)]
    one = tokenize_source(RawSource("t", "text", docs, "x"), tiny, mask_prompt=True, add_bos=False, num_proc=1)
    two = tokenize_source(RawSource("t", "text", docs, "x"), tiny, mask_prompt=True, add_bos=False, num_proc=2)
    np.testing.assert_array_equal(one.ids, two.ids)
    np.testing.assert_array_equal(one.offsets, two.offsets)
    assert (one.ids[one.offsets[1:] - 1] == tiny.eos_token_id).all()
    assert tiny.decode(one.ids[one.offsets[5] : one.offsets[6] - 1]) == docs[5]
