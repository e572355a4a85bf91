/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Every structure shared by the BPF datapath and the Rust control plane.
 * Written once, here: the skeleton's generated `types` module gives Rust its
 * #[repr(C)] twins. Every hole is an explicit pad field (Rust sends each
 * struct's bytes as they are; an implicit hole would carry garbage, and
 * `apply` compares values byte for byte), and keys are zero-initialised;
 * addresses and ports are in network byte order.
 *
 * Addresses are 16 bytes. An IPv4 address is stored in its IPv4-mapped IPv6
 * form (::ffff:a.b.c.d), so one map holds both families and an IPv6 socket
 * connecting to ::ffff:a.b.c.d finds the IPv4 service with no second lookup.
 */
#ifndef __NETNSXL_H
#define __NETNSXL_H

/*
 * Constants are enums, not #defines, so that they reach BTF and with it the
 * skeleton's Rust `types` module (see nxl_abi in netnsxl.bpf.c).
 */
enum nxl_limits {
	/* Bump when any structure below, or the meaning of a field, changes.
	 * The control plane refuses a pin directory written by another layout. */
	NXL_LAYOUT_VERSION = 7,
	NXL_DEFAULT_MAX_SERVICES = 65536,
	NXL_DEFAULT_MAX_BACKENDS = 262144,
	NXL_DEFAULT_MAX_AFFINITY = 65536,
	NXL_MAX_NODE_ADDRS = 1024,
	NXL_MAX_BYPASS = 4096,
	/* Backends whose sockets one destroy pass handles (more go in rounds). */
	NXL_MAX_DOOMED = 4096,
	/* Local redirects (redirect_map) and backends one redirect holds. */
	NXL_MAX_REDIRECTS = 1024,
	NXL_REDIRECT_BACKENDS = 8,
	/* An `ip netns` name as a redirect backend records it. */
	NXL_NETNS_NAME_LEN = 32,
	/* The node's topology.kubernetes.io/zone (a label value: 63 bytes). */
	NXL_ZONE_LEN = 64,
	/* Reverse-translation pairs remembered per UDP socket: one per
	 * backend it sends to (an unconnected socket keeps one backend per
	 * frontend). The first NXL_REV_INLINE live in revnat_map, so a new
	 * socket's storage stays in the allocator's small class; the rest in
	 * revnat_more_map, created when those fill. A socket that talks to
	 * more backends overwrites its oldest pair and counts
	 * NXL_STAT_UDP_REV_EVICTED. */
	NXL_REV_PER_SOCK = 16,
	NXL_REV_INLINE = 4,
	NXL_REV_MORE = 12,
	NXL_NAME_LEN = 64,
	/* Backends a master entry holds itself: picking one of them is the
	 * master lookup alone. Backend i >= NXL_INLINE is in slot i + 1. */
	NXL_INLINE = 4,
	NXL_PATH_LEN = 256,
	/* Slots of rev_tcp_map (a power of two; attach --max-tcp-sockets). */
	NXL_DEFAULT_TCP_SLOTS = 131072,
	/* Slots a TCP socket's entry may take, from cookie % slots on. */
	NXL_TCP_PROBES = 4,
};

/* Counters (stats_map, per CPU) and trace verdicts (nxl_event.verdict). */
enum nxl_stat {
	NXL_STAT_TRANSLATED = 0,    /* connect/sendmsg sent to a backend */
	NXL_STAT_REFUSED = 1,       /* no usable backend: ECONNREFUSED */
	NXL_STAT_AFFINITY_HIT = 2,  /* the affinity entry's backend was used */
	NXL_STAT_AFFINITY_MISS = 3, /* no live entry for this netns: a new pick */
	NXL_STAT_AFFINITY_REPLACED = 4, /* the entry's backend left or is unusable */
	NXL_STAT_BYPASSED = 5,      /* the socket's netns is bypassed */
	NXL_STAT_HOST_SKIPPED = 6,  /* pods-only frontend (ExternalIP) from the host netns */
	NXL_STAT_POD_SKIPPED = 7,   /* host-only frontend (loopback NodePort) from a pod */
	NXL_STAT_REVERSED = 8,      /* recvmsg/getpeername shown the frontend */
	NXL_STAT_TCP_UNRECORDED = 9, /* a translated TCP socket found no free slot
				      * in rev_tcp_map: getpeername() shows it
				      * the backend */
	NXL_STAT_REDIRECTED = 10,   /* sent to a local redirect's backend */
	NXL_STAT_REDIRECT_SKIPPED = 11, /* a redirect left alone a socket of its
					 * backend's own netns */
	NXL_STAT_UDP_REV_EVICTED = 12, /* a UDP socket talking to more than
					* NXL_REV_PER_SOCK frontends overwrote
					* its oldest reverse pair: replies from
					* that backend show its address */
	NXL_STAT_MAX = 13,
};

