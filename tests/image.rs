//! The DaemonSet's image (`make image`, tools/build-image), run with podman:
//! it holds this netnsxl and kubectl, and `apply --watch` runs inside it
//! against a pin dir of the host's bpffs. `make test` builds the image
//! first; a missing image fails here with the command that builds it.
//! (Not run in tests/kernels: the image is the same on every kernel.)

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

const TAG: &str = concat!("localhost/netnsxl:", env!("CARGO_PKG_VERSION"));

/// The cgroup podman puts a container (and its conmon) under, by name, in
/// every cgroup hierarchy (v1 controllers and v2 alike: podman's cgroupfs
/// manager creates it in each). Unique to the test, removed on drop;
/// without it podman would leave `libpod_parent` behind.
struct PodmanParent(String);

impl PodmanParent {
    fn new() -> PodmanParent {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PodmanParent(format!("netnsxl-image-test-{}-{n}", std::process::id()))
    }

    fn arg(&self) -> String {
        format!("/{}", self.0)
    }
}

/// `name` in every mounted cgroup hierarchy (whether it exists or not).
fn in_every_hierarchy(name: &str) -> Vec<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            matches!(f.get(dash + 1), Some(&"cgroup") | Some(&"cgroup2"))
                .then(|| std::path::Path::new(f[4]).join(name))
        })
        .collect()
}

impl Drop for PodmanParent {
    fn drop(&mut self) {
        for top in in_every_hierarchy(&self.0) {
            // Children (conmon) first; each is empty once its processes ended.
            let mut dirs = vec![top.clone()];
            if let Ok(rd) = std::fs::read_dir(&top) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        dirs.insert(0, e.path());
                    }
                }
            }
            for d in dirs {
                let _ = std::fs::remove_dir(&d);
            }
        }
    }
}

/// podman with the storage tools/build-image used (tools/podman-env).
fn podman() -> Command {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/target/podman");
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", format!("{root}/containers.conf"))
        .args(["--root", &format!("{root}/root")])
        .args(["--runroot", &format!("{root}/run")])
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--runtime",
            "runc",
        ]);
    c
}

fn image_present() {
    let out = podman()
        .args(["image", "exists", TAG])
        .output()
        .expect("run podman (make image installs it)");
    assert!(
        out.status.success(),
        "image {TAG} is missing: run make image (make test does)"
    );
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn the_image_holds_this_netnsxl_and_kubectl() {
    require_root();
    image_present();
    let parent = PodmanParent::new();
    let out = podman()
        .args([
            "run",
            "--rm",
            "--cgroup-parent",
            &parent.arg(),
            TAG,
            "--version",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        concat!("netnsxl ", env!("CARGO_PKG_VERSION")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = podman()
        .args(["run", "--rm", "--cgroup-parent", &parent.arg()])
        .args(["--entrypoint", "/bin/sh", TAG, "-c"])
        .arg("kubectl version --client && command -v netnsxl && command -v kubectl")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Client Version"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("/usr/local/bin/netnsxl") && text.contains("/usr/bin/kubectl"));
}

/// The DaemonSet's job inside the image: `apply --watch` on the host's
/// pin dir (bpffs bind-mounted, privileged as the DaemonSet is) applies a
/// watch event, which the host then sees.
#[test]
#[ignore = "needs root (make test runs it)"]
fn apply_watch_runs_inside_the_image() {
    require_root();
    image_present();
    let cg = Cgroup::new();
    let pins = PinDir::new();
    let cli = Cli { pins: &pins };
    cli.attach(&cg, &[]);
    let pin = pins.path.to_str().unwrap();
    let parent = PodmanParent::new();
    let mut child = Reaped(
        podman()
            .args(["run", "--rm", "-i", "--privileged", "--network", "host"])
            .args(["--cgroup-parent", &parent.arg()])
            .args(["-v", "/sys/fs/bpf:/sys/fs/bpf", TAG])
            .args(["--pin-dir", pin, "apply", "-f", "-", "--watch"])
            .args(["--node-name", "node-a"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    writeln!(
        stdin,
        r#"{{"type": "ADDED", "object": {{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "web", "namespace": "img"}}, "spec": {{"clusterIP": "198.18.50.1", "ports": [{{"port": 80}}]}}}}}}"#
    )
    .unwrap();
    drop(stdin);
    let mut out = String::new();
    let mut err = String::new();
    use std::io::Read;
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{out}{err}");
    assert!(
        out.contains("event 1 ADDED Service img/web: 1 added"),
        "{out}{err}"
    );
    // Nothing of podman's is left in any cgroup hierarchy.
    let name = parent.0.clone();
    drop(parent);
    let left: Vec<_> = in_every_hierarchy(&name)
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let list = cli.json(&["svc", "list"]);
    let svc = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["frontend"] == "198.18.50.1:80")
        .unwrap_or_else(|| panic!("the host sees the service: {list:#}"));
    assert_eq!(svc["origin"], "kubernetes");
}
