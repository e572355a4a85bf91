//! The DaemonSet's image (`make image`, tools/build-image), run with podman:
//! it holds this netnsxl alone, and the DaemonSet's own container command
//! (`netnsxl agent`) runs inside it against the host's bpffs, cgroup and a
//! stand-in API server (the netnsxl-standin crate, standin/). `make test` builds the image
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

impl PodmanParent {
    /// Remove the parent in every hierarchy, children (conmon) first; false
    /// while some directory is still busy.
    fn remove(&self) -> bool {
        let mut all_gone = true;
        for top in in_every_hierarchy(&self.0) {
            let mut dirs = vec![top.clone()];
            if let Ok(rd) = std::fs::read_dir(&top) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        dirs.insert(0, e.path());
                    }
                }
            }
            for d in dirs {
                if std::fs::remove_dir(&d).is_err() && d.exists() {
                    all_gone = false;
                }
            }
        }
        all_gone
    }
}

impl Drop for PodmanParent {
    fn drop(&mut self) {
        // conmon outlives `podman rm` while it runs its exit command
        // (`podman container cleanup`, slow on a fresh machine's first
        // run): its cgroup is busy until it has exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.remove() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
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

/// A container by name, removed (`podman rm -f`) on drop, also when the
/// podman process that ran it was killed.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "-f", "-t", "0", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
#[ignore = "needs root (make test runs it)"]
fn the_image_holds_this_netnsxl_alone() {
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
    // Its files: netnsxl, the libraries it links, passwd and group.
    let name = unique("netnsxl-image");
    let _c = Container(name.clone());
    run_ok(podman().args(["create", "--name", &name, TAG]));
    let tar = run_ok(podman().args(["export", &name])).stdout;
    let mut t = Command::new("tar")
        .arg("-t")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    t.stdin.take().unwrap().write_all(&tar).unwrap();
    let files = String::from_utf8(t.wait_with_output().unwrap().stdout).unwrap();
    let programs: Vec<&str> = files
        .lines()
        .filter(|f| f.contains("bin/") && !f.ends_with('/'))
        .collect();
    assert_eq!(programs, vec!["usr/local/bin/netnsxl"], "{files}");
    assert!(
        files.lines().all(|f| f.ends_with('/')
            || f.contains(".so")
            || f.starts_with("etc/")
            || f.starts_with("usr/local/bin/netnsxl")),
        "{files}"
    );
}

/// The DaemonSet's container command, as deploy/daemonset.yaml writes it,
/// inside the image (privileged, host network, the host's bpffs and
/// cgroup2 mounted as the DaemonSet mounts them): it attaches (already
/// attached) and applies the stand-in API server's Service, which the host
/// then sees.
#[test]
#[ignore = "needs root (make test runs it)"]
fn the_daemonsets_agent_runs_inside_the_image() {
    require_root();
    image_present();
    let cg = Cgroup::new();
    let pins = PinDir::new();
    let cli = Cli { pins: &pins };
    cli.attach(&cg, &[]);
    let api = netnsxl_standin::ApiServer::start();
    api.apply(service("web", "198.18.50.1", serde_json::json!(80)));
    api.apply(slice("web-a", "web", &["203.0.113.1"]));
    let tmp = Tmpfs::new();
    let kubeconfig = api.kubeconfig(tmp.path());
    // The cgroup2 mount, seen at a path of its own inside the container.
    let cg2 = netnsxl::sys::cgroup2_mount().unwrap();
    let in_ct = format!(
        "/host-cgroup/{}",
        cg.path.strip_prefix(&cg2).unwrap().display()
    );
    let d = deploy_argv(
        "daemonset",
        &[
            ("NETNSXL_PIN_DIR", pins.path.to_str().unwrap()),
            ("CGROUP", &in_ct),
            ("KUBECONFIG", &kubeconfig),
        ],
    );
    let name = unique("netnsxl-agent");
    let _c = Container(name.clone());
    let parent = PodmanParent::new();
    let mut run = podman();
    run.args([
        "run",
        "--rm",
        "--name",
        &name,
        "--privileged",
        "--network",
        "host",
    ])
    .args(["--cgroup-parent", &parent.arg()])
    .args(["-v", "/sys/fs/bpf:/sys/fs/bpf"])
    .args(["-v", &format!("{}:/host-cgroup", cg2.display())])
    .args(["-v", &format!("{0}:{0}", tmp.path().display())]);
    for (k, v) in &d.env {
        run.args(["-e", &format!("{k}={v}")]);
    }
    run.args(["--entrypoint", &d.argv[0], TAG])
        .args(&d.argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Reaped(run.spawn().unwrap());
    let mut seen = None;
    eventually(std::time::Duration::from_secs(30), || {
        let list = cli.json(&["svc", "list"]);
        seen = list
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["frontend"] == "198.18.50.1:80")
            .cloned();
        seen.is_some()
    });
    let Some(svc) = seen else {
        drop(_c);
        let mut err = String::new();
        use std::io::Read;
        let _ = child.0.stderr.take().unwrap().read_to_string(&mut err);
        panic!("the host never saw the service: {err}");
    };
    assert_eq!(svc["origin"], "kubernetes");
    assert_eq!(svc["backends"][0]["addr"], "203.0.113.1:8080", "{svc:#}");
    drop(_c);
    let _ = child.0.wait();
    // Nothing of podman's is left in any cgroup hierarchy.
    let name = parent.0.clone();
    drop(parent);
    let left: Vec<_> = in_every_hierarchy(&name)
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
