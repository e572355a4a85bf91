//! What the datapath is doing: `netnsxl stats` (per-CPU counters, summed)
//! and `netnsxl trace` (decisions from the ring buffer, live).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags};
use serde::Serialize;
use tabled::Tabled;

use crate::bpf::{self, types};
use crate::datapath::state::State;
use crate::model::addr::{Proto, from_map_addr, from_map_port};
use crate::model::service::FrontendSpec;
use crate::output::{self, Format};
use crate::sys;

/// The counters, in NXL_STAT_* order, with the names `stats` prints.
pub const REASONS: [(&str, &str); 13] = [
    ("translated", "sent to a backend"),
    (
        "refused",
        "no usable backend: connect refused (ECONNREFUSED; EPERM before 5.18)",
    ),
    (
        "affinity_hit",
        "the client netns' affinity backend was used",
    ),
    ("affinity_miss", "no live affinity entry: a new pick"),
    (
        "affinity_replaced",
        "the affinity backend left or is unusable: a new pick",
    ),
    ("bypassed", "the socket's netns is bypassed"),
    (
        "host_skipped",
        "pods-only frontend (ExternalIP) left alone in the host netns",
    ),
    (
        "pod_skipped",
        "host-only frontend (loopback NodePort) left alone in a pod",
    ),
    ("reversed", "recvmsg/getpeername shown the frontend"),
    (
        "tcp_unrecorded",
        "translated TCP socket found rev_tcp_map full around its slot: its getpeername shows the backend (attach --max-tcp-sockets)",
    ),
    ("redirected", "sent to a local redirect's backend"),
    (
        "redirect_skipped",
        "skipped: backend's own netns (a redirect with --skip-from-backend left it to the service or its address)",
    ),
    (
        "udp_rev_evicted",
        "a UDP socket sent to more than 16 backends: its oldest reverse pair was overwritten, so replies from that backend show the backend's address",
    ),
];

fn sum_percpu(vals: &[Vec<u8>]) -> u64 {
    vals.iter()
        .map(|v| u64::from_ne_bytes(v[..8].try_into().unwrap_or_default()))
        .sum()
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct SvcCounters {
    pub svc_id: u32,
    pub name: String,
    #[serde(rename = "type")]
    pub svc_type: String,
    pub frontend: String,
    pub proto: Proto,
    pub translated: u64,
    pub refused: u64,
}

#[derive(Serialize, Clone, Debug)]
pub struct Stats {
    /// Reason name -> count, summed over CPUs.
    pub reasons: std::collections::BTreeMap<String, u64>,
    pub services: Vec<SvcCounters>,
}

pub fn read_stats(state: &State) -> Result<Stats> {
    let mut reasons = std::collections::BTreeMap::new();
    for (i, (name, _)) in REASONS.iter().enumerate() {
        let v = state
            .stats
            .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
            .context("read stats_map")?
            .map_or(0, |v| sum_percpu(&v));
        reasons.insert(name.to_string(), v);
    }
    let metas: HashMap<u32, types::svc_meta> =
        crate::datapath::state::read_map::<u32, types::svc_meta>(&state.meta)?
            .into_iter()
            .collect();
    let refused: HashMap<u32, u64> =
        crate::datapath::state::read_map::<u32, u64>(&state.svc_refused)?
            .into_iter()
            .collect();
    let counts = state.svc_counts()?;
    let mut services = Vec::new();
    for (&id, meta) in &metas {
        let translated = counts.get(&id).copied().unwrap_or(0);
        let refused = refused.get(&id).copied().unwrap_or(0);
        let spec = crate::model::service::spec_from(meta, &[])?;
        services.push(SvcCounters {
            svc_id: id,
            name: spec.name.clone(),
            svc_type: spec.svc_type.name().to_string(),
            frontend: spec.frontend.display(),
            proto: spec.proto,
            translated,
            refused,
        });
    }
    services.sort_by(|a, b| (&a.frontend, a.proto).cmp(&(&b.frontend, b.proto)));
    Ok(Stats { reasons, services })
}

#[derive(Tabled)]
struct ReasonRow {
    #[tabled(rename = "COUNTER")]
    name: String,
    #[tabled(rename = "COUNT")]
    count: String,
    #[tabled(rename = "MEANING")]
    meaning: String,
}

#[derive(Tabled)]
struct SvcRow {
    #[tabled(rename = "SERVICE")]
    service: String,
    #[tabled(rename = "TRANSLATED")]
    translated: String,
    #[tabled(rename = "REFUSED")]
    refused: String,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Stop loops on SIGINT and SIGTERM (Ctrl-C), so they can clean up.
fn catch_stop() -> Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &act) }.context("install a signal handler")?;
    }
    Ok(())
}

