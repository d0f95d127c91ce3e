"""The compose deployment's checks, run by deploy/test.sh against its private Docker daemon.

Starts deploy/docker-compose.cpu.yml (images already built), waits for /ready, then:

1. the README's request flow on the published port (register three photos into "photos",
   /generate with {"set": "photos", "k": 2}, GET the set and each demonstration);
2. `restart` of the aim container: every demonstration, the set and the greedy answer still there;
3. `down` then `up` (volumes kept): the same;
4. the Redis container stopped while requests run: bank routes answer 503 while it is down, heal
   within seconds after `start`, and every acknowledged registration is still there;
5. the README's deletes;
6. `down -v`: no container, network or volume of the project left.

Standard library only (it runs on the host's python3). Prints one line per step and, last, one
summary line; exits 1 when a step failed.

"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "examples" / "images"
QUESTION = "Q: What is in the picture? A:"
READY_TIMEOUT_S = 600
HEAL_LIMIT_S = 20


class StepFailed(AssertionError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def b64(name: str) -> str:
    return base64.b64encode((IMAGES / name).read_bytes()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    def __init__(self, project: str, compose_file: str, port: int):
        self.project, self.compose_file, self.port = project, compose_file, port
        self.env = {**os.environ, "AIM_PUBLISH_PORT": str(port)}

    # -- docker ---------------------------------------------------------------------------------------
    def compose(self, *args: str, timeout: float = 300) -> str:
        argv = ["docker-compose", "-p", self.project, "-f", self.compose_file, *args]
        result = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise StepFailed(f"`{' '.join(argv[1:])}` failed: {result.stderr.strip()[-600:]}")
        return result.stdout

    @staticmethod
    def docker(*args: str) -> str:
        result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise StepFailed(f"`docker {' '.join(args)}` failed: {result.stderr.strip()[-600:]}")
        return result.stdout

    # -- http -----------------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, body: dict | None = None, timeout: float = 120
    ) -> tuple[int, dict]:
        """(status, JSON body); status 0 for a connection error or a timeout."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"content-type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"{}")
            except ValueError:
                return exc.code, {}
        except (OSError, ValueError) as exc:
            return 0, {"error": {"message": repr(exc), "code": "connection"}}

    def ok(self, method: str, path: str, body: dict | None = None) -> dict:
        status, answer = self.request(method, path, body)
        check(status == 200, f"{method} {path} answered {status}: {json.dumps(answer)[:400]}")
        return answer

    def aim_state(self) -> tuple[int, str]:
        """(restart count, status) of the aim container."""
        (container,) = self.compose("ps", "-q", "aim").split()
        count, status = self.docker("inspect", "-f", "{{.RestartCount}} {{.State.Status}}", container).split()
        return int(count), status

    def wait_ready(self) -> float:
        start = time.monotonic()
        restarts = self.aim_state()[0]
        last: tuple[int, dict] = (0, {})
        while time.monotonic() - start < READY_TIMEOUT_S:
            last = self.request("GET", "/ready", timeout=10)
            if last[0] == 200:
                return time.monotonic() - start
            count, status = self.aim_state()
            if count > restarts or status in ("exited", "dead"):
                logs = self.compose("logs", "--no-color", "--tail", "15", "aim")
                raise StepFailed(f"the aim container failed to start ({status}, restarts {count}):\n{logs}")
            time.sleep(1)
        raise StepFailed(
            f"/ready not 200 after {READY_TIMEOUT_S} s; last answer {last[0]} {json.dumps(last[1])[:300]}"
        )

    # -- the README's flow ----------------------------------------------------------------------------
    def register_photos(self) -> list[str]:
        items = [
            {"image": b64("cat.jpg"), "text": "Q: What is in the picture? A: a cat"},
            {"image": b64("coffee.jpg"), "text": "Q: What is in the picture? A: a cup of coffee",
             "metadata": {"source": "scikit-image"}},
            {"image": b64("rocket.jpg"), "text": "Q: What is in the picture? A: a rocket"},
        ]  # fmt: skip
        answer = self.ok("POST", "/demonstrations", {"set": "photos", "items": items})
        check(answer.get("set") == "photos" and len(answer.get("items", [])) == 3, f"registration: {answer}")
        for item in answer["items"]:
            check(re.fullmatch(r"[0-9a-f]{32}", item["id"]) is not None, f"id {item['id']!r}")
            check(item["fused_tokens"] > 0, f"no fused tokens: {item}")
        return [item["id"] for item in answer["items"]]

    def generate(self) -> dict:
        answer = self.ok("POST", "/generate", {
            "query": {"image": b64("astronaut.jpg"), "text": QUESTION},
            "demonstrations": {"set": "photos", "k": 2}, "max_tokens": 16,
        })  # fmt: skip
        usage = answer.get("usage", {})
        check(isinstance(answer.get("text"), str) and answer["text"], f"no text: {answer}")
        check(answer.get("finish_reason") in ("length", "stop"), f"finish_reason: {answer}")
        check(usage.get("fused_tokens", 0) > 0, f"no fused tokens used: {usage}")
        check(usage["fused_tokens"] + usage["query_tokens"] == usage["prompt_tokens"], f"usage: {usage}")
        check(usage["raw_multimodal_prompt_tokens"] > usage["prompt_tokens"], f"usage: {usage}")
        return answer

    def snapshot(self, ids: list[str]) -> dict:
        """What must survive: the set, each demonstration as stored, and the greedy answer."""
        photos = self.ok("GET", "/sets/photos")
        expected = {"name": "photos", "ids": ids, "size": len(ids), "offset": 0, "limit": 10_000}
        check(photos == expected, f"GET /sets/photos: {photos}")
        demonstrations = {i: self.ok("GET", f"/demonstrations/{i}") for i in ids}
        for i, d in demonstrations.items():
            check(
                d["id"] == i and "photos" in d["sets"] and d["fused_tokens"] > 0,
                f"GET /demonstrations/{i}: {d}",
            )
        answer = self.generate()
        check(answer["demonstrations"] == ids[:2], f"k=2 used {answer['demonstrations']}, not {ids[:2]}")
        return {"set": photos, "demonstrations": demonstrations, "text": answer["text"]}


