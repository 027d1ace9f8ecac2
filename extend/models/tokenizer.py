"""The tokenizer of a run: a local folder, a Hub id already in the local cache, or the built-in `tiny`.

`tiny` is a byte-level BPE trained with the `tokenizers` library on part of the built-in corpus (the
standard library, `extend.corpus`), so the CPU recipe needs no download. Digits are always single
tokens: retrieving a 5-digit pass key is then a copy of five tokens, not of whatever merges BPE learnt.
Training is deterministic and takes a few seconds; the result is cached under `cache_dir/tokenizers/`
in a folder named by a hash of everything that went into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from extend.config import ConfigError
from extend.corpus import python_version, read_document, stdlib_files

TINY = "tiny"
TINY_VOCAB_SIZE = 4096
# Every n-th file of the built-in corpus trains the tiny tokenizer (about 2.5 MB, a few seconds).
TINY_TRAIN_EVERY = 4
# Bump when the training recipe below changes, so caches made by an older recipe are not reused.
TINY_RECIPE_VERSION = 1
SPECIAL_TOKENS = {"pad_token": "<|pad|>", "bos_token": "<|bos|>", "eos_token": "<|eos|>"}
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# Prefix-stable by construction (each message renders on its own), which the chat-masking in
# extend.data.tokenize relies on.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
DEFAULT_CACHE_DIR = "~/.cache/extend"


def load_tokenizer(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer named by `data.tokenizer`; one without an EOS token is a ConfigError."""
    if name_or_path == TINY:
        tokenizer = _load_tiny(Path(cache_dir or DEFAULT_CACHE_DIR).expanduser())
    else:
        tokenizer = _load_pretrained(name_or_path)
    if tokenizer.eos_token_id is None:
        raise ConfigError([f"data.tokenizer={name_or_path!r} has no EOS token; documents are separated by EOS, so "
                           "pick a tokenizer that defines one (or add `eos_token` to its tokenizer_config.json)"])
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A hash of everything that decides which ids a text becomes: vocabulary, merges, normalisation,
    special tokens, and the chat template."""
    state = {
        "backend": json.loads(tokenizer.backend_tokenizer.to_str()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "chat_template": tokenizer.chat_template,
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def _load_pretrained(name_or_path: str) -> PreTrainedTokenizerFast:
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ConfigError([
            f"data.tokenizer={name_or_path!r} could not be loaded ({err.__class__.__name__}: {str(err)[:200]}); give a "
            f"tokenizer folder, `{TINY}`, or a Hub id already in the local cache (`hf download ID` where the Hub is "
            "reachable)"
        ]) from err
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ConfigError([f"data.tokenizer={name_or_path!r} has no fast (Rust) tokenizer; data_prep needs one "
                           "(convert it with transformers' convert_slow_tokenizer)"])
    return tokenizer


def tiny_is_cached(cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether the `tiny` tokenizer is already trained and cached (loading it then trains nothing)."""
    return (_tiny_folder(Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()) / "tokenizer.json").exists()


def _tiny_folder(cache_dir: Path) -> Path:
    files = stdlib_files()[::TINY_TRAIN_EVERY]
    # The standard library changes with the Python version; names and sizes catch a patched install
    # without reading every file on each load.
    key = hashlib.sha256(json.dumps({
        "recipe": TINY_RECIPE_VERSION, "vocab_size": TINY_VOCAB_SIZE, "python": python_version(),
        "corpus": [(p.name, p.stat().st_size) for p in files],
    }, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / "tokenizers" / f"tiny-{key}"


def _load_tiny(cache_dir: Path) -> PreTrainedTokenizerFast:
    folder = _tiny_folder(cache_dir)
    if not (folder / "tokenizer.json").exists():
        files = stdlib_files()[::TINY_TRAIN_EVERY]
        _save_atomically(_train_tiny([read_document(p) for p in files]), folder)
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def _train_tiny(texts: list[str]) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS.values()) + CHAT_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, additional_special_tokens=CHAT_TOKENS, chat_template=TINY_CHAT_TEMPLATE,
        **SPECIAL_TOKENS,
    )


def _save_atomically(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    """Save into a sibling temp folder and rename, so a concurrent or killed run never sees half a cache."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.rename(folder)
    except OSError:
        if not (folder / "tokenizer.json").exists():
            raise
        shutil.rmtree(tmp)  # another process finished the same cache first
