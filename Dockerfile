# slotpool: a slim, non-root image. It applies migrations, then serves.
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
COPY pyproject.toml README.md ./
COPY service ./service
COPY alembic ./alembic
# Editable, so the Alembic revisions next to the package are found at /app/alembic.
RUN pip install -e . && chown -R root:root /app && chmod -R a+rX /app

USER slotpool
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz'); sys.exit(0)"
# `serve` runs the migrations to head before it listens; run more replicas with
# `serve --no-loops` plus `worker`, or simply more `serve` (the loops are replica-safe).
CMD ["slotpool", "serve", "--host", "0.0.0.0", "--port", "8000"]
