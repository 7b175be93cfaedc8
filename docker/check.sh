#!/usr/bin/env bash
# The Dockerfile's steps without Docker, for machines that have no engine: install just the
# files the image copies into a new virtual environment, then migrate, serve, and ask the
# service for /healthz, /readyz and an append, as the image's health check and a user would.
#   bash docker/check.sh postgresql://postgres@127.0.0.1:5432/postgres
# The database named must be one the check may create a fresh database beside.
set -euo pipefail
cd "$(dirname "$0")/.."
admin_url=${1:?usage: docker/check.sh POSTGRESQL_URL}
python=${PYTHON:-python3}
work=$(mktemp -d)
db="docker_check_$$"
server=
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  psql "$admin_url" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== the image's files: COPY pyproject.toml README.md interaction_store migrations"
mkdir -p "$work/app"
cp pyproject.toml README.md "$work/app/"
cp -r interaction_store migrations "$work/app/"
echo "== RUN pip install . (a new virtual environment stands for the image's Python)"
"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet "$work/app"
psql "$admin_url" -q -c "CREATE DATABASE $db" >/dev/null
url="${admin_url%/*}/$db"
cd "$work"  # nothing of the repository is in reach, as in the image
export INTERACTION_STORE_DATABASE_URL=$url
echo "== interaction-store migrate"
"$work/venv/bin/interaction-store" migrate
port=$("$work/venv/bin/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
echo "== interaction-store serve --host 127.0.0.1 --port $port"
"$work/venv/bin/interaction-store" serve --host 127.0.0.1 --port "$port" >"$work/serve.log" 2>&1 &
server=$!
base="http://127.0.0.1:$port"
for _ in $(seq 60); do
  curl -fsS "$base/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS "$base/healthz"; echo
curl -fsS "$base/readyz"; echo
key=$("$work/venv/bin/interaction-store" keys create --name docker-check --scope events:append | grep -o 'isk_[A-Za-z0-9_-]*' | head -1)
curl -fsS -X POST "$base/v1/events" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d '{"events": [{"type": "sms.received", "occurred_at": "2026-12-07T09:00:00Z", "data": {"contact": "phone:+14155550100", "external_id": "docker-check-1", "text": "hello"}}]}'
echo
echo "docker/check.sh: the image's steps work"
