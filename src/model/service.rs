//! The service model: what `svc add|del|list` write to and read from the maps.
//!
//! The maps are the only record: `svc list` reads them back, so it shows what
//! the datapath uses. Write order (see the comment at the top of
//! src/bpf/netnsxl.bpf.c) keeps every connect on a whole old or whole new
//! entry: backends and slots before the master entry on add and replace, the
//! master entry first on delete.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::bpf::{self, NAME_LEN, backend_flags, svc_flags, types};
use crate::model::addr::{
    BackendSpec, Proto, fmt_endpoint, from_map_addr, from_map_port, parse_endpoint, parse_port,
    shorten, to_map_addr, to_map_port,
};
use crate::model::topology::{self, Hints, Place, Topology};

pub const AFFINITY_TIMEOUT_DEFAULT: u32 = 10800;
pub const AFFINITY_TIMEOUT_MAX: u32 = 86400;
pub const NODE_PORT_RANGE_DEFAULT: (u16, u16) = (30000, 32767);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SvcType {
    Clusterip,
    Nodeport,
    Externalip,
    Loadbalancer,
    Hostport,
}

const ALL_TYPES: [SvcType; 5] = [
    SvcType::Clusterip,
    SvcType::Nodeport,
    SvcType::Externalip,
    SvcType::Loadbalancer,
    SvcType::Hostport,
];

impl SvcType {
    fn code(self) -> u8 {
        use types::nxl_svc_type as T;
        let t = match self {
            SvcType::Clusterip => T::NXL_TYPE_CLUSTERIP,
            SvcType::Nodeport => T::NXL_TYPE_NODEPORT,
            SvcType::Externalip => T::NXL_TYPE_EXTERNALIP,
            SvcType::Loadbalancer => T::NXL_TYPE_LOADBALANCER,
            SvcType::Hostport => T::NXL_TYPE_HOSTPORT,
        };
        t.0 as u8
    }

    fn from_code(c: u8) -> Option<SvcType> {
        ALL_TYPES.into_iter().find(|t| t.code() == c)
    }

    pub fn name(self) -> &'static str {
        match self {
            SvcType::Clusterip => "clusterip",
            SvcType::Nodeport => "nodeport",
            SvcType::Externalip => "externalip",
            SvcType::Loadbalancer => "loadbalancer",
            SvcType::Hostport => "hostport",
        }
    }
}

/// A frontend as written: an address, or none (`:PORT`, `[::]:PORT`) for
/// NodePort and for HostPort without a hostIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub ipv6: bool,
}

impl FrontendSpec {
    pub fn parse(s: &str) -> Result<FrontendSpec> {
        let t = s.trim();
        let bare = t
            .strip_prefix(':')
            .map(|p| (p, false))
            .or_else(|| t.strip_prefix("0.0.0.0:").map(|p| (p, false)))
            .or_else(|| t.strip_prefix("[::]:").map(|p| (p, true)));
        if let Some((port, ipv6)) = bare {
            return Ok(FrontendSpec {
                ip: None,
                port: parse_port("--frontend", t, port)?,
                ipv6,
            });
        }
        let ep = parse_endpoint("--frontend", t)?;
        Ok(FrontendSpec {
            ip: Some(ep.ip()),
            port: ep.port(),
            ipv6: ep.is_ipv6(),
        })
    }

    pub fn display(&self) -> String {
        match (self.ip, self.ipv6) {
            (Some(ip), _) => fmt_endpoint(ip, self.port),
            (None, false) => format!(":{}", self.port),
            (None, true) => format!("[::]:{}", self.port),
        }
    }
}

/// Backends one service may have: backend i lives in slot i + 1 and the
/// master holds the count, both 16 bits.
pub const MAX_BACKENDS_PER_SERVICE: usize = u16::MAX as usize - 1;

/// An address a service may answer on: unicast and not loopback.
fn is_service_addr(ip: IpAddr) -> bool {
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST))
}

/// A service as `svc add` describes it.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub svc_type: SvcType,
    pub frontend: FrontendSpec,
    pub proto: Proto,
    /// LoadBalancer: its NodePort, if it has one.
    pub node_port: Option<u16>,
    pub backends: Vec<BackendSpec>,
    pub affinity_timeout: Option<u32>,
    pub internal_local: bool,
    pub external_local: bool,
    /// Written from Kubernetes objects (apply of Services/EndpointSlices,
    /// or a watch): a watch may delete it once Kubernetes no longer has it.
    pub from_kubernetes: bool,
    /// The topology mode its backends were chosen with (their off_topology
    /// marks), and its traffic distribution.
    pub topology: Topology,
}

