//! The pin dir is this user's and private, or netnsxl refuses it.
//!
//! bpffs is usually mounted world-writable (mode 1777), so anyone may create
//! `/sys/fs/bpf/netnsxl` before root does, or plant links and pins in a
//! directory they can write. netnsxl therefore:
//!
//! - takes an absolute path, spelled any way (`/x`, `/x/`, `//x`, `/./x` are
//!   one pin dir), but refuses `..` and symbolic links anywhere in it;
//! - keeps the pin dir inside a bpffs mount;
//! - creates every missing level below the mount with mode 0700, and
//!   verifies every existing one (opened with O_NOFOLLOW | O_DIRECTORY and
//!   checked with fstat on that descriptor): owned by this user and
//!   writable by no one else;
//! - verifies each pin the same way before opening it.
//!
//! Once every level is this user's and writable by no one else, no other
//! user can rename, replace or add anything below it (the mount itself is
//! sticky or not writable by others), so later path lookups reach the
//! objects that were checked.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use nix::fcntl::{OFlag, open};
use nix::sys::stat::Mode;

use super::{BPFFS_DEFAULT, is_bpffs, mounts};

/// What to do with levels that do not exist yet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Create them, mode 0700 (attach).
    Create,
    /// Report that nothing is attached there (every other command).
    Refuse,
}

/// `p` as one canonical path: absolute, without `.`, `..`, empty or trailing
/// components. No symlink is resolved (they are refused later).
pub fn normalize(p: &Path) -> Result<PathBuf> {
    if !p.is_absolute() {
        bail!(
            "--pin-dir {}: give an absolute path, e.g. {BPFFS_DEFAULT}/netnsxl",
            p.display()
        );
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => bail!(
                "--pin-dir {}: `..` is not allowed; give the directory's own path",
                p.display()
            ),
            Component::Prefix(_) => bail!("--pin-dir {}: not a Unix path", p.display()),
        }
    }
    if out == Path::new("/") {
        bail!("--pin-dir /: give a directory inside a bpffs mount, e.g. {BPFFS_DEFAULT}/netnsxl");
    }
    Ok(out)
}

