// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * netnsxl datapath: Kubernetes service translation in cgroup sock_addr hooks,
 * aware of the network namespace of every socket (bpf_get_netns_cookie()).
 *
 * Lookup: port_map says whether any frontend uses the destination port;
 * svc_map[(dst, port, proto, slot 0)] is a frontend's master entry. Its flags
 * say from which netns it translates (host netns vs pods), whether it has
 * session affinity, and how many backends it has; it holds the first
 * NXL_INLINE of them (id and address) itself, the others are in slots
 * svc_map[(..., slot i + 1)]. So a hit is one or two hash lookups.
 * The control plane puts only usable backends into the slots (active ones,
 * or the terminating ones when no active one is left; node-local ones for
 * internalTrafficPolicy Local; the ones topology hints choose for the
 * others), so the datapath never filters.
 *
 * Local redirects come first: on a port whose port_map bits say a redirect
 * uses it, redirect_map[(dst, port, proto)] sends the socket to one of the
 * redirect's backends, unless redirect_skip_map holds (the socket's netns
 * cookie, dst): a socket of a backend's own netns then goes on to the
 * services below (or to dst itself).
 *
 * Update order (control plane, see src/control/store.rs), so that a connect racing a
 * change sees the old set or the new set and never a half-written entry:
 *   add:     meta, backends, slots past NXL_INLINE, then the master entry
 *            (which holds the first backends) last;
 *   replace: new backends, slots (overwritten in place), master (new count,
 *            flags and inline backends), then stale slots and removed
 *            backends;
 *   delete:  master first, then slots, backends and meta.
 * Each map element is replaced atomically by the kernel. A connect that read
 * the old master may find a stale slot or backend already deleted; it then
 * re-reads the master and picks again (bounded), see pick_backend().
 *
 * Reverse translation (recvmsg, getpeername): a TCP socket's frontend is in
 * rev_tcp_map, a preallocated array indexed by socket cookie that
 * sock_release empties, so a connect allocates nothing; a UDP socket's
 * frontends are in its socket-local storage and go with it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "netnsxl.h"

#define AF_INET 2
#define AF_INET6 10
#define ECONNREFUSED 111

#define SYS_PROCEED 1
#define SYS_REJECT 0

#define NS_PER_SEC 1000000000ULL
#define PICK_ATTEMPTS 3

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Anchors the shared enums in BTF for the Rust skeleton; never read. */
const volatile struct nxl_abi nxl_abi = {};

/* NXL_FEAT_* bits, set by attach before load from its probes of this kernel.
 * Read-only data is frozen at load, so the verifier knows the value and
 * drops the branches of a feature the kernel lacks. */
const volatile __u32 nxl_features = 0;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	/* attach sizes it: --max-services + --max-backends */
	__uint(max_entries, NXL_DEFAULT_MAX_SERVICES + NXL_DEFAULT_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svc_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct backend_value);
	__uint(max_entries, NXL_DEFAULT_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} backend_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct svc_meta);
	__uint(max_entries, NXL_DEFAULT_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} meta_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity_value);
	__uint(max_entries, NXL_DEFAULT_MAX_AFFINITY);
} affinity_map SEC(".maps");

/*
 * Reverse translation of UDP sockets lives in the socket itself
 * (socket-local storage): an unconnected socket may talk to several
 * frontends, and the kernel frees the storage with the socket.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct revnat_value);
} revnat_map SEC(".maps");

/* Pairs beyond NXL_REV_INLINE, for the few sockets that need them: kept
 * apart so every other socket's storage stays small (an allocation of the
 * next size class cost a new socket's first send about 60 ns). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct revnat_more);
} revnat_more_map SEC(".maps");

/*
 * Reverse translation of TCP sockets: a preallocated array indexed by socket
 * cookie, so a connect allocates nothing and inserts into no map (socket
 * storage cost two accounted allocations per connect and their RCU-delayed
 * frees at close). A socket's entry takes the first free slot of
 * NXL_TCP_PROBES from cookie % slots on, and sock_release frees it; a
 * connect that finds them all held by open sockets records nothing and
 * counts NXL_STAT_TCP_UNRECORDED (that socket's getpeername() shows the
 * backend). Open translated TCP sockets, not connects, fill it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct rev_tcp_slot);
	__uint(max_entries, NXL_DEFAULT_TCP_SLOTS); /* attach --max-tcp-sockets */
} rev_tcp_map SEC(".maps");

/* slots - 1 of rev_tcp_map (slots is a power of two), set by attach. */
const volatile __u32 nxl_tcp_slot_mask = NXL_DEFAULT_TCP_SLOTS - 1;

/* rev_tcp_slot.cookie while a connect fills the slot: no socket has it. */
#define TCP_SLOT_BUSY (~0ULL)

/*
 * Prefilter: port (host order) -> NXL_PORT_* bits of the protocols some
 * frontend uses on it. An array lookup is inlined by the verifier, so a
 * socket whose port no service uses costs a few instructions and no hash.
 * The control plane sets a bit before the first master entry on that port
 * is written and clears it (apply, full rewrite) only when none is left.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 65536);
} port_map SEC(".maps");

/* Counters per reason (NXL_STAT_*), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, NXL_STAT_MAX);
} stats_map SEC(".maps");

/*
 * Connects translated per service and CPU, indexed by service id (the
 * control plane keeps ids in 1..--max-services and zeroes a service's
 * counters before it gives its id to a new service). A plain array laid out
 * CPU-major, element cpu * nxl_count_stride + svc_id: one cache line per
 * connect (a per-CPU array reads a pointer, then the value: two cold lines
 * at random services), and each CPU's counters are contiguous, so no two
 * CPUs write one line.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	/* attach: (--max-services + 1) x possible CPUs */
	__uint(max_entries, NXL_DEFAULT_MAX_SERVICES + 1);
} svc_count_map SEC(".maps");