impl ServiceSpec {
    /// Check everything that can be checked without the maps.
    pub fn validate(&self) -> Result<()> {
        if self.name.len() >= NAME_LEN {
            bail!(
                "--name {:?} is {} bytes; the limit is {}",
                shorten(&self.name),
                self.name.len(),
                NAME_LEN - 1
            );
        }
        if let Some(t) = self.affinity_timeout
            && (t == 0 || t > AFFINITY_TIMEOUT_MAX)
        {
            bail!(
                "--affinity-timeout {t} is out of range: Kubernetes allows 1..={AFFINITY_TIMEOUT_MAX} seconds (default {AFFINITY_TIMEOUT_DEFAULT})"
            );
        }
        let fe = &self.frontend;
        match self.svc_type {
            SvcType::Clusterip | SvcType::Externalip | SvcType::Loadbalancer if fe.ip.is_none() => {
                bail!(
                    "--frontend {}: a {} service needs an address, e.g. 198.51.100.1:80",
                    fe.display(),
                    self.svc_type.name()
                )
            }
            SvcType::Nodeport if fe.ip.is_some() => bail!(
                "--frontend {}: a NodePort answers on every node address; write --frontend :PORT (or [::]:PORT for IPv6) or --node-port PORT",
                fe.display()
            ),
            _ => {}
        }
        if self.node_port.is_some() && self.svc_type != SvcType::Loadbalancer {
            bail!("--node-port goes with --type loadbalancer (or gives a nodeport's port)");
        }
        if let Some(ip) = fe.ip
            && !is_service_addr(ip)
        {
            bail!(
                "--frontend {}: a {} frontend must be a unicast service address, not loopback, unspecified, broadcast or multicast (Kubernetes refuses them too; a loopback one would take every pod's own localhost); NodePort and HostPort answer on 127.0.0.0/8 from the host netns by themselves",
                fe.display(),
                self.svc_type.name()
            );
        }
        if self.name.chars().any(char::is_control) {
            bail!(
                "--name {:?}: control characters (escapes, newlines) are not allowed in a name; Kubernetes names are letters, digits, '-', '.' and '/'",
                shorten(&self.name)
            );
        }
        if self.backends.len() > MAX_BACKENDS_PER_SERVICE {
            bail!(
                "--backend: {} backends for {}; a service holds at most {MAX_BACKENDS_PER_SERVICE} (16-bit slot numbers); split it into several services",
                self.backends.len(),
                fe.display()
            );
        }
        for (i, b) in self.backends.iter().enumerate() {
            if b.addr.is_ipv6() != fe.ipv6 {
                bail!(
                    "--backend {}: a service is one family; the frontend {} is {}",
                    b.addr,
                    fe.display(),
                    if fe.ipv6 { "IPv6" } else { "IPv4" }
                );
            }
            if self.backends[..i].iter().any(|o| o.addr == b.addr) {
                bail!("--backend {} is given twice", b.addr);
            }
        }
        Ok(())
    }

    /// Native input: derive each backend's hints from the traffic
    /// distribution and its zone and node (`local` is this node), as the
    /// EndpointSlice controller would, then choose as kube-proxy does.
    pub fn apply_topology(&mut self, place: Place) {
        let dist = self.topology.distribution;
        let hints: Vec<Option<Hints>> = self
            .backends
            .iter()
            .map(|b| {
                let node = b.node.as_deref().or(b.local.then_some(place.node));
                topology::derive_hints(dist, b.zone.as_deref(), node)
            })
            .collect();
        self.topology.mode = select_topology(&mut self.backends, &hints, place);
    }

    /// The NodePort this service answers on every node address, if any.
    pub fn node_port(&self) -> Option<u16> {
        match self.svc_type {
            SvcType::Nodeport => Some(self.frontend.port),
            SvcType::Loadbalancer => self.node_port,
            _ => None,
        }
    }
}

/// kube-proxy's topology rules over backends and their hints (ready means
/// not terminating): marks the ones the cluster-wide frontends leave out and
/// returns the mode.
pub fn select_topology(
    backends: &mut [BackendSpec],
    hints: &[Option<Hints>],
    place: Place,
) -> topology::Mode {
    let mode = topology::mode(
        backends
            .iter()
            .zip(hints)
            .map(|(b, h)| topology::Candidate {
                ready: !b.terminating,
                hints: h.as_ref(),
            }),
        place,
    );
    for (b, h) in backends.iter_mut().zip(hints) {
        b.off_topology = !b.terminating && !topology::available(h.as_ref(), mode, place);
    }
    mode
}

/// Stands for every address of 127.0.0.0/8 (see lookup_loopback_any() in the BPF).
const LOOPBACK_ANY_V4: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0));
const LOOPBACK_V6: IpAddr = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);

