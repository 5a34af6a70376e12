# lockstep — build, test, benchmark. Run as root on Debian for the full suite
# (sshd, mariadbd and network namespaces are started by the tests).

GO       ?= go
BIN      ?= bin/lockstep
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)

# Debian packages the tests, the playground and the benchmarks use.
DEB_PKGS := openssh-server openssh-client mariadb-server mariadb-client rsync lsyncd \
            percona-toolkit sysbench iproute2 iputils-ping procps curl socat keepalived \
            etcd-server nftables

.PHONY: all build deps test lint unit soak bench bench-smoke playground clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/lockstep

# deps installs only what is missing, so repeated runs cost nothing.
deps:
	@missing=""; for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@# The Debian packages start system services; the tests start their own.
	@-systemctl disable --now mariadb ssh lsyncd keepalived etcd >/dev/null 2>&1 || true
	$(GO) mod download

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 -timeout 45m ./...

# soak runs the randomized model tests (churn) for many more seeds than
# `make test` does, and the confinement race tests (a peer swapping
# directories and symlinks under lockstep) and the two-way kill -9 test
# many times; not part of CI.
# SOAK_ROUNDS, SOAK_COUNT and LOCKSTEP_CONVERGE_WITHIN tune it.
SOAK_ROUNDS ?= 50
SOAK_COUNT ?= 20
soak: deps
	LOCKSTEP_SOAK_ROUNDS=$(SOAK_ROUNDS) $(GO) test -race -count=1 -timeout 4h \
		-run 'Churn|Model' ./lsync/... ./integration/...
	LOCKSTEP_TWOWAY_RACE=1 $(GO) test -race -count=$(SOAK_COUNT) -timeout 4h \
		-run 'Race|HostilePeer' ./lsync/... ./integration/...
	$(GO) test -race -count=$(SOAK_COUNT) -timeout 4h \
		-run 'TestSSHTwoWayDaemonKill9' ./integration/

# test is the README's one test command: install, lint, every test with the
# race detector, and a smoke run of the benchmark harness so it cannot rot.
test: deps lint unit bench-smoke

bench: deps build
	$(GO) run ./integration/bench -out bench-report.md

bench-smoke:
	$(GO) run ./integration/bench -smoke -out $${TMPDIR:-/tmp}/lockstep-bench-smoke.md

playground: deps build
	./$(BIN) playground

clean:
	rm -rf bin bench-report.md
