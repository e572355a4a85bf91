#!/usr/bin/env bash
# Run the whole test suite inside other kernels: Debian 12's newest 6.1 and
# 6.12 (or the series named in KERNELS), each booted in QEMU by virtme-ng
# over a copy-on-write view of this machine. Needs root.
#
# The kernels come from Debian's apt as linux-image-*-amd64-unsigned
# packages, unpacked with dpkg-deb into target/kernels (the host's own boot
# set-up is never touched). The test binaries are built here, once, and run
# unchanged in each guest. /dev/kvm on these machines cannot boot a stock
# kernel, so QEMU runs under TCG (--disable-kvm): about 40 s to boot.
#
# Prints one summary line per kernel and exits non-zero if any kernel failed
# a test, ran none, or did not finish.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=$ROOT/target
KDIR=$TARGET/kernels
VENV=$TARGET/vng-venv
# Each entry: a regex for the package's version part.
KERNELS=${KERNELS:-"6\\.1\\.0-[0-9]+ 6\\.12\\.[0-9]+\\+deb12"}
VM_TIMEOUT=${VM_TIMEOUT:-1800}
# ONLY: test binaries to run (names of tests/*.rs, space separated); all
# when empty.
ONLY=${ONLY:-}
DEBS="qemu-system-x86 busybox-static kmod file"

log() { printf 'test-kernels: %s\n' "$*" >&2; }

install_deps() {
	local missing=""
	for p in $DEBS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
	if [ -n "$missing" ]; then
		log "installing:$missing"
		DEBIAN_FRONTEND=noninteractive apt-get install -y $missing >/dev/null ||
			{ apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y $missing >/dev/null; }
	fi
	if [ ! -x "$VENV/bin/vng" ]; then
		log "installing virtme-ng into $VENV"
		python3 -m venv "$VENV"
		"$VENV/bin/pip" install --quiet virtme-ng==1.42
	fi
}

# The newest linux-image-<series>-amd64-unsigned package (the ABI number in
# the name moves, so it is picked at run time), unpacked and depmod-indexed.
# Prints the kernel image's path.
fetch_kernel() {
	local series=$1 pkg ver dir
	pkg=$(apt-cache search --names-only "^linux-image-${series}-amd64-unsigned\$" |
		awk '{print $1}' | sort -V | tail -1)
	if [ -z "$pkg" ]; then
		apt-get update >/dev/null
		pkg=$(apt-cache search --names-only "^linux-image-${series}-amd64-unsigned\$" |
			awk '{print $1}' | sort -V | tail -1)
	fi
	[ -n "$pkg" ] || { log "no package matches linux-image-${series}-amd64-unsigned"; return 1; }
	dir=$KDIR/$pkg
	if [ ! -d "$dir/boot" ]; then
		mkdir -p "$KDIR"
		(cd "$KDIR" && rm -f "${pkg}"_*.deb && apt-get download "$pkg" >/dev/null)
		rm -rf "$dir.tmp"
		dpkg-deb -x "$KDIR/${pkg}"_*.deb "$dir.tmp"
		mv "$dir.tmp" "$dir"
		rm -f "$KDIR/${pkg}"_*.deb
	fi
	ver=$(ls "$dir/lib/modules")
	[ -f "$dir/lib/modules/$ver/modules.dep" ] || depmod -b "$dir" "$ver"
	echo "$dir/boot/vmlinuz-$ver"
}

# The test executables cargo built, one path a line.
# Every test binary but tests/image.rs and tests/agent.rs: the image
# (podman) and the agent's API client and HTTP side are user space, the same
# on every kernel (the datapath they drive is what the other tests cover),
# and make test runs them on the host.
test_binaries() {
	cargo test --release --no-run --message-format=json 2>/dev/null |
		ONLY="$ONLY" python3 -c '
import json, os, sys
only = os.environ["ONLY"].split()
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        name = m.get("target", {}).get("name")
        if name not in ("image", "agent") and (not only or name in only):
            print(m["executable"])'
}

