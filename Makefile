# netnsxl: every target that needs root says so; CI runs as root.

DEBS := clang libelf-dev pkg-config zlib1g-dev bpftool iproute2 procps strace curl python3-venv dnsperf dnsmasq-base
CARGO ?= cargo
ARCH := $(shell uname -m)

.PHONY: all build deps test image kubectl test-kernels demo bench bench-ab lint licenses manifests vmlinux fuzz clean

all: build

# Install the Debian packages that are missing (one apt-get update first) and
# mount bpffs at /sys/fs/bpf when nothing is mounted there.
deps:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; \
	fi
	@mountpoint -q /sys/fs/bpf || { mkdir -p /sys/fs/bpf && mount -t bpf bpf /sys/fs/bpf; }

build: deps
	$(CARGO) build --release --bins

# Every test: unit tests and the integration tests with real sockets. Those
# need root and are marked #[ignore = "needs root ..."], so a plain
# `cargo test` lists them as ignored; here they run. The image is built
# first: tests/image.rs runs it with podman.
test: deps image kubectl
	$(CARGO) test --release -- --include-ignored

# Debian's kubectl (kubernetes-client), unpacked under target/kubectl (not
# installed): tests/agent.rs runs the README's kubectl watch line with it.
kubectl:
	@test -x target/kubectl/root/usr/bin/kubectl || { \
		mkdir -p target/kubectl && cd target/kubectl && rm -f kubernetes-client_*.deb && \
		{ apt-get download -q kubernetes-client >/dev/null 2>&1 || \
		  { apt-get update >/dev/null && apt-get download -q kubernetes-client >/dev/null; }; } && \
		dpkg-deb -x kubernetes-client_*.deb root && rm -f kubernetes-client_*.deb; }

# The DaemonSet's OCI image, FROM scratch with Debian's podman, offline:
# target/image/netnsxl-VERSION.oci.tar (see tools/build-image).
IMAGE_DEBS := podman runc ca-certificates
image: build
	@missing=$$(for p in $(IMAGE_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; }; \
	fi
	./tools/build-image

# The tests that depend on the kernel (tests/groups.txt) inside Debian's
# 5.10 (refused), 6.1, 6.12 and unstable's newest kernel, each booted in
# QEMU (TCG) with virtme-ng. KERNELS picks by name ("6.1 7"), ONLY test
# files, VM_TIMEOUT is each kernel's budget in seconds (tests/kernels/run.sh).
test-kernels: deps
	./tests/kernels/run.sh

# A self-contained demo: its own cgroup, namespaces and backends; cleans up.
demo: build
	./demo/demo.sh target/release

# The benchmark: netnsxl against no translation and kube-proxy's iptables and
# nftables layouts, in namespaces of its own (installs iptables and nftables).
# Writes bench/results.md and bench/rate.svg; BENCH_ARGS passes options.
bench: build
	@for p in iptables nftables; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; }; fi
	$(CARGO) build --release --features bench --bin netnsxl-bench
	./target/release/netnsxl-bench --out bench $(BENCH_ARGS)

# This build's datapath against the one of git revision BASE (default the
# previous commit), both attached in one run with interleaved warm loops:
# bench/ab.md. BASE is exported with git archive and built under target/.
BASE ?= HEAD~1
bench-ab: build
	rm -rf target/ab-base/src && mkdir -p target/ab-base/src
	git archive "$(BASE)" | tar -x -C target/ab-base/src
	cd target/ab-base/src && CARGO_TARGET_DIR=$(CURDIR)/target/ab-base/target $(CARGO) build --release --bin netnsxl
	$(CARGO) build --release --features bench --bin netnsxl-bench
	./target/release/netnsxl-bench ab --baseline target/ab-base/target/release/netnsxl \
		--label "$$(git rev-parse --short "$(BASE)") ($(BASE))" --out bench $(BENCH_ARGS)

# Formatting, clippy (warnings are errors), the licence of every crate, and
# the deploy/ manifests against a current Kubernetes schema.
lint: deps licenses manifests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets --all-features -- -D warnings

# kubernetes-validate (PyPI) in a venv under target/, strict: an unknown
# field is an error.
KV := target/kv/bin/kubernetes-validate
manifests:
	@test -x $(KV) || { python3 -m venv target/kv && target/kv/bin/pip install -q kubernetes-validate; }
	$(KV) --strict --quiet deploy/daemonset.yaml

licenses:
	./tools/check-licenses

# Fuzz the frontend/backend and apply-file parsers for FUZZ_SECS seconds
# each (cargo-fuzz; the stable toolchain runs it with RUSTC_BOOTSTRAP=1).
# A crash stops with its input under fuzz/artifacts/; fix it and add the
# input to the regression tests in src/manifest.rs or src/addr.rs.
FUZZ_SECS ?= 60
FUZZ_TARGETS := parse_endpoints parse_file
fuzz: deps
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus/$$t; \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run -O $$t fuzz/corpus/$$t fuzz/seeds/$$t -- \
			-max_total_time=$(FUZZ_SECS) -max_len=4096 || exit 1; \
	done

# Regenerate the vendored vmlinux.h from this kernel's BTF.
vmlinux:
	mkdir -p vmlinux/$(ARCH)
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > vmlinux/$(ARCH)/vmlinux.h

clean:
	$(CARGO) clean
