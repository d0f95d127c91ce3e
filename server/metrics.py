"""Prometheus metrics, one registry per app so several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.demonstrations_registered = Counter(
            "aim_demonstrations_registered", "Demonstrations newly encoded and stored", registry=r
        )
        self.generate_requests = Counter(
            "aim_generate_requests",
            "Finished generation requests (/generate and /v1/chat/completions)",
            ["finish_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "aim_prompt_tokens", "Prompt tokens sent to the engine", ["kind"], registry=r
        )
        self.raw_multimodal_prompt_tokens = Counter(
            "aim_raw_multimodal_prompt_tokens",
            "Tokens the same prompts would cost as raw multimodal ICL",
            registry=r,
        )
        self.completion_tokens = Counter("aim_completion_tokens", "Generated tokens", registry=r)
        self.cached_tokens = Counter(
            "aim_cached_prompt_tokens", "Prompt tokens served from prefix cache", registry=r
        )
        self.request_latency = Histogram(
            "aim_generate_latency_seconds",
            "End-to-end generation latency (/generate and /v1/chat/completions)",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.bank_cache_hits = Gauge(
            "aim_bank_cache_hits", "Fused-token reads served by the in-process LRU", registry=r
        )
        self.bank_cache_misses = Gauge(
            "aim_bank_cache_misses", "Fused-token reads that went to Redis", registry=r
        )
