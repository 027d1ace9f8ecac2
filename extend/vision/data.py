"""Synthetic image-text samples: "what colour is the (first) image?" after some filler text.

Each sample is `[bos] filler... (<img> IMAGE x N </img>) x images question answer`: each image is Gaussian
noise around one of up to eight colours (corners of the normalised RGB cube), the answer is the first
image's colour token and is the only label the loss reads; later images are distractors. The answer can only
come from the first image, so the text after the images must attend back across them, and more filler makes
the input longer without changing the task. Seeded: the same seed gives the same samples.

The tiny preset has no tokenizer; its ids are fixed (model.TINY_VOCAB). A real checkpoint's tokenizer
supplies the ids of `<img>`, `</img>`, the question and the colour names (`tokenizer_vocab`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from extend.config import ConfigError
from extend.vision.model import TINY_VOCAB

# Colour names and their pixel values in normalised units (ImageNet-normalised images lie roughly in +-2).
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.5, -1.5, -1.5), "green": (-1.5, 1.5, -1.5), "blue": (-1.5, -1.5, 1.5), "yellow": (1.5, 1.5, -1.5),
    "cyan": (-1.5, 1.5, 1.5), "magenta": (1.5, -1.5, 1.5), "white": (1.5, 1.5, 1.5), "black": (-1.5, -1.5, -1.5)}
QUESTION = "What colour is the image?"
FILLER_TEXT = "The quick brown fox jumps over the lazy dog while the band plays on in the old town square."


@dataclass(frozen=True)
class Vocab:
    """The token ids a sample is made of."""

    bos: list[int]
    img_start: int
    img_end: int
    image: int
    question: list[int]
    colours: list[int]  # the answer token of colour k
    filler: list[int]  # filler text draws its tokens from these
    pad: int


def tiny_vocab(colours: int) -> Vocab:
    v = TINY_VOCAB
    return Vocab(bos=[v["bos"]], img_start=v["img_start"], img_end=v["img_end"], image=v["image"],
                 question=[v["question"]], colours=list(range(v["colours"], v["colours"] + colours)),
                 filler=list(range(v["filler"], v["size"])), pad=v["pad"])


def tokenizer_vocab(tokenizer, image_token_id: int, colours: int) -> Vocab:
    """Ids from a real tokenizer: InternVL's `<img>` / `</img>` tokens and the first token of each colour
    name (after a space), which must differ between colours."""
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    specials = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<img>", "</img>")}
    unknown = [t for t, i in specials.items() if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise ConfigError([f"vision.model: the tokenizer has no {unknown} tokens; InternVL tokenizers have them"])
    answers = [ids(" " + name)[0] for name in list(COLOURS)[:colours]]
    if len(set(answers)) != len(answers):
        raise ConfigError([f"vision.task.colours: colour names share a first token in this tokenizer: {answers}"])
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return Vocab(bos=bos, img_start=specials["<img>"], img_end=specials["</img>"], image=image_token_id,
                 question=ids(" " + QUESTION), colours=answers, filler=ids(" " + FILLER_TEXT), pad=pad)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (batch, seq)
    pixel_values: torch.Tensor  # (batch x images, 3, size, size), sample-major
    labels: torch.Tensor  # -100 everywhere but the answer token
    answers: torch.Tensor  # (batch,) colour index


def sample_length(vocab: Vocab, filler: int, image_tokens: int, images: int = 1) -> int:
    return len(vocab.bos) + filler + images * (image_tokens + 2) + len(vocab.question) + 1


def make_batch(vocab: Vocab, size: int, filler: int, image_tokens: int, image_size: int, noise: float,
               generator: torch.Generator, rng: random.Random, images: int = 1) -> Batch:
    """`size` samples with `filler` filler tokens and `images` images each (all the same length: no padding).
    The answer is the colour of the first image; the others have random colours (distractors)."""
    palette = torch.tensor(list(COLOURS.values())[:len(vocab.colours)])
    colours = torch.randint(len(vocab.colours), (size, images), generator=generator)
    answers = colours[:, 0]
    noise_px = noise * torch.randn(size * images, 3, image_size, image_size, generator=generator)
    pixels = palette[colours.reshape(-1)][:, :, None, None] + noise_px  # sample-major, as the placeholders
    image = [vocab.img_start] + [vocab.image] * image_tokens + [vocab.img_end]
    rows = []
    for k in answers.tolist():
        text = [rng.choice(vocab.filler) for _ in range(filler)]
        rows.append(vocab.bos + text + image * images + vocab.question + [vocab.colours[k]])
    input_ids = torch.tensor(rows)
    labels = torch.full_like(input_ids, -100)
    labels[:, -1] = input_ids[:, -1]
    return Batch(input_ids, pixels, labels, answers)