/* Counters per CPU in svc_count_map (--max-services + 1), set by attach. */
const volatile __u32 nxl_count_stride = NXL_DEFAULT_MAX_SERVICES + 1;

/* Connects refused per service: a rare path, so one shared counter per
 * service that ever refused, created then (nothing preallocated). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, NXL_DEFAULT_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svc_refused_map SEC(".maps");

/* Decisions for `netnsxl trace`, written only while config.tracers > 0. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events_map SEC(".maps");

/* A service's backend ids by index (control plane only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct member_key);
	__type(value, __u32);
	__uint(max_entries, NXL_DEFAULT_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} member_map SEC(".maps");

/* Network namespaces whose sockets are never translated: netns cookie -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, __u32);
	__uint(max_entries, NXL_MAX_BYPASS);
} bypass_map SEC(".maps");

/* Node addresses of the host netns: addr -> 1. Read by the control plane. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6_addr);
	__type(value, __u32);
	__uint(max_entries, NXL_MAX_NODE_ADDRS);
} node_addr_map SEC(".maps");

/* Filled by the control plane for one destroy pass, then emptied. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct doomed_key);
	__type(value, __u32);
	__uint(max_entries, NXL_MAX_DOOMED);
} doomed_map SEC(".maps");

/* Local redirects by frontend (slot 0): looked up only on a port whose
 * port_map bits say some redirect uses it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct redirect_value);
	__uint(max_entries, NXL_MAX_REDIRECTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} redirect_map SEC(".maps");

/* (netns cookie, frontend) -> 1: a redirect with NXL_RD_F_SKIP_BACKEND
 * leaves alone the sockets of this netns (one of its backends' own). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct redirect_skip_key);
	__type(value, __u32);
	__uint(max_entries, NXL_MAX_REDIRECTS * NXL_REDIRECT_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} redirect_skip_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct nxl_config);
	__uint(max_entries, 1);
} config_map SEC(".maps");

/* One destination, in the map's 16-byte form. */
struct nxl_dest {
	__u8 addr[16];
	__be16 port;
};

static __always_inline void v4_to_mapped(__u8 *addr, __u32 ip4)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(addr + 12, &ip4, 4);
}

static __always_inline __u32 mapped_to_v4(const __u8 *addr)
{
	__u32 ip4;

	__builtin_memcpy(&ip4, addr + 12, 4);
	return ip4;
}

/* An IPv4 address in its v4-mapped form (::ffff:a.b.c.d). */
static __always_inline bool is_mapped(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

static __always_inline bool addr_eq(const __u8 *a, const __u8 *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1];
}

static __always_inline struct nxl_config *nxl_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&config_map, &zero);
}

static __always_inline struct svc_value *lookup_master(struct svc_key *key)
{
	key->slot = 0;
	return bpf_map_lookup_elem(&svc_map, key);
}

/*
 * NodePort and HostPort answer on every address of 127.0.0.0/8: the control
 * plane writes one frontend at 127.0.0.0 (never a real destination) that
 * stands for the whole range. Only loopback misses pay this second lookup.
 */
static __always_inline struct svc_value *lookup_loopback_any(struct svc_key *key)
{
	__u32 ip4 = mapped_to_v4(key->addr);

	if (!is_mapped(key->addr) || (bpf_ntohl(ip4) >> 24) != 127 || bpf_ntohl(ip4) == 0x7f000000)
		return NULL;
	ip4 = bpf_htonl(0x7f000000);
	__builtin_memcpy(key->addr + 12, &ip4, 4);
	return lookup_master(key);
}

/* A backend is usable for a frontend if it still belongs to the service, is
 * not terminating while active backends exist, is node-local for a Local
 * frontend, and (for a cluster-wide one) is not left out by topology. */
static __always_inline bool backend_usable(const struct svc_value *master,
					   const struct backend_value *be)
{
	if (be->svc_id != master->svc_id)
		return false;
	if ((be->flags & NXL_BE_F_TERMINATING) && !(master->flags & NXL_SVC_F_FALLBACK))
		return false;
	if (master->flags & NXL_SVC_F_LOCAL_ONLY)
		return be->flags & NXL_BE_F_LOCAL;
	return !(be->flags & NXL_BE_F_OFF_TOPOLOGY);
}

/*
 * Which of a frontend's backends an unconnected UDP socket uses: a hash of
 * a seed the socket keeps in its own storage and the frontend, so every
 * datagram of the socket to that frontend reaches one backend (a QUIC,
 * DTLS or TFTP exchange is not spread across backends; Cilium hashes the
 * socket cookie, sock_select_slot). The seed is random, drawn at the
 * socket's first send: generating a cookie for a new socket cost about
 * 60 ns (bench/ab.md), a draw a few.
 */
static __always_inline __u32 sock_pick_hash(struct revnat_value *rv, __u32 svc_id)
{
	__u64 h;

	if (rv->seed == 0)
		rv->seed = bpf_get_prandom_u32() | 1;
	h = ((__u64)rv->seed << 32) | svc_id;
	return (__u32)((h * 0x9e3779b97f4a7c15ULL) >> 32);
}

/*
 * Pick a backend: `hash % count` when by_hash, else at random; one of the
 * master's own (no lookup), or a slot (one lookup). A slot may vanish under
 * us when a concurrent replace shrinks the set: re-read the master and try
 * again.
 */
static __always_inline struct svc_backend *
pick_backend(struct svc_key *key, struct svc_value **masterp, bool by_hash, __u32 hash)
{
	struct svc_value *master = *masterp, *slot;
	__u32 idx;

	for (int i = 0; i < PICK_ATTEMPTS; i++) {
		if (!master || master->count == 0)
			return NULL;
		idx = (by_hash ? hash : bpf_get_prandom_u32()) % master->count;
		if (idx < NXL_INLINE) {
			*masterp = master;
			return &master->be[idx];
		}
		key->slot = idx + 1;
		slot = bpf_map_lookup_elem(&svc_map, key);
		if (slot) {
			*masterp = master;
			return &slot->be[0];
		}
		master = lookup_master(key);
	}
	return NULL;
}

