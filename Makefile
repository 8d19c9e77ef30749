# devshard developer targets. `make help` lists them.
GO       ?= go
MODCACHE := $(shell $(GO) env GOMODCACHE)
GOGOPROTO_DIR = $(MODCACHE)/github.com/cosmos/gogoproto@$(shell $(GO) list -m -f '{{.Version}}' github.com/cosmos/gogoproto)

# The build's identity (internal/buildinfo), stamped from git so that it is
# there even where the toolchain's own VCS stamp is not (git worktrees,
# GOFLAGS=-buildvcs=false). Empty outside a git checkout.
BUILDINFO := github.com/devshard/devshard/internal/buildinfo
LDFLAGS   := -X $(BUILDINFO).version=$(shell git describe --tags --always --dirty 2>/dev/null) \
	-X $(BUILDINFO).commit=$(shell git rev-parse HEAD 2>/dev/null) \
	-X $(BUILDINFO).vcsTime=$(shell git log -1 --format=%cI 2>/dev/null) \
	-X $(BUILDINFO).modified=$(shell git diff --quiet HEAD 2>/dev/null && echo false || echo true)

.PHONY: help build build-cgo ldflags test test-race bench lint proto fuzz

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/devshard
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/devshard ./cmd/devshard

build-cgo: ## build bin/devshard with the C libsecp256k1 for signature checks (needs gcc)
	$(GO) build -tags libsecp256k1_sdk -ldflags '$(LDFLAGS)' -o bin/devshard ./cmd/devshard

ldflags: ## print the -ldflags that stamp the build's version and commit
	@echo '$(LDFLAGS)'

test: ## the test suite CI runs: deps, vet, gofmt, race on core packages, all tests
	./scripts/test.sh

bench: ## go benchmarks plus the ratio report
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(GO) run ./cmd/devshard bench protocol
	$(GO) run ./cmd/devshard bench store
	$(GO) run ./cmd/devshard bench scheduler
	$(GO) run ./cmd/devshard bench host
	$(GO) run ./cmd/devshard bench gateway
	$(GO) run ./cmd/devshard bench jobs
	$(GO) run ./cmd/devshard bench chain

lint: ## go vet and gofmt
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

fuzz: ## run every fuzz target for FUZZTIME (default 20s) each
	./scripts/fuzz.sh $(or $(FUZZTIME),20s)

proto: ## regenerate Go code from proto/ (needs protoc: apt-get install protobuf-compiler)
	@command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler"; exit 1; }
	$(GO) mod download github.com/cosmos/gogoproto
	rm -rf .protogen && mkdir -p .protogen
	cd proto && for d in ./devshard/session/v1; do \
	  protoc -I . -I $(GOGOPROTO_DIR) \
	    --plugin=protoc-gen-gocosmos=$(CURDIR)/scripts/protoc-gen-gocosmos \
	    --gocosmos_out=plugins=grpc,Mgoogle/protobuf/any.proto=github.com/cosmos/gogoproto/types/any:$(CURDIR)/.protogen $$d/*.proto || exit 1; \
	done
	cp -r .protogen/github.com/devshard/devshard/. .
	rm -rf .protogen
	./scripts/protocgen-chain.sh
