#!/usr/bin/env bash
# Regenerates the Go code of the chain's protos:
#   - the chain modules' (proto/devshard/scheduler, proto/devshard/devshard):
#     gogoproto messages and gRPC services through the gocosmos plugin, REST
#     routes through grpc-gateway;
#   - api/: the protobuf-go (APIv2, "pulsar") types of every devshard proto,
#     session's too. The code never handles them; chaincfg imports them to
#     register them with protobuf-go, so that the SDK, which decodes every
#     message of a tx a second time to find its signers (x/tx), decodes ours
#     through generated code instead of through dynamicpb. Imported protos map
#     to the Go packages that register them with protobuf-go: the SDK's
#     cosmossdk.io/api, cosmos-proto, gogoproto and genproto.
# Everything imported comes from the Go module cache at the versions go.mod
# pins; nothing is fetched from a schema registry.
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

# api/
mod=github.com/devshard/devshard
maps=(
  Mamino/amino.proto=cosmossdk.io/api/amino
  Mcosmos/msg/v1/msg.proto=cosmossdk.io/api/cosmos/msg/v1
  Mcosmos/base/v1beta1/coin.proto=cosmossdk.io/api/cosmos/base/v1beta1
  Mcosmos/base/query/v1beta1/pagination.proto=cosmossdk.io/api/cosmos/base/query/v1beta1
)
for f in $(cd proto && ls devshard/*/v1/*.proto); do
  maps+=("M$f=$mod/api/$(dirname "$f")")
done
opt=$(IFS=,; echo "${maps[*]}")

api=.protogen-api
rm -rf "$api" && mkdir -p "$api"
trap 'rm -rf "$out" "$api"' EXIT

for dir in devshard/session/v1 devshard/scheduler/v1 devshard/devshard/v1; do
  protoc \
    -I proto -I "$GOGO" -I "$SDK/proto" -I "$CPROTO/proto" -I "$GW/third_party/googleapis" \
    --plugin=protoc-gen-go-pulsar="$PWD/scripts/protoc-gen-go-pulsar" \
    --go-pulsar_out="$opt":"$api" \
    proto/$dir/*.proto
done

# The generator ends every WhichOneof with panic("unreachable"), which go vet
# reports where the switch before it has only a default (a message without a
# oneof): drop it there, where no case can fall through to it.
for f in $(find "$api/$mod/api" -name '*.pulsar.go'); do
  awk '/^func /{hascase=0} /^\tcase /{hascase=1} /^\tpanic\("unreachable"\)$/ && !hascase {next} {print}' "$f" > "$f.tmp"
  mv "$f.tmp" "$f"
done

rm -rf api
mkdir -p api
cp -r "$api/$mod/api/." api/
