//! `netnsxl-bench ab --baseline PATH`: this build's datapath against another
//! build's (a netnsxl binary built from an earlier commit), in one run. Both
//! are attached at once, each to a cgroup of its own, with the same
//! services; the warm loops alternate between them (A B A B ..., the order
//! flipped each round), so the machine's drift cancels, and each loop's cost
//! is read from its own attachment's bpf_stats. Writes `OUT/ab.md`.

use super::*;

#[derive(Args, Clone)]
pub struct AbArgs {
    /// The netnsxl binary to compare with ("before").
    #[arg(long)]
    baseline: PathBuf,
    /// What the baseline is, for the report (e.g. its git revision).
    #[arg(long)]
    label: Option<String>,
    /// Numbers of services.
    #[arg(long, value_delimiter = ',', default_value = "1,100000")]
    sizes: Vec<usize>,
    /// Rounds per size (each runs every loop once per build).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Calls per loop.
    #[arg(long, default_value_t = 20000)]
    count: u32,
    #[arg(long, default_value = "bench")]
    out: PathBuf,
}

/// (name, proto for the client, targets at size n, program measured).
fn loops(n: usize) -> Vec<(&'static str, &'static str, String, &'static str)> {
    let list = |port: u16| -> String {
        BACKENDS
            .iter()
            .map(|b| format!("{b}:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        (
            "connect4 hit (TCP, a random ClusterIP of the N)",
            "tcp",
            format!("vips:{n}:80"),
            "nxl_connect4",
        ),
        (
            "sendmsg4 hit, a new socket per datagram (random UDP ClusterIP of the first 1,000)",
            "udp",
            format!("vips:{}:53", n.min(1000)),
            "nxl_sendmsg4",
        ),
        (
            "sendmsg4 hit, one socket to one ClusterIP",
            "udp-one",
            "vips:1:53".to_string(),
            "nxl_sendmsg4",
        ),
        (
            // The socket's last pair rarely matches: the scan of its pairs
            // (inline and revnat_more) runs on most sends.
            "sendmsg4 hit, one socket to 8 ClusterIPs at random",
            "udp-one",
            format!("vips:{}:53", n.min(8)),
            "nxl_sendmsg4",
        ),
        (
            "sendmsg4 miss (address miss on a used port)",
            "udp",
            list(53),
            "nxl_sendmsg4",
        ),
    ]
}

struct Side {
    att: Attachment,
    cg: Cgroup,
}

pub fn run(args: AbArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("netnsxl-bench creates namespaces and attaches BPF: run it as root");
    }
    let probe = sibling("netnsxl-probe")?;
    let baseline = fs::canonicalize(&args.baseline)
        .with_context(|| format!("--baseline {}", args.baseline.display()))?;
    let lab = Lab::new(&probe)?;
    let dir = std::env::temp_dir().join(format!("{}-ab-files", lab.tag));
    fs::create_dir_all(&dir)?;
    let _rm = RmDir(dir.clone());
    let runner = Runner {
        bench: std::env::current_exe()?,
        lab_cg: lab.cg.path.clone(),
        plain_cg: lab.plain_cg.path.clone(),
        empty_cg: lab.empty_cg.path.clone(),
    };
    let pins =
        |name: &str| PathBuf::from(netnsxl::sys::BPFFS_DEFAULT).join(format!("{}-{name}", lab.tag));
    // A: this build, in the lab's cgroup; B: the baseline, in one of its own.
    let sides = [
        Side {
            att: Attachment {
                netnsxl: sibling("netnsxl")?,
                pins: pins("ab-after"),
            },
            cg: Cgroup::try_create("netnsxl-bench-after-")?,
        },
        Side {
            att: Attachment {
                netnsxl: baseline.clone(),
                pins: pins("ab-before"),
            },
            cg: Cgroup::try_create("netnsxl-bench-before-")?,
        },
    ];
    netnsxl::sys::ensure_bpffs(&sides[0].att.pins)?;
    let _stats = BpfStats::enable()?;
    let plain = lab.pairs[PLAIN].0.name.clone();
    let host = format!("/run/netns/{}", lab.pairs[PLAIN].1.name);
    let maxn = args.sizes.iter().max().copied().unwrap_or(1);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Datapath A/B: this build against {}\n\n{}\n\nBoth attached at once, each to a cgroup of its own, with the same services; warm loops of {} calls alternate between them, the order flipped each round; {} rounds per size. ns per call from each attachment's bpf_stats; the difference is the median of the paired per-round differences (after - before) with its 95 % interval.\n",
        args.label
            .clone()
            .unwrap_or_else(|| baseline.display().to_string()),
        environment().replace("make bench", "make bench-ab"),
        args.count,
        args.rounds
    );
    let _ = writeln!(
        md,
        "| loop | services | before (ns) | after (ns) | after - before (ns) |\n|---|---|---|---|---|"
    );
    for &n in &args.sizes {
        if n == 0 || n > 131_000 {
            bail!("--sizes: each size must be 1..=131000");
        }
        eprintln!("== {n} services");
        let file = dir.join(format!("netnsxl-all-{n}.json"));
        fs::write(&file, netnsxl_file(n, true))?;
        for s in &sides {
            let _ = s.att.ok(&["detach"]);
            s.att.ok(&[
                "attach",
                "--cgroup",
                s.cg.path.to_str().unwrap(),
                "--host-netns",
                &host,
                "--max-services",
                &(maxn * 2 + 1100).to_string(),
                "--max-backends",
                &(maxn * 6 + 3300).to_string(),
            ])?;
            s.att.ok(&["apply", "-f", file.to_str().unwrap()])?;
        }
        let ls = loops(n);
        // per loop: (before, after) ns per round
        let mut got: Vec<[Vec<f64>; 2]> = vec![[Vec::new(), Vec::new()]; ls.len()];
        let mut seed = 7u64;
        for round in 0..args.rounds {
            for (k, (name, proto, targets, prog)) in ls.iter().enumerate() {
                let order: [usize; 2] = if (round + k) % 2 == 0 { [0, 1] } else { [1, 0] };
                for side in order {
                    let s = &sides[side];
                    seed += 1;
                    let before = prog_stats(&s.att)?;
                    let b = runner.warm(&plain, &s.cg.path, proto, targets, args.count, seed)?;
                    let after = prog_stats(&s.att)?;
                    if b.failed > 0 {
                        eprintln!("   {name}: {} failed, first: {:?}", b.failed, b.first_error);
                    }
                    let v = ns_per_call(&before, &after, prog)
                        .with_context(|| format!("{name}: {prog} did not run"))?;
                    // got[k][0] is before (baseline, side 1), [1] after.
                    got[k][1 - side].push(v);
                }
            }
            eprintln!("   round {} done", round + 1);
        }
        for (k, (name, ..)) in ls.iter().enumerate() {
            let (lo, mid, hi) = paired_diff(&got[k][1], &got[k][0]);
            let line = format!(
                "| {name} | {n} | {:.0} | {:.0} | {mid:+.0} ({lo:+.0} .. {hi:+.0}) |",
                median(got[k][0].clone()),
                median(got[k][1].clone())
            );
            eprintln!("{line}");
            let _ = writeln!(md, "{line}");
        }
    }
    for s in &sides {
        let _ = s.att.ok(&["detach"]);
    }
    fs::create_dir_all(&args.out)?;
    let out = args.out.join("ab.md");
    fs::write(&out, md)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
