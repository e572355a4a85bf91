//! RAII guards shared by the integration tests (`tests/common`) and the
//! benchmark (`src/bin/netnsxl-bench/main.rs` includes this file): every network
//! namespace, veth, cgroup and process they create goes away on drop, also
//! when a test panics or the benchmark fails. Names are unique (prefix, pid,
//! counter), so parallel tests and reruns never collide, and nothing here
//! touches what it did not create.
//!
//! Each fallible step comes twice: `try_*` returns the error (the benchmark
//! propagates it), the plain one panics with it (tests).

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test or run uses: prefix, pid, counter.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{prefix}{}-{n}", std::process::id())
}

/// A short unique interface name (IFNAMSIZ is 16).
pub fn unique_ifname() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("nx{}{n}", std::process::id() % 100_000)
}

/// Run a command; its stdout, or an error with its stderr.
pub fn sh(prog: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .with_context(|| format!("run {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn or_panic<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// A named network namespace, deleted on drop (with its veth ends).
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A new netns named `prefix` + pid + counter, its loopback up.
    pub fn try_create(prefix: &str) -> Result<Netns> {
        let name = unique(prefix);
        // The first `ip netns add` on a machine makes /run/netns a mount
        // point; two at once can race on that, so they take turns.
        static CREATE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let guard = CREATE.lock().unwrap_or_else(|e| e.into_inner());
        sh("ip", &["netns", "add", &name])?;
        drop(guard);
        let ns = Netns { name };
        ns.try_ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn new() -> Netns {
        or_panic(Netns::try_create("nxl-"))
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn try_ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full).map(|_| ())
    }

    pub fn ip(&self, args: &[&str]) {
        or_panic(self.try_ip(args))
    }

    /// Run a command inside the netns (`ip netns exec`); its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// Add an address; IPv6 ones skip duplicate address detection so they
    /// are usable at once.
    pub fn try_add_addr(&self, cidr: &str, dev: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.try_ip(&args)
    }

    pub fn add_addr(&self, cidr: &str, dev: &str) {
        or_panic(self.try_add_addr(cidr, dev))
    }

    /// Put an address on this netns' loopback (a /32 or /128).
    pub fn add_lo_addr(&self, cidr: &str) {
        self.add_addr(cidr, "lo");
    }

    pub fn route(&self, dst: &str, via: &str) {
        self.ip(&["route", "add", dst, "via", via]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair between two namespaces, with an address (CIDR) on each end.
/// It goes away with either namespace. Returns the two interface names.
pub fn try_veth(a: &Netns, a_cidr: &str, b: &Netns, b_cidr: &str) -> Result<(String, String)> {
    let (ea, eb) = (unique_ifname(), unique_ifname());
    sh(
        "ip",
        &[
            "link", "add", &ea, "netns", &a.name, "type", "veth", "peer", "name", &eb, "netns",
            &b.name,
        ],
    )?;
    a.try_add_addr(a_cidr, &ea)?;
    b.try_add_addr(b_cidr, &eb)?;
    a.try_ip(&["link", "set", &ea, "up"])?;
    b.try_ip(&["link", "set", &eb, "up"])?;
    Ok((ea, eb))
}

pub fn veth(a: &Netns, a_cidr: &str, b: &Netns, b_cidr: &str) -> (String, String) {
    or_panic(try_veth(a, a_cidr, b, b_cidr))
}

/// A child cgroup of the cgroup2 root (found from mountinfo), removed on drop
/// after moving any process left in it to its parent.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn try_create(prefix: &str) -> Result<Cgroup> {
        let root = netnsxl::sys::cgroup2_mount()?;
        let path = root.join(unique(prefix));
        fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Cgroup { path })
    }

    pub fn new() -> Cgroup {
        or_panic(Cgroup::try_create("netnsxl-test-"))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let parent = self.path.parent().map(|p| p.join("cgroup.procs"));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let (Ok(procs), Some(parent)) = (
                fs::read_to_string(self.path.join("cgroup.procs")),
                parent.as_deref(),
            ) {
                for pid in procs.split_whitespace() {
                    let _ = fs::write(parent, pid);
                }
            }
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => {
                    eprintln!("could not remove {}: {e}", self.path.display());
                    return;
                }
            }
        }
    }
}

/// A child process killed by pid on drop (also when the test fails).
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // A child already waited for has no pid any more (it may be reused).
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}

/// A directory of its own under the temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

pub fn tempdir() -> TempDir {
    let p = std::env::temp_dir().join(unique("netnsxl-test-"));
    or_panic(fs::create_dir(&p).with_context(|| format!("create {}", p.display())));
    TempDir(p)
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