/* Which program made a decision (nxl_event.hook). */
enum nxl_hook {
	NXL_HOOK_CONNECT4 = 1,
	NXL_HOOK_SENDMSG4 = 2,
	NXL_HOOK_RECVMSG4 = 3,
	NXL_HOOK_GETPEERNAME4 = 4,
	NXL_HOOK_CONNECT6 = 5,
	NXL_HOOK_SENDMSG6 = 6,
	NXL_HOOK_RECVMSG6 = 7,
	NXL_HOOK_GETPEERNAME6 = 8,
};

/* One translation decision, sent to `netnsxl trace` through events_map. */
struct nxl_event {
	__u64 ts_ns;            /* bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u64 netns_cookie;
	__u32 pid;              /* thread group id */
	__u32 svc_id;
	char comm[16];
	__u8 orig_addr[16];     /* what the socket asked for */
	__u8 new_addr[16];      /* the backend, or orig when left alone */
	__be16 orig_port;
	__be16 new_port;
	__u8 proto;
	__u8 hook;              /* NXL_HOOK_* */
	__u8 verdict;           /* NXL_STAT_* */
	__u8 pad0;
};

/* Who wrote a service (svc_meta.origin): a watch owns what Kubernetes wrote. */
enum nxl_origin {
	NXL_ORIGIN_USER = 0,
	NXL_ORIGIN_KUBERNETES = 1,
};

/* port_map[port] bits: some frontend uses this port with this protocol. */
enum nxl_port_bits {
	NXL_PORT_TCP = 1 << 0,
	NXL_PORT_UDP = 1 << 1,
	/* some local redirect uses this port (redirect_map is looked up first) */
	NXL_PORT_REDIRECT_TCP = 1 << 2,
	NXL_PORT_REDIRECT_UDP = 1 << 3,
};

/* Frontend (service master / slot) flags: svc_value.flags. */
enum nxl_svc_flags {
	NXL_SVC_F_AFFINITY = 1 << 0,   /* ClientIP session affinity */
	NXL_SVC_F_SKIP_HOST = 1 << 1,  /* leave sockets of the host netns alone */
	NXL_SVC_F_HOST_ONLY = 1 << 2,  /* translate only from the host netns */
	NXL_SVC_F_FALLBACK = 1 << 3,   /* slots hold terminating backends: no active one is left */
	NXL_SVC_F_LOCAL_ONLY = 1 << 4, /* slots hold only node-local backends */
};

/* Backend flags: backend_value.flags. */
enum nxl_backend_flags {
	NXL_BE_F_TERMINATING = 1 << 0,
	NXL_BE_F_LOCAL = 1 << 1,
	/* left out by topology (hints name other zones or nodes): cluster-wide
	 * frontends do not use it; node-local (policy Local) ones may */
	NXL_BE_F_OFF_TOPOLOGY = 1 << 2,
};

/* Which hints a service's cluster-wide frontends follow (svc_meta.topology),
 * kube-proxy's topology mode. */
enum nxl_topology {
	NXL_TOPO_NONE = 0,
	NXL_TOPO_ZONE = 1, /* hints.forZones name this node's zone */
	NXL_TOPO_NODE = 2, /* hints.forNodes name this node */
};