fn svc_label(s: &SvcCounters) -> String {
    let mut t = format!("{} {}/{}", s.svc_type, s.frontend, s.proto);
    if !s.name.is_empty() {
        t.push_str(&format!(" {}", s.name));
    }
    t
}

pub fn stats(state: &State, format: Format, watch: Option<u64>) -> Result<()> {
    let Some(secs) = watch else {
        let st = read_stats(state)?;
        let rows: Vec<ReasonRow> = REASONS
            .iter()
            .map(|(n, m)| ReasonRow {
                name: n.to_string(),
                count: st.reasons[*n].to_string(),
                meaning: m.to_string(),
            })
            .collect();
        if format == Format::Table {
            output::print(format, &rows, &st)?;
            let svc: Vec<SvcRow> = st
                .services
                .iter()
                .map(|s| SvcRow {
                    service: svc_label(s),
                    translated: s.translated.to_string(),
                    refused: s.refused.to_string(),
                })
                .collect();
            if !svc.is_empty() {
                output::print(format, &svc, &st)?;
            }
            return Ok(());
        }
        return output::print(format, &rows, &st);
    };
    // --watch: rates over each interval, until Ctrl-C.
    catch_stop()?;
    let secs = secs.max(1);
    let mut prev = read_stats(state)?;
    let mut last = Instant::now();
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < Duration::from_secs(secs) {
            continue;
        }
        let cur = read_stats(state)?;
        let dt = last.elapsed().as_secs_f64();
        last = Instant::now();
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        match format {
            Format::Json => {
                let reasons: std::collections::BTreeMap<&String, f64> = cur
                    .reasons
                    .iter()
                    .map(|(k, v)| (k, rate(*v, prev.reasons[k])))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"interval_s": dt, "per_second": reasons, "totals": cur.reasons})
                );
            }
            Format::Table => {
                let line: Vec<String> = REASONS
                    .iter()
                    .map(|(n, _)| format!("{n} {:.1}/s", rate(cur.reasons[*n], prev.reasons[*n])))
                    .collect();
                println!("{}", line.join("  "));
            }
        }
        prev = cur;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// trace

const HOOKS: [&str; 9] = [
    "?",
    "connect4",
    "sendmsg4",
    "recvmsg4",
    "getpeername4",
    "connect6",
    "sendmsg6",
    "recvmsg6",
    "getpeername6",
];

#[derive(Serialize, Debug)]
pub struct TraceEvent {
    /// Wall-clock time, RFC 3339 with microseconds (UTC).
    pub time: String,
    pub netns_cookie: u64,
    pub netns: Option<String>,
    pub pid: u32,
    pub comm: String,
    pub hook: &'static str,
    pub proto: String,
    /// What the socket asked for (for recvmsg/getpeername: the backend).
    pub original: String,
    /// The backend chosen (for recvmsg/getpeername: the frontend shown).
    pub translated: Option<String>,
    /// A NXL_STAT name: translated, refused, bypassed, host_skipped,
    /// pod_skipped, reversed.
    pub verdict: &'static str,
    /// What a verdict means where its name alone does not say it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<&'static str>,
    pub svc_id: Option<u32>,
}

fn clock_ns(clock: nix::time::ClockId) -> i128 {
    nix::time::clock_gettime(clock).map_or(0, |t| {
        t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128
    })
}

fn rfc3339(unix_ns: i128) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000) as i64;
    let micros = (unix_ns.rem_euclid(1_000_000_000) / 1000) as u32;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub struct TraceOpts {
    pub frontend: Option<(FrontendSpec, Option<Proto>)>,
    pub netns_cookie: Option<u64>,
    pub format: Format,
}

/// Add `delta` to config.tracers under the state lock.
fn tracers_add(state: &State, delta: i64) -> Result<u32> {
    let _lock = sys::StateLock::take(&state.pins.root)?;
    let mut cfg = state.config()?;
    cfg.tracers = (i64::from(cfg.tracers) + delta).max(0) as u32;
    state.write_config(&cfg)?;
    Ok(cfg.tracers)
}

