# Nostr relay image.
#   docker build -t pyrelay .
#   docker run -p 7447:7447 -v relay-data:/data pyrelay
# The base image is a build argument so a registry-less CI can substitute a local one.
ARG PYTHON_IMAGE=python:3.13-slim-trixie

# ---- build: install the relay and its dependencies into a self-contained venv ----
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Only what .dockerignore lets through: pyproject.toml, README.md, schema.sql, relay/.
# relay/schema.sql is a symlink to ../schema.sql; both are copied, so it resolves here
# and setuptools puts the real file into the wheel.
WORKDIR /src
COPY . .

# A non-editable install builds the wheel and installs it with its dependencies (asyncpg
# too: one image runs on SQLite or, with RELAY_DB=postgresql://..., on PostgreSQL);
# then check the packaged schema is a real file, and drop pip (not needed at run time).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "/src[postgres]" \
    && /opt/venv/bin/python -c "from relay.store.sqlite import load_schema; assert 'CREATE TABLE' in load_schema()" \
    && /opt/venv/bin/relay --version \
    && /opt/venv/bin/python -m pip uninstall --yes pip

# ---- runtime: the venv only, running as an unprivileged user ----
FROM ${PYTHON_IMAGE}

RUN groupadd --gid 10001 relay \
    && useradd --uid 10001 --gid relay --no-create-home --no-log-init --home-dir /data \
        --shell /usr/sbin/nologin relay \
    && mkdir -p /data \
    && chown relay:relay /data

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RELAY_HOST=0.0.0.0 \
    RELAY_PORT=7447 \
    RELAY_DB=/data/relay.sqlite

VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 7447

# urllib from the venv's python: slim images have no curl. Follows RELAY_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, sys, urllib.request; url = 'http://127.0.0.1:%s/health' % os.environ.get('RELAY_PORT', '7447'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]

# Exec form: the relay is PID 1 and gets SIGTERM itself (it stops cleanly on it).
ENTRYPOINT ["/opt/venv/bin/relay"]
CMD []