/* spec.trafficDistribution, as recorded (svc_meta.traffic_distribution). */
enum nxl_traffic_dist {
	NXL_TD_NONE = 0,
	NXL_TD_PREFER_CLOSE = 1,
	NXL_TD_PREFER_SAME_ZONE = 2,
	NXL_TD_PREFER_SAME_NODE = 3,
};

/* Service types, as recorded in svc_meta.type. */
enum nxl_svc_type {
	NXL_TYPE_CLUSTERIP = 1,
	NXL_TYPE_NODEPORT = 2,
	NXL_TYPE_EXTERNALIP = 3,
	NXL_TYPE_LOADBALANCER = 4,
	NXL_TYPE_HOSTPORT = 5,
};

/*
 * Service map key. slot 0 is the frontend's master entry, which holds the
 * first NXL_INLINE backends itself; backend i >= NXL_INLINE is in slot i + 1
 * (Cilium's layout, with the common case folded into the master).
 */
struct svc_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad0;
	__u16 slot;
	__u16 pad1;
};

/* One backend as a frontend entry names it: its id and a copy of its
 * address, so that picking it needs no other lookup. */
struct svc_backend {
	__u32 backend_id;
	__u8 addr[16];
	__be16 port;
	__u16 pad0;
};

struct svc_value {
	__u32 svc_id;           /* master and slot: the service this frontend belongs to */
	__u16 count;            /* master: number of usable backends */
	__u8 flags;             /* master: NXL_SVC_F_* */
	__u8 pad0;
	__u32 affinity_timeout; /* master: seconds; 0 when affinity is off */
	__u32 pad1;
	/* master: backends 0..min(count, NXL_INLINE)-1; slot: be[0] only. */
	struct svc_backend be[NXL_INLINE];
};

/* Backends are per service: a backend id names one (service, backend) pair. */
struct backend_value {
	__u8 addr[16];
	__be16 port;
	__u8 flags; /* NXL_BE_F_* */
	__u8 pad0;
	__u32 svc_id;
};

/* What the control plane records about a service, for listing it. */
struct svc_meta {
	char name[NXL_NAME_LEN];
	__u8 frontend_addr[16]; /* the frontend as the user gave it */
	__be16 frontend_port;
	__u8 proto;
	__u8 type;      /* NXL_TYPE_* */
	__u8 ext_policy_local;
	__u8 int_policy_local;
	__be16 node_port; /* LoadBalancer's NodePort; 0 when none */
	__u8 topology;             /* NXL_TOPO_*: the hints in use */
	__u8 traffic_distribution; /* NXL_TD_* */
	__u16 origin; /* NXL_ORIGIN_*: who wrote the service (no implicit hole here) */
	__u32 affinity_timeout; /* seconds; 0 when affinity is off */
	/* member_map holds this service's backend ids at indexes 0..n-1, so a
	 * command finds them without scanning backend_map. */
	__u32 backend_count;
};

/* The backends of a service, by index: member_map[(svc_id, i)] = backend id.
 * Control plane only; the datapath never reads it. */
struct member_key {
	__u32 svc_id;
	__u32 index;
};

/* Session affinity: one entry per (client netns, service). */
struct affinity_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 pad0;
};

struct affinity_value {
	__u64 last_used_ns; /* bpf_ktime_get_ns(), CLOCK_MONOTONIC */
	__u32 backend_id;
	__u32 pad0;
};

/*
 * Reverse translation of a connected TCP socket (rev_tcp_map, an array
 * indexed by socket cookie): no allocation per connect. The entry of the
 * socket whose cookie is C is in one of the NXL_TCP_PROBES slots from
 * C % slots on; the sock_release program empties it. `cookie` is 0 for a
 * free slot and ~0 while a connect fills it. Two slots share a cache line.
 *
 * The backend is kept as its port and a 32-bit tag (the XOR of the four
 * words of its 16-byte address: the IPv4 address itself for an IPv4
 * backend), only to tell the backend the socket was translated to from an
 * address it connected to directly after a failed translated connect.
 */
