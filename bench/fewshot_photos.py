"""The README's few-shot request on every example photo: what comes back, per prompt layout.

Two demonstrations (the README's: ``cat.jpg`` "…A: a cat", ``coffee.jpg`` "…A: a cup of coffee"), then
each photo of ``examples/images`` asked "Q: What is in the picture? A:", greedy, first line, with raw
multimodal ICL (every demonstration with its own image) and with AIM (the shipped projector's fused
tokens), in three layouts of the same prompt:

* ``served``: what the server sends: the model's templates, a query after demonstrations in the
  few-shot query template (aim-mini: plain ``<image>\\n{text}``, as its projector was trained);
* ``chat``: the query in aim-mini's chat template after the demonstrations, i.e. before the system
  turn (what the server sent before the few-shot template existed);
* ``chat, demos in user turn``: the chat template with a ``{demonstrations}`` slot where the query's
  content starts, i.e. the demonstrations inside the user turn, before the query's image.

An answer *names* the photo when it contains one of the photo's accepted names (``photos.json``, as
the zero-shot naming check counts). ``agree``: AIM's answer equals raw ICL's (normalised).

    .venv/bin/python -m bench.fewshot_photos       # writes bench/out/fewshot_photos.{md,png}
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from projector.backbone import load_backbone
from projector.encoder import AimEncoder
from projector.evaluation.metrics import normalize_answer
from projector.generation import AnswerGenerator
from projector.models import resolve_model
from projector.models.aim_mini.data import load_rgb
from projector.models.aim_mini.photos import DEFAULT_PHOTOS, load_photos, names_object
from projector.projector import Projector
from projector.prompt import assemble_prompt
from projector.templates import DEMONSTRATIONS_SLOT, Templates
from projector.training.config import DEFAULT_MODEL_CACHE

QUESTION = "Q: What is in the picture? A:"
DEMONSTRATIONS = [("cat.jpg", "Q: What is in the picture? A: a cat"),
                  ("coffee.jpg", "Q: What is in the picture? A: a cup of coffee")]  # fmt: skip
SHIPPED = Path(__file__).resolve().parents[1] / "projector" / "checkpoints" / "aim-mini-generic"
LAYOUTS = ("served", "chat", "chat, demos in user turn")


@dataclass
class Row:
    layout: str
    answers: list[dict] = field(default_factory=list)

    def count(self, key: str) -> int:
        return sum(1 for a in self.answers if a[key])


def layout_templates(layout: str, own: Templates) -> Templates:
    """The templates that give ``layout``, from the model's own."""
    if layout == "served":
        return own
    chat = Templates(own.demonstration, own.query, own.text_query)  # few-shot wrapped as zero-shot
    if layout == "chat":
        return chat
    slot = DEMONSTRATIONS_SLOT  # the demonstrations where the query's content starts, in its user turn
    return replace(
        chat,
        few_shot_query=own.query.replace("<image>", slot + "<image>", 1),
        few_shot_text_query=own.text_query.replace("{text}", slot + "{text}", 1),
    )


def run(args: argparse.Namespace) -> list[Row]:
    torch.set_num_threads(args.threads)
    photos = load_photos(args.photos)
    demos = [(load_rgb(args.photos / f), t) for f, t in DEMONSTRATIONS]
    backbone = load_backbone(resolve_model("aim-mini", args.model_cache), device="cpu")
    own = backbone.templates
    rows = []
    for layout in LAYOUTS:
        backbone.templates = layout_templates(layout, own)
        projector = Projector.load(args.projector, backbone=backbone.name, hidden_size=backbone.hidden_size)
        encoder = AimEncoder(backbone, projector, dtype=backbone.dtype)
        fused = [encoder.encode_demonstration(im, text).fused_tokens for im, text in demos]
        generator = AnswerGenerator(backbone, max_new_tokens=args.max_new_tokens)
        row = Row(layout)
        for photo in photos:
            raw_embeds = assemble_prompt(backbone.raw_prompt_embeds(demos, photo.image, QUESTION), [])
            aim_embeds = assemble_prompt(encoder.embed_query(photo.image, QUESTION, few_shot=True), fused)
            raw = generator.generate(raw_embeds).text.strip()
            aim = generator.generate(aim_embeds).text.strip()
            row.answers.append({
                "photo": photo.file, "raw": raw, "aim": aim,
                "raw_names": names_object(raw, photo.names), "aim_names": names_object(aim, photo.names),
                "agree": normalize_answer(raw) == normalize_answer(aim),
            })  # fmt: skip
            print(layout, json.dumps(row.answers[-1]), flush=True)
        rows.append(row)
    return rows


def report(rows: list[Row]) -> str:
    n = len(rows[0].answers)
    lines = [
        "| layout | raw ICL names the photo | AIM names the photo | AIM = raw ICL |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.layout} | {r.count('raw_names')} / {n} | {r.count('aim_names')} / {n} | "
                     f"{r.count('agree')} / {n} |")  # fmt: skip
    lines += ["", "| photo | " + " | ".join(f"{r.layout}: raw ICL | AIM" for r in rows) + " |",
              "|---|" + "---|---|" * len(rows)]  # fmt: skip
    for i, a in enumerate(rows[0].answers):
        cells = [f"`{r.answers[i]['raw']}` | `{r.answers[i]['aim']}`" for r in rows]
        lines.append(f"| {a['photo']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows[0].answers)
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j, (key, label) in enumerate([("raw_names", "raw ICL names it"), ("aim_names", "AIM names it"),
                                      ("agree", "AIM = raw ICL")]):  # fmt: skip
        ax.bar([x + 0.27 * (j - 1) for x in xs], [r.count(key) / n for r in rows], width=0.27, label=label)
    ax.set_xticks(list(xs), [r.layout for r in rows])
    ax.set_ylabel(f"share of {n} photos")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projector", type=Path, default=SHIPPED)
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    parser.add_argument(
        "--model-cache", type=Path, default=DEFAULT_MODEL_CACHE, help="where aim-mini is built"
    )
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    args = parser.parse_args(argv)
    rows = run(args)
    table = report(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fewshot_photos.md").write_text(table)
    plot(rows, args.out / "fewshot_photos.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
