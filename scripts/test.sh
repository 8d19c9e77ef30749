#!/usr/bin/env bash
# The test suite, exactly as CI runs it: dependencies, vet, gofmt, the core
# packages under the race detector, then every test in the module.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/deps.sh

echo "== go vet"
go vet ./...

echo "== gofmt"
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
echo "== go test -race (core packages: ${race_pkgs[*]})"
go test -race -short -count=1 -timeout 30m "${race_pkgs[@]}"

echo "== go test (all packages)"
go test -count=1 -timeout 45m ./...

# The cgo secp256k1 build (see docs/BENCHMARKS.md): its curve check must
# take exactly the signatures the pure-Go one takes.
echo "== go test -tags libsecp256k1_sdk (signing, session)"
go test -tags libsecp256k1_sdk -count=1 ./signing/... ./session/...
