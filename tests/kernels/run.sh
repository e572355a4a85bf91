#!/usr/bin/env bash
# Run the tests that depend on the kernel inside other kernels, each booted
# in QEMU by virtme-ng over a copy-on-write view of this machine. Needs root.
#
# Which tests: tests/groups.txt. A kernel at or above netnsxl's floor
# (5.14) runs the groups "kernel" and "floor"; one below it runs "floor"
# only, where attach must refuse in one line and leave nothing.
#
# The kernels come from Debian's archive: the newest image package of a
# series, fetched with apt-get download through an apt sources list of this
# runner's own (target/apt; the machine's apt configuration is never read
# or changed) and unpacked with dpkg-deb under target/kernels (the host's
# own boot set-up is never touched). The test binaries are built here,
# once, and run unchanged in each guest. /dev/kvm on these machines cannot
# boot a stock kernel, so QEMU runs under TCG (--disable-kvm): about 40 s to
# boot.
#
# KERNELS: names from the table below, space separated (default: all).
# VM_TIMEOUT: seconds one kernel may take, boot included (default 480).
# ONLY: test binaries to run (names of tests/*.rs), within the groups.
#
# Prints one summary line per kernel and exits non-zero if any kernel failed
# a test, ran none, did not finish, or (below the floor) did not refuse.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=$ROOT/target
KDIR=$TARGET/kernels
APT=$TARGET/apt
VENV=$TARGET/vng-venv
MIRROR=http://deb.debian.org

# NAME  SUITE  IMAGE PACKAGE (regex; the newest match is taken)  GROUPS
# Debian 7.x kernels are packaged as linux-binary-ABI (the image, under
# usr/lib/modules/ABI/vmlinuz) plus linux-modules-ABI.
TABLE='
5.10 bullseye ^linux-image-5\.10\.0-[0-9]+-amd64-unsigned$       floor
6.1  bookworm ^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$        kernel
6.12 bookworm ^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$  kernel
7    unstable ^linux-binary-7\.[0-9]+\.[0-9]+\+deb[0-9]+-amd64$  kernel
'
KERNELS=${KERNELS:-"5.10 6.1 6.12 7"}
VM_TIMEOUT=${VM_TIMEOUT:-480}
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

# apt-get / apt-cache with this runner's own sources list, lists and cache.
own_apt() {
	local cmd=$1
	shift
	"$cmd" -o Dir::Etc::sourcelist="$APT/sources.list" -o Dir::Etc::sourceparts=- \
		-o Dir::State::Lists="$APT/lists" -o Dir::Cache="$APT/cache" \
		-o Dir::State::status=/var/lib/dpkg/status \
		-o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false "$@"
}

# The package indexes of every suite the table names, fetched once a run.
apt_update() {
	local keys=/usr/share/keyrings/debian-archive-keyring.gpg suite
	mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
	: >"$APT/sources.list"
	for suite in $(printf '%s\n' "$TABLE" | awk 'NF {print $2}' | sort -u); do
		echo "deb [signed-by=$keys] $MIRROR/debian $suite main" >>"$APT/sources.list"
		case $suite in
		bookworm | bullseye)
			echo "deb [signed-by=$keys] $MIRROR/debian $suite-updates main" >>"$APT/sources.list"
			echo "deb [signed-by=$keys] $MIRROR/debian-security $suite-security main" >>"$APT/sources.list"
			;;
		esac
	done
	own_apt apt-get update -q >"$APT/update.log" 2>&1 ||
		{ log "apt-get update with $APT/sources.list failed:"; tail -5 "$APT/update.log" >&2; return 1; }
}

# The newest package matching the regex, in the suites of $APT/sources.list.
newest() {
	own_apt apt-cache search --names-only "$1" | awk '{print $1}' | grep -E "$1" | sort -V | tail -1
}

