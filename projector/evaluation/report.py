"""An evaluation summary as markdown tables (``results.md``) and a plot (``results.png``).

The first table is per (setting, k): task accuracy, then fidelity to raw multimodal ICL (answer
agreement, first-token top-1 agreement, KL(raw ‖ setting)), the label-copy rate, prompt tokens and
latency. The second lists the paired sign tests. A run comparing selection policies (``--select``)
names each row's policy and adds a third table: per setting and k, each policy beside ``first``.
"""

from __future__ import annotations

from pathlib import Path

LABELS = {
    "zero-shot": "zero-shot",
    "raw-icl": "raw multimodal ICL",
    "raw-icl-jpeg": "raw multimodal ICL, demonstrations re-encoded as JPEG",
    "aim": "AIM (trained projector)",
    "aim-identity": "AIM (identity projector)",
}
MEASURES = {"score": "task score", "agreement": "agreement with raw ICL", "label_copy": "label copying"}


def label(setting: str, select: str | None = None) -> str:
    name = LABELS.get(setting, f"AIM ({setting[4:]})")
    return name if select is None else f"{name}, select={select}"


def _selecting(summary: dict) -> bool:
    return len(summary.get("selection_policies") or []) > 1


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def markdown_table(summary: dict) -> str:
    types = sorted({t for r in summary["results"] for t in r["by_type"]})
    by_type = types if 1 < len(types) <= 6 else []
    head = ["setting", "k", "accuracy", *[f"acc. {t}" for t in by_type], "agreement", "first token", "KL",
            "label copy", "prompt tokens", "latency (ms)"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    selecting = _selecting(summary)
    for r in summary["results"]:
        cells = [label(r["setting"], r.get("select") if selecting else None), str(r["k"]), _f(r["accuracy"]),
                 *[_f(r["by_type"].get(t)) for t in by_type],
                 _f(r.get("agreement")), _f(r.get("first_token_agreement")), _f(r.get("kl")),
                 _f(r.get("label_copy_rate")), f"{r['prompt_tokens']:.1f}", f"{r['latency_ms']:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    task = summary.get("task", {})
    scoring = "unigram F1" if task.get("scoring") == "overlap" else "normalised exact match"
    chance = (
        f" Chance (guessing among the demonstrated labels): {task['chance']:.3f}."
        if task.get("chance")
        else ""
    )
    note = (
        f"\n{summary['benchmark']}, {summary['n_test']} items (seed {summary['seed']}); backbone "
        f"`{summary['backbone']}` on {summary['device']}; accuracy: {scoring} on the first generated line; "
        f"the most common reference '{summary['majority_answer']}' scores {summary['majority_accuracy']:.3f}."
        f"{chance} Agreement: the answer equals raw ICL's (normalised); first token: top-1 agreement at the "
        "answer's first token; KL: mean KL(raw ‖ setting) in nats over raw ICL's greedy answer tokens, "
        "teacher-forced; label copy: the answer is one of the shown demonstrations' labels.\n"
    )
    tests = summary.get("significance") or []
    if tests:
        note += "\n| k | setting | against | measure | setting only | other only | p (sign test) |\n"
        note += "|---|---|---|---|---|---|---|\n"
        for t in tests:
            a, b = (label(t[x], t.get(f"{x}_select") if selecting else None) for x in ("a", "b"))
            note += (f"| {t['k']} | {a} | {b} | {MEASURES.get(t['measure'], t['measure'])} "
                     f"| {t['a_only']} | {t['b_only']} | {_p(t['p'])} |\n")  # fmt: skip
    return "\n".join(lines) + "\n" + note + (selection_table(summary) if selecting else "")


def selection_table(summary: dict) -> str:
    """Per setting (but zero-shot) and k: each selection policy's accuracy, label copy and agreement with
    raw ICL under the same policy, with the sign-test p of its task score against ``first``."""
    p_first = {(t["a"], t["a_select"], t["k"]): t for t in summary.get("significance") or []
               if t["measure"] == "score" and t.get("b_select") == "first" and t["b"] == t["a"]}  # fmt: skip
    lines = ["\n| setting | k | select | accuracy | label copy | agreement with raw ICL | p vs first (score) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    rows = sorted((r for r in summary["results"] if r.get("select")),
                  key=lambda r: (list(LABELS).index(r["setting"]) if r["setting"] in LABELS else 9, r["setting"],
                                 r["k"], summary["selection_policies"].index(r["select"])))  # fmt: skip
    for r in rows:
        test = p_first.get((r["setting"], r["select"], r["k"]))
        p = f"{_p(test['p'])} ({test['a_only']}/{test['b_only']})" if test else "–"
        agreement = "–" if r["setting"] == "raw-icl" else _f(r.get("agreement"))
        lines.append(f"| {label(r['setting'])} | {r['k']} | {r['select']} | {_f(r['accuracy'])} | "
                     f"{_f(r.get('label_copy_rate'))} | {agreement} | {p} |")  # fmt: skip
    return (
        "\n".join(lines)
        + f"\n\nSelection: each query's {summary.get('candidates')} candidate demonstrations; p: exact sign test "
        "of per-item task score against the same setting with `first` (items better / items worse).\n"
    )


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["results"]
    classification = summary.get("task", {}).get("classification", False)
    panels = [("accuracy", "accuracy"), ("agreement", "agreement with raw ICL"),
              ("label_copy_rate" if classification else "kl",
               "label-copy rate" if classification else "KL(raw ‖ setting), nats"),
              ("prompt_tokens", "mean prompt tokens")]  # fmt: skip
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    selecting = _selecting(summary)
    series = list(dict.fromkeys((r["setting"], r.get("select") if selecting else None) for r in rows))
    for setting, select in series:
        mine = [r for r in rows if r["setting"] == setting and (not selecting or r.get("select") == select)]
        for ax, (key, _) in zip(axes, panels, strict=True):
            pts = sorted((r["k"], r[key]) for r in mine if r.get(key) is not None)
            if pts:
                ks, values = zip(*pts, strict=True)
                style = "--" if setting == "zero-shot" else "-"
                ax.plot(ks, values, style, marker="o", label=label(setting, select))
    chance = summary.get("task", {}).get("chance")
    if chance:
        axes[0].axhline(chance, color="lightgray", linestyle=":", label="chance")
    for ax, (_, title) in zip(axes, panels, strict=True):
        ax.set_xlabel("demonstrations (k)")
        ax.set_title(title)
        ax.set_xticks(summary["shots"])
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_ylim(-0.02, 1.05)
    if classification:
        axes[2].set_ylim(-0.02, 1.05)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{summary['benchmark']}: {summary['n_test']} items, backbone {summary['backbone']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def policy_comparison(summaries: list[dict], setting: str = "aim") -> str:
    """One table across ``--select`` runs (one per task): per task and k, each policy's accuracy for
    ``setting`` and raw ICL, label copy (closed tasks) and ``setting``'s fidelity to raw ICL under the
    same policy (answer agreement on closed tasks; KL(raw ‖ setting) on open ones, where whole answers
    rarely match); ``*``: the task score differs from ``first``'s at p < 0.05 (paired sign test). The
    last column tests the order of similar demonstrations: items where most-similar-last did better /
    worse than most-similar-first, and p (task score, label copy and agreement only)."""
    policies = list(dict.fromkeys(p for s in summaries for p in s.get("selection_policies") or []))
    head = ["task (n)", "k", "measure", *policies, "similar: last vs first"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    name = label(setting).split(" (")[0] if setting.startswith("aim") else label(setting)
    for s in summaries:
        rows = {(r["setting"], r.get("select"), r["k"]): r for r in s["results"]}
        p_first = {(t["a"], t["a_select"], t["k"]): t["p"] for t in s.get("significance") or []
                   if t["measure"] == "score" and t.get("b_select") == "first" and t["a"] == t["b"]}  # fmt: skip
        order = {(t["a"], t["measure"], t["k"]): t for t in s.get("significance") or []
                 if t.get("b_select") == "similar-first" and t["a"] == t["b"]}  # fmt: skip
        measure_of = {"accuracy": "score", "label_copy_rate": "label_copy", "agreement": "agreement"}
        measures = [(setting, "accuracy", f"{name} accuracy"), ("raw-icl", "accuracy", "raw ICL accuracy")]
        if s.get("task", {}).get("classification"):
            measures += [(setting, "label_copy_rate", f"{name} label copy"),
                         ("raw-icl", "label_copy_rate", "raw ICL label copy"),
                         (setting, "agreement", f"{name} agreement with raw ICL")]  # fmt: skip
        else:
            measures.append((setting, "kl", f"{name} KL(raw ‖ {name})"))
        for k in [k for k in s["shots"] if k > 0]:
            for who, key, title in measures:
                found = [rows.get((who, policy, k)) for policy in policies]
                if not any(found):
                    continue  # not measured (a run stopped before this k)
                cells = []
                for policy, row in zip(policies, found, strict=True):
                    mark = "*" if key == "accuracy" and p_first.get((who, policy, k), 1.0) < 0.05 else ""
                    cells.append("–" if row is None else _f(row.get(key), 2) + mark)
                t = order.get((who, measure_of.get(key, ""), k))
                cells.append(f"{t['a_only']}/{t['b_only']}, p {_p(t['p'])}" if t else "–")
                lines.append(
                    f"| {s['benchmark']} ({s['n_test']}) | {k} | {title} | " + " | ".join(cells) + " |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m projector.evaluation.report RESULTS.json ...``: the policy table of ``--select`` runs."""
    import argparse
    import json

    p = argparse.ArgumentParser(prog="python -m projector.evaluation.report", description=main.__doc__)
    p.add_argument("results", nargs="+", type=Path, help="results.json of aim eval --select runs")
    p.add_argument("--setting", default="aim")
    args = p.parse_args(argv)
    print(policy_comparison([json.loads(r.read_text()) for r in args.results], args.setting), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
