"""Deployment files: the compose files' structure, their validation by Docker Compose, the Dockerfile.

No Docker engine runs on the build machines, so nothing here builds or starts a container; the
compose files are checked by parsing them and, where a Compose binary is installed, by
`docker compose config` / `docker-compose config`.
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
    assert redis["image"].startswith("redis:7")
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


@pytest.mark.parametrize("compose_file", [COMPOSE_FILE, REPLICAS_FILE], ids=lambda p: p.name)
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


def test_dockerfile():
    instructions = _dockerfile_instructions()
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), "the server must not run as root"
    assert any(keyword == "HEALTHCHECK" and "/health" in args for keyword, args in instructions)
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert re.search(r"""pip install ["']?\.\[gpu\]""", runs), "the image must install the GPU extra"
    assert ("EXPOSE", "8000") in instructions
    volumes = " ".join(args for keyword, args in instructions if keyword == "VOLUME")
    assert MODEL_CACHE in volumes
    cmd = [args for keyword, args in instructions if keyword == "CMD"][-1]
    assert cmd.startswith('["aim", "serve"')


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".venv", ".git", "bench/out"} <= ignored
