#!/usr/bin/env bash
# Regenerates the Go code of the chain modules' protos (proto/devshard/scheduler,
# proto/devshard/devshard): gogoproto messages and gRPC services through the
# gocosmos plugin, REST routes through grpc-gateway. Everything imported comes
# from the Go module cache at the versions go.mod pins; nothing is fetched from
# a schema registry.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler" >&2; exit 1; }

moddir() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }
ver() { go list -m -f '{{.Version}}' "$1"; }

SDK=$(moddir "github.com/cosmos/cosmos-sdk@$(ver github.com/cosmos/cosmos-sdk)")
GOGO=$(moddir "github.com/cosmos/gogoproto@$(ver github.com/cosmos/gogoproto)")
CPROTO=$(moddir "github.com/cosmos/cosmos-proto@$(ver github.com/cosmos/cosmos-proto)")
GW=$(moddir "github.com/grpc-ecosystem/grpc-gateway@$(ver github.com/grpc-ecosystem/grpc-gateway)")

out=.protogen-chain
rm -rf "$out" && mkdir -p "$out"
trap 'rm -rf "$out"' EXIT

for dir in devshard/scheduler/v1 devshard/devshard/v1; do
  compgen -G "proto/$dir/*.proto" >/dev/null || continue
  protoc \
    -I proto -I "$GOGO" -I "$SDK/proto" -I "$CPROTO/proto" -I "$GW/third_party/googleapis" \
    --plugin=protoc-gen-gocosmos="$PWD/scripts/protoc-gen-gocosmos" \
    --plugin=protoc-gen-grpc-gateway="$PWD/scripts/protoc-gen-grpc-gateway" \
    --gocosmos_out=plugins=grpc,Mgoogle/protobuf/any.proto=github.com/cosmos/gogoproto/types/any:"$out" \
    --grpc-gateway_out=logtostderr=true,allow_colon_final_segments=true:"$out" \
    proto/$dir/*.proto
done

cp -r "$out"/github.com/devshard/devshard/. .