fn event_of(ev: &types::nxl_event, names: &HashMap<u64, String>) -> TraceEvent {
    let proto = match Proto::from_number(ev.proto) {
        Ok(p) => p.to_string(),
        Err(_) => ev.proto.to_string(),
    };
    let orig = SocketAddr::new(from_map_addr(ev.orig_addr), from_map_port(ev.orig_port));
    let new = SocketAddr::new(from_map_addr(ev.new_addr), from_map_port(ev.new_port));
    let verdict = REASONS.get(ev.verdict as usize).map_or("?", |(n, _)| *n);
    let wall = clock_ns(nix::time::ClockId::CLOCK_REALTIME)
        - (clock_ns(nix::time::ClockId::CLOCK_MONOTONIC) - ev.ts_ns as i128);
    let comm: Vec<u8> = ev
        .comm
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    TraceEvent {
        time: rfc3339(wall),
        netns_cookie: ev.netns_cookie,
        netns: names.get(&ev.netns_cookie).cloned(),
        pid: ev.pid,
        comm: String::from_utf8_lossy(&comm).into_owned(),
        hook: HOOKS.get(ev.hook as usize).copied().unwrap_or("?"),
        proto,
        original: orig.to_string(),
        translated: (orig != new).then(|| new.to_string()),
        verdict,
        note: (ev.verdict as usize == types::nxl_stat::NXL_STAT_REDIRECT_SKIPPED.0 as usize)
            .then_some("skipped: backend's own netns"),
        svc_id: (ev.svc_id != 0).then_some(ev.svc_id),
    }
}

fn wanted(ev: &TraceEvent, raw: &types::nxl_event, opts: &TraceOpts) -> bool {
    if let Some(c) = opts.netns_cookie
        && raw.netns_cookie != c
    {
        return false;
    }
    if let Some((fe, proto)) = &opts.frontend {
        if let Some(p) = proto
            && Proto::from_number(raw.proto).ok() != Some(*p)
        {
            return false;
        }
        // The frontend is the original for forward decisions and the
        // shown address for reverse ones.
        let addr = if raw.verdict as usize == types::nxl_stat::NXL_STAT_REVERSED.0 as usize {
            SocketAddr::new(from_map_addr(raw.new_addr), from_map_port(raw.new_port))
        } else {
            SocketAddr::new(from_map_addr(raw.orig_addr), from_map_port(raw.orig_port))
        };
        if addr.port() != fe.port || fe.ip.is_some_and(|ip| ip != addr.ip()) {
            return false;
        }
    }
    let _ = ev;
    true
}

fn print_event(ev: &TraceEvent, format: Format) {
    match format {
        Format::Json => {
            if let Ok(s) = serde_json::to_string(ev) {
                println!("{s}");
            }
        }
        Format::Table => {
            let ns = ev
                .netns
                .clone()
                .unwrap_or_else(|| format!("netns:{}", ev.netns_cookie));
            let to = ev.translated.as_deref().unwrap_or("(left alone)");
            let verdict = match ev.note {
                Some(n) => format!("{} ({n})", ev.verdict),
                None => ev.verdict.to_string(),
            };
            println!(
                "{} {ns} pid {} {} {} {} {} -> {to} {verdict}",
                ev.time, ev.pid, ev.comm, ev.hook, ev.proto, ev.original
            );
        }
    }
}

