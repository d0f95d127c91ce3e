"""Fuzz the running server, once per engine: schemathesis generates requests (valid and invalid) for
every operation of the OpenAPI document; the table counts the answers by status and the ones the
document does not describe. The target: no 5xx and nothing undocumented.

    .venv/bin/python -m bench.fuzz                  # both engines, up to 250 cases per operation each
    .venv/bin/python -m bench.fuzz --engines transformers --examples 50

Writes bench/out/fuzz.md. Runs ``aim serve`` on the tiny model as a process, as tests/e2e does.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.e2e.test_openapi import CHECKS
from tests.helpers import png_b64, served

OUT = Path(__file__).parent / "out"


def fuzz(engine: str, examples: int) -> dict:
    env = {"AIM_MODEL": "tiny", "AIM_ENGINE": engine, "AIM_MAX_TOKENS_LIMIT": "16"}
    if engine == "vllm":
        env["AIM_KV_CACHE_MEMORY_BYTES"] = str(256 * 1024 * 1024)
    statuses: collections.Counter[int] = collections.Counter()
    undocumented: list[str] = []
    with tempfile.TemporaryDirectory() as work, served(Path(work), env, start_timeout=300) as server:
        httpx.post(
            server.base_url + "/demonstrations",
            json={"set": "a", "items": [{"image": png_b64("red"), "text": "Q: colour? A: red"}]},
            timeout=60,
        ).raise_for_status()
        api = schemathesis.openapi.from_url(server.base_url + "/openapi.json")
        started = time.perf_counter()
        for result in api.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(
                max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None
            )
            def run(case) -> None:
                response = case.call(timeout=60)
                statuses[response.status_code] += 1
                try:
                    case.validate_response(response, checks=CHECKS)
                except Exception as exc:  # a failed check: record it and keep fuzzing
                    undocumented.append(
                        f"{case.method} {case.path} -> {response.status_code}: {str(exc)[:200]}"
                    )

            run()
        seconds = time.perf_counter() - started
    return {"engine": engine, "statuses": statuses, "undocumented": undocumented, "seconds": seconds}


def table(results: list[dict]) -> str:
    codes = sorted({c for r in results for c in r["statuses"]})
    lines = [
        "| engine | requests | " + " | ".join(str(c) for c in codes) + " | 5xx | undocumented | seconds |",
        "|---|---:|" + "---:|" * len(codes) + "---:|---:|---:|",
    ]
    for r in results:
        s = r["statuses"]
        fivexx = sum(n for c, n in s.items() if c >= 500)
        cells = [r["engine"], str(sum(s.values())), *(str(s.get(c, 0)) for c in codes)]
        cells += [str(fivexx), str(len(r["undocumented"])), f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="transformers,vllm")
    p.add_argument("--examples", type=int, default=250, help="generated cases per operation (at most)")
    args = p.parse_args(argv)
    results = [fuzz(engine, args.examples) for engine in args.engines.split(",")]
    text = table(results)
    for r in results:
        for line in r["undocumented"][:10]:
            text += f"\n- {r['engine']}: {line}"
    OUT.mkdir(exist_ok=True)
    (OUT / "fuzz.md").write_text(text + "\n")
    print(text)
    bad = any(r["undocumented"] or any(c >= 500 for c in r["statuses"]) for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
