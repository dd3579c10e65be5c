# mube: common tasks. `make run` starts a local control plane; `make test` runs every test.
CARGO ?= cargo

# The etcd backend (`--features mube-apiserver/etcd`) needs protoc to build
# (Debian: protobuf-compiler); without it, everything else builds and the
# etcd tests are left out, as `make test` says. CI installs it.
ETCD_FEATURE := $(if $(shell command -v protoc),--features mube-apiserver/etcd,)

.PHONY: all build run run-apiserver run-mubelet test lint fmt clean

all: build

build:
	$(CARGO) build --workspace --bins $(ETCD_FEATURE)

# A local cluster: containerd (when installed, with mube's config and local
# images), the API server on the embedded store (data under ./data), the
# scheduler and one mubelet as mube-node-1. Ctrl-C stops all but containerd.
run: build
	./scripts/local-cluster.sh

# Each target loads its .env file if present (copy the .example next to it).
run-apiserver:
	set -a; [ ! -f .env.apiserver ] || . ./.env.apiserver; set +a; \
	$(CARGO) run -p mube-apiserver

run-mubelet:
	set -a; [ ! -f .env.mubelet ] || . ./.env.mubelet; set +a; \
	$(CARGO) run -p mubelet

# End-to-end tests start the real binaries, so build them first.
test: build
	@[ -n "$(ETCD_FEATURE)" ] || echo "make test: protoc not found: the etcd backend and its tests are left out (apt-get install protobuf-compiler)"
	$(CARGO) test --workspace --no-fail-fast $(ETCD_FEATURE)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets $(ETCD_FEATURE) -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
