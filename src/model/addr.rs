//! Addresses as users write them and as the maps store them.
//!
//! Maps keep 16-byte addresses (IPv4 as ::ffff:a.b.c.d) and ports in network
//! byte order; see src/bpf/netnsxl.h.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

/// An address in the maps' 16-byte form.
pub fn to_map_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a user wrote, from the maps' 16-byte form.
pub fn from_map_addr(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A port in network byte order, as the maps keep it.
pub fn to_map_port(port: u16) -> u16 {
    port.to_be()
}

pub fn from_map_port(port: u16) -> u16 {
    u16::from_be(port)
}

/// TCP or UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => libc::IPPROTO_TCP as u8,
            Proto::Udp => libc::IPPROTO_UDP as u8,
        }
    }

    pub fn from_number(n: u8) -> Result<Proto> {
        match i32::from(n) {
            libc::IPPROTO_TCP => Ok(Proto::Tcp),
            libc::IPPROTO_UDP => Ok(Proto::Udp),
            _ => bail!("unknown protocol number {n} in the maps"),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A value as an error message shows it: at most 80 characters, so a huge
/// input does not come back whole.
pub fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        return s.to_string();
    }
    let head: String = s.chars().take(MAX).collect();
    format!("{head}… ({} bytes)", s.len())
}

/// Parse `ADDR:PORT` (IPv4) or `[ADDR]:PORT` (IPv6) and name the field in
/// every error.
pub fn parse_endpoint(field: &str, s: &str) -> Result<SocketAddr> {
    let s = s.trim();
    // The longest is [ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:65535.
    if s.len() > 64 {
        bail!(
            "{field} {:?} is {} bytes, too long for ADDR:PORT, e.g. 198.51.100.1:80",
            shorten(s),
            s.len()
        );
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| {
        anyhow!(
            "{field} {s:?} has no port: write ADDR:PORT, e.g. 198.51.100.1:80 or [2001:db8::1]:80"
        )
    })?;
    let port = parse_port(field, s, port)?;
    let ip = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        IpAddr::V6(
            Ipv6Addr::from_str(inner)
                .map_err(|_| anyhow!("{field} {s:?}: {inner:?} is not an IPv6 address"))?,
        )
    } else {
        let ip = IpAddr::from_str(host).map_err(|_| {
            anyhow!("{field} {s:?}: {host:?} is not an IP address: write ADDR:PORT, e.g. 198.51.100.1:80 or [2001:db8::1]:80")
        })?;
        if ip.is_ipv6() {
            bail!("{field} {s:?}: put an IPv6 address in brackets, e.g. [2001:db8::1]:80");
        }
        ip
    };
    if ip.is_unspecified() {
        bail!("{field} {s:?}: {ip} is the unspecified address; give a concrete address");
    }
    if ip.is_multicast() {
        bail!("{field} {s:?}: {ip} is a multicast address; services need a unicast address");
    }
    Ok(SocketAddr::new(ip, port))
}

/// The port of `whole` (as the user wrote it, for the message): 1-65535.
pub fn parse_port(field: &str, whole: &str, port: &str) -> Result<u16> {
    let n: u32 = port.parse().map_err(|_| {
        anyhow!(
            "{field} {whole:?}: port {port:?} is not a number: write ADDR:PORT with a port in 1-65535"
        )
    })?;
    if n == 0 || n > 65535 {
        bail!("{field} {whole:?}: port {n} is out of range: use a port in 1-65535");
    }
    Ok(n as u16)
}

/// Parse a node address given with `--node-ip`.
pub fn parse_ip(field: &str, s: &str) -> Result<IpAddr> {
    IpAddr::from_str(s.trim()).with_context(|| format!("{field} {s:?} is not an IP address"))
}

/// A backend as given on the command line:
/// `ADDR:PORT[,local][,terminating][,zone=Z][,node=N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    pub local: bool,
    pub terminating: bool,
    /// Left out of the cluster-wide frontends by topology (hints that name
    /// other zones or nodes); set by the model, recorded in the maps.
    pub off_topology: bool,
    /// Native input only: the zone and node the backend runs in, from which
    /// a traffic distribution derives its hints (not recorded in the maps).
    pub zone: Option<Box<str>>,
    pub node: Option<Box<str>>,
}

