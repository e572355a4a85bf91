//! The machine: mounts, cgroups, network namespaces, privileges.

use std::fs::{self, File};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};

pub mod netns;
pub mod pindir;
pub mod sockdiag;

/// Where the default pin dir's bpffs belongs.
pub const BPFFS_DEFAULT: &str = "/sys/fs/bpf";
/// SO_NETNS_COOKIE, from <asm-generic/socket.h> (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// One line of /proc/self/mountinfo that matters here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

/// Parse /proc/self/mountinfo: the mount point is field 5, the filesystem type
/// follows the " - " separator.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let point = pre.split_whitespace().nth(4)?;
            let fstype = post.split_whitespace().next()?;
            Some(Mount {
                point: PathBuf::from(unescape_mount(point)),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

pub fn mounts() -> Result<Vec<Mount>> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

/// Where cgroup2 is mounted, from mountinfo (never assumed).
pub fn cgroup2_mount() -> Result<PathBuf> {
    mounts()?
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.point)
        .ok_or_else(|| anyhow!("cgroup2 is not mounted: mount it, e.g. mount -t cgroup2 none /sys/fs/cgroup/unified"))
}

/// Check that `path` is a cgroup v2 directory and return it canonicalized
/// with its cgroup id (the directory's inode number).
pub fn check_cgroup2_dir(path: &Path) -> Result<(PathBuf, u64)> {
    let where_ = || match cgroup2_mount() {
        Ok(m) => format!("cgroup2 is mounted at {}", m.display()),
        Err(e) => e.to_string(),
    };
    let canon = fs::canonicalize(path)
        .map_err(|e| anyhow!("--cgroup {}: {e}; {}", path.display(), where_()))?;
    let st = statfs(&canon).with_context(|| format!("statfs {}", canon.display()))?;
    if st.filesystem_type() != CGROUP2_SUPER_MAGIC || !canon.is_dir() {
        bail!(
            "{} is not a cgroup v2 directory; {}",
            path.display(),
            where_()
        );
    }
    let id = fs::metadata(&canon)?.ino();
    Ok((canon, id))
}

/// Make sure the pin directory's parent is on bpffs, mounting bpffs at
/// /sys/fs/bpf when the pin dir is under it and nothing is mounted there.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent) || pindir::bpffs_mount_of(pin_dir).is_some() {
        return Ok(());
    }
    let default = Path::new(BPFFS_DEFAULT);
    if parent.starts_with(default) && !is_bpffs(default) {
        fs::create_dir_all(default).ok();
        nix::mount::mount(
            Some("bpf"),
            default,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| {
            anyhow!("bpffs is not mounted at {BPFFS_DEFAULT} and could not be mounted: {e}; run: mount -t bpf bpf {BPFFS_DEFAULT}")
        })?;
        fs::create_dir_all(parent).ok();
        if is_bpffs(parent) {
            return Ok(());
        }
    }
    bail!(
        "--pin-dir {}: {} is not on a bpf filesystem; mount one (mount -t bpf bpf {BPFFS_DEFAULT}) or choose a pin dir under it",
        pin_dir.display(),
        parent.display()
    )
}

/// Whether `p` is a namespace file now (nsfs). A name under /run/netns is
/// a plain file until `ip netns add` has bind-mounted the namespace on it,
/// and again after `ip netns del` unmounts it: entering it then fails with
/// EINVAL, and there is no netns there to look at.
pub fn is_ns_file(p: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    // The field's integer type differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    statfs(p).is_ok_and(|s| s.filesystem_type().0 as i64 == NSFS_MAGIC)
}

pub fn is_bpffs(p: &Path) -> bool {
    statfs(p).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// netnsxl changes kernel state: say what it needs before trying.
pub fn require_privileges() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    // CAP_BPF (39) and CAP_NET_ADMIN (12) in the effective set.
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    if eff & (1 << 39) != 0 && eff & (1 << 12) != 0 {
        return Ok(());
    }
    bail!("netnsxl needs root or CAP_BPF and CAP_NET_ADMIN")
}

/// The cookie of the netns the calling thread is in (SO_NETNS_COOKIE).
pub fn current_netns_cookie() -> Result<u64> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("open a socket to read SO_NETNS_COOKIE")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, which lives
    // for the call; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!(
            "getsockopt(SO_NETNS_COOKIE): {}; the kernel needs Linux 5.14 or newer",
            std::io::Error::last_os_error()
        );
    }
    Ok(cookie)
}

/// Run `f` on a fresh thread that has entered the netns at `path`, so the
/// caller's own namespace never changes.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = File::open(path).with_context(|| format!("open netns {}", path.display()))?;
    let shown = path.display().to_string();
    std::thread::spawn(move || -> Result<T> {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("enter netns {shown}"))?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("netns worker thread panicked"))?
}

/// The cookie of the netns at `path` (a /run/netns name or /proc/PID/ns/net).
pub fn netns_cookie_of(path: &Path) -> Result<u64> {
    in_netns(path, current_netns_cookie)
}

/// Addresses of the interfaces of the calling thread's netns.
pub fn interface_addrs() -> Result<Vec<std::net::IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().context("list interface addresses")? {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(std::net::IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(std::net::IpAddr::V6(v6.ip()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// An exclusive lock that serializes state-changing commands on one pin dir.
/// It is taken on the pin dir itself (flock on its descriptor), so every
/// spelling of the path takes the same lock and no lock file is left
/// anywhere. Held until dropped; the kernel drops it if the process dies.
pub struct StateLock {
    _lock: nix::fcntl::Flock<File>,
}

impl StateLock {
    /// Lock an open pin dir (from `pindir::checked`).
    pub fn on(dir: std::os::fd::OwnedFd, shown: &Path) -> Result<StateLock> {
        let lock = nix::fcntl::Flock::lock(File::from(dir), nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow!("lock {}: {e}", shown.display()))?;
        Ok(StateLock { _lock: lock })
    }

    /// Check the pin dir of an attachment and lock it.
    pub fn take(pin_dir: &Path) -> Result<StateLock> {
        let (path, dir) = pindir::checked(pin_dir, pindir::Missing::Refuse)?;
        StateLock::on(dir, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_finds_cgroup2_and_bpffs() {
        let text = "\
25 1 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 22 0:40 / /sys/fs/b\\040pf rw,relatime shared:9 - bpf bpf rw,mode=700
";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(m[2].point, PathBuf::from("/sys/fs/b pf"));
        assert_eq!(m[2].fstype, "bpf");
    }
}
