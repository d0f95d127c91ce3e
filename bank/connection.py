"""One Redis code path for every deployment: a URL in production, an embedded server otherwise."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from bank.embedded import EmbeddedRedis

log = logging.getLogger(__name__)

# What a bank call raises when Redis is down, restarting, loading its data or hung: the server answers
# 503 for these (the caller may retry), never 500. BusyLoadingError is a ConnectionError already.
BANK_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)


def _client_options() -> dict[str, Any]:
    """Connections that heal: a pooled connection left stale by a Redis restart fails once and is
    replaced on the retry, instead of surfacing as an error minutes later; idle connections are pinged
    before use; a hung server costs seconds, not forever. Every bank command is safe to repeat (reads,
    SET NX, SADD, scripts built from them), so retrying them is too."""
    return {
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        "retry_on_error": [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
        "health_check_interval": 10,
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
    }


@dataclass
class RedisConnection:
    client: aioredis.Redis
    description: str  # where the bank lives, for logs and /ready; never contains a password
    embedded: EmbeddedRedis | None = None
    # Whether each write must be followed by WAITAOF (Redis >= 7.2 with durable writes asked for); with
    # appendfsync always, Redis fsyncs before it answers and nothing more is needed.
    wait_for_fsync: bool = False
    _supervisor: asyncio.Task[None] | None = None

    async def close(self) -> None:
        await self.client.aclose()
        if self._supervisor is not None:
            self._supervisor.cancel()
        if self.embedded is not None:
            self.embedded.stop()


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def open_redis(
    url: str | None, data_dir: Path, *, durable_writes: bool | None = None
) -> RedisConnection:
    """Connect to ``url``, or start an embedded Redis persisting under ``data_dir``.

    The embedded Redis fsyncs every write before acknowledging it unless ``durable_writes`` is False:
    with ``everysec``, Redis 6.2 acknowledges while a slow disk makes it postpone the append-only
    write by up to 2 s, and a killed server then loses acknowledged registrations (measured here).
    """
    if url:
        client = aioredis.Redis.from_url(url, **_client_options())
        await client.ping()
        wait_for_fsync = bool(durable_writes) and await _needs_waitaof(client, _redact(url))
        return RedisConnection(client=client, description=_redact(url), wait_for_fsync=wait_for_fsync)
    embedded = EmbeddedRedis(Path(data_dir), appendfsync="everysec" if durable_writes is False else "always")
    await embedded.start()
    client = aioredis.Redis(unix_socket_path=embedded.socket_path, **_client_options())
    await client.ping()
    log.info("embedded Redis started, persisting to %s", embedded.data_dir)
    return RedisConnection(
        client=client,
        description=f"embedded redis-server persisting to {embedded.data_dir}",
        embedded=embedded,
        _supervisor=asyncio.create_task(embedded.supervise()),
    )


async def _needs_waitaof(client: aioredis.Redis, where: str) -> bool:
    """How an external Redis can make each acknowledged write durable, or a refusal to start."""
    info = await client.info("server")
    version = tuple(int(p) for p in str(info.get("redis_version", "0")).split(".")[:2])
    if version >= (7, 2):
        return True  # WAITAOF 1 0: acknowledged once the local append-only file is fsynced
    try:
        config = await client.config_get("appendonly")
        config.update(await client.config_get("appendfsync"))
    except redis.exceptions.ResponseError:
        config = {}  # CONFIG disabled (managed Redis): nothing says the writes are durable
    if config.get("appendonly") == "yes" and config.get("appendfsync") == "always":
        return False
    raise RuntimeError(
        f"AIM_BANK_DURABLE_WRITES is on, but Redis at {where} (version {info.get('redis_version')}) has "
        f"appendonly={config.get('appendonly', '?')} appendfsync={config.get('appendfsync', '?')} and no "
        "WAITAOF (Redis 7.2+): run it with appendonly yes and appendfsync always, or turn durable writes off"
    )
