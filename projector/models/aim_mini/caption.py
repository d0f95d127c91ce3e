"""The words aim-mini's vision tower writes: an ImageNet class name and the image's main colour.

EfficientNet-Lite0's 7x7 features, through a connector trained on rendered shapes, tell the decoder
about shapes and nothing else: every photo came out as "a circle of light". What the network does
know about photos is in its ImageNet classifier head (1,000 classes with names). The tower therefore
also writes a short caption, ``"\\nThis is a photo of a tabby cat. It is brown."``, as
*word tokens*: each caption token leaves the tower as a one-hot over a small word vocabulary, and the
connector's columns for that vocabulary are the decoder's own input embeddings of those words. The
decoder then reads the class name exactly as it would read it in text, so SmolLM2's knowledge of
"tabby cat" or "espresso" is what answers. Colour comes from pixels (the CNN features lose it): the
most frequent named colour among the pixels that differ from the image's border. ImageNet has no class
for a person: a photo with a face (``faces.py``) is captioned as one.

Everything here is data plus two small tensor functions; ``CaptionTables`` is built once at model
build time from the tokenizer and stored in the tower as buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

CLASS_NAMES_FILE = Path(__file__).resolve().parent / "assets" / "imagenet_classes.txt"

NAMED = "\nThis is a photo of {article} {name}"
PERSON = "person"  # the name written for a photo with a face
UNNAMED = "\nThis is a picture"
COLOUR = ". It is {colour}."

# Named colours as sRGB in [0, 255]: the 8 of easy-VQA (exactly the CSS values its images use) and
# four more that photos need.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "brown": (165, 42, 42),
    "teal": (0, 128, 128),
    "white": (255, 255, 255),
    "orange": (255, 165, 0),
    "purple": (128, 0, 128),
    "pink": (255, 192, 203),
}

# On a flat background (a drawing, a rendered shape) a class name is written only when the classes that
# share it hold at least this much probability; otherwise the caption says "This is a picture".
# Rendered easy-VQA shapes score a median 0.08 on their best ImageNet class ("envelope", "ping-pong
# ball"), and a made-up name there costs shape answers. A photo always gets its best name.
NAME_THRESHOLD = 0.2
# A background is flat when the border pixels' standard deviation (mean over RGB, [0, 1] units) is
# below this: easy-VQA and rendered scenes ~0.00, the held-out photos 0.04-0.35.
FLAT_BORDER_STD = 0.02
# A pixel belongs to the foreground when its RGB distance (in [0, 1] units) to the border's median
# colour is above this.
FOREGROUND_DISTANCE = 0.25
BORDER = 4  # pixels of each edge that estimate the background


def class_names(path: Path = CLASS_NAMES_FILE) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != 1000:
        raise ValueError(f"{path}: expected 1000 ImageNet class names, found {len(names)}")
    return names


def article(name: str) -> str:
    return "an" if name[:1].lower() in "aeiou" else "a"


@dataclass(frozen=True)
class CaptionTables:
    """Token tables of the caption, in word ids (indices into ``word_token_ids``); -1 pads a row.

    - ``class_name``: [1000] row of ``name_words`` for each class (classes may share a name);
    - ``name_words``: [names + 2, A] the caption's first part per class name, then ``PERSON``'s, then
      ``UNNAMED`` (the last row);
    - ``colour_words``: [colours, C] the colour sentence per palette colour;
    - ``palette``: [colours, 3] in [0, 1];
    - ``word_token_ids``: [V] the decoder token id of each word id.
    """

    class_name: torch.Tensor
    name_words: torch.Tensor
    colour_words: torch.Tensor
    palette: torch.Tensor
    word_token_ids: torch.Tensor

    @property
    def length(self) -> int:
        """Caption tokens per image: the longest first part plus the longest colour sentence."""
        return int(self.name_words.shape[1] + self.colour_words.shape[1])

    def buffers(self) -> dict[str, torch.Tensor]:
        return {
            "caption_class_name": self.class_name,
            "caption_name_words": self.name_words,
            "caption_colour_words": self.colour_words,
            "caption_palette": self.palette,
            "caption_word_token_ids": self.word_token_ids,
        }


def build_tables(tokenizer, names: list[str] | None = None) -> CaptionTables:
    """Tokenise every caption part once; the word vocabulary is the set of tokens they use."""
    names = names if names is not None else class_names()
    distinct = list(dict.fromkeys(names))  # "missile" is two ImageNet classes: one name, summed
    texts = [NAMED.format(article=article(n), name=n) for n in distinct + [PERSON]] + [UNNAMED]
    colours = [COLOUR.format(colour=c) for c in PALETTE]

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    first, second = [ids(t) for t in texts], [ids(t) for t in colours]
    vocab = sorted({t for row in first + second for t in row})
    word = {t: i for i, t in enumerate(vocab)}

    def table(rows: list[list[int]]) -> torch.Tensor:
        out = torch.full((len(rows), max(map(len, rows))), -1, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor([word[t] for t in row])
        return out

    index = {n: i for i, n in enumerate(distinct)}
    return CaptionTables(
        class_name=torch.tensor([index[n] for n in names], dtype=torch.long),
        name_words=table(first),
        colour_words=table(second),
        palette=torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 255,
        word_token_ids=torch.tensor(vocab, dtype=torch.long),
    )


def image_statistics(pixels: torch.Tensor, palette: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, 3, H, W] in [0, 1] -> ([B] main colour as a palette index, [B] whether the background is
    flat). The main colour is the most frequent palette colour (nearest in RGB) among foreground
    pixels, or among all pixels when almost nothing stands out from the border."""
    colours, flat = [], []
    for image in pixels.float():
        every = image.flatten(1).T  # [H*W, 3]
        border = torch.cat(
            [image[:, :BORDER].flatten(1), image[:, -BORDER:].flatten(1)]
            + [image[:, :, :BORDER].flatten(1), image[:, :, -BORDER:].flatten(1)],
            dim=1,
        ).T
        background = border.median(dim=0).values
        flat.append(bool(border.std(dim=0).mean() < FLAT_BORDER_STD))
        foreground = every[(every - background).norm(dim=1) > FOREGROUND_DISTANCE]
        if foreground.shape[0] < 0.002 * every.shape[0]:
            foreground = every
        nearest = torch.cdist(foreground, palette.to(foreground)).argmin(dim=1)
        colours.append(torch.bincount(nearest, minlength=palette.shape[0]).argmax())
    return torch.stack(colours), torch.tensor(flat, device=pixels.device)