/* The client netns' affinity backend, if its entry is live and the backend
 * still usable; *had_entry says whether an entry existed at all. */
static __always_inline struct backend_value *
affinity_backend(struct svc_value *master, struct affinity_key *akey, __u64 now, bool *had_entry)
{
	struct affinity_value *av;
	struct backend_value *be;

	av = bpf_map_lookup_elem(&affinity_map, akey);
	if (!av)
		return NULL;
	*had_entry = true;
	if (now - av->last_used_ns > (__u64)master->affinity_timeout * NS_PER_SEC)
		return NULL;
	be = bpf_map_lookup_elem(&backend_map, &av->backend_id);
	if (!be || !backend_usable(master, be))
		return NULL;
	av->last_used_ns = now; /* sliding timeout */
	return be;
}

static __always_inline void count(__u32 stat);

static __always_inline bool revnat_is(const struct revnat_entry *e, const __u8 *be_addr,
				      __be16 be_port)
{
	return e->backend_port == be_port && addr_eq(e->backend_addr, be_addr);
}

static __always_inline bool revnat_for(const struct revnat_entry *e, const struct nxl_dest *frontend)
{
	return e->frontend_port == frontend->port && addr_eq(e->frontend_addr, frontend->addr);
}

/* The UDP socket's reverse-translation storage, created on first use. */
static __always_inline struct revnat_value *revnat_of(struct bpf_sock_addr *ctx)
{
	return bpf_sk_storage_get(&revnat_map, ctx->sk, NULL, BPF_SK_STORAGE_GET_F_CREATE);
}

/* The socket's pairs beyond the inline ones, if it has any. */
static __always_inline struct revnat_more *revnat_more_of(void *sk, const struct revnat_value *rv)
{
	if (rv->used <= NXL_REV_INLINE)
		return NULL;
	return bpf_sk_storage_get(&revnat_more_map, sk, NULL, 0);
}

/* Pair i of a socket: inline, or in its revnat_more; NULL past the end. */
static __always_inline struct revnat_entry *rev_entry(struct revnat_value *rv,
						      struct revnat_more *more, __u32 i)
{
	/* Keep both bounds checks: clang would drop one it can prove, the
	 * verifier cannot. */
	barrier_var(i);
	if (i < NXL_REV_INLINE)
		return &rv->e[i];
	i -= NXL_REV_INLINE;
	barrier_var(i);
	if (more && i < NXL_REV_MORE)
		return &more->e[i];
	return NULL;
}

/*
 * The index of the first of a UDP socket's pairs whose backend (or, with
 * of_frontend, whose frontend) is `d`; NXL_REV_PER_SOCK for none.
 *
 * A global function, so the verifier checks it once, on its own, and the
 * hooks see one unknown number in place of the 17 outcomes of each scan.
 * Inlined, the outcomes of a socket's two scans multiplied the states of
 * everything after them: sendmsg4 and sendmsg6 took 200,000 instructions
 * and 0.3 s each to verify, most of an attach (and 15 times that under
 * emulation). It returns at the first match, so no index is carried
 * through the loop.
 */
__noinline __u32 nxl_rev_index(struct revnat_value *rv, struct revnat_more *more,
			       const struct nxl_dest *d, __u32 of_frontend)
{
	struct revnat_entry *e;
	__u32 i;

	if (!rv || !d)
		return NXL_REV_PER_SOCK;
	/* Unused pairs are zero: port 0 matches no frontend or backend. */
	for (i = 0; i < NXL_REV_PER_SOCK; i++) {
		e = rev_entry(rv, more, i);
		if (!e)
			break;
		if (of_frontend ? revnat_for(e, d) : revnat_is(e, d->addr, d->port))
			return i;
	}
	return NXL_REV_PER_SOCK;
}

/* A pair for a new backend: the next unused one (creating the socket's
 * revnat_more when the inline ones are full), else the oldest, which is
 * counted: replies from its backend then show the backend's address. */
static __always_inline __u32 revnat_new_slot(void *sk, struct revnat_value *rv,
					     struct revnat_more **more)
{
	__u32 i = rv->used, n = NXL_REV_PER_SOCK;

	if (i >= NXL_REV_INLINE && !*more) {
		*more = bpf_sk_storage_get(&revnat_more_map, sk, NULL,
					   BPF_SK_STORAGE_GET_F_CREATE);
		if (!*more)
			n = NXL_REV_INLINE; /* no memory for more: reuse inline pairs */
	}
	if (i < n) {
		rv->used = i + 1;
		return i;
	}
	i = rv->next % n;
	rv->next = i + 1;
	count(NXL_STAT_UDP_REV_EVICTED);
	return i;
}

static __always_inline void revnat_write(struct revnat_value *rv, struct revnat_more *more,
					 __u32 i, const struct nxl_dest *frontend,
					 const __u8 *be_addr, __be16 be_port, __u32 be_id)
{
	struct revnat_entry *e = rev_entry(rv, more, i);

	if (!e)
		return;
	__builtin_memcpy(e->backend_addr, be_addr, 16);
	__builtin_memcpy(e->frontend_addr, frontend->addr, 16);
	e->backend_port = be_port;
	e->frontend_port = frontend->port;
	e->backend_id = be_id;
	rv->last = i;
}

/*
 * Unconnected UDP: the backend of this send and the socket's reverse pair
 * for it, in one pass over the socket's pairs. The hash pick (to_*) is used
 * unless the socket's pair for this frontend names another backend that is
 * still usable: the set changed but its backend did not go, so the socket
 * stays. The common case, the pick is the backend of the socket's last
 * send to this frontend, costs one comparison of the pair.
 */
