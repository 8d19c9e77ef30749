#!/usr/bin/env bash
# Starts a fresh single-validator devshard chain, step by step, the way an
# operator sets up any Cosmos chain: init, keys, genesis accounts, gentx,
# collect-gentxs, start. Blocks come about once a second.
#
#   scripts/localchain.sh              # build bin/devshard, reset .localchain/, start
#   EPOCH_LENGTH=10 scripts/localchain.sh
#
# Environment:
#   DEVSHARD_BIN   binary to use (default: build ./cmd/devshard into bin/devshard)
#   CHAIN_HOME     node home (default: ./.localchain; wiped on every run)
#   CHAIN_ID       chain id (default: devshard-local)
#   EPOCH_LENGTH   epoch length in blocks (default: 20)
#
# Keys use the test keyring in $CHAIN_HOME: validator and alice, both funded.
# Try, in another shell:
#   bin/devshard chain query devshard current-epoch --home .localchain
#   bin/devshard chain tx devshard register-participant https://host.example 1000000ushard \
#       --from alice --keyring-backend test --home .localchain --chain-id devshard-local --yes
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${DEVSHARD_BIN:-}
if [ -z "$BIN" ]; then
  go build -o bin/devshard ./cmd/devshard
  BIN=bin/devshard
fi
HOME_DIR=${CHAIN_HOME:-$PWD/.localchain}
CHAIN_ID=${CHAIN_ID:-devshard-local}
EPOCH_LENGTH=${EPOCH_LENGTH:-20}
FUNDS=1000000000000ushard
STAKE=100000000ushard

chain() { "$BIN" chain "$@" --home "$HOME_DIR"; }
keys() { chain keys "$@" --keyring-backend test; }

rm -rf "$HOME_DIR"
chain init local --chain-id "$CHAIN_ID" >/dev/null 2>&1
for name in validator alice; do
  keys add "$name" --output json >"$HOME_DIR/$name.json" 2>&1
  chain genesis add-genesis-account "$name" "$FUNDS" --keyring-backend test
done
chain genesis gentx validator "$STAKE" --chain-id "$CHAIN_ID" --keyring-backend test >/dev/null 2>&1
chain genesis collect-gentxs >/dev/null 2>&1

# Short epochs for local use: the module's default is 100 blocks.
genesis="$HOME_DIR/config/genesis.json"
sed -i.bak -E "s/\"epoch_length\": \"[0-9]+\"/\"epoch_length\": \"$EPOCH_LENGTH\"/" "$genesis" && rm -f "$genesis.bak"
chain genesis validate >/dev/null

# Point the client config at this chain so commands need no --chain-id.
chain config set client chain-id "$CHAIN_ID" >/dev/null 2>&1 || true
chain config set client keyring-backend test >/dev/null 2>&1 || true

echo "devshard chain $CHAIN_ID: home $HOME_DIR, epochs of $EPOCH_LENGTH blocks"
echo "  alice: $(keys show alice -a)"
echo "  rpc tcp://127.0.0.1:26657  grpc 127.0.0.1:9090  api http://127.0.0.1:1317"
exec "$BIN" chain start --home "$HOME_DIR"
