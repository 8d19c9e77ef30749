#!/usr/bin/env bash
# The test suite, exactly as CI runs it: dependencies, vet, gofmt, the core
# packages under the race detector, then every test in the module.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage reports how long it took.
stage_started=$SECONDS
stage() {
  if [ -n "${stage_name:-}" ]; then echo "   ($stage_name: $((SECONDS - stage_started))s)"; fi
  stage_name=$1 stage_started=$SECONDS
  echo "== $1"
}
trap 'status=$?; [ -z "${stage_name:-}" ] || echo "   ($stage_name: $((SECONDS - stage_started))s)"; exit $status' EXIT

stage "dependencies"
./scripts/deps.sh

# The gateway's status page is tested in headless Chromium. Install it when
# missing, as root or through sudo; otherwise stop with how to install it.
chromium_install="apt-get install -y chromium"
if ! command -v chromium >/dev/null 2>&1; then
  stage "install chromium ($chromium_install)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive $chromium_install >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive $chromium_install >/dev/null
  else
    echo "The gateway's status page is tested in headless Chromium, which is not installed; install it with: $chromium_install" >&2
    exit 1
  fi
fi

stage "go vet"
go vet ./...

stage "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' | grep -v '\.pb\.go$') 2>/dev/null || true)
if [ -n "$unformatted" ]; then
  echo "gofmt would change:"; echo "$unformatted"; exit 1
fi

# Core packages: the pure protocol and everything that shares state across
# goroutines. They run under -race (DESIGN.md, attack 8).
race_pkgs=()
for dir in session signing executor httpauth host gateway fsm x store; do
  [ -d "$dir" ] && race_pkgs+=("./$dir/...")
done
stage "go test -race (core packages: ${race_pkgs[*]})"
go test -race -short -count=1 -timeout 30m "${race_pkgs[@]}"

stage "go test (all packages)"
go test -count=1 -timeout 45m ./...

# The cgo secp256k1 build (see docs/BENCHMARKS.md): its curve check must
# take exactly the signatures the pure-Go one takes.
stage "go test -tags libsecp256k1_sdk (signing, session)"
go test -tags libsecp256k1_sdk -count=1 ./signing/... ./session/...
