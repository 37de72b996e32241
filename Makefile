# fief: build, test, demo and benchmarks. Every target installs what it needs
# on a Debian machine (apt-get, Go modules) before it runs.

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

# Debian packages the tests and the demo use.
TEST_PACKAGES  := fuse-zip fuse3 unionfs-fuse busybox-static zip file util-linux procps \
                  runc docker.io containerd gosu tini \
                  qemu-system-x86 linux-image-amd64 xz-utils uwsgi-core uwsgi-plugin-psgi
BENCH_PACKAGES := $(TEST_PACKAGES) bubblewrap gcc libc6-dev
FULL_PACKAGES  := $(TEST_PACKAGES) debootstrap debian-archive-keyring

.PHONY: build test test-full test-unit demo bench bench-vm bench-scale-floor chaos deps bench-deps vet clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o fief .

deps:
	@./tests/install-deps.sh $(TEST_PACKAGES)

bench-deps:
	@./tests/install-deps.sh $(BENCH_PACKAGES)

vet:
	$(GO) vet ./...
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$unformatted" ]; then echo "gofmt: these files need gofmt -w: $$unformatted" >&2; exit 1; fi

test: deps build vet
	$(GO) test -count=1 ./...

# The tutorial's copy-on-write root with uWSGI inside a Debian root made by
# debootstrap, cached in /var/cache/fief-test so only the first run pays
# (about 40 s). Prints its run time.
test-full: build vet
	@./tests/install-deps.sh $(FULL_PACKAGES)
	FIEF_TEST_FULL=1 $(GO) test -count=1 -v -run 'TestUWSGIUnionRoot' -timeout 30m ./tests/

test-unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /tests)

demo: deps build
	./tests/demo.sh

bench: bench-deps build
	./bench/run.sh
	./bench/scale-floor.sh
	./bench/vm.sh

# The start of 200 vassals under fief next to two floors: a C emperor whose
# vassal inits are C, and the same emperor with a minimal Go vassal init.
bench-scale-floor: bench-deps build
	./bench/scale-floor.sh

# Boot time of fief init in QEMU alone, then the floor under it: the same
# boot steps made by a static C /init, and the start of a minimal Go /init.
bench-vm: bench-deps build
	./bench/vm.sh
	./bench/vm-floor.sh

# The chaos test at full size: 1,000 kills and 100 hung FUSE daemons over 10
# vassals, about 9 minutes on 2 CPUs. make test runs it smaller.
chaos: deps build
	FIEF_CHAOS_KILLS=1000 FIEF_CHAOS_HANGS=100 $(GO) test -count=1 -v -run '^TestChaos$$' -timeout 60m ./tests/

clean:
	rm -f fief
