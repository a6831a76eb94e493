# Census: build, run, test. Every target works on a machine with only Go
# and make: the protobuf compiler and its plugins are Go code pinned in go.mod.

GO      ?= go
BIN     := bin/census
# A build of a tag vX.Y.Z is version X.Y.Z; any other build is named by its
# commit (git describe: the last tag, commits since, hash, -dirty).
VERSION ?= $(shell v=$$(git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null) && echo $${v\#v} || git describe --tags --always --dirty 2>/dev/null || echo dev)
VERSION_PKG := github.com/prometheus/common/version
LDFLAGS := -X $(VERSION_PKG).Version=$(VERSION) \
	-X $(VERSION_PKG).Revision=$(shell git rev-parse HEAD 2>/dev/null) \
	-X $(VERSION_PKG).Branch=$(shell git rev-parse --abbrev-ref HEAD 2>/dev/null) \
	-X $(VERSION_PKG).BuildUser=$(shell whoami)@$(shell hostname) \
	-X $(VERSION_PKG).BuildDate=$(shell date -u +%Y%m%d-%H:%M:%S)
PKGS    := ./...
# Packages with goroutines and shared state run under the race detector.
RACE_PKGS := ./ring/... ./distributor/... ./ingester/... ./querier/... ./agent/...

# Recipes run in bash with pipefail, so a failing command in a pipe fails.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

.PHONY: all build run test test-short bench lint proto manifests deps kube-assets clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/census

# run starts every role in one process with data under ./data and prints the
# querier's URL.
run: build
	./$(BIN) all --storage.path=./data

# test runs the whole suite: unit tests (race detector on concurrent
# packages) and the multi-process cluster tests in cmd/census. The
# Kubernetes tests run a real kube-apiserver and etcd from the folder
# scripts/kube-test-assets.sh prints, building them the first time
# (KUBEBUILDER_ASSETS, as controller-runtime's envtest wants it).
test: export KUBEBUILDER_ASSETS = $(shell scripts/kube-test-assets.sh)
test: lint
	$(GO) test -count=1 -timeout=15m -race $(RACE_PKGS)
	$(GO) test -count=1 -timeout=15m -skip '^TestPromQLCompliance$$' ./proto/... ./cmd/...
	@# Prometheus' own PromQL suite through a 3-ingester cluster, with its
	@# pass count printed (the whole log only when it fails).
	@mkdir -p bin
	$(GO) test -count=1 -timeout=10m -run '^TestPromQLCompliance$$' -v ./cmd/census/ > bin/promql-compliance.log 2>&1 \
	  || { cat bin/promql-compliance.log; exit 1; }
	@grep -E 'PromQL compliance:|^ok' bin/promql-compliance.log

# kube-assets builds etcd, kube-apiserver, kubectl and
# kube-controller-manager for the Kubernetes tests from the Go module proxy
# into a cache folder outside the repository, once (about 20 CPU-minutes);
# later calls build nothing.
kube-assets:
	scripts/kube-test-assets.sh

test-short:
	$(GO) test -short -count=1 $(PKGS)

bench:
	$(GO) test -run='^$$' -bench=. -skip='^BenchmarkSoak|^BenchmarkOverload|^BenchmarkHandOff' -benchmem -benchtime=2s $(PKGS)
	@# Then the soak, once: a 5-process cluster under remote write and queries
	@# while ingesters are hung, killed and restarted (CENSUS_SOAK_DURATION,
	@# default 3m; CENSUS_SOAK_SEED picks the fault schedule).
	$(GO) test -run='^$$' -bench='^BenchmarkSoak' -benchtime=1x -timeout=30m -v ./cmd/census/
	$(GO) test -run='^$$' -bench='^BenchmarkOverload' -benchtime=1x -timeout=10m -v ./cmd/census/
	$(GO) test -run='^$$' -bench='^BenchmarkHandOff' -benchtime=1x -timeout=20m -v ./cmd/census/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# proto regenerates the committed Go code from proto/census.proto with
# proto/internal/protogen: bufbuild/protocompile and the protoc-gen-go and
# protoc-gen-go-grpc plugins, all pinned in go.mod, so no protoc is needed.
proto:
	$(GO) run ./proto/internal/protogen -out=proto proto/census.proto

# manifests renders deploy/kubernetes/census.yaml: the Helm chart
# deploy/helm/census with its default values, through Helm's own Go packages
# (deploy/internal/manifestgen), so no helm binary is needed. A test in
# cmd/census fails while the file is not the rendered chart.
manifests:
	$(GO) run ./deploy/internal/manifestgen -chart=deploy/helm/census -out=deploy/kubernetes/census.yaml

# deps downloads the Go modules and tools the build and tests need; Go itself
# is the only thing to install.
deps:
	$(GO) mod download

clean:
	rm -rf bin