/// One frontend entry in svc_map: where a service answers, and from where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub ip: IpAddr,
    pub port: u16,
    /// NXL_SVC_F_HOST_ONLY, NXL_SVC_F_SKIP_HOST, NXL_SVC_F_LOCAL_ONLY.
    pub flags: u8,
}

impl Frontend {
    pub fn display(&self) -> String {
        if self.ip == LOOPBACK_ANY_V4 {
            format!("127.0.0.0/8:{}", self.port)
        } else {
            fmt_endpoint(self.ip, self.port)
        }
    }
}

/// Node addresses a NodePort answers on: the service's family, not loopback
/// (that frontend is separate) and not link-local.
fn node_frontend_addrs(node_addrs: &[IpAddr], ipv6: bool) -> Vec<IpAddr> {
    node_addrs
        .iter()
        .copied()
        .filter(|a| a.is_ipv6() == ipv6 && !a.is_loopback())
        .filter(|a| match a {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => true,
        })
        .collect()
}

/// Every frontend of a service, the primary one (its identity) first. The
/// rules of docs' semantics table live here, as flags; the datapath only
/// tests them.
pub fn expand(spec: &ServiceSpec, node_addrs: &[IpAddr]) -> Vec<Frontend> {
    let fe = spec.frontend;
    let loopback = |port| Frontend {
        ip: if fe.ipv6 {
            LOOPBACK_V6
        } else {
            LOOPBACK_ANY_V4
        },
        port,
        flags: svc_flags::HOST_ONLY,
    };
    let on_nodes = |port, out: &mut Vec<Frontend>| {
        for ip in node_frontend_addrs(node_addrs, fe.ipv6) {
            out.push(Frontend { ip, port, flags: 0 });
        }
    };
    let mut out = Vec::new();
    match spec.svc_type {
        SvcType::Clusterip => out.push(Frontend {
            ip: fe.ip.expect("validated"),
            port: fe.port,
            flags: if spec.internal_local {
                svc_flags::LOCAL_ONLY
            } else {
                0
            },
        }),
        SvcType::Externalip => {
            let ip = fe.ip.expect("validated");
            let local = node_addrs.contains(&ip);
            out.push(Frontend {
                ip,
                port: fe.port,
                flags: if local { 0 } else { svc_flags::SKIP_HOST },
            });
        }
        SvcType::Loadbalancer => out.push(Frontend {
            ip: fe.ip.expect("validated"),
            port: fe.port,
            flags: 0,
        }),
        SvcType::Nodeport => {}
        SvcType::Hostport => {
            out.push(loopback(fe.port));
            match fe.ip {
                Some(ip) => out.push(Frontend {
                    ip,
                    port: fe.port,
                    flags: 0,
                }),
                None => on_nodes(fe.port, &mut out),
            }
        }
    }
    if let Some(np) = spec.node_port() {
        out.push(loopback(np));
        on_nodes(np, &mut out);
    }
    let mut seen = Vec::new();
    out.retain(|f| {
        let k = (f.ip, f.port);
        let new = !seen.contains(&k);
        seen.push(k);
        new
    });
    out
}

/// The metadata element of a service.
pub fn meta_of(spec: &ServiceSpec) -> types::svc_meta {
    let fe_ip = spec.frontend.ip.unwrap_or(if spec.frontend.ipv6 {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    });
    types::svc_meta {
        name: bpf::to_cstr(&spec.name),
        frontend_addr: to_map_addr(fe_ip),
        frontend_port: to_map_port(spec.frontend.port),
        proto: spec.proto.number(),
        r#type: spec.svc_type.code(),
        ext_policy_local: spec.external_local.into(),
        int_policy_local: spec.internal_local.into(),
        node_port: spec.node_port.map_or(0, to_map_port),
        topology: spec.topology.mode.code(),
        traffic_distribution: spec.topology.distribution.code(),
        affinity_timeout: spec.affinity_timeout.unwrap_or(0),
        backend_count: spec.backends.len() as u32,
        origin: if spec.from_kubernetes {
            types::nxl_origin::NXL_ORIGIN_KUBERNETES.0 as u16
        } else {
            types::nxl_origin::NXL_ORIGIN_USER.0 as u16
        },
    }
}