struct rev_tcp_slot {
	__u64 cookie;
	__u8 frontend_addr[16];
	__be16 frontend_port;
	__be16 backend_port;
	__u32 backend_tag;
};

/* Reverse translation of UDP sockets (unconnected ones may talk to several
 * frontends), in the socket's own storage (revnat_map). */
struct revnat_entry {
	__u8 backend_addr[16];
	__u8 frontend_addr[16];
	__be16 backend_port;
	__be16 frontend_port;
	__u32 backend_id; /* backend_map key; 0 for a redirect's backend */
};

struct revnat_value {
	struct revnat_entry e[NXL_REV_INLINE];
	__u32 used; /* entries filled, from e[0] on */
	__u32 last; /* the entry the last send used: checked first */
	__u32 next; /* the entry to overwrite when all are in use */
	__u32 seed; /* this socket's backend choice (unconnected sends); 0: unset */
};

/* Pairs NXL_REV_INLINE.. of a socket that talks to more backends. */
struct revnat_more {
	struct revnat_entry e[NXL_REV_MORE];
};

/*
 * A socket to close, as the stale-socket iterators write it on kernels
 * without bpf_sock_destroy: user space closes it with netlink SOCK_DESTROY
 * (sock_diag) in the socket's netns. Addresses as the socket holds them
 * (16 bytes for AF_INET6, the first 4 for AF_INET); cookie 0 when the
 * socket never had one.
 */
struct nxl_stale_sock {
	__u8 src_addr[16];
	__u8 dst_addr[16];
	__u64 cookie;
	__be16 src_port;
	__be16 dst_port;
	__u32 ifindex;
	__u8 family;
	__u8 proto;
	__u8 pad0[6];
};

/*
 * A backend that is gone: sockets netnsxl connected to it are destroyed by
 * the socket iterators (bpf_sock_destroy), so their owners reconnect.
 */
struct doomed_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 pad0;
};

/* Single-entry configuration array, written by `attach`. */
struct nxl_config {
	__u64 host_netns_cookie; /* cookie of the netns treated as the host's */
	__u64 init_netns_cookie; /* bpf_get_netns_cookie(NULL), read by the probe program */
	__u64 cgroup_id;         /* inode of the attached cgroup v2 directory */
	__u32 layout_version;
	__u32 next_svc_id;     /* allocation counters of the control plane */
	__u32 next_backend_id;
	__u32 attached;        /* 1 once attach has written everything */
	__u16 node_port_min;   /* --node-port-range */
	__u16 node_port_max;
	char cgroup_path[NXL_PATH_LEN];
	__u32 bypass_count; /* entries in bypass_map: 0 skips its lookup */
	__u32 tracers;      /* running `netnsxl trace`s: 0 sends no events */
	__u32 features;     /* NXL_FEAT_* that attach found on this kernel */
	char zone[NXL_ZONE_LEN]; /* this node's zone (attach/node refresh --zone, or
				  * the Node object apply read); "" when unknown */
};

/*
 * Local redirect (redirect_map, keyed by the frontend as a struct svc_key
 * with slot 0): sockets connecting to the frontend go to one of its
 * backends instead, before any service on that frontend is looked at. With
 * NXL_RD_F_SKIP_BACKEND, sockets of a backend's own netns are left alone:
 * redirect_skip_map holds (netns cookie, frontend) for each backend's netns.
 * One element holds the whole redirect, so a change is one atomic update.
 */
enum nxl_redirect_flags {
	NXL_RD_F_SKIP_BACKEND = 1 << 0,
};

struct redirect_backend {
	__u8 addr[16];
	__be16 port;
	__u8 by_name;  /* 1: the user named the netns (netns=NAME); 0: found from the address */
	__u8 pad0;
	__u32 pad1;
	__u64 netns_cookie; /* 0 when no netns on this node owns it now */
	char netns[NXL_NETNS_NAME_LEN]; /* its /run/netns name, if it has one */
};

struct redirect_value {
	char name[NXL_NAME_LEN];
	__u16 count;    /* backends in use: be[0..count-1] */
	__u8 flags;     /* NXL_RD_F_* */
	__u8 from_file; /* 1: apply wrote it from a file (apply --prune may delete it) */
	__u32 pad0;
	struct redirect_backend be[NXL_REDIRECT_BACKENDS];
};

