# aim-serve with the GPU build of vLLM.
#
# Not built or run on the project's build machines (no Docker engine there); see deploy/README.md.
#
# vllm 0.33.0 pins torch 2.14.0, whose Linux wheels bring their own CUDA 13.0 libraries from PyPI;
# the base image is the same CUDA version and sets up the NVIDIA container runtime's environment.
# The host needs a driver that supports CUDA 13.0. Override with --build-arg BASE_IMAGE=... (for
# example the -devel image when a kernel compiled at run time needs nvcc).
ARG BASE_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH}

# Ubuntu 24.04's python3 is 3.12. gcc and the Python headers are run-time needs: Triton compiles
# a small launcher module with them the first time a kernel runs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "${VIRTUAL_ENV}" \
    && pip install --upgrade pip

WORKDIR /opt/aim-serve

# Dependencies first, read from pyproject.toml alone, so that a source change does not reinstall
# vLLM and torch (several GB).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself, with the GPU extra (its dependencies are already satisfied above).
COPY . .
RUN pip install ".[gpu]" && rm -rf build ./*.egg-info

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