static __always_inline void udp_sticky(void *sk, struct revnat_value *rv,
				       const struct nxl_dest *frontend,
				       const struct svc_value *master, const __u8 **to_addr,
				       __be16 *to_port, __u32 *to_id)
{
	struct revnat_more *more = NULL;
	struct revnat_entry *e;
	struct backend_value *be;
	struct nxl_dest backend;
	__u32 i, at_be, at_fe;

	/* A new socket's first send: nothing to scan. */
	if (rv->used == 0) {
		revnat_write(rv, NULL, revnat_new_slot(sk, rv, &more), frontend, *to_addr, *to_port,
			     *to_id);
		return;
	}
	i = rv->last;
	if (i < NXL_REV_INLINE) {
		e = &rv->e[i];
		if (e->backend_id == *to_id && revnat_for(e, frontend) &&
		    revnat_is(e, *to_addr, *to_port))
			return;
	}
	more = revnat_more_of(sk, rv);
	__builtin_memcpy(backend.addr, *to_addr, 16);
	backend.port = *to_port;
	at_be = nxl_rev_index(rv, more, &backend, 0);
	at_fe = nxl_rev_index(rv, more, frontend, 1);
	e = at_fe < NXL_REV_PER_SOCK ? rev_entry(rv, more, at_fe) : NULL;
	if (e && e->backend_id != *to_id && e->backend_id != 0) {
		__u32 id = e->backend_id;

		be = bpf_map_lookup_elem(&backend_map, &id);
		if (be && backend_usable(master, be) && revnat_is(e, be->addr, be->port)) {
			*to_addr = be->addr;
			*to_port = be->port;
			*to_id = id;
			rv->last = at_fe;
			return;
		}
	}
	if (at_be < NXL_REV_PER_SOCK)
		i = at_be;
	else if (at_fe < NXL_REV_PER_SOCK)
		i = at_fe; /* moved: its backend went */
	else
		i = revnat_new_slot(sk, rv, &more);
	revnat_write(rv, more, i, frontend, *to_addr, *to_port, *to_id);
}

/*
 * Remember in the UDP socket's storage that replies from this backend are
 * the frontend's (connected UDP, affinity and redirect picks): one pair per
 * backend. rv: the socket's storage if the caller has it already. The same pair as the socket's last send is the common case and
 * costs one comparison.
 */
static __always_inline void remember_revnat(struct bpf_sock_addr *ctx, struct revnat_value *rv,
					    const struct nxl_dest *frontend,
					    const __u8 *be_addr, __be16 be_port, __u32 be_id)
{
	struct revnat_more *more = NULL;
	struct revnat_entry *e;
	struct nxl_dest backend;
	__u32 i, at;

	if (!rv)
		rv = revnat_of(ctx);
	if (!rv)
		return;
	if (rv->used == 0) {
		revnat_write(rv, NULL, revnat_new_slot(ctx->sk, rv, &more), frontend, be_addr,
			     be_port, be_id);
		return;
	}
	i = rv->last;
	if (i < NXL_REV_INLINE) {
		e = &rv->e[i];
		if (revnat_is(e, be_addr, be_port) && revnat_for(e, frontend))
			return;
	}
	more = revnat_more_of(ctx->sk, rv);
	__builtin_memcpy(backend.addr, be_addr, 16);
	backend.port = be_port;
	at = nxl_rev_index(rv, more, &backend, 0);
	if (at >= NXL_REV_PER_SOCK)
		at = revnat_new_slot(ctx->sk, rv, &more);
	revnat_write(rv, more, at, frontend, be_addr, be_port, be_id);
}

/* The pair of a UDP socket for a reply from `peer`, if netnsxl sent it
 * there (sk: the socket, for its revnat_more). */
static __always_inline struct revnat_entry *revnat_find(void *sk, struct revnat_value *rv,
							const __u8 *addr, __be16 port)
{
	struct revnat_more *more;
	struct nxl_dest backend;
	__u32 i = rv->last;

	if (i < NXL_REV_INLINE && revnat_is(&rv->e[i], addr, port))
		return &rv->e[i];
	more = revnat_more_of(sk, rv);
	__builtin_memcpy(backend.addr, addr, 16);
	backend.port = port;
	i = nxl_rev_index(rv, more, &backend, 0);
	return i < NXL_REV_PER_SOCK ? rev_entry(rv, more, i) : NULL;
}

/* The frontend a UDP socket sent to, for a reply from `peer`. */
static __always_inline bool reverse_udp(struct bpf_sock_addr *ctx, struct nxl_dest *peer)
{
	struct revnat_value *rv;
	struct revnat_entry *e;

	rv = bpf_sk_storage_get(&revnat_map, ctx->sk, NULL, 0);
	if (!rv)
		return false;
	e = revnat_find(ctx->sk, rv, peer->addr, peer->port);
	if (!e)
		return false;
	__builtin_memcpy(peer->addr, e->frontend_addr, 16);
	peer->port = e->frontend_port;
	return true;
}

/* rev_tcp_slot.backend_tag of a backend address. */
static __always_inline __u32 addr_tag(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return w[0] ^ w[1] ^ w[2] ^ w[3];
}

/* Slot i of the NXL_TCP_PROBES a socket with this cookie may use. */
static __always_inline struct rev_tcp_slot *tcp_slot(__u64 cookie, __u32 i)
{
	__u32 idx = ((__u32)cookie + i) & nxl_tcp_slot_mask;

	return bpf_map_lookup_elem(&rev_tcp_map, &idx);
}

/*
 * Record a translated TCP socket's frontend in rev_tcp_map: in its own entry
 * (a connect again after a failed one) or a free slot, claimed with a
 * compare-and-exchange so two connects never fill one slot; the cookie is
 * published last (an exchange orders it after the fields), so getpeername
 * never reads a half-written entry. False when every slot was held.
 */
