# slotpool: a slim, non-root image that serves. It never migrates: run `slotpool migrate` once,
# with SLOTPOOL_MIGRATION_DATABASE_URL (the schema owner), before starting or upgrading replicas
# (compose.yaml does this with a one-shot service). See docs/deploy.md.
# Configure it with DATABASE_URL and the three SLOTPOOL_*_KEY secrets (see README).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SLOTPOOL_ENV=production

RUN groupadd --system --gid 10001 slotpool \
 && useradd --system --uid 10001 --gid slotpool --home-dir /app --no-create-home slotpool

WORKDIR /app

# The dependencies get a layer of their own, keyed on pyproject.toml alone: a code change
# reuses it. The list is read from [project].dependencies, so it cannot drift from the package.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY README.md ./
COPY service ./service
COPY alembic ./alembic
# Editable, so the Alembic revisions next to the package are found at /app/alembic; --no-deps,
# since the layer above installed them.
RUN pip install --no-deps -e . && chown -R root:root /app && chmod -R a+rX /app

USER slotpool
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["slotpool", "serve", "--host", "0.0.0.0", "--port", "8000"]
