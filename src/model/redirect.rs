//! Local redirects, as Cilium's Local Redirect Policy: a frontend (a
//! service's address or any ADDR:PORT, such as a node-local DNS cache's
//! link-local address) whose connects go to backends on this node instead.
//! Pure: what `redirect add` and a file's `redirects:` describe, checked.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Result, bail};

use crate::bpf::{NAME_LEN, NETNS_NAME_LEN, REDIRECT_BACKENDS};
use crate::model::addr::{Proto, parse_endpoint, shorten};

/// One backend: where to send, and the netns it runs in (named, or found
/// from its address on this node when None).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectBackend {
    pub addr: SocketAddr,
    pub netns: Option<String>,
}

impl RedirectBackend {
    /// `ADDR:PORT[,netns=NAME]`.
    pub fn parse(s: &str) -> Result<RedirectBackend> {
        let mut parts = s.split(',');
        let addr = parse_endpoint("--backend", parts.next().unwrap_or_default())?;
        let mut netns = None;
        for flag in parts {
            match flag.trim().split_once('=') {
                Some(("netns", n)) => {
                    check_netns_name(n)?;
                    netns = Some(n.to_string());
                }
                _ => bail!(
                    "--backend {s:?}: unknown flag {:?}: the one flag is netns=NAME (an ip netns name), e.g. 192.0.2.53:53,netns=dns-cache",
                    flag.trim()
                ),
            }
        }
        Ok(RedirectBackend { addr, netns })
    }

    pub fn display(&self) -> String {
        match &self.netns {
            Some(n) => format!("{},netns={n}", self.addr),
            None => self.addr.to_string(),
        }
    }
}

/// A name under /run/netns: one path component that fits the map.
fn check_netns_name(n: &str) -> Result<()> {
    if n.is_empty()
        || n == "."
        || n == ".."
        || n.contains('/')
        || n.chars().any(char::is_control)
        || n.len() >= NETNS_NAME_LEN
    {
        bail!(
            "--backend netns={:?}: give the name of a netns under /run/netns (ip netns list), one path component of at most {} bytes",
            shorten(n),
            NETNS_NAME_LEN - 1
        );
    }
    Ok(())
}

/// A local redirect as `redirect add` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedirectSpec {
    pub name: String,
    pub frontend: SocketAddr,
    pub proto: Proto,
    pub backends: Vec<RedirectBackend>,
    /// Leave alone the sockets of the backends' own netns.
    pub skip_from_backend: bool,
    /// Written by apply from a file's `redirects:` (apply --prune may
    /// delete it), not by `redirect add`.
    pub from_file: bool,
}

impl RedirectSpec {
    pub fn validate(&self) -> Result<()> {
        if self.name.len() >= NAME_LEN || self.name.chars().any(char::is_control) {
            bail!(
                "--name {:?}: at most {} bytes and no control characters, e.g. kube-system/node-local-dns",
                shorten(&self.name),
                NAME_LEN - 1
            );
        }
        let ip = self.frontend.ip();
        if ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
        {
            bail!(
                "--frontend {}: a redirect's frontend is a unicast address that is not loopback (a service's cluster IP, or a link-local style address of a node-local cache)",
                self.frontend
            );
        }
        if self.backends.len() > REDIRECT_BACKENDS {
            bail!(
                "--backend: {} backends; a redirect holds at most {REDIRECT_BACKENDS} (its backends run on this node)",
                self.backends.len()
            );
        }
        for (i, b) in self.backends.iter().enumerate() {
            if b.addr.is_ipv6() != self.frontend.is_ipv6() {
                bail!(
                    "--backend {}: a redirect is one family; the frontend {} is {}",
                    b.addr,
                    self.frontend,
                    if self.frontend.is_ipv6() {
                        "IPv6"
                    } else {
                        "IPv4"
                    }
                );
            }
            if b.addr.port() == 0 {
                bail!(
                    "--backend {}: the port is 0; give the port the backend listens on",
                    b.addr
                );
            }
            if self.backends[..i].iter().any(|o| o.addr == b.addr) {
                bail!("--backend {} is given twice", b.addr);
            }
            if b.addr == self.frontend {
                bail!(
                    "--backend {} is the frontend itself; give the address the local backend listens on",
                    b.addr
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(frontend: &str, backends: &[&str]) -> RedirectSpec {
        RedirectSpec {
            name: String::new(),
            frontend: frontend.parse().unwrap(),
            proto: Proto::Udp,
            backends: backends
                .iter()
                .map(|b| RedirectBackend::parse(b).unwrap())
                .collect(),
            skip_from_backend: true,
            from_file: false,
        }
    }

    #[test]
    fn backends_parse_with_and_without_netns() {
        let b = RedirectBackend::parse("192.0.2.53:53,netns=dns-cache").unwrap();
        assert_eq!(b.netns.as_deref(), Some("dns-cache"));
        assert_eq!(b.display(), "192.0.2.53:53,netns=dns-cache");
        assert_eq!(
            RedirectBackend::parse("[2001:db8::53]:53").unwrap().netns,
            None
        );
        for (bad, says) in [
            ("192.0.2.53:53,netns=../x", "one path component"),
            ("192.0.2.53:53,netns=", "one path component"),
            ("192.0.2.53:53,local", "unknown flag \"local\""),
        ] {
            let e = RedirectBackend::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_redirects_are_refused_naming_the_field() {
        assert!(
            spec("198.51.100.10:53", &["192.0.2.53:53"])
                .validate()
                .is_ok()
        );
        for (s, says) in [
            (
                spec("127.0.0.1:53", &["192.0.2.53:53"]),
                "--frontend 127.0.0.1:53",
            ),
            (
                spec("198.51.100.10:53", &["[2001:db8::1]:53"]),
                "one family",
            ),
            (
                spec("198.51.100.10:53", &["192.0.2.53:53", "192.0.2.53:53"]),
                "given twice",
            ),
            (
                spec("198.51.100.10:53", &["198.51.100.10:53"]),
                "the frontend itself",
            ),
        ] {
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
        let nine: Vec<String> = (1..=9).map(|i| format!("192.0.2.{i}:53")).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        let e = spec("198.51.100.10:53", &nine)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most 8"), "{e}");
    }
}