def caption_words(
    probs: torch.Tensor,
    colour: torch.Tensor,
    flat: torch.Tensor,
    face: torch.Tensor,
    class_name: torch.Tensor,
    name_words: torch.Tensor,
    colour_words: torch.Tensor,
    threshold: float = NAME_THRESHOLD,
) -> torch.Tensor:
    """[B, 1000] class probabilities, [B] colours, [B] flat backgrounds and [B] faces found -> [B, L]
    word ids, left-padded with -1.

    Probabilities of classes that share a name are summed; the best name is written for a photo, and
    for a flat-background image when it reaches ``threshold``. A photo with a face is a person's."""
    unnamed = name_words.shape[0] - 1
    person = unnamed - 1
    by_name = torch.zeros(probs.shape[0], person, dtype=probs.dtype, device=probs.device)
    by_name.index_add_(1, class_name.to(probs.device), probs)
    best_p, best = by_name.max(dim=1)
    photo = ~flat.to(probs.device)
    rows = torch.where((best_p >= threshold) | photo, best, torch.full_like(best, unnamed))
    rows = torch.where(photo & face.to(probs.device), torch.full_like(best, person), rows)
    length = name_words.shape[1] + colour_words.shape[1]
    out = torch.full((probs.shape[0], length), -1, dtype=torch.long, device=probs.device)
    for i, (r, c) in enumerate(zip(rows.tolist(), colour.tolist(), strict=True)):
        words = torch.cat([name_words[r], colour_words[c]])
        words = words[words >= 0]
        out[i, length - words.shape[0] :] = words
    return out
