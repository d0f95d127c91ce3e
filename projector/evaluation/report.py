"""An evaluation summary as a markdown table (``results.md``) and a plot (``results.png``)."""

from __future__ import annotations

from pathlib import Path

LABELS = {
    "zero-shot": "zero-shot",
    "raw-icl": "raw multimodal ICL",
    "aim": "AIM (trained projector)",
    "aim-identity": "AIM (identity projector)",
}


def markdown_table(summary: dict) -> str:
    types = sorted({t for r in summary["results"] for t in r["by_type"]})
    head = ["setting", "k", "accuracy", *[f"acc. {t}" for t in types], "prompt tokens", "latency (ms)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in summary["results"]:
        cells = [LABELS.get(r["setting"], f"AIM ({r['setting'][4:]})"), str(r["k"]), f"{r['accuracy']:.3f}",
                 *[f"{r['by_type'].get(t, float('nan')):.3f}" for t in types],
                 f"{r['prompt_tokens']:.1f}", f"{r['latency_ms']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        f"\n{summary['benchmark']} test, {summary['n_test']} questions (seed {summary['seed']}), demonstrations "
        f"from a pool of {summary['pool']} training questions; backbone `{summary['backbone']}` on "
        f"{summary['device']}; normalised exact match on the first generated line; majority answer "
        f"'{summary['majority_answer']}' scores {summary['majority_accuracy']:.3f}.\n"
    )
    return "\n".join(lines) + "\n" + note


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["results"]
    zero = next((r for r in rows if r["setting"] == "zero-shot"), None)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for setting in dict.fromkeys(r["setting"] for r in rows if r["setting"] != "zero-shot"):
        pts = sorted((r["k"], r["accuracy"], r["prompt_tokens"]) for r in rows if r["setting"] == setting)
        if not pts:
            continue
        if zero is not None:
            pts = [(0, zero["accuracy"], zero["prompt_tokens"]), *pts]
        ks, acc, tok = zip(*pts, strict=True)
        label = LABELS.get(setting, f"AIM ({setting[4:]})")
        ax1.plot(ks, acc, marker="o", label=label)
        ax2.plot(ks, tok, marker="o", label=label)
    if zero is not None:
        ax1.axhline(zero["accuracy"], color="gray", linestyle="--", label="zero-shot")
    ax1.axhline(summary["majority_accuracy"], color="lightgray", linestyle=":", label="majority answer")
    ax1.set_xlabel("demonstrations (k)")
    ax1.set_ylabel("accuracy (normalised exact match)")
    ax1.set_title(f"{summary['benchmark']} ({summary['n_test']} test questions)")
    top = max([summary["majority_accuracy"], *[r["accuracy"] for r in rows]])
    ax1.set_ylim(-0.02, min(1.05, top + 0.25))
    ax1.legend(fontsize=8, loc="upper left", ncol=2)
    ax2.set_xlabel("demonstrations (k)")
    ax2.set_ylabel("mean prompt tokens")
    ax2.set_title(f"prompt length, backbone {summary['backbone']}")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.set_xticks(summary["shots"])
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
