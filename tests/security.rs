//! Pinned state no one else can touch: the pin dir is root's and private or
//! refused, every spelling of it is one attachment with one lock, and a pin
//! someone else could have written is refused. Real bpffs, real users
//! (nobody, through setpriv). Needs root.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NOBODY: &str = "65534";

/// Run a command as nobody, with no capabilities (`caps` empty) or with
/// these ones (e.g. "+bpf,+net_admin"); its output.
fn as_nobody_with(caps: &str, prog: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"]);
    if caps.is_empty() {
        cmd.arg("--inh-caps=-all");
    } else {
        cmd.arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"));
    }
    cmd.arg(prog).args(args).output().expect("run setpriv")
}

fn as_nobody(prog: &str, args: &[&str]) -> std::process::Output {
    as_nobody_with("", prog, args)
}

/// netnsxl with an explicit pin dir (spelled as given).
fn netnsxl(pin: &str, args: &[&str]) -> std::process::Output {
    Command::new(NETNSXL)
        .arg("--pin-dir")
        .arg(pin)
        .args(args)
        .output()
        .expect("run netnsxl")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A path under bpffs that nothing uses, removed on drop whatever it holds
/// (the test may make it a directory of another user, or a link).
struct Spot(PathBuf);

impl Spot {
    fn new() -> Spot {
        let pins = PinDir::new(); // mounts bpffs if needed; nothing created
        Spot(pins.path.clone())
    }
    fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Spot {
    fn drop(&mut self) {
        let _ = Command::new(NETNSXL)
            .arg("--pin-dir")
            .arg(&self.0)
            .arg("detach")
            .output();
        match std::fs::symlink_metadata(&self.0) {
            Ok(m) if m.file_type().is_symlink() => {
                let _ = std::fs::remove_file(&self.0);
            }
            Ok(_) => {
                let _ = std::fs::remove_dir_all(&self.0);
            }
            Err(_) => {}
        }
    }
}

/// A cgroup and a pin dir of the test's own, attached.
fn attached() -> (Cgroup, Spot) {
    let cg = Cgroup::new();
    let spot = Spot::new();
    let out = netnsxl(spot.s(), &["attach", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    (cg, spot)
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn a_pin_dir_another_user_made_first_is_refused_not_adopted() {
    require_root();
    let cg = Cgroup::new();
    let spot = Spot::new();
    // bpffs is world-writable and sticky: nobody can squat the name.
    let out = as_nobody("mkdir", &[spot.s()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = netnsxl(spot.s(), &["attach", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{} is owned by uid 65534", spot.s()))
            && err.contains("choose another --pin-dir"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!spot.0.join("maps").exists(), "nothing pinned into it");
    assert_eq!(
        std::fs::metadata(&spot.0).unwrap().uid(),
        65534,
        "not adopted"
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn a_pin_dir_others_can_write_is_refused_until_it_is_private() {
    require_root();
    let cg = Cgroup::new();
    let spot = Spot::new();
    std::fs::create_dir(&spot.0).unwrap();
    std::fs::set_permissions(&spot.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = netnsxl(spot.s(), &["attach", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(stderr(&out).contains("with mode 0777"), "{}", stderr(&out));
    assert!(!spot.0.join("maps").exists());
    std::fs::set_permissions(&spot.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = netnsxl(spot.s(), &["attach", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn links_relative_paths_and_missing_parents_get_precise_answers() {
    require_root();
    let cg = Cgroup::new();
    let cgs = cg.path.to_str().unwrap();
    let real = Spot::new();
    let link = Spot::new();
    std::fs::create_dir(&real.0).unwrap();
    std::os::unix::fs::symlink(&real.0, &link.0).unwrap();
    // Through a link: refused, naming the link and the real path.
    let out = netnsxl(&format!("{}/x", link.s()), &["attach", "--cgroup", cgs]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{} is a symbolic link", link.s())),
        "{err}"
    );
    assert!(
        !real.0.join("x").exists(),
        "nothing created through the link"
    );
    // Relative: refused with an example.
    let out = netnsxl("pins", &["svc", "list"]);
    assert!(
        stderr(&out).contains("--pin-dir pins: give an absolute path"),
        "{}",
        stderr(&out)
    );
    // Nested in a missing parent: attach makes each level, private.
    let nested = format!("{}/a/b", real.s());
    let out = netnsxl(&nested, &["attach", "--cgroup", cgs]);
    assert!(out.status.success(), "{}", stderr(&out));
    for d in [real.0.join("a"), real.0.join("a/b")] {
        assert_eq!(
            std::fs::metadata(&d).unwrap().mode() & 0o7777,
            0o700,
            "{d:?}"
        );
    }
    let out = netnsxl(&nested, &["detach"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Detach of a pin dir that does not exist says so and creates nothing.
    let out = netnsxl(&nested, &["detach"]);
    assert!(stderr(&out).contains("not attached"), "{}", stderr(&out));
    assert!(!Path::new(&nested).exists());
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn every_spelling_is_one_attachment_with_one_lock() {
    require_root();
    let cg = Cgroup::new();
    let spot = Spot::new();
    let p = spot.s();
    let out = netnsxl(p, &["attach", "--cgroup", cg.path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spellings = [
        format!("{p}/"),
        format!("/{p}"),
        p.replacen("/sys/", "/sys/./", 1),
    ];
    for s in &spellings {
        let out = netnsxl(s, &["attach", "--cgroup", cg.path.to_str().unwrap()]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("already attached"),
            "{s}: {}",
            stderr(&out)
        );
    }
    // Another process holds the lock on the pin dir (flock(1), spelled one
    // way); a change spelled another way waits for it.
    let mut holder = Reaped(
        Command::new("flock")
            .args(["--no-fork", &spellings[0], "sleep", "30"])
            .spawn()
            .unwrap(),
    );
    // Wait until the holder has the lock (a non-blocking try fails).
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("flock")
        .args(["-n", &spellings[1], "true"])
        .status()
        .unwrap()
        .success()
    {
        assert!(Instant::now() < deadline, "flock(1) never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut add = Reaped(
        Command::new(NETNSXL)
            .args(["--pin-dir", &spellings[2]])
            .args([
                "svc",
                "add",
                "--type",
                "clusterip",
                "--frontend",
                "198.18.30.1:80",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        add.0.try_wait().unwrap().is_none(),
        "svc add waited for the lock"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = holder.0.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = add.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "svc add still waiting");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let out = netnsxl(&spellings[1], &["svc", "list", "-o", "json"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.18.30.1:80"));
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn pins_someone_else_could_have_written_are_refused() {
    require_root();
    let (_cg, spot) = attached();
    let p = spot.s();
    let cfg = spot.0.join("maps/config_map");
    // A pin owned by another user.
    std::os::unix::fs::chown(&cfg, Some(65534), None).unwrap();
    let out = netnsxl(p, &["svc", "list"]);
    assert!(
        stderr(&out).contains("config_map is owned by uid 65534"),
        "{}",
        stderr(&out)
    );
    std::os::unix::fs::chown(&cfg, Some(0), None).unwrap();
    assert!(netnsxl(p, &["svc", "list"]).status.success());
    // A whole map missing (an older layout): the migration hint.
    let member = spot.0.join("maps/member_map");
    std::fs::remove_file(&member).unwrap();
    let out = netnsxl(p, &["svc", "list"]);
    let err = stderr(&out);
    assert!(
        err.contains("has no map member_map") && err.contains("to migrate"),
        "{err}"
    );
    // Pins replaced by links to other maps (bpffs cannot rename a pin, so
    // the originals go).
    std::os::unix::fs::symlink(spot.0.join("maps/backend_map"), &member).unwrap();
    std::fs::remove_file(&cfg).unwrap();
    std::os::unix::fs::symlink(spot.0.join("maps/meta_map"), &cfg).unwrap();
    let out = netnsxl(p, &["svc", "list"]);
    assert!(
        stderr(&out).contains("is a symbolic link, not a pin netnsxl made"),
        "{}",
        stderr(&out)
    );
    let out = netnsxl(p, &["detach"]);
    assert!(
        out.status.success(),
        "detach still cleans up: {}",
        stderr(&out)
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn a_user_with_bpf_capabilities_is_told_whose_pin_dir_it_is() {
    require_root();
    let (_cg, spot) = attached();
    // A copy of the binary any user can run, wherever the checkout is.
    let dir = tempdir();
    std::fs::set_permissions(&*dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("netnsxl");
    copy_executable(NETNSXL, &bin);
    let out = as_nobody_with(
        "+bpf,+net_admin",
        bin.to_str().unwrap(),
        &["--pin-dir", spot.s(), "svc", "list"],
    );
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("no access to {}", spot.s())) && err.contains("another user"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn a_second_watch_on_one_pin_dir_is_refused_naming_the_first() {
    require_root();
    let (_cg, spot) = attached();
    let p = spot.s();
    let watch = |pin: &str| {
        Command::new(NETNSXL)
            .args(["--pin-dir", pin])
            .args(["apply", "-f", "-", "--watch", "--node-name", "node-a"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = Reaped(watch(p));
    // The first holds the watch lock from its start: once it has applied
    // an event, it surely does.
    {
        use std::io::{BufRead, Write};
        let stdin = first.0.stdin.as_mut().unwrap();
        writeln!(
            stdin,
            r#"{{"type": "ADDED", "object": {{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "a", "namespace": "t"}}, "spec": {{"clusterIP": "198.18.40.1", "ports": [{{"port": 80}}]}}}}}}"#
        )
        .unwrap();
        stdin.flush().unwrap();
        let mut out = std::io::BufReader::new(first.0.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(
            line.contains("event 1 ADDED Service t/a: 1 added"),
            "{line}"
        );
    }
    let second = watch(&format!("{p}/")).wait_with_output().unwrap();
    assert!(!second.status.success());
    let err = stderr(&second);
    assert!(
        err.contains(&format!(
            "(pid {}; stop it with kill {})",
            first.0.id(),
            first.0.id()
        )),
        "{err}"
    );
    // Once the first ends, a watch may start again.
    drop(first.0.stdin.take());
    assert!(first.0.wait().unwrap().success());
    let mut again = watch(p);
    drop(again.stdin.take());
    let out = again.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Four loops of `svc add --replace` on one frontend, each spelling the pin
/// dir its own way, at once: one lock, so one clean service at the end.
#[test]
#[ignore = "needs root (make test runs it)"]
fn concurrent_replaces_under_several_spellings_leave_one_clean_service() {
    require_root();
    let (_cg, spot) = attached();
    let p = spot.s().to_string();
    let spellings = [
        p.clone(),
        format!("{p}/"),
        format!("/{p}"),
        p.replacen("/sys/", "/sys/./", 1),
    ];
    let loops: Vec<_> = spellings
        .iter()
        .enumerate()
        .map(|(i, pin)| {
            let pin = pin.clone();
            std::thread::spawn(move || {
                for round in 0..25 {
                    let be = format!("203.0.113.{}:8080", 1 + (i + round) % 5);
                    let out = netnsxl(
                        &pin,
                        &[
                            "svc",
                            "add",
                            "--type",
                            "clusterip",
                            "--frontend",
                            "198.18.31.1:80",
                            "--replace",
                            "--backend",
                            &be,
                        ],
                    );
                    assert!(out.status.success(), "{pin}: {}", stderr(&out));
                }
            })
        })
        .collect();
    for l in loops {
        l.join().unwrap();
    }
    let out = netnsxl(&p, &["svc", "list", "-o", "json"]);
    assert!(stderr(&out).is_empty(), "svc list warned: {}", stderr(&out));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["state"], "ok", "{list:?}");
    assert_eq!(list[0]["backends"].as_array().unwrap().len(), 1, "{list:?}");
}