/// Stream decisions until Ctrl-C (or SIGTERM).
pub fn trace(state: &State, opts: &TraceOpts) -> Result<()> {
    catch_stop()?;
    let mut names: HashMap<u64, String> = crate::sys::netns::discover()
        .into_iter()
        .filter_map(|n| n.names.first().cloned().map(|name| (n.cookie, name)))
        .collect();
    let (tx, rx) = std::sync::mpsc::channel::<types::nxl_event>();
    let mut builder = libbpf_rs::RingBufferBuilder::new();
    builder
        .add(&state.events, move |data: &[u8]| {
            if let Ok(ev) = bpf::from_bytes::<types::nxl_event>(data) {
                let _ = tx.send(ev);
            }
            0
        })
        .context("open the event ring buffer")?;
    let ring = builder.build().context("open the event ring buffer")?;
    let _live = sys::pindir::TracerLock::take(&state.pins.root)?;
    let n = tracers_add(state, 1)?;
    eprintln!("tracing translation decisions ({n} tracer(s)); Ctrl-C to stop");
    struct Untrace<'a>(&'a State);
    impl Drop for Untrace<'_> {
        fn drop(&mut self) {
            let _ = tracers_add(self.0, -1);
        }
    }
    let _untrace = Untrace(state);
    let mut refreshed = Instant::now();
    while !STOP.load(Ordering::SeqCst) {
        // Events come without wakeups (see trace() in the BPF): wait up to
        // 100 ms, then drain whatever is there.
        match ring.poll(Duration::from_millis(100)) {
            Ok(()) => {}
            Err(e) if e.kind() == libbpf_rs::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::Error::new(e).context("poll the event ring buffer")),
        }
        if let Err(e) = ring.consume()
            && e.kind() != libbpf_rs::ErrorKind::Interrupted
        {
            return Err(anyhow::Error::new(e).context("read the event ring buffer"));
        }
        while let Ok(raw) = rx.try_recv() {
            if !names.contains_key(&raw.netns_cookie)
                && refreshed.elapsed() > Duration::from_secs(1)
            {
                names = crate::sys::netns::discover()
                    .into_iter()
                    .filter_map(|n| n.names.first().cloned().map(|name| (n.cookie, name)))
                    .collect();
                refreshed = Instant::now();
            }
            let ev = event_of(&raw, &names);
            if wanted(&ev, &raw, opts) {
                print_event(&ev, opts.format);
            }
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    // What came in since the last drain.
    let _ = ring.consume();
    while let Ok(raw) = rx.try_recv() {
        let ev = event_of(&raw, &names);
        if wanted(&ev, &raw, opts) {
            print_event(&ev, opts.format);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::bpf::types::{nxl_hook as H, nxl_stat as S};

    /// The counters and trace verdicts are indexed by the C enum nxl_stat:
    /// each name must sit at its constant's value.
    #[test]
    fn reasons_follow_the_c_enum() {
        let c = [
            (S::NXL_STAT_TRANSLATED, "translated"),
            (S::NXL_STAT_REFUSED, "refused"),
            (S::NXL_STAT_AFFINITY_HIT, "affinity_hit"),
            (S::NXL_STAT_AFFINITY_MISS, "affinity_miss"),
            (S::NXL_STAT_AFFINITY_REPLACED, "affinity_replaced"),
            (S::NXL_STAT_BYPASSED, "bypassed"),
            (S::NXL_STAT_HOST_SKIPPED, "host_skipped"),
            (S::NXL_STAT_POD_SKIPPED, "pod_skipped"),
            (S::NXL_STAT_REVERSED, "reversed"),
            (S::NXL_STAT_TCP_UNRECORDED, "tcp_unrecorded"),
            (S::NXL_STAT_REDIRECTED, "redirected"),
            (S::NXL_STAT_REDIRECT_SKIPPED, "redirect_skipped"),
            (S::NXL_STAT_UDP_REV_EVICTED, "udp_rev_evicted"),
        ];
        assert_eq!(super::REASONS.len(), S::NXL_STAT_MAX.0 as usize);
        assert_eq!(c.len(), super::REASONS.len());
        for (v, name) in c {
            assert_eq!(super::REASONS[v.0 as usize].0, name);
        }
    }

    #[test]
    fn hooks_follow_the_c_enum() {
        let c = [
            (H::NXL_HOOK_CONNECT4, "connect4"),
            (H::NXL_HOOK_SENDMSG4, "sendmsg4"),
            (H::NXL_HOOK_RECVMSG4, "recvmsg4"),
            (H::NXL_HOOK_GETPEERNAME4, "getpeername4"),
            (H::NXL_HOOK_CONNECT6, "connect6"),
            (H::NXL_HOOK_SENDMSG6, "sendmsg6"),
            (H::NXL_HOOK_RECVMSG6, "recvmsg6"),
            (H::NXL_HOOK_GETPEERNAME6, "getpeername6"),
        ];
        assert_eq!(super::HOOKS.len(), c.len() + 1, "index 0 is no hook");
        for (v, name) in c {
            assert_eq!(super::HOOKS[v.0 as usize], name);
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            super::rfc3339(1_796_157_119_781_020_000),
            "2026-12-01T20:31:59.781020Z"
        );
    }
}