impl BackendSpec {
    pub fn new(addr: SocketAddr) -> BackendSpec {
        BackendSpec {
            addr,
            local: false,
            terminating: false,
            off_topology: false,
            zone: None,
            node: None,
        }
    }

    pub fn parse(s: &str) -> Result<BackendSpec> {
        let mut parts = s.split(',');
        let addr = parse_endpoint("--backend", parts.next().unwrap_or_default())?;
        let mut spec = BackendSpec::new(addr);
        for flag in parts {
            match flag.trim().split_once('=') {
                None if flag.trim() == "local" => spec.local = true,
                None if flag.trim() == "terminating" => spec.terminating = true,
                Some(("zone", z)) => {
                    crate::model::topology::check_zone(&format!("--backend {s:?}: zone"), z)?;
                    spec.zone = Some(z.into());
                }
                Some(("node", n)) if !n.is_empty() => spec.node = Some(n.into()),
                _ => bail!(
                    "--backend {s:?}: unknown flag {:?}: the flags are local, terminating, zone=ZONE and node=NODE, e.g. 198.51.100.10:8080,local,zone=us-east-1a",
                    flag.trim()
                ),
            }
        }
        Ok(spec)
    }
}

/// `ip:port`, with brackets for IPv6: the form the CLI prints and parses.
pub fn fmt_endpoint(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// A backend that is gone, with the protocol of the service it served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Doomed {
    pub addr: SocketAddr,
    pub proto: Proto,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_in_both_families() {
        let v4 = parse_endpoint("--frontend", "198.51.100.1:80").unwrap();
        assert_eq!(v4.to_string(), "198.51.100.1:80");
        let v6 = parse_endpoint("--frontend", "[2001:db8::1]:443").unwrap();
        assert_eq!(v6.to_string(), "[2001:db8::1]:443");
    }

    #[test]
    fn a_huge_endpoint_is_not_echoed_whole() {
        let huge = "1".repeat(1 << 20);
        let e = parse_endpoint("--backend", &huge).unwrap_err().to_string();
        assert!(
            e.len() < 300 && e.contains("1048576 bytes, too long"),
            "{}",
            e.len()
        );
    }

    #[test]
    fn bad_endpoints_name_the_field_and_the_fix() {
        for (input, needle) in [
            ("198.51.100.1", "has no port"),
            ("198.51.100.1:0", "out of range"),
            ("198.51.100.1:65536", "out of range"),
            ("198.51.100.1:http", "not a number"),
            ("198.51.100.300:80", "not an IP address"),
            ("2001:db8::1:80", "brackets"),
            ("0.0.0.0:80", "unspecified"),
            ("[zz::1]:80", "not an IPv6 address"),
        ] {
            let err = parse_endpoint("--frontend", input).unwrap_err().to_string();
            assert!(err.starts_with("--frontend"), "{input}: {err}");
            assert!(err.contains(needle), "{input}: {err}");
        }
    }

    #[test]
    fn map_form_round_trips_and_keeps_ipv4_mapped() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let m = to_map_addr(v4);
        assert_eq!(&m[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&m[12..], &[203, 0, 113, 7]);
        assert_eq!(from_map_addr(m), v4);
        let v6: IpAddr = "2001:db8::5".parse().unwrap();
        assert_eq!(from_map_addr(to_map_addr(v6)), v6);
        assert_eq!(to_map_port(80).to_ne_bytes(), [0, 80]);
        assert_eq!(from_map_port(to_map_port(8080)), 8080);
    }

    #[test]
    fn backend_flags_parse() {
        let b = BackendSpec::parse("198.51.100.10:8080,local,terminating").unwrap();
        assert!(b.local && b.terminating);
        let err = BackendSpec::parse("198.51.100.10:8080,fast").unwrap_err();
        assert!(err.to_string().contains("unknown flag"));
    }
}