# The script the guest runs: mount bpffs, load veth, run every binary with
# every test (root ones included); results go to the shared OUT dir.
guest_script() {
	local out=$1 bins=$2
	cat <<EOF
#!/bin/sh
out=$out
uname -r > \$out/uname
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
modprobe veth 2> \$out/modprobe.err
cd $ROOT
for t in $bins; do
	name=\$(basename \$t)
	start=\$(date +%s)
	\$t --include-ignored --show-output > \$out/\$name.log 2>&1
	echo \$? > \$out/\$name.rc
	echo \$((\$(date +%s) - start)) > \$out/\$name.secs
done
echo done > \$out/done
EOF
}

# "N passed, N failed, N ignored" over every binary's "test result:" lines.
summarize() {
	local out=$1
	cat "$out"/*.log 2>/dev/null | awk '
		/^test result:/ {
			for (i = 1; i <= NF; i++) {
				if ($(i+1) ~ /^passed/) p += $i
				if ($(i+1) ~ /^failed/) f += $i
				if ($(i+1) ~ /^ignored/) g += $i
			}
		}
		END { printf "%d passed, %d failed, %d ignored\n", p, f, g }'
}

main() {
	[ "$(id -u)" = 0 ] || { log "needs root (it boots kernels that load BPF)"; exit 1; }
	install_deps
	log "building the test binaries"
	cargo build --release --bins >/dev/null
	local bins
	bins=$(test_binaries | tr '\n' ' ')
	[ -n "$bins" ] || { log "cargo built no test binaries"; exit 1; }

	# A runner ended from outside ends its guest too: the VM runs in a
	# session of its own, ended by its process group id on exit.
	VM_PID=""
	trap '[ -z "$VM_PID" ] || kill -TERM -- "-$VM_PID" 2>/dev/null' EXIT
	trap 'exit 130' INT TERM HUP

	local status=0 summary=""
	for series in $KERNELS; do
		local kimg out script started secs line
		kimg=$(fetch_kernel "$series") || { status=1; continue; }
		out=$(mktemp -d /tmp/netnsxl-kernel.XXXXXX)
		script=$out/guest.sh
		guest_script "$out" "$bins" >"$script"
		chmod +x "$script"
		log "booting $(basename "$kimg") (results in $out)"
		started=$(date +%s)
		# vng starts virtme-run (its sibling in the venv) through PATH.
		PATH="$VENV/bin:$PATH" setsid timeout "$VM_TIMEOUT" "$VENV/bin/vng" -v --disable-kvm -r "$kimg" \
			--cpus 2 --memory 4G --rwdir="$out" -- "$script" >"$out/console.log" 2>&1 &
		VM_PID=$!
		wait "$VM_PID" || true
		VM_PID=""
		secs=$(($(date +%s) - started))
		if [ ! -f "$out/done" ]; then
			log "$(basename "$kimg"): the guest did not finish; last console lines:"
			tail -20 "$out/console.log" >&2
			status=1
		fi
		line="kernel $(cat "$out/uname" 2>/dev/null || echo '?'): $(summarize "$out") (${secs} s)"
		for rc in "$out"/*.rc; do
			[ -f "$rc" ] || continue
			if [ "$(cat "$rc")" != 0 ]; then
				status=1
				log "$(basename "$rc" .rc) failed in $(basename "$kimg"):"
				grep -E "^(test .* FAILED|---- |thread .* panicked)|assert|left:|right:" \
					"${rc%.rc}.log" | head -40 >&2 || true
			fi
		done
		# Tests that checked a degraded behaviour say which feature was missing.
		grep -h "^kernel lacks" "$out"/*.log 2>/dev/null | sort | uniq -c | sed 's/^/  /' >&2 || true
		case $line in *" 0 passed,"*) status=1 ;; esac
		summary="$summary$line"$'\n'
		echo "$line"
		[ "$status" != 0 ] || rm -rf "$out"
	done
	printf '%s' "$summary" >"$TARGET/test-kernels.txt"
	# One closing line over every kernel, in the plain form CI reads.
	printf '%s' "$summary" | awk '{
		for (i = 1; i <= NF; i++) {
			if ($(i+1) ~ /^passed/) p += $i
			if ($(i+1) ~ /^failed/) f += $i
		}
	} END { printf "test-kernels: %d passed, %d failed\n", p, f }'
	exit $status
}

main "$@"
