#!/usr/bin/env bash
# The production start script: the Docker image's ENTRYPOINT, and usable as is on a host with a virtualenv.
#
#   deploy/entrypoint.sh serve              uvicorn on $PORT (the default command of the image)
#   deploy/entrypoint.sh migrate            apply database migrations and create the cache table (once per release)
#   deploy/entrypoint.sh collectstatic      gather static files into STATIC_ROOT (the image does it at build)
#   deploy/entrypoint.sh check [ARGS...]    Django's deployment checks (e.g. check --fail-level WARNING)
#   deploy/entrypoint.sh manage ARGS...     any other manage.py command
#
# Settings come from the environment (README "Configuration"); these variables are read here:
#   PORT (8000), WEB_CONCURRENCY (2 worker processes), KEEP_ALIVE_SECONDS (75), GRACEFUL_TIMEOUT_SECONDS (30),
#   ACCESS_LOG (0), PROXY_HEADERS (1), FORWARDED_ALLOW_IPS (127.0.0.1), LOG_LEVEL (INFO), LOG_FORMAT (plain),
#   PROMETHEUS_MULTIPROC_DIR (/tmp/aditus-prometheus), PYTHON (python).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

is_true() {
    case "${1,,}" in
        1 | true | yes | on) return 0 ;;
        0 | false | no | off | "") return 1 ;;
        *) echo "entrypoint: expected a boolean, got '$1'" >&2; exit 64 ;;
    esac
}

serve() {
    # The worker processes share metric files here; files left by an earlier run would be counted again.
    # Only prometheus_client's *.db files are removed, whatever directory is named.
    export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-/tmp/aditus-prometheus}
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -type f -name '*.db' -delete

    local args=(
        aditus.asgi:application
        --host 0.0.0.0
        --port "${PORT:-8000}"
        --workers "${WEB_CONCURRENCY:-2}"
        # Longer than the idle timeout of the load balancer in front (60 s for nginx and AWS ALB), so that the
        # balancer, not uvicorn, closes idle connections and never sends a request on one being closed.
        --timeout-keep-alive "${KEEP_ALIVE_SECONDS:-75}"
        # In-flight provider calls get this long after SIGTERM; give the orchestrator a longer grace period.
        --timeout-graceful-shutdown "${GRACEFUL_TIMEOUT_SECONDS:-30}"
        --log-level "$(printf '%s' "${LOG_LEVEL:-info}" | tr '[:upper:]' '[:lower:]')"
        --no-server-header
        --lifespan on  # opens and closes the request path's database pool (runtime.asgi.lifespan)
    )
    if is_true "${ACCESS_LOG:-0}"; then args+=(--access-log); else args+=(--no-access-log); fi
    if is_true "${PROXY_HEADERS:-1}"; then
        # Client address and scheme from X-Forwarded-For/-Proto, believed from these addresses only.
        args+=(--proxy-headers --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-127.0.0.1}")
    else
        args+=(--no-proxy-headers)
    fi
    if [ "${LOG_FORMAT:-plain}" = json ]; then
        # uvicorn's own lines (start-up, shutdown, access) as JSON too.
        args+=(--log-config deploy/uvicorn-log-json.json)
    fi
    exec "$PYTHON" -m uvicorn "${args[@]}"
}

command=${1:-serve}
[ $# -gt 0 ] && shift
case "$command" in
    serve) serve ;;
    migrate) "$PYTHON" manage.py migrate --noinput "$@" && exec "$PYTHON" manage.py createcachetable ;;
    collectstatic) exec "$PYTHON" manage.py collectstatic --noinput "$@" ;;
    check) exec "$PYTHON" manage.py check --deploy "$@" ;;
    manage) exec "$PYTHON" manage.py "$@" ;;
    -h | --help | help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//' ;;
    *) echo "entrypoint: unknown command '$command' (serve, migrate, collectstatic, check, manage)" >&2; exit 64 ;;
esac