static __always_inline bool remember_tcp(struct bpf_sock_addr *ctx,
					 const struct nxl_dest *frontend, const __u8 *be_addr,
					 __be16 be_port)
{
	__u64 cookie = bpf_get_socket_cookie(ctx), old;
	struct rev_tcp_slot *s;

	for (__u32 i = 0; i < NXL_TCP_PROBES; i++) {
		s = tcp_slot(cookie, i);
		if (!s)
			return false;
		old = s->cookie;
		if (old != 0 && old != cookie)
			continue;
		if (__sync_val_compare_and_swap(&s->cookie, old, TCP_SLOT_BUSY) != old)
			continue;
		__builtin_memcpy(s->frontend_addr, frontend->addr, 16);
		s->frontend_port = frontend->port;
		s->backend_port = be_port;
		s->backend_tag = addr_tag(be_addr);
		__sync_lock_test_and_set(&s->cookie, cookie);
		return true;
	}
	return false;
}

/* The frontend of a TCP socket connected to `peer`, if netnsxl translated it. */
static __always_inline bool reverse_tcp(struct bpf_sock_addr *ctx, struct nxl_dest *peer)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 tag = addr_tag(peer->addr);
	struct rev_tcp_slot *s;

	for (__u32 i = 0; i < NXL_TCP_PROBES; i++) {
		s = tcp_slot(cookie, i);
		if (!s)
			return false;
		if (s->cookie == cookie && s->backend_port == peer->port && s->backend_tag == tag) {
			__builtin_memcpy(peer->addr, s->frontend_addr, 16);
			peer->port = s->frontend_port;
			return true;
		}
	}
	return false;
}

static __always_inline void count(__u32 stat)
{
	__u64 *c = bpf_map_lookup_elem(&stats_map, &stat);

	if (c)
		*c += 1;
}

static __always_inline void count_translated(__u32 svc_id)
{
	__u32 idx = bpf_get_smp_processor_id() * nxl_count_stride + svc_id;
	__u64 *c;

	if (svc_id >= nxl_count_stride)
		return;
	c = bpf_map_lookup_elem(&svc_count_map, &idx);
	if (c)
		*c += 1;
}

static __always_inline void count_refused(__u32 svc_id)
{
	__u64 *c = bpf_map_lookup_elem(&svc_refused_map, &svc_id), one = 1;

	if (c)
		__sync_fetch_and_add(c, 1);
	else if (bpf_map_update_elem(&svc_refused_map, &svc_id, &one, BPF_NOEXIST))
		/* another CPU created it first */
		if ((c = bpf_map_lookup_elem(&svc_refused_map, &svc_id)))
			__sync_fetch_and_add(c, 1);
}

/* One event for `netnsxl trace`; the caller checked config.tracers. */
static __always_inline void trace(__u64 netns, __u8 hook, __u8 verdict, __u8 proto, __u32 svc_id,
				  const struct nxl_dest *orig, const __u8 *new_addr,
				  __be16 new_port)
{
	struct nxl_event *ev = bpf_ringbuf_reserve(&events_map, sizeof(*ev), 0);

	if (!ev)
		return;
	ev->ts_ns = bpf_ktime_get_ns();
	ev->netns_cookie = netns;
	ev->pid = bpf_get_current_pid_tgid() >> 32;
	ev->svc_id = svc_id;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	__builtin_memcpy(ev->orig_addr, orig->addr, 16);
	__builtin_memcpy(ev->new_addr, new_addr, 16);
	ev->orig_port = orig->port;
	ev->new_port = new_port;
	ev->proto = proto;
	ev->hook = hook;
	ev->verdict = verdict;
	ev->pad0 = 0;
	/* No wakeup per event: in a VM it is an inter-processor interrupt, about
	 * 15 us. The reader drains the ring every 100 ms; a ring over half
	 * full wakes it at once. */
	bpf_ringbuf_submit(ev, bpf_ringbuf_query(&events_map, BPF_RB_AVAIL_DATA) > (1 << 19)
				   ? BPF_RB_FORCE_WAKEUP
				   : BPF_RB_NO_WAKEUP);
}

/*
 * A local redirect on dst, if one applies: dst is rewritten to one of its
 * backends and true is returned. False leaves dst to the services (or as
 * it is): no redirect, no backend left, a bypassed netns, or a socket of a
 * backend's own netns when the redirect skips those.
 */
static __always_inline bool redirect(struct bpf_sock_addr *ctx, struct nxl_dest *dst, __u32 proto,
				     __u8 hook)
{
	struct svc_key key = {};
	struct redirect_value *rv;
	struct revnat_value *sock_rv = NULL;
	struct redirect_backend *be;
	struct nxl_config *cfg;
	struct nxl_dest orig;
	__u64 netns = 0;
	__u32 idx;

	__builtin_memcpy(key.addr, dst->addr, 16);
	key.port = dst->port;
	key.proto = proto;
	rv = bpf_map_lookup_elem(&redirect_map, &key);
	if (!rv || rv->count == 0)
		return false;
	cfg = nxl_cfg();
	if (!cfg)
		return false;
	if ((rv->flags & NXL_RD_F_SKIP_BACKEND) || cfg->bypass_count || cfg->tracers)
		netns = bpf_get_netns_cookie(ctx);
	/* The service path counts and traces the bypass. */
	if (cfg->bypass_count && bpf_map_lookup_elem(&bypass_map, &netns))
		return false;
	orig = *dst;
	if (rv->flags & NXL_RD_F_SKIP_BACKEND) {
		struct redirect_skip_key skey = {
			.netns_cookie = netns,
			.port = dst->port,
			.proto = proto,
		};

		__builtin_memcpy(skey.addr, dst->addr, 16);
		if (bpf_map_lookup_elem(&redirect_skip_map, &skey)) {
			count(NXL_STAT_REDIRECT_SKIPPED);
			if (cfg->tracers)
				trace(netns, hook, NXL_STAT_REDIRECT_SKIPPED, proto, 0, &orig,
				      orig.addr, orig.port);
			return false;
		}
	}
	/* Unconnected UDP keeps one backend per socket, as for services. */
	if (proto == IPPROTO_UDP && (hook == NXL_HOOK_SENDMSG4 || hook == NXL_HOOK_SENDMSG6) &&
	    (sock_rv = revnat_of(ctx)))
		idx = sock_pick_hash(sock_rv, 0) % rv->count;
	else
		idx = bpf_get_prandom_u32() % rv->count;
	if (idx >= NXL_REDIRECT_BACKENDS)
		return false;
	be = &rv->be[idx];
	if (proto == IPPROTO_UDP)
		remember_revnat(ctx, sock_rv, dst, be->addr, be->port, 0);
	else if (!remember_tcp(ctx, dst, be->addr, be->port))
		count(NXL_STAT_TCP_UNRECORDED);
	__builtin_memcpy(dst->addr, be->addr, 16);
	dst->port = be->port;
	count(NXL_STAT_REDIRECTED);
	if (cfg->tracers)
		trace(netns, hook, NXL_STAT_REDIRECTED, proto, 0, &orig, dst->addr, dst->port);
	return true;
}

