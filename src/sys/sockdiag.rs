//! Closing one socket with netlink `SOCK_DESTROY` (sock_diag), as `ss -K`
//! does: how stale sockets are closed on kernels without the
//! `bpf_sock_destroy` kfunc (before 6.5). The kernel finds the socket by its
//! addresses, ports and bound interface and checks its cookie, in the netns
//! of the netlink socket: call these from inside the socket's netns. Needs
//! CAP_NET_ADMIN there and `CONFIG_INET_DIAG_DESTROY` (Debian's 6.1 and
//! 6.12 have it).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{Context, Result};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

/// `SOCK_DESTROY` from <linux/sock_diag.h>.
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLMSG_ERROR: u16 = 2;
/// `INET_DIAG_NOCOOKIE`: match by addresses alone.
const NOCOOKIE: u32 = !0;

/// One socket to close, as the kernel's lookup wants it: the local side
/// (`src`) and the remote side (`dst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sock {
    /// `libc::AF_INET` or `libc::AF_INET6` (the socket's own family: an
    /// IPv6 socket talking to a v4-mapped address is AF_INET6).
    pub family: u8,
    /// `libc::IPPROTO_TCP` or `libc::IPPROTO_UDP`.
    pub proto: u8,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub ifindex: u32,
    /// 0: the socket never had one (matched by addresses alone).
    pub cookie: u64,
}

/// What the kernel said about one `SOCK_DESTROY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Destroyed,
    /// ENOENT or ESTALE: that socket is gone already.
    Gone,
    /// EOPNOTSUPP: this kernel was built without CONFIG_INET_DIAG_DESTROY.
    Unsupported,
}

fn addr_words(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => {
            let mut w = [0u8; 16];
            w[..4].copy_from_slice(&v4.octets());
            w
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The request: nlmsghdr, then inet_diag_req_v2 with its inet_diag_sockid.
fn request(s: &Sock, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(&72u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DESTROY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states (every state).
    m.extend_from_slice(&[s.family, s.proto, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    // inet_diag_sockid: ports in network order, then the addresses.
    m.extend_from_slice(&s.src_port.to_be_bytes());
    m.extend_from_slice(&s.dst_port.to_be_bytes());
    m.extend_from_slice(&addr_words(s.src));
    m.extend_from_slice(&addr_words(s.dst));
    m.extend_from_slice(&s.ifindex.to_ne_bytes());
    let (lo, hi) = if s.cookie == 0 {
        (NOCOOKIE, NOCOOKIE)
    } else {
        (s.cookie as u32, (s.cookie >> 32) as u32)
    };
    m.extend_from_slice(&lo.to_ne_bytes());
    m.extend_from_slice(&hi.to_ne_bytes());
    debug_assert_eq!(m.len(), 72);
    m
}

/// A NETLINK_SOCK_DIAG socket of the calling thread's netns.
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    pub fn open() -> Result<Diag> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .context("open a NETLINK_SOCK_DIAG socket")?;
        let tv = nix::sys::time::TimeVal::new(2, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .context("set the sock_diag socket's receive timeout")?;
        Ok(Diag { fd, seq: 0 })
    }

    /// Ask the kernel to close `s` (its owner sees ECONNABORTED).
    pub fn destroy(&mut self, s: &Sock) -> Result<Outcome> {
        self.seq = self.seq.wrapping_add(1);
        let req = request(s, self.seq);
        sendto(
            self.fd.as_raw_fd(),
            &req,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .context("send SOCK_DESTROY")?;
        let mut buf = [0u8; 512];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .context("read the answer to SOCK_DESTROY")?;
            anyhow::ensure!(n >= 20, "short answer to SOCK_DESTROY ({n} bytes)");
            let ty = u16::from_ne_bytes([buf[4], buf[5]]);
            let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
            if ty != NLMSG_ERROR || seq != self.seq {
                continue;
            }
            let err = -i32::from_ne_bytes(buf[16..20].try_into().unwrap());
            return match err {
                0 => Ok(Outcome::Destroyed),
                libc::ENOENT | libc::ESTALE => Ok(Outcome::Gone),
                libc::EOPNOTSUPP => Ok(Outcome::Unsupported),
                e => Err(std::io::Error::from_raw_os_error(e))
                    .with_context(|| format!("SOCK_DESTROY {}:{}", s.dst, s.dst_port)),
            };
        }
    }
}

/// Whether this kernel closes sockets on SOCK_DESTROY: asked for a UDP
/// socket no one has, it answers ENOENT if it can, EOPNOTSUPP if it was
/// built without CONFIG_INET_DIAG_DESTROY.
pub fn destroy_supported() -> bool {
    let probe = Sock {
        family: libc::AF_INET as u8,
        proto: libc::IPPROTO_UDP as u8,
        src: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        src_port: 0,
        dst: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        dst_port: 0,
        ifindex: 0,
        cookie: 0,
    };
    matches!(
        Diag::open().and_then(|mut d| d.destroy(&probe)),
        Ok(Outcome::Gone | Outcome::Destroyed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout_is_inet_diag_req_v2() {
        let s = Sock {
            family: libc::AF_INET as u8,
            proto: libc::IPPROTO_UDP as u8,
            src: "192.0.2.1".parse().unwrap(),
            src_port: 40000,
            dst: "198.51.100.7".parse().unwrap(),
            dst_port: 53,
            ifindex: 3,
            cookie: 0x1_0000_0002,
        };
        let m = request(&s, 9);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), SOCK_DESTROY);
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 17, 0, 0]);
        assert_eq!(&m[24..26], &40000u16.to_be_bytes());
        assert_eq!(&m[26..28], &53u16.to_be_bytes());
        assert_eq!(&m[28..32], &[192, 0, 2, 1]);
        assert_eq!(&m[44..48], &[198, 51, 100, 7]);
        assert_eq!(u32::from_ne_bytes(m[60..64].try_into().unwrap()), 3);
        assert_eq!(u32::from_ne_bytes(m[64..68].try_into().unwrap()), 2);
        assert_eq!(u32::from_ne_bytes(m[68..72].try_into().unwrap()), 1);
        let none = request(&Sock { cookie: 0, ..s }, 1);
        assert_eq!(&none[64..72], &[0xff; 8]);
    }
}