# Fetch and unpack a kernel (its modules too, when they are a package of
# their own); depmod-indexed. Prints the kernel image's path.
fetch_kernel() {
	local regex=$1 pkg ver dir pkgs p mods base
	pkg=$(newest "$regex")
	[ -n "$pkg" ] || { log "no package matches $regex"; return 1; }
	pkgs=$pkg
	case $pkg in linux-binary-*) pkgs="$pkg linux-modules-${pkg#linux-binary-}" ;; esac
	dir=$KDIR/$pkg
	if [ ! -e "$dir/.complete" ]; then
		rm -rf "$dir" "$dir.dl"
		mkdir -p "$dir.dl"
		(cd "$dir.dl" && own_apt apt-get download -q $pkgs >download.log 2>&1) ||
			{ log "apt-get download $pkgs failed:"; tail -5 "$dir.dl/download.log" >&2; return 1; }
		for p in "$dir.dl"/*.deb; do dpkg-deb -x "$p" "$dir"; done
		rm -rf "$dir.dl"
		touch "$dir/.complete"
	fi
	if [ -d "$dir/usr/lib/modules" ]; then base=$dir/usr; else base=$dir; fi
	ver=$(ls "$base/lib/modules")
	mods=$base/lib/modules/$ver
	[ -f "$mods/modules.dep" ] || depmod -b "$base" "$ver" 2>/dev/null
	if [ -f "$mods/vmlinuz" ]; then echo "$mods/vmlinuz"; else echo "$dir/boot/vmlinuz-$ver"; fi
}

# The test executables cargo built: "name path" a line.
test_binaries() {
	cargo test --release --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") \
            and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])'
}

# One line per binary to run for these groups: "name path [test names]"
# (no names: every test of the binary), from tests/groups.txt.
selection() {
	local groups=$1 bins=$2
	GROUPS_WANTED="$groups" ONLY="$ONLY" BINS="$bins" python3 -c '
import os
wanted = os.environ["GROUPS_WANTED"].split()
only = os.environ["ONLY"].split()
paths = dict(l.split(" ", 1) for l in os.environ["BINS"].splitlines() if l)
chosen = {}
for line in open("tests/groups.txt"):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    group, pattern = line.split()[:2]
    if group not in wanted:
        continue
    binary, test = pattern.split("::", 1)
    if only and binary not in only:
        continue
    names = chosen.setdefault(binary, [])
    if test == "*":
        chosen[binary] = None
    elif names is not None:
        names.append(test)
for binary, names in chosen.items():
    print(paths[binary], *(names or []))'
}

# The script the guest runs: mount bpffs, load veth, run each binary with
# its selected tests (root ones included); results go to the shared OUT dir.
guest_script() {
	local out=$1 sel=$2 line
	cat <<EOF
#!/bin/sh
out=$out
uname -r > \$out/uname
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
modprobe veth 2> \$out/modprobe.err
cd $ROOT
# The binaries the tests run, from a tmpfs over target/release (this
# guest's view only): exec'd from the 9p root, every netnsxl command spent
# about 0.3 s reading its pages under emulation.
bin=/run/netnsxl-bin
mkdir -p \$bin && mount -t tmpfs none \$bin && mkdir \$bin/deps
cp target/release/netnsxl target/release/netnsxl-probe \$bin/
EOF
	while read -r line; do echo "cp ${line%% *} \$bin/deps/"; done <<<"$sel"
	cat <<EOF
mount --bind \$bin target/release
run() {
	t=\$1
	shift
	name=\$(basename \$t)
	start=\$(date +%s)
	if [ \$# = 0 ]; then
		\$t --include-ignored --show-output > \$out/\$name.log 2>&1
	else
		\$t --include-ignored --show-output --exact "\$@" > \$out/\$name.log 2>&1
	fi
	echo \$? > \$out/\$name.rc
	echo \$((\$(date +%s) - start)) > \$out/\$name.secs
}
EOF
	while read -r line; do echo "run $line"; done <<<"$sel"
	echo 'echo done > $out/done'
}

# "N passed, N failed" over every binary's "test result:" lines.
summarize() {
	local out=$1
	cat "$out"/*.log 2>/dev/null | awk '
		/^test result:/ {
			for (i = 1; i <= NF; i++) {
				if ($(i+1) ~ /^passed/) p += $i
				if ($(i+1) ~ /^failed/) f += $i
			}
		}
		END { printf "%d passed, %d failed\n", p, f }'
}

# Boot one kernel and run its groups; its summary line goes to KLINE (not
# through a subshell: the EXIT trap must see VM_PID). Returns non-zero when
# anything failed.
run_kernel() {
	local name=$1 suite=$2 regex=$3 groups=$4 bins=$5
	local kimg out script started secs sel line status=0
	KLINE="kernel $name: did not boot"
	kimg=$(fetch_kernel "$regex") || return 1
	[ "$groups" = kernel ] && groups="kernel floor"
	sel=$(selection "$groups" "$bins")
	[ -n "$sel" ] || { log "$name: no test of groups $groups (ONLY=$ONLY)"; return 1; }
	out=$(mktemp -d /tmp/netnsxl-kernel.XXXXXX)
	script=$out/guest.sh
	guest_script "$out" "$sel" >"$script"
	chmod +x "$script"
	log "$name: booting $(basename "$(dirname "$kimg")")/$(basename "$kimg") from $suite, groups $groups (results in $out)"
	started=$(date +%s)
	# vng starts virtme-run (its sibling in the venv) through PATH.
	PATH="$VENV/bin:$PATH" setsid timeout "$VM_TIMEOUT" "$VENV/bin/vng" -v --disable-kvm -r "$kimg" \
		--cpus 2 --memory 4G --rwdir="$out" -- "$script" >"$out/console.log" 2>&1 &
	VM_PID=$!
	wait "$VM_PID" || true
	VM_PID=""
	secs=$(($(date +%s) - started))
	if [ ! -f "$out/done" ]; then
		log "$name: the guest did not finish within VM_TIMEOUT=$VM_TIMEOUT s; last console lines:"
		tail -20 "$out/console.log" >&2
		status=1
	fi
	line="kernel $(cat "$out/uname" 2>/dev/null || echo '?') ($name, $groups): $(summarize "$out") in ${secs} s"
	for rc in "$out"/*.rc; do
		[ -f "$rc" ] || continue
		if [ "$(cat "$rc")" != 0 ]; then
			status=1
			log "$(basename "$rc" .rc) failed in $name:"
			grep -E "^(test .* FAILED|---- |thread .* panicked)|assert|left:|right:" \
				"${rc%.rc}.log" | head -40 >&2 || true
		fi
	done
	case $line in *" 0 passed,"*) status=1 ;; esac
	if [ "$groups" = floor ]; then
		# Below the floor: the refusal itself is what must have run.
		if ! grep -h "^floor: refused: " "$out"/*.log >&2; then
			log "$name: attach did not refuse this kernel"
			status=1
		fi
	else
		# Tests that checked a degraded behaviour say which feature was missing.
		grep -h "^kernel lacks" "$out"/*.log 2>/dev/null | sort | uniq -c | sed 's/^/  /' >&2 || true
	fi
	# Each binary's wall time in the guest, slowest first.
	for s in "$out"/*.secs; do
		[ -f "$s" ] && printf '%s %s\n' "$(cat "$s")" "$(basename "$s" .secs | sed 's/-[0-9a-f]*$//')"
	done | sort -rn | awk '{printf "  %4d s %s\n", $1, $2}' >&2
	KLINE=$line
	[ "$status" != 0 ] || rm -rf "$out"
	return "$status"
}

main() {
	[ "$(id -u)" = 0 ] || { log "needs root (it boots kernels that load BPF)"; exit 1; }
	install_deps
	apt_update
	log "building the test binaries"
	cargo build --release --bins >/dev/null
	local bins
	bins=$(test_binaries)
	[ -n "$bins" ] || { log "cargo built no test binaries"; exit 1; }

	# Ending this runner ends its guest too: the VM runs in a session of
	# its own, ended by its process group id on exit.
	VM_PID=""
	trap '[ -z "$VM_PID" ] || kill -TERM -- "-$VM_PID" 2>/dev/null' EXIT
	trap 'exit 130' INT TERM HUP

	local status=0 summary="" want name suite regex groups
	for want in $KERNELS; do
		name=""
		read -r name suite regex groups < <(printf '%s\n' "$TABLE" | awk -v n="$want" '$1 == n') || true
		if [ -z "$name" ]; then
			log "no kernel named $want in the table (names: $(printf '%s\n' "$TABLE" | awk 'NF {printf "%s ", $1}'))"
			status=1
			continue
		fi
		run_kernel "$name" "$suite" "$regex" "$groups" "$bins" || status=1
		echo "$KLINE"
		summary="$summary$KLINE"$'\n'
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
