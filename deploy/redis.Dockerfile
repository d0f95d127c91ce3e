# Redis 7 from Debian's package, for machines that cannot pull redis:7-alpine: deploy/test.sh builds it
# from its own Debian base image. Same interface as the official image for the compose files:
# redis-server on PATH, data in /data (a volume there is created owned by the redis user), an
# unprivileged user.
#   docker build --network host -f deploy/redis.Dockerfile -t aim-serve-redis:7 deploy
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# policy-rc.d: the package's scripts must not start a server during the build (with --network host
# it would bind the host's port 6379).
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