/// The spec a service was written with, from its metadata and backends.
pub fn spec_from(
    meta: &types::svc_meta,
    backends: &[(u32, types::backend_value)],
) -> Result<ServiceSpec> {
    let svc_type = SvcType::from_code(meta.r#type)
        .with_context(|| format!("service metadata has unknown type {}", meta.r#type))?;
    let ip = from_map_addr(meta.frontend_addr);
    let backends = backends
        .iter()
        .map(|(_, b)| BackendSpec {
            local: b.flags & backend_flags::LOCAL != 0,
            terminating: b.flags & backend_flags::TERMINATING != 0,
            off_topology: b.flags & backend_flags::OFF_TOPOLOGY != 0,
            ..BackendSpec::new(SocketAddr::new(
                from_map_addr(b.addr),
                from_map_port(b.port),
            ))
        })
        .collect();
    Ok(ServiceSpec {
        name: bpf::from_cstr(&meta.name),
        svc_type,
        frontend: FrontendSpec {
            ip: (!ip.is_unspecified()).then_some(ip),
            port: from_map_port(meta.frontend_port),
            ipv6: ip.is_ipv6(),
        },
        proto: Proto::from_number(meta.proto)?,
        node_port: (meta.node_port != 0).then(|| from_map_port(meta.node_port)),
        backends,
        affinity_timeout: (meta.affinity_timeout != 0).then_some(meta.affinity_timeout),
        internal_local: meta.int_policy_local != 0,
        external_local: meta.ext_policy_local != 0,
        from_kubernetes: meta.origin == types::nxl_origin::NXL_ORIGIN_KUBERNETES.0 as u16,
        topology: Topology {
            mode: topology::Mode::from_code(meta.topology),
            distribution: topology::TrafficDist::from_code(meta.traffic_distribution),
        },
    })
}

/// The frontend key a `--frontend` names, to find its service.
pub fn identity(fe: &FrontendSpec) -> Frontend {
    let ip = match fe.ip {
        Some(ip) => ip,
        None if fe.ipv6 => LOOPBACK_V6,
        None => LOOPBACK_ANY_V4,
    };
    Frontend {
        ip,
        port: fe.port,
        flags: 0,
    }
}

/// The key that names a service: its primary frontend and protocol.
pub fn identity_key(spec: &ServiceSpec, node_addrs: &[IpAddr]) -> (IpAddr, u16, Proto) {
    let f = expand(spec, node_addrs)
        .first()
        .copied()
        .unwrap_or_else(|| identity(&spec.frontend));
    (f.ip, f.port, spec.proto)
}

/// Checks that need the attachment's configuration.
pub fn check_against_config(spec: &ServiceSpec, cfg: &types::nxl_config) -> Result<()> {
    if let Some(np) = spec.node_port()
        && !(cfg.node_port_min..=cfg.node_port_max).contains(&np)
    {
        bail!(
            "node port {np} is outside the NodePort range {}-{}; pick one inside it, or attach with --node-port-range",
            cfg.node_port_min,
            cfg.node_port_max
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clusterip(backends: usize) -> ServiceSpec {
        ServiceSpec {
            name: "big".into(),
            svc_type: SvcType::Clusterip,
            frontend: FrontendSpec {
                ip: Some("198.18.0.1".parse().unwrap()),
                port: 80,
                ipv6: false,
            },
            proto: Proto::Tcp,
            node_port: None,
            backends: (0..backends)
                .map(|i| {
                    BackendSpec::new(SocketAddr::new(
                        std::net::Ipv4Addr::from(0xc612_0000 + i as u32).into(),
                        8080,
                    ))
                })
                .collect(),
            affinity_timeout: None,
            internal_local: false,
            external_local: false,
            from_kubernetes: false,
            topology: Topology::default(),
        }
    }

    /// Slot i + 1 and the master's count are 16 bits: a set that would wrap
    /// onto the master entry (slot 0) is refused before anything is planned.
    #[test]
    fn loopback_broadcast_and_multicast_frontends_are_refused() {
        for fe in [
            "127.0.0.1",
            "127.77.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "224.0.0.1",
        ] {
            let mut s = clusterip(1);
            s.frontend.ip = Some(fe.parse().unwrap());
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains("must be a unicast service address"), "{fe}: {e}");
        }
        let mut s = clusterip(1);
        s.frontend = FrontendSpec {
            ip: Some("::1".parse().unwrap()),
            port: 80,
            ipv6: true,
        };
        s.backends.clear();
        assert!(s.validate().is_err());
    }

    #[test]
    fn names_with_control_characters_or_huge_ones_are_refused_briefly() {
        let mut s = clusterip(1);
        s.name = "evil\u{1b}]0;owned\u{7}".into();
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("control characters"), "{e}");
        s.name = "x".repeat(1 << 20);
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.len() < 300 && e.contains("(1048576 bytes)"),
            "{}",
            e.len()
        );
    }

    #[test]
    fn backends_past_sixteen_bit_slots_are_refused() {
        let err = clusterip(MAX_BACKENDS_PER_SERVICE + 1)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("65535 backends for 198.18.0.1:80") && err.contains("at most 65534"),
            "{err}"
        );
        assert!(clusterip(3).validate().is_ok());
    }
}
