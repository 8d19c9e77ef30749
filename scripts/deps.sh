#!/usr/bin/env bash
# Installs what the tests need beyond the Go toolchain: the PostgreSQL server
# binaries (initdb, pg_ctl) that throwaway test clusters run on, and Node.js
# with npm for the end-to-end test's OpenAI client. Safe to run again: it
# installs nothing that is already there.
set -euo pipefail

have_pg() {
  command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

if ! command -v go >/dev/null 2>&1; then
  echo "deps: the Go toolchain is not on PATH; install Go 1.26 or newer" >&2
  exit 1
fi

if ! have_pg; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: installing the PostgreSQL server (Debian package postgresql)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "deps: PostgreSQL server binaries (initdb, pg_ctl) are missing; install the Debian package postgresql" >&2
    exit 1
  fi
fi

# Node.js and npm: the end-to-end test drives the gateway with the official
# openai npm package (installed by the test into a temporary directory).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "deps: installing Node.js and npm (Debian packages nodejs, npm)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "deps: node and npm are missing; install the Debian packages nodejs and npm" >&2
    exit 1
  fi
fi