struct redirect_skip_key {
	__u64 netns_cookie;
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 pad0;
	__u32 pad1;
};

/*
 * Optional kernel features, probed by `attach` before it loads the object.
 * The datapath reads them from .rodata (nxl_features), so the verifier
 * removes a branch the kernel cannot run; nxl_config.features records them
 * for `status` and for the commands that depend on one. Pins written before
 * this field existed hold 0, which NXL_FEAT_RECORDED tells apart.
 */
enum nxl_feature {
	NXL_FEAT_RECORDED = 1 << 0,
	/* bpf_set_retval() in sock_addr hooks (5.18): ECONNREFUSED, else EPERM */
	NXL_FEAT_SET_RETVAL = 1 << 1,
	/* the bpf_sock_destroy() kfunc (6.5): stale sockets are closed */
	NXL_FEAT_SOCK_DESTROY = 1 << 2,
	/* init_netns_cookie came from bpf_get_netns_cookie(NULL) in the probe
	 * program; else from SO_NETNS_COOKIE in the initial netns */
	NXL_FEAT_INIT_COOKIE_BPF = 1 << 3,
	/* netlink SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY): where the kfunc is
	 * missing, the iterators list stale sockets and user space closes them */
	NXL_FEAT_DIAG_DESTROY = 1 << 4,
};

/*
 * The sizes the pinned maps were created with: a change is a layout change
 * (bump NXL_LAYOUT_VERSION). src/bpf.rs asserts the same on the Rust side,
 * and a unit test checks that no struct here has an implicit hole.
 */
_Static_assert(sizeof(struct svc_key) == 24, "svc_key layout");
_Static_assert(sizeof(struct svc_backend) == 24, "svc_backend layout");
_Static_assert(sizeof(struct svc_value) == 112, "svc_value layout");
_Static_assert(sizeof(struct backend_value) == 24, "backend_value layout");
_Static_assert(sizeof(struct svc_meta) == 100, "svc_meta layout");
_Static_assert(sizeof(struct member_key) == 8, "member_key layout");
_Static_assert(sizeof(struct affinity_key) == 16, "affinity_key layout");
_Static_assert(sizeof(struct affinity_value) == 16, "affinity_value layout");
_Static_assert(sizeof(struct revnat_value) == 176, "revnat_value layout");
_Static_assert(sizeof(struct revnat_more) == 480, "revnat_more layout");
_Static_assert(sizeof(struct nxl_stale_sock) == 56, "nxl_stale_sock layout");
_Static_assert(sizeof(struct doomed_key) == 20, "doomed_key layout");
_Static_assert(sizeof(struct nxl_config) == 376, "nxl_config layout");
_Static_assert(sizeof(struct redirect_backend) == 64, "redirect_backend layout");
_Static_assert(sizeof(struct redirect_value) == 584, "redirect_value layout");
_Static_assert(sizeof(struct redirect_skip_key) == 32, "redirect_skip_key layout");
_Static_assert(sizeof(struct rev_tcp_slot) == 32, "rev_tcp_slot layout");
_Static_assert(sizeof(struct nxl_event) == 80, "nxl_event layout");

/* Referenced by one .rodata variable so every enum above is in BTF. */
struct nxl_abi {
	enum nxl_limits limits;
	enum nxl_svc_flags svc_flags;
	enum nxl_backend_flags backend_flags;
	enum nxl_svc_type svc_type;
	enum nxl_port_bits port_bits;
	enum nxl_stat stat;
	enum nxl_hook hook;
	struct nxl_event event; /* a ring buffer record has no map type of its own */
	struct nxl_stale_sock stale; /* nor does an iterator's output */
	enum nxl_origin origin;
	enum nxl_feature feature;
	enum nxl_topology topology;
	enum nxl_traffic_dist traffic_dist;
	enum nxl_redirect_flags redirect_flags;
};

#endif /* __NETNSXL_H */
