# syntax=docker/dockerfile:1
# aditus: build wheels in one stage, run from a slim one as a non-root user.
#
#   docker build -t aditus .
#   docker run --rm --env-file prod.env aditus migrate     # once per release, before serving
#   docker run --env-file prod.env -p 8000:8000 aditus      # serve (uvicorn, WEB_CONCURRENCY workers)
#
# Settings come from the environment (README "Configuration"); nothing secret is baked into the image.

FROM python:3.11-slim AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /build
COPY requirements.txt .
# Every dependency ships manylinux wheels, so no compiler is needed; building wheels here keeps pip's downloads
# and any build tools out of the runtime image.
RUN pip wheel --wheel-dir /wheels -r requirements.txt


FROM python:3.11-slim AS runtime
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    PORT=8000

RUN groupadd --system --gid 10001 aditus \
    && useradd --system --uid 10001 --gid aditus --home-dir /app --no-create-home --shell /usr/sbin/nologin aditus

COPY --from=builder /wheels /wheels
COPY requirements.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && pip install --no-index --find-links=/wheels -r /tmp/requirements.txt \
    && rm -rf /wheels /tmp/requirements.txt

WORKDIR /app
# Owned by root and read-only to the app user: a compromised process cannot rewrite the code it runs.
COPY . .
# Static files and bytecode at build. Settings need a secret key and a field key to load; these dummies sign and
# encrypt nothing (collectstatic touches neither) and are not kept in the image's environment.
RUN DEBUG=0 \
    SECRET_KEY=build-time-only-collectstatic-signs-nothing-0123456789 \
    FIELD_ENCRYPTION_KEYS=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= \
    DATABASE_URL=sqlite:////tmp/build.sqlite3 \
    deploy/entrypoint.sh collectstatic \
    && python -m compileall -q /app

USER 10001:10001
EXPOSE 8000
# Liveness only (no database): /healthz is answered before host validation and the https redirect.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c 'import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open("http://127.0.0.1:%s/healthz" % os.environ.get("PORT", "8000"), timeout=4)'
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["serve"]