class Outage:
    """Requests against the bank, one thread per route, while Redis is stopped and started again."""

    ROUTES = ("register", "set", "ready")

    def __init__(self, deployment: Deployment):
        self.d = deployment
        # (start, end, route, status, error code, acknowledged id)
        self.log: list[tuple[float, float, str, int, str, str | None]] = []
        self.stop = threading.Event()
        self.image = b64("cat.jpg")
        self.threads = [threading.Thread(target=self.run, args=(r,), daemon=True) for r in self.ROUTES]

    def run(self, route: str) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            if route == "register":
                item = {"image": self.image, "text": f"outage probe {n} {time.time_ns()}"}
                method, path, body = "POST", "/demonstrations", {"set": "outage", "items": [item]}
            else:
                method, path, body = "GET", "/sets/photos" if route == "set" else "/ready", None
            start = time.monotonic()
            status, answer = self.d.request(method, path, body, timeout=60)
            code = (answer.get("error") or {}).get("code", "") if isinstance(answer, dict) else ""
            acked = answer["items"][0]["id"] if route == "register" and status == 200 else None
            self.log.append((start, time.monotonic(), route, status, code, acked))
            time.sleep(0.2)


def step_outage(d: Deployment, photos: list[str]) -> tuple[str, str]:
    """(status, detail) of the Redis-down step; status ok or FAILED."""
    outage = Outage(d)
    for thread in outage.threads:
        thread.start()
    try:
        time.sleep(3)
        stopping = time.monotonic()
        d.compose("stop", "redis")
        down_from = time.monotonic()
        time.sleep(10)
        down_until = time.monotonic()
        d.compose("start", "redis")
        started = time.monotonic()
        healed = None
        while time.monotonic() - started < 60:
            recent = [e for e in outage.log if e[0] > started and e[3] == 200]
            if {"register", "set"} <= {e[2] for e in recent}:
                healed = max(min(e[1] for e in recent if e[2] == r) for r in ("register", "set")) - started
                break
            time.sleep(0.2)
        time.sleep(1)
    finally:
        outage.stop.set()
        for thread in outage.threads:
            thread.join(timeout=90)

    before = [e for e in outage.log if e[1] < stopping]
    # Requests sent while Redis was down: answered before `start`, or answered after it (one sent
    # just before `start` may be served once Redis is back; held longer than HEAL_LIMIT_S: a hang).
    sent_down = [e for e in outage.log if down_from + 0.5 <= e[0] <= down_until]
    answered = [e for e in sent_down if e[1] <= started or e[3] != 200]
    held = [e for e in sent_down if e[1] > started and e[3] == 200]
    statuses: dict[str, dict[str, int]] = {}
    for _, _, route, status, code, _ in answered:
        key = f"{status}{'/' + code if code else ''}"
        statuses.setdefault(route, {}).setdefault(key, 0)
        statuses[route][key] += 1
    seen = "; ".join(
        f"{route} " + ",".join(f"{k} x{n}" for k, n in sorted(counts.items()))
        for route, counts in statuses.items()
    )
    if answered:
        seen += f" (answers took up to {max(e[1] - e[0] for e in answered):.1f} s)"
    if held:
        seen += f"; {len(held)} answered 200 after Redis was back ({', '.join(sorted({e[2] for e in held}))}, up to "
        seen += f"{max(e[1] - e[0] for e in held):.1f} s)"
    acked = [e[5] for e in outage.log if e[5]]
    problems = []
    failed_before = [e for e in before if e[3] != 200]
    if failed_before:
        e = failed_before[0]
        problems.append(
            f"{len(failed_before)} requests failed before Redis was stopped ({e[2]} {e[3]} {e[4]})"
        )
    if not answered:
        problems.append("no request was answered while Redis was down")
    ready = {e[3] for e in answered if e[2] == "ready"}
    if ready - {503}:
        problems.append(f"/ready answered {sorted(ready)} while Redis was down, not 503")
    bank = [e for e in answered if e[2] != "ready"]
    if {e[3] for e in bank} - {503}:
        problems.append(f"bank routes answered {sorted({e[3] for e in bank})} while Redis was down, not 503")
    if {e[4] for e in bank if e[3] == 503} - {"bank_unreachable"}:
        problems.append("a 503 without code bank_unreachable")
    hung = [e for e in held if e[1] - e[0] > HEAL_LIMIT_S]
    if hung:
        problems.append(f"{len(hung)} requests sent while Redis was down hung over {HEAL_LIMIT_S} s")
    if healed is None:
        problems.append("bank routes not healed within 60 s of `start`")
    elif healed > HEAL_LIMIT_S:
        problems.append(f"healed only {healed:.1f} s after `start` (limit {HEAL_LIMIT_S} s)")
    # Nothing acknowledged is lost: every registration answered 200 is there, in its set.
    outage_set = d.request("GET", "/sets/outage")[1].get("ids", [])
    lost = [i for i in acked if d.request("GET", f"/demonstrations/{i}")[0] != 200 or i not in outage_set]
    if lost:
        problems.append(f"{len(lost)} of {len(acked)} acknowledged registrations lost")
    if d.ok("GET", "/sets/photos")["ids"] != photos:
        problems.append("the photos set changed")
    heal = "not healed" if healed is None else f"healed {healed:.1f} s after `start`"
    detail = f"sent while down: {seen or 'nothing'}; {heal}; {len(acked)} acknowledged, {len(lost)} lost"
    if problems:
        return "FAILED", "; ".join(problems) + f" ({detail})"
    return "ok", detail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", default="aim-serve-test")
    parser.add_argument("--compose-file", default="deploy/docker-compose.cpu.yml")
    parser.add_argument("--port", type=int, default=0, help="host port to publish (0: a free one)")
    parser.add_argument("--build-seconds", type=float, default=None)
    parser.add_argument("--started-at", type=float, default=time.time())
    args = parser.parse_args()
    d = Deployment(args.project, args.compose_file, args.port or free_port())
    image = d.env.get("AIM_IMAGE", "aim-serve:cpu")
    results: list[tuple[str, str, str]] = []
    times: dict[str, float] = {}

    def step(name: str, fn) -> bool:
        t = time.monotonic()
        try:
            status, detail = fn()
        except (StepFailed, subprocess.TimeoutExpired) as exc:
            status, detail = "FAILED", str(exc)
        detail = f"{detail} [{time.monotonic() - t:.0f} s]"
        results.append((name, status, detail))
        print(f"deploy/test: {name}: {status}: {detail}", flush=True)
        return status != "FAILED"

    state: dict = {}

    def up():
        d.compose("up", "-d", "--no-build")
        times["ready"] = d.wait_ready()
        ready = d.ok("GET", "/ready")
        check(ready["model"] and ready["engine"] == "vllm" and ready["bank"], f"/ready: {ready}")
        where = f"127.0.0.1:{d.port} ({ready['model']}, {ready['engine']}, {ready['dtype']})"
        return "ok", f"/ready 200 {times['ready']:.0f} s after `up` on {where}"

    def flow():
        state["ids"] = d.register_photos()
        state["snapshot"] = d.snapshot(state["ids"])
        return "ok", f"3 registered, /generate k=2 answered {state['snapshot']['text']!r}"

    def survives(kind: str):
        def run():
            if kind == "restart":
                d.compose("restart", "aim")
            else:
                d.compose("down")
                check(not d.compose("ps", "-q").strip(), "containers left after `down`")
                d.compose("up", "-d", "--no-build")
            times[kind] = d.wait_ready()
            after = d.snapshot(state["ids"])
            before = state["snapshot"]
            check(after["demonstrations"] == before["demonstrations"], f"demonstrations changed after {kind}")
            check(after["text"] == before["text"], f"greedy answer changed after {kind}: {after['text']!r}")
            n = len(state["ids"])
            return "ok", f"{n}/{n} demonstrations, set and answer kept; ready in {times[kind]:.0f} s"

        return run

    def deletes():
        ids = state["ids"]
        check(d.ok("DELETE", f"/demonstrations/{ids[0]}") == {"id": ids[0], "deleted": True}, "delete id")
        status, answer = d.request("GET", f"/demonstrations/{ids[0]}")
        check(status == 404 and answer["error"]["code"] == "demonstration_not_found", f"deleted id: {status}")
        check(d.ok("GET", "/sets/photos")["ids"] == ids[1:], "the deleted id is still in the set")
        check(d.ok("DELETE", "/sets/photos") == {"name": "photos", "deleted": True}, "delete set")
        status, answer = d.request("GET", "/sets/photos")
        check(status == 404 and answer["error"]["code"] == "set_not_found", f"deleted set: {status}")
        check(
            all(d.request("GET", f"/demonstrations/{i}")[0] == 200 for i in ids[1:]),
            "set delete removed items",
        )
        return "ok", "demonstration and set deleted, the set's demonstrations stay"

    def teardown():
        d.compose("down", "-v", "--remove-orphans")
        containers = d.docker("ps", "-aq").split()
        volumes = [v for v in d.docker("volume", "ls", "-q").split() if v.startswith(args.project)]
        networks = [
            n
            for n in d.docker("network", "ls", "--format", "{{.Name}}").split()
            if n.startswith(args.project)
        ]
        check(not (containers or volumes or networks), f"left: {containers} {volumes} {networks}")
        return "ok", "no container, network or volume left"

    passed = (
        step("up", up)
        and step("readme-flow", flow)
        and step("restart-aim", survives("restart"))
        and step("down-up", survives("down-up"))
    )
    if passed:
        step("redis-outage", lambda: step_outage(d, state["ids"]))  # reported; the deletes run either way
        step("readme-deletes", deletes)
    torn_down = step("down-v", teardown)
    failed = [name for name, status, _ in results if status == "FAILED"]
    passed = passed and torn_down and not failed
    size = d.docker("image", "inspect", "-f", "{{.Size}}", image).strip()
    parts = [f"{name} {status}" for name, status, _ in results]
    timing = [f"total {(time.time() - args.started_at) / 60:.1f} min"]
    if args.build_seconds is not None:
        timing.append(f"build {args.build_seconds:.0f} s")
    timing.append(f"image {int(size) / 1e9:.2f} GB")
    for label, key in (("ready", "ready"), ("ready after restart", "restart"), ("after down-up", "down-up")):
        if key in times:
            timing.append(f"{label} {times[key]:.0f} s")
    verdict = "PASSED" if passed else "FAILED"
    print(f"deploy/test.sh: {verdict}: {'; '.join(parts)} ({', '.join(timing)})", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
