#!/usr/bin/env bash
# The Debian packages the test suite and benchmarks run for real: Prometheus (promtool, and a
# server the integration tests start), PostgreSQL (a throw-away cluster the store tests start)
# and wrk (bench-serving). Installs only what is missing; needs root and apt-get. Nothing is
# started here: each test session starts its own servers and stops them.
set -euo pipefail

missing=()
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing Debian packages: ${missing[*]} (install them as root: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
# Debian's packages start their own services on install; the tests start private ones instead.
for service in prometheus postgresql prometheus-node-exporter; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$service" >/dev/null 2>&1 || true; fi
  service "$service" stop >/dev/null 2>&1 || true
done