fn shown_mode(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

/// Open a directory without following a link in its last component.
fn open_dir(p: &Path) -> nix::Result<OwnedFd> {
    let fd = open(
        p,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Owned by this user and writable by no one else, or an error naming
/// `what`, its owner and mode, and the fix.
pub fn check_private(what: &Path, meta: &std::fs::Metadata) -> Result<()> {
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        bail!(
            "{} is owned by uid {} with mode {}: netnsxl keeps its state only where no one but its own user (uid {me}) can write; remove it (rm -r {}) or choose another --pin-dir",
            what.display(),
            meta.uid(),
            shown_mode(meta.mode()),
            what.display()
        );
    }
    Ok(())
}

/// The bpffs mount that holds `p` (the longest mount point above it).
pub fn bpffs_mount_of(p: &Path) -> Option<PathBuf> {
    mounts()
        .ok()?
        .into_iter()
        .filter(|m| m.fstype == "bpf" && p.starts_with(&m.point) && p != m.point)
        .map(|m| m.point)
        .max_by_key(|m| m.as_os_str().len())
}

/// Check `pin_dir` (creating what is missing with `Missing::Create`) and
/// return its canonical path and an open descriptor of it.
pub fn checked(pin_dir: &Path, missing: Missing) -> Result<(PathBuf, OwnedFd)> {
    let path = normalize(pin_dir)?;
    // No level may be a symbolic link, above the mount or below it.
    let mut prefix = PathBuf::from("/");
    for c in path.components().skip(1) {
        prefix.push(c);
        match std::fs::symlink_metadata(&prefix) {
            Ok(m) if m.file_type().is_symlink() => {
                let real = std::fs::canonicalize(&path)
                    .map(|r| format!("; give the real path ({})", r.display()))
                    .unwrap_or_default();
                bail!(
                    "--pin-dir {}: {} is a symbolic link, which netnsxl does not follow in a pin dir{real}",
                    pin_dir.display(),
                    prefix.display()
                );
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let Some(mount) = bpffs_mount_of(&path) else {
        let parent = path.parent().unwrap_or(Path::new("/"));
        if !parent.exists() && missing == Missing::Refuse {
            bail!(
                "not attached: {} does not exist; run netnsxl attach --cgroup PATH first",
                path.display()
            );
        }
        bail!(
            "--pin-dir {}: {} is not inside a bpf filesystem; mount one (mount -t bpf bpf {BPFFS_DEFAULT}) or choose a pin dir under one",
            pin_dir.display(),
            parent.display()
        );
    };
    // The mount itself: others may create entries there only if it is
    // sticky (then they cannot rename or remove ours).
    let mm = std::fs::metadata(&mount).with_context(|| format!("stat {}", mount.display()))?;
    if mm.mode() & 0o002 != 0 && mm.mode() & 0o1000 == 0 {
        bail!(
            "the bpffs mount {} is writable by everyone and not sticky (mode {}): anyone could replace a pin dir there; chmod 1777 {} or mount bpffs with mode=0700",
            mount.display(),
            shown_mode(mm.mode()),
            mount.display()
        );
    }

    let mut level = mount.clone();
    let below: Vec<_> = path.strip_prefix(&mount).unwrap().components().collect();
    let mut fd = None;
    for c in below {
        level.push(c);
        let dir = match open_dir(&level) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENOENT) if missing == Missing::Create => {
                match nix::unistd::mkdir(&level, Mode::S_IRWXU) {
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(anyhow!("create {}: {e}", level.display())),
                }
                let d = open_dir(&level).with_context(|| format!("open {}", level.display()))?;
                // mkdir's mode went through the umask; make it exactly 0700.
                // (Checked below like any other level, so a directory someone
                // else made in between is refused, not adopted.)
                let meta = File::from(d.try_clone()?).metadata()?;
                if meta.uid() == nix::unistd::geteuid().as_raw() {
                    nix::sys::stat::fchmod(d.as_raw_fd(), Mode::S_IRWXU)
                        .with_context(|| format!("chmod 0700 {}", level.display()))?;
                }
                d
            }
            Err(nix::errno::Errno::ENOENT) => bail!(
                "not attached: {} does not exist; run netnsxl attach --cgroup PATH first",
                path.display()
            ),
            Err(nix::errno::Errno::ELOOP) => bail!(
                "--pin-dir {}: {} is a symbolic link, which netnsxl does not follow in a pin dir",
                pin_dir.display(),
                level.display()
            ),
            Err(nix::errno::Errno::ENOTDIR) => {
                bail!(
                    "--pin-dir {}: {} is not a directory",
                    pin_dir.display(),
                    level.display()
                )
            }
            Err(nix::errno::Errno::EACCES) => bail!(
                "--pin-dir {}: no access to {} (uid {}); it belongs to another user: run netnsxl as its owner, or choose another --pin-dir",
                pin_dir.display(),
                level.display(),
                nix::unistd::geteuid()
            ),
            Err(e) => return Err(anyhow!("open {}: {e}", level.display())),
        };
        let meta = File::from(dir.try_clone()?)
            .metadata()
            .with_context(|| format!("stat {}", level.display()))?;
        check_private(&level, &meta)?;
        fd = Some(dir);
    }
    if !is_bpffs(&path) {
        bail!("--pin-dir {}: not on a bpf filesystem", pin_dir.display());
    }
    Ok((
        path,
        fd.expect("a pin dir below a mount has at least one level"),
    ))
}

/// A pin (map or link) or a directory of pins: not a link, and private.
pub fn check_pin(p: &Path) -> Result<()> {
    let m = std::fs::symlink_metadata(p).with_context(|| format!("stat {}", p.display()))?;
    if m.file_type().is_symlink() {
        bail!(
            "{} is a symbolic link, not a pin netnsxl made; run netnsxl detach (it removes only what netnsxl pinned) and attach again",
            p.display()
        );
    }
    check_private(p, &m)
}

/// The pids holding a flock on the file `(dev, ino)`, one per lock, from
/// /proc/locks ("1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF").
fn flock_holders(dev: u64, ino: u64) -> Vec<u32> {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 5 && f[1] == "FLOCK" && f[5] == want)
        .filter_map(|f| f[4].parse().ok())
        .collect()
}

fn flock_holder(dev: u64, ino: u64) -> Option<u32> {
    flock_holders(dev, ino).first().copied()
}

/// A directory of the pin dir (created 0700 if missing, checked), open.
fn own_subdir(pin_dir: &Path, name: &str) -> Result<File> {
    let dir = pin_dir.join(name);
    match nix::unistd::mkdir(&dir, Mode::S_IRWXU) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(anyhow!("create {}: {e}", dir.display())),
    }
    check_pin(&dir)?;
    let fd = open_dir(&dir).with_context(|| format!("open {}", dir.display()))?;
    Ok(File::from(fd))
}

/// Held by each running `trace`: a shared flock on `PIN/tracers`, so the
/// live tracers can be counted (a killed one lets go of its lock) whatever
/// the config counter says.
pub struct TracerLock {
    _lock: nix::fcntl::Flock<File>,
}

/// The directory under the pin dir that tracers lock.
pub const TRACERS_DIR: &str = "tracers";

impl TracerLock {
    pub fn take(pin_dir: &Path) -> Result<TracerLock> {
        let file = own_subdir(pin_dir, TRACERS_DIR)?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockShared)
            .map_err(|(_, e)| anyhow!("lock {}/{TRACERS_DIR}: {e}", pin_dir.display()))?;
        Ok(TracerLock { _lock: lock })
    }

    /// How many tracers are running on this pin dir now.
    pub fn live(pin_dir: &Path) -> Result<u32> {
        let dir = pin_dir.join(TRACERS_DIR);
        let Ok(meta) = std::fs::symlink_metadata(&dir) else {
            return Ok(0);
        };
        Ok(flock_holders(meta.dev(), meta.ino()).len() as u32)
    }
}