/*
 * Translate dst in place. Returns SYS_PROCEED, or SYS_REJECT with the
 * return value set to -ECONNREFUSED when the frontend has no usable backend.
 */
static __always_inline int xlate(struct bpf_sock_addr *ctx, struct nxl_dest *dst, bool *changed,
				 __u8 hook)
{
	struct svc_key key = {};
	struct svc_value *master;
	struct svc_backend *pick;
	struct backend_value *be = NULL;
	struct revnat_value *rv = NULL;
	const __u8 *to_addr = dst->addr;
	struct nxl_config *cfg;
	__u32 proto = ctx->protocol, pidx, *ports, svc_id, to_id = 0;
	__be16 to_port = dst->port;
	__u64 netns, now = 0;
	struct nxl_dest orig;
	bool from_host;
	__u8 verdict;
	int ret = SYS_PROCEED;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return SYS_PROCEED;
	/* No frontend on this port and protocol: done, without hashing. */
	pidx = bpf_ntohs(dst->port);
	ports = bpf_map_lookup_elem(&port_map, &pidx);
	if (!ports)
		return SYS_PROCEED;
	if ((*ports & (proto == IPPROTO_TCP ? NXL_PORT_REDIRECT_TCP : NXL_PORT_REDIRECT_UDP)) &&
	    redirect(ctx, dst, proto, hook)) {
		*changed = true;
		return SYS_PROCEED;
	}
	if (!(*ports & (proto == IPPROTO_TCP ? NXL_PORT_TCP : NXL_PORT_UDP)))
		return SYS_PROCEED;

	__builtin_memcpy(key.addr, dst->addr, 16);
	key.port = dst->port;
	key.proto = proto;
	master = lookup_master(&key);
	if (!master) {
		master = lookup_loopback_any(&key);
		if (!master)
			return SYS_PROCEED;
	}

	cfg = nxl_cfg();
	if (!cfg)
		return SYS_PROCEED;
	svc_id = master->svc_id;
	orig = *dst;
	/* The socket's netns only when something asks for it: a plain
	 * ClusterIP hit with no bypass and no tracer never reads it. */
	netns = 0;
	if ((master->flags & (NXL_SVC_F_SKIP_HOST | NXL_SVC_F_HOST_ONLY | NXL_SVC_F_AFFINITY)) ||
	    cfg->bypass_count || cfg->tracers)
		netns = bpf_get_netns_cookie(ctx);
	from_host = netns == cfg->host_netns_cookie;
	if ((master->flags & NXL_SVC_F_SKIP_HOST) && from_host) {
		verdict = NXL_STAT_HOST_SKIPPED;
		goto out;
	}
	if ((master->flags & NXL_SVC_F_HOST_ONLY) && !from_host) {
		verdict = NXL_STAT_POD_SKIPPED;
		goto out;
	}
	if (cfg->bypass_count && bpf_map_lookup_elem(&bypass_map, &netns)) {
		verdict = NXL_STAT_BYPASSED;
		goto out;
	}

	if (master->count == 0)
		goto refuse;

	struct affinity_key akey = {
		.netns_cookie = netns,
		.svc_id = master->svc_id,
	};
	bool had_entry = false;

	if (master->flags & NXL_SVC_F_AFFINITY) {
		now = bpf_ktime_get_ns();
		be = affinity_backend(master, &akey, now, &had_entry);
	}
	if (be) {
		to_addr = be->addr;
		to_port = be->port;
		count(NXL_STAT_AFFINITY_HIT);
	} else {
		/* Unconnected UDP keeps one backend per frontend; connects pick
		 * at random. */
		bool by_hash = proto == IPPROTO_UDP &&
			       (hook == NXL_HOOK_SENDMSG4 || hook == NXL_HOOK_SENDMSG6);

		if (by_hash) {
			rv = revnat_of(ctx);
			by_hash = rv != NULL; /* no storage: a random pick */
		}
		pick = pick_backend(&key, &master, by_hash,
				    rv ? sock_pick_hash(rv, master->svc_id) : 0);
		if (!pick)
			goto refuse;
		to_addr = pick->addr;
		to_port = pick->port;
		to_id = pick->backend_id;
		if (rv)
			udp_sticky(ctx->sk, rv, dst, master, &to_addr, &to_port, &to_id);
		if (master->flags & NXL_SVC_F_AFFINITY) {
			struct affinity_value av = {
				.last_used_ns = now,
				.backend_id = to_id,
			};
			akey.svc_id = master->svc_id;
			bpf_map_update_elem(&affinity_map, &akey, &av, BPF_ANY);
			count(had_entry ? NXL_STAT_AFFINITY_REPLACED : NXL_STAT_AFFINITY_MISS);
		}
	}

	if (proto == IPPROTO_UDP) {
		if (!rv) /* udp_sticky wrote the entry of a hashed pick */
			remember_revnat(ctx, NULL, dst, to_addr, to_port, to_id);
	} else if (!remember_tcp(ctx, dst, to_addr, to_port))
		count(NXL_STAT_TCP_UNRECORDED);
	__builtin_memcpy(dst->addr, to_addr, 16);
	dst->port = to_port;
	*changed = true;
	verdict = NXL_STAT_TRANSLATED;
	count_translated(svc_id);
	goto out;

refuse:
	/* Without bpf_set_retval (before 5.18) a rejecting hook gives EPERM. */
	if (nxl_features & NXL_FEAT_SET_RETVAL)
		bpf_set_retval(-ECONNREFUSED);
	ret = SYS_REJECT;
	verdict = NXL_STAT_REFUSED;
	count_refused(svc_id);
out:
	count(verdict);
	if (cfg->tracers)
		trace(netns, hook, verdict, proto, svc_id, &orig, to_addr, to_port);
	return ret;
}

