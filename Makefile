# mube: common tasks. `make run` starts a local control plane; `make test` runs every test.
CARGO ?= cargo

.PHONY: all build run run-apiserver run-mubelet test lint fmt clean

all: build

build:
	$(CARGO) build --workspace --bins

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
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
