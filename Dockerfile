# agent-core's service: `agent-core serve` on port 8000, as a non-root user (README "Deploy
# with Docker"; compose.yaml runs it with PostgreSQL and Redis). The RUN --mount below needs
# BuildKit, Docker's default builder since 23.0. tests/test_deploy.py checks this file.

# -- build: wheels of agent-core and of everything the service imports ---------------------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# quicktok-v1 ships wheels for x86-64 Linux only: elsewhere (arm64) pip compiles it (C++).
RUN apt-get update \
 && apt-get install --yes --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# README.md is the package's long description (pyproject.toml's readme).
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --wheel-dir /wheels ".[postgres,server,cli,encryption]"

# -- the image: those wheels installed, and nothing that built them ------------------------
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Bound from the build stage for this step only: no layer keeps the wheels.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "agent-core[postgres,server,cli,encryption]"
# A fixed uid and gid (10001), so that volumes and secret files can be given to it by number.
# /data is its writable directory: the default SQLite store and the API keys file.
RUN groupadd --system --gid 10001 agent-core \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin agent-core \
 && mkdir /data \
 && chown 10001:10001 /data
WORKDIR /data
# No keys yet means every request is refused (401) until `agent-core keys create` adds one;
# the server reloads the file when it changes.
ENV AGENT_CORE_KEYS_FILE=/data/keys.json
USER 10001:10001
EXPOSE 8000
# /healthz is open (no credential). The slim image has no curl: Python's urllib asks, and
# any error or non-2xx answer raises, which exits 1 (unhealthy).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["agent-core"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
