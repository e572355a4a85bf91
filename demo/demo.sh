#!/usr/bin/env bash
# netnsxl demo: a node netns, two pods, an external host; ClusterIP with
# session affinity, ExternalIP with the host-netns rule, UDP. Everything it
# creates has a name of its own and is removed on exit, also on failure.
set -euo pipefail

BIN=${1:-target/release}
NXL="$BIN/netnsxl"
PROBE="$BIN/netnsxl-probe"
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates namespaces and attaches BPF)" >&2; exit 1; }

tag="nxldemo$$"
CG2=$(awk '{ for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' /proc/self/mountinfo)
[ -n "$CG2" ] || { echo "demo: cgroup2 is not mounted" >&2; exit 1; }
CG="$CG2/$tag"
PINS="/sys/fs/bpf/$tag"
NODE="$tag-node" PODA="$tag-pod-a" PODB="$tag-pod-b" EXT="$tag-ext"
SERVERS=()
WORK=$(mktemp -d)

cleanup() {
	set +e
	for pid in "${SERVERS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
	[ -d "$PINS" ] && "$NXL" --pin-dir "$PINS" detach >/dev/null
	for ns in "$NODE" "$PODA" "$PODB" "$EXT"; do ip netns del "$ns" 2>/dev/null; done
	[ -d "$CG" ] && rmdir "$CG"
	rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
nxl() { run "$NXL" --pin-dir "$PINS" "$@"; }

# serve NETNS PROTO ADDR:PORT REPLY: start a server, wait until it is bound.
serve() {
	local fifo
	fifo=$(mktemp -u)
	mkfifo "$fifo"
	"$PROBE" serve --netns "$1" --proto "$2" --listen "$3" --reply "$4" >"$fifo" &
	SERVERS+=("$!")
	read -r _ <"$fifo"
	rm -f "$fifo"
}

# client NETNS ARGS...: a pod process: joins the cgroup, enters the netns.
client() {
	local ns=$1
	shift
	printf '[%s] $ netnsxl-probe connect %s\n' "${ns#"$tag"-}" "$*"
	"$PROBE" connect --cgroup "$CG" --netns "$ns" "$@"
}

say "topology: node netns (the host, --host-netns), pods a and b, an external host"
for ns in "$NODE" "$PODA" "$PODB" "$EXT"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
link() { # link NS1 ADDR1/LEN NS2 ADDR2/LEN
	ip link add "nxd$$-$5a" netns "$1" type veth peer name "nxd$$-$5b" netns "$3"
	ip -n "$1" addr add "$2" dev "nxd$$-$5a"; ip -n "$1" link set "nxd$$-$5a" up
	ip -n "$3" addr add "$4" dev "nxd$$-$5b"; ip -n "$3" link set "nxd$$-$5b" up
}
link "$NODE" 198.51.100.1/28 "$PODA" 198.51.100.2/28 1
link "$NODE" 198.51.100.17/28 "$PODB" 198.51.100.18/28 2
link "$NODE" 198.51.100.33/28 "$EXT" 198.51.100.34/28 3
ip -n "$PODA" route add default via 198.51.100.1
ip -n "$PODB" route add default via 198.51.100.17
ip -n "$EXT" route add default via 198.51.100.33
ip -n "$EXT" addr add 203.0.113.50/32 dev lo
ip -n "$NODE" route add 203.0.113.50/32 via 198.51.100.34
for a in 203.0.113.200 203.0.113.201; do ip -n "$NODE" addr add "$a/32" dev lo; done
serve "$NODE" tcp 203.0.113.200:8080 "web-backend-1"
serve "$NODE" tcp 203.0.113.201:8080 "web-backend-2"
serve "$NODE" udp 203.0.113.200:5353 "dns-backend-1"
serve "$EXT" tcp 203.0.113.50:80 "the real external host"
mkdir "$CG"
echo "cgroup $CG; pods and the node's processes join it"

say "attach"
nxl attach --cgroup "$CG" --host-netns "/run/netns/$NODE" --zone zone-a

say "services"
nxl svc add --type clusterip --frontend 203.0.113.80:80 --backend 203.0.113.200:8080 \
	--backend 203.0.113.201:8080 --name default/web --session-affinity client-ip --affinity-timeout 600
nxl svc add --type externalip --frontend 203.0.113.50:80 --backend 203.0.113.200:8080 --name default/ext
nxl svc add --type clusterip --proto udp --frontend 203.0.113.53:53 --backend 203.0.113.200:5353 --name kube-system/dns
nxl svc add --type nodeport --frontend :30080 --backend 203.0.113.201:8080 --name default/np
nxl svc add --type loadbalancer --frontend 203.0.113.90:80 --node-port 30090 --backend 203.0.113.200:8080 \
	--backend 203.0.113.201:8080,terminating --name default/lb
nxl svc add --type hostport --frontend :8081 --backend 203.0.113.201:8080 --name default/hostport
nxl svc add --type clusterip --frontend 203.0.113.99:80 --name default/no-endpoints
nxl svc list

say "ClusterIP with ClientIP affinity: each pod (netns cookie) sticks to one backend"
client "$PODA" --count 3 203.0.113.80:80
client "$PODB" --count 3 203.0.113.80:80

say "ExternalIP 203.0.113.50 (not a node address): pods are translated, the host netns is not"
client "$PODA" 203.0.113.50:80
client "$NODE" 203.0.113.50:80

say "NodePort: node addresses from everywhere; 127.0.0.0/8 only from the host netns"
client "$PODA" 198.51.100.1:30080
client "$NODE" 127.0.0.1:30080
client "$PODA" 127.0.0.1:30080 || true

say "LoadBalancer (its terminating backend is not used while an active one exists) and its NodePort"
client "$PODA" --count 3 203.0.113.90:80
client "$PODB" 198.51.100.17:30090

say "HostPort on every node address"
client "$PODB" 198.51.100.17:8081

say "A service without endpoints refuses at once (ECONNREFUSED), as kube-proxy's REJECT"
client "$PODA" 203.0.113.99:80 || true

say "Bypass pod b: its sockets are left alone"
nxl netns bypass add "$PODB"
client "$PODB" --timeout-ms 300 203.0.113.80:80 || true
nxl netns bypass del "$PODB"
nxl netns list

say "Topology: this node is in zone-a; a service that prefers its zone uses zone-a's backend only"
nxl svc add --type clusterip --frontend 203.0.113.81:80 --backend 203.0.113.200:8080,zone=zone-a \
	--backend 203.0.113.201:8080,zone=zone-b --traffic-distribution prefer-same-zone --name default/zonal
client "$PODA" --count 3 203.0.113.81:80
nxl svc list

say "Local redirect (NodeLocal DNSCache): pod b runs a DNS cache; every other pod's DNS goes to it, the cache's own queries reach kube-dns"
ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1   # pod a reaches pod b through the node
serve "$PODB" udp 198.51.100.18:53 "node-local-dns-cache"
nxl redirect add --frontend 203.0.113.53:53 --proto udp --backend 198.51.100.18:53 --skip-from-backend \
	--name kube-system/node-local-dns
nxl redirect list
client "$PODA" --proto udp 203.0.113.53:53
client "$PODB" --proto udp 203.0.113.53:53
nxl redirect del --frontend 203.0.113.53:53 --proto udp
client "$PODA" --proto udp 203.0.113.53:53

say "UDP: unconnected sendto/recvfrom sees the VIP as the source"
client "$PODA" --proto udp --unconnected 203.0.113.53:53

say "affinity entries, keyed by netns cookie"
nxl affinity dump

say "trace: live decisions while pod a connects (ClusterIP with affinity, no endpoints, ExternalIP from the host)"
"$NXL" --pin-dir "$PINS" trace > "$WORK/trace.txt" 2> "$WORK/trace.err" &
TRACER=$!
SERVERS+=("$TRACER")
for _ in $(seq 50); do grep -q tracing "$WORK/trace.err" 2>/dev/null && break; sleep 0.1; done
client "$PODA" --count 2 203.0.113.80:80 >/dev/null
client "$PODA" 203.0.113.99:80 >/dev/null || true
client "$NODE" --timeout-ms 300 203.0.113.50:80 >/dev/null || true
kill -INT "$TRACER"; wait "$TRACER" 2>/dev/null || true
echo "\$ netnsxl trace   (stopped with Ctrl-C)"
cat "$WORK/trace.txt"

say "stats: counters per reason and per service, summed over CPUs"
nxl stats

say "svc list -o json is a backup that apply restores: applying it changes nothing"
echo "\$ $NXL --pin-dir $PINS svc list -o json > services.json"
"$NXL" --pin-dir "$PINS" svc list -o json > "$WORK/services.json"
nxl apply --dry-run -f "$WORK/services.json"

say "status"
nxl status

say "detach"
nxl detach
echo "demo done; cleaning up"