/* Rewrite a backend source/peer back to the frontend the socket asked for. */
static __always_inline bool reverse(struct bpf_sock_addr *ctx, struct nxl_dest *peer)
{
	if (ctx->protocol == IPPROTO_TCP)
		return reverse_tcp(ctx, peer);
	return reverse_udp(ctx, peer);
}

static __always_inline void load4(struct bpf_sock_addr *ctx, struct nxl_dest *d)
{
	v4_to_mapped(d->addr, ctx->user_ip4);
	d->port = (__be16)ctx->user_port;
}

static __always_inline void store4(struct bpf_sock_addr *ctx, const struct nxl_dest *d)
{
	ctx->user_ip4 = mapped_to_v4(d->addr);
	ctx->user_port = (__u32)d->port; /* must be a 32-bit store */
}

static __always_inline void load6(struct bpf_sock_addr *ctx, struct nxl_dest *d)
{
	__u32 w[4];

	w[0] = ctx->user_ip6[0];
	w[1] = ctx->user_ip6[1];
	w[2] = ctx->user_ip6[2];
	w[3] = ctx->user_ip6[3];
	__builtin_memcpy(d->addr, w, 16);
	d->port = (__be16)ctx->user_port;
}

static __always_inline void store6(struct bpf_sock_addr *ctx, const struct nxl_dest *d)
{
	__u32 w[4];

	__builtin_memcpy(w, d->addr, 16);
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
	ctx->user_port = (__u32)d->port;
}


/* After a reverse translation: count it, and trace it when asked. */
static __always_inline void reversed(struct bpf_sock_addr *ctx, const struct nxl_dest *backend,
				     const struct nxl_dest *frontend, __u8 hook)
{
	struct nxl_config *cfg = nxl_cfg();

	count(NXL_STAT_REVERSED);
	if (cfg && cfg->tracers)
		trace(bpf_get_netns_cookie(ctx), hook, NXL_STAT_REVERSED, ctx->protocol, 0, backend,
		      frontend->addr, frontend->port);
}

static __always_inline int sock4(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct nxl_dest d;
	bool changed = false;
	int ret;

	load4(ctx, &d);
	ret = xlate(ctx, &d, &changed, hook);
	if (changed && is_mapped(d.addr))
		store4(ctx, &d);
	return ret;
}

static __always_inline int sock6(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct nxl_dest d;
	bool changed = false;
	int ret;

	load6(ctx, &d);
	ret = xlate(ctx, &d, &changed, hook);
	if (changed)
		store6(ctx, &d);
	return ret;
}

static __always_inline int rev4(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct nxl_dest d, backend;

	load4(ctx, &d);
	backend = d;
	if (reverse(ctx, &d) && is_mapped(d.addr)) {
		store4(ctx, &d);
		reversed(ctx, &backend, &d, hook);
	}
	return SYS_PROCEED;
}

static __always_inline int rev6(struct bpf_sock_addr *ctx, __u8 hook)
{
	struct nxl_dest d, backend;

	load6(ctx, &d);
	backend = d;
	if (reverse(ctx, &d)) {
		store6(ctx, &d);
		reversed(ctx, &backend, &d, hook);
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int nxl_connect4(struct bpf_sock_addr *ctx)
{
	return sock4(ctx, NXL_HOOK_CONNECT4);
}

SEC("cgroup/sendmsg4")
int nxl_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock4(ctx, NXL_HOOK_SENDMSG4);
}

SEC("cgroup/recvmsg4")
int nxl_recvmsg4(struct bpf_sock_addr *ctx)
{
	return rev4(ctx, NXL_HOOK_RECVMSG4);
}

SEC("cgroup/getpeername4")
int nxl_getpeername4(struct bpf_sock_addr *ctx)
{
	return rev4(ctx, NXL_HOOK_GETPEERNAME4);
}

SEC("cgroup/connect6")
int nxl_connect6(struct bpf_sock_addr *ctx)
{
	return sock6(ctx, NXL_HOOK_CONNECT6);
}

SEC("cgroup/sendmsg6")
int nxl_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock6(ctx, NXL_HOOK_SENDMSG6);
}

SEC("cgroup/recvmsg6")
int nxl_recvmsg6(struct bpf_sock_addr *ctx)
{
	return rev6(ctx, NXL_HOOK_RECVMSG6);
}

SEC("cgroup/getpeername6")
int nxl_getpeername6(struct bpf_sock_addr *ctx)
{
	return rev6(ctx, NXL_HOOK_GETPEERNAME6);
}

/*
 * A TCP socket closes: free its rev_tcp_map entries (a socket that
 * connected again after a failed connect may have left a second one).
 */
SEC("cgroup/sock_release")
int nxl_sock_release(struct bpf_sock *ctx)
{
	__u64 cookie;
	struct rev_tcp_slot *s;

	if (ctx->protocol != IPPROTO_TCP)
		return SYS_PROCEED;
	cookie = bpf_get_socket_cookie(ctx);
	for (__u32 i = 0; i < NXL_TCP_PROBES; i++) {
		s = tcp_slot(cookie, i);
		if (s && s->cookie == cookie)
			s->cookie = 0;
	}
	return SYS_PROCEED;
}