/// Held by the one `apply --watch` of a pin dir: a flock on `PIN/watch`.
pub struct WatchLock {
    _lock: nix::fcntl::Flock<File>,
}

impl WatchLock {
    /// Take it, or say which process holds it.
    pub fn take(pin_dir: &Path) -> Result<WatchLock> {
        let file = own_subdir(pin_dir, WATCH_DIR)?;
        let dir = pin_dir.join(WATCH_DIR);
        let meta = file.metadata()?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(WatchLock { _lock: lock }),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let who = flock_holder(meta.dev(), meta.ino())
                    .map(|p| format!(" (pid {p}; stop it with kill {p})"))
                    .unwrap_or_default();
                bail!(
                    "another netnsxl apply --watch{who} keeps {} in step already; two would delete each other's services: stop it first, or watch into another pin dir",
                    pin_dir.display()
                )
            }
            Err((_, e)) => Err(anyhow!("lock {}: {e}", dir.display())),
        }
    }
}

/// The directory under the pin dir that the watch loop locks.
pub const WATCH_DIR: &str = "watch";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_a_pin_dir_is_one_path() {
        for s in [
            "/sys/fs/bpf/x",
            "/sys/fs/bpf/x/",
            "//sys/fs/bpf//x",
            "/sys/./fs/bpf/x/.",
        ] {
            assert_eq!(
                normalize(Path::new(s)).unwrap(),
                Path::new("/sys/fs/bpf/x"),
                "{s}"
            );
        }
    }

    #[test]
    fn relative_parent_and_root_paths_are_refused_with_the_fix() {
        let e = normalize(Path::new("pins")).unwrap_err().to_string();
        assert!(
            e.contains("give an absolute path, e.g. /sys/fs/bpf/netnsxl"),
            "{e}"
        );
        let e = normalize(Path::new("/sys/fs/bpf/a/../b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`..` is not allowed"), "{e}");
        assert!(normalize(Path::new("/")).is_err());
    }
}