/*
 * Stale sockets. When a backend goes, the control plane puts it in
 * doomed_map and reads these iterators once in every netns (an iterator
 * walks the sockets of the netns it is created in). A socket is destroyed
 * (ECONNABORTED for its owner) only if it is connected to a doomed backend
 * and netnsxl translated it there, i.e. its reverse-translation entry names
 * that backend; one byte is written per destroyed socket, so the reader
 * counts them.
 */
/* A kfunc of 6.5: weak, so the object loads without it; bpf_ksym_exists()
 * is then false and the verifier drops the call. */
extern int bpf_sock_destroy(struct sock_common *sk) __weak __ksym;

/* Whether netnsxl translated the TCP socket with this cookie to this backend. */
static __always_inline bool tcp_translated(__u64 cookie, const __u8 *be_addr, __be16 be_port)
{
	struct rev_tcp_slot *s;

	if (!cookie)
		return false; /* never asked for a cookie: never translated */
	for (__u32 i = 0; i < NXL_TCP_PROBES; i++) {
		s = tcp_slot(cookie, i);
		if (s && s->cookie == cookie &&
		    (!be_addr || (s->backend_port == be_port && s->backend_tag == addr_tag(be_addr))))
			return true;
	}
	return false;
}

static __always_inline int destroy_if_doomed(struct seq_file *seq, struct sock_common *skc,
					     struct sock *sk, __u8 proto)
{
	struct doomed_key key = {};
	struct revnat_value *rv;
	bool ours = false;
	char mark = 'x';

	if (skc->skc_family == AF_INET)
		v4_to_mapped(key.addr, skc->skc_daddr);
	else if (skc->skc_family == AF_INET6)
		__builtin_memcpy(key.addr, skc->skc_v6_daddr.in6_u.u6_addr8, 16);
	else
		return 0;
	key.port = skc->skc_dport;
	key.proto = proto;
	if (!key.port || !bpf_map_lookup_elem(&doomed_map, &key))
		return 0;

	if (proto == IPPROTO_TCP) {
		ours = tcp_translated(skc->skc_cookie.counter, key.addr, key.port);
	} else {
		rv = bpf_sk_storage_get(&revnat_map, sk, NULL, 0);
		if (!rv)
			return 0;
		ours = revnat_find(sk, rv, key.addr, key.port) != NULL;
	}
	if (!ours)
		return 0;
	if (bpf_ksym_exists(bpf_sock_destroy)) {
		if (bpf_sock_destroy(skc) == 0)
			bpf_seq_write(seq, &mark, 1);
		return 0;
	}
	/* Before 6.5: say which socket, and user space closes it. */
	if (nxl_features & NXL_FEAT_DIAG_DESTROY) {
		struct nxl_stale_sock st = {};

		st.family = skc->skc_family;
		st.proto = proto;
		if (st.family == AF_INET) {
			__builtin_memcpy(st.src_addr, &skc->skc_rcv_saddr, 4);
			__builtin_memcpy(st.dst_addr, &skc->skc_daddr, 4);
		} else {
			__builtin_memcpy(st.src_addr, skc->skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
			__builtin_memcpy(st.dst_addr, skc->skc_v6_daddr.in6_u.u6_addr8, 16);
		}
		st.src_port = bpf_htons(skc->skc_num);
		st.dst_port = skc->skc_dport;
		st.ifindex = skc->skc_bound_dev_if;
		st.cookie = skc->skc_cookie.counter;
		bpf_seq_write(seq, &st, sizeof(st));
	}
	return 0;
}

SEC("iter/udp")
int nxl_destroy_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;

	if (!udp)
		return 0;
	return destroy_if_doomed(ctx->meta->seq, (struct sock_common *)udp, (struct sock *)udp,
				 IPPROTO_UDP);
}

SEC("iter/tcp")
int nxl_destroy_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;

	if (!skc)
		return 0;
	/* Full sockets only: not request or time-wait sockets. The kfunc wants
	 * the iterator's own (trusted) pointer, not the cast one. */
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	return destroy_if_doomed(ctx->meta->seq, skc, (struct sock *)tp, IPPROTO_TCP);
}

/*
 * Count the UDP sockets of a netns that hold reverse-translation state (one
 * byte each), for status and the tests: socket-local storage cannot be
 * listed from user space (TCP's rev_tcp_map can).
 */
SEC("iter/udp")
int nxl_count_udp(struct bpf_iter__udp *ctx)
{
	struct udp_sock *udp = ctx->udp_sk;
	char mark = 'x';

	if (udp && bpf_sk_storage_get(&revnat_map, (struct sock *)udp, NULL, 0))
		bpf_seq_write(ctx->meta->seq, &mark, 1);
	return 0;
}

/*
 * Never attached by netnsxl (attach turns its autoload off): netnsxl-bench
 * loads it alone into a cgroup of its own, so that what bpf_stats reports
 * for a program that does nothing is measured next to the datapath.
 */
SEC("cgroup/connect4")
int nxl_bench_empty(struct bpf_sock_addr *ctx)
{
	return SYS_PROCEED;
}

/*
 * Run once by `attach` with BPF_PROG_TEST_RUN: records the initial netns
 * cookie as the kernel sees it, bpf_get_netns_cookie(NULL). tc programs may
 * call that helper only on newer kernels (6.1 and 6.12 refuse it): attach
 * probes first and turns this program's autoload off where it cannot load.
 */
SEC("tc")
int nxl_probe_init_cookie(struct __sk_buff *skb)
{
	struct nxl_config *cfg = nxl_cfg();

	if (cfg)
		cfg->init_netns_cookie = bpf_get_netns_cookie(NULL);
	return 0;
}
