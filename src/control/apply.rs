//! `netnsxl apply`: make the maps hold what a file says, in one change.
//!
//! The file is parsed and checked whole before anything is written. The
//! services it names are matched to the ones the maps hold by identity (the
//! primary frontend and protocol); every difference is planned into one
//! transaction (src/control/store.rs), so the datapath sees each service switch from
//! its old to its new state at its master entry, and a full map undoes the
//! whole apply. A second apply of the same file writes nothing. Elements a
//! killed command left behind are removed on the way.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::control::store::{self, Current, Ids, Tx};
use crate::datapath::maps;
use crate::datapath::state::State;
use crate::model::addr::Proto;
use crate::model::manifest::{self, Entry};
use crate::model::service::{self, ServiceSpec};
use crate::model::topology::Place;

pub struct ApplyOpts {
    pub dry_run: bool,
    pub prune: bool,
    pub node_name: String,
    pub destroy_tcp: bool,
    /// No progress bar even on a terminal.
    pub quiet: bool,
}

/// A progress bar on stderr when it is a terminal (and not --quiet); hidden
/// otherwise, so scripts and logs see nothing.
fn progress(opts: &ApplyOpts, len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if opts.quiet || len < 1000 || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>10} [{bar:40}] {pos}/{len} services ({elapsed})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
    /// Map elements that belonged to no service (left by a killed command).
    pub strays_removed: usize,
    pub skipped: Vec<String>,
    /// Sockets connected to removed backends, destroyed.
    pub sockets_destroyed: usize,
    /// Redirect backends bound to a new netns (a replaced pod).
    pub rebound: Vec<String>,
    pub dry_run: bool,
}

impl Report {
    pub fn print(&self) {
        let verb = if self.dry_run { "would be " } else { "" };
        for a in &self.added {
            println!("+ {a}");
        }
        for c in &self.changed {
            println!("~ {c}");
        }
        for r in &self.removed {
            println!("- {r}");
        }
        for s in &self.skipped {
            println!("  skipped {s}");
        }
        for r in &self.rebound {
            println!("  {r}");
        }
        let mut line = format!(
            "{} {verb}added, {} {verb}changed, {} {verb}removed, {} unchanged",
            self.added.len(),
            self.changed.len(),
            self.removed.len(),
            self.unchanged
        );
        if self.strays_removed > 0 {
            line.push_str(&format!(
                "; {} leftover map elements {verb}removed",
                self.strays_removed
            ));
        }
        if self.sockets_destroyed > 0 {
            line.push_str(&format!(
                "; {} sockets connected to removed backends destroyed",
                self.sockets_destroyed
            ));
        }
        if self.dry_run {
            line.push_str(" (dry run: nothing written)");
        }
        println!("{line}");
    }
}

pub type Identity = (IpAddr, u16, Proto);

fn describe(spec: &ServiceSpec) -> String {
    let mut s = format!(
        "{} {}/{}",
        spec.svc_type.name(),
        spec.frontend.display(),
        spec.proto
    );
    if !spec.name.is_empty() {
        s.push_str(&format!(" {}", spec.name));
    }
    s.push_str(&format!(" ({} backends)", spec.backends.len()));
    s
}

/// What differs between two specs of one service, for the report.
fn diff(old: &ServiceSpec, new: &ServiceSpec) -> String {
    let mut parts = Vec::new();
    if old.svc_type != new.svc_type {
        parts.push(format!(
            "type {} -> {}",
            old.svc_type.name(),
            new.svc_type.name()
        ));
    }
    if old.name != new.name {
        parts.push(format!("name {:?} -> {:?}", old.name, new.name));
    }
    for b in &new.backends {
        match old.backends.iter().find(|o| o.addr == b.addr) {
            None => parts.push(format!("+backend {}", b.addr)),
            // What the maps record of a backend (a native zone= is not).
            Some(o)
                if (o.terminating, o.local, o.off_topology)
                    != (b.terminating, b.local, b.off_topology) =>
            {
                parts.push(format!(
                    "backend {} {}{}{}",
                    b.addr,
                    if b.terminating {
                        "terminating"
                    } else {
                        "active"
                    },
                    if b.local { ",local" } else { "" },
                    if b.off_topology { ",off-topology" } else { "" }
                ))
            }
            _ => {}
        }
    }
    for o in &old.backends {
        if !new.backends.iter().any(|b| b.addr == o.addr) {
            parts.push(format!("-backend {}", o.addr));
        }
    }
    if old.affinity_timeout != new.affinity_timeout {
        parts.push(format!(
            "affinity {} -> {}",
            old.affinity_timeout
                .map_or("none".into(), |t| format!("{t}s")),
            new.affinity_timeout
                .map_or("none".into(), |t| format!("{t}s"))
        ));
    }
    if old.node_port != new.node_port {
        parts.push(format!(
            "node_port {:?} -> {:?}",
            old.node_port, new.node_port
        ));
    }
    if old.internal_local != new.internal_local {
        parts.push("internal_traffic_policy".into());
    }
    if old.external_local != new.external_local {
        parts.push("external_traffic_policy".into());
    }
    if old.topology != new.topology {
        parts.push(format!(
            "topology {:?} -> {:?} ({})",
            old.topology.mode,
            new.topology.mode,
            new.topology
                .distribution
                .name()
                .unwrap_or("no traffic distribution")
        ));
    }
    if parts.is_empty() {
        parts.push("repaired (the maps did not hold all of it)".into());
    }
    format!("{}: {}", describe(new), parts.join(", "))
}

/// Check the file's services against each other and the attachment.
fn check(entries: &[Entry], state: &State, node_addrs: &[IpAddr]) -> Result<()> {
    let cfg = state.config()?;
    let mut owner: HashMap<(IpAddr, u16, Proto), &str> = HashMap::new();
    for e in entries {
        service::check_against_config(&e.spec, &cfg)
            .map_err(|err| anyhow!("{}: {}", e.source, manifest::file_terms(&err)))?;
        for f in service::expand(&e.spec, node_addrs) {
            if let Some(other) = owner.insert((f.ip, f.port, e.spec.proto), &e.source) {
                bail!(
                    "{}: frontend {}/{} is also given by {other}; a frontend belongs to one service",
                    e.source,
                    f.display(),
                    e.spec.proto
                );
            }
        }
    }
    Ok(())
}

pub fn apply(state: &State, text: &str, opts: &ApplyOpts) -> Result<Report> {
    let zone = crate::bpf::from_cstr(&state.config()?.zone);
    let place = Place {
        node: &opts.node_name,
        zone: &zone,
    };
    let parsed = manifest::parse(text, place)?;
    apply_parsed(state, &parsed, opts)
}

/// Apply what a file says. With --prune, services the file does not name
/// go; a Kubernetes list prunes only services written from Kubernetes
/// objects (what `svc add` or a netnsxl file wrote stays).
pub fn apply_parsed(state: &State, parsed: &manifest::Parsed, opts: &ApplyOpts) -> Result<Report> {
    // A command that died mid-change is finished first (apply's own plan
    // would close the journal over what it leaves alone).
    if !opts.dry_run {
        store::repair_if_interrupted(state)?;
    }
    let mut cur = Current::full(state)?;
    let node_addrs = cur.node_addrs.clone();
    check(&parsed.entries, state, &node_addrs)?;

    // What the maps hold, by identity. Two services with one identity can
    // only be a killed command's leftovers: keep the one the master entry
    // names, delete the other.
    let mut have: BTreeMap<Identity, u32> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for svc_id in cur.metas.keys().copied().collect::<Vec<_>>() {
        let Some(spec) = cur.spec(svc_id)? else {
            continue;
        };
        let idk = service::identity_key(&spec, &node_addrs);
        let owner = cur
            .svc_get(&store::svc_key(idk.0, idk.1, idk.2, 0))?
            .map(|m| m.svc_id);
        match have.get(&idk).copied() {
            Some(other) if owner == Some(svc_id) => {
                duplicates.push(other);
                have.insert(idk, svc_id);
            }
            Some(_) => duplicates.push(svc_id),
            None => {
                have.insert(idk, svc_id);
            }
        }
    }

    let want: HashSet<Identity> = parsed
        .entries
        .iter()
        .map(|e| service::identity_key(&e.spec, &node_addrs))
        .collect();
    let mut report = Report {
        dry_run: opts.dry_run,
        skipped: parsed.skipped.clone(),
        ..Default::default()
    };
    // Redirects are planned first (their backends' netns looked up, so a
    // missing one changes nothing) and written after the services.
    let redirects = match &parsed.redirects {
        Some(r) => Some(crate::control::redirect::plan(state, r, opts.prune)?),
        None => None,
    };
    if let Some(p) = &redirects {
        report.added.extend(p.added.iter().cloned());
        report.changed.extend(p.changed.iter().cloned());
        report.removed.extend(p.removed.iter().cloned());
        report.unchanged += p.unchanged;
    }
    let mut tx = Tx::default();
    for id in duplicates {
        store::plan_delete(&mut cur, &mut tx, id)?;
    }
    for (idk, svc_id) in &have {
        let prunable = opts.prune
            && parsed.has_services
            && (!parsed.kubernetes || cur.spec(*svc_id)?.is_some_and(|s| s.from_kubernetes));
        if !want.contains(idk) && prunable {
            if let Some(spec) = cur.spec(*svc_id)? {
                report.removed.push(describe(&spec));
            }
            store::plan_delete(&mut cur, &mut tx, *svc_id)?;
        }
    }
    // Services this file rewrites may hand their frontends to one another.
    for e in &parsed.entries {
        if let Some(id) = have.get(&service::identity_key(&e.spec, &node_addrs)) {
            tx.release(*id);
        }
    }

    // Ids: one block for the new services, one for the new backends.
    let mut fresh_backends = 0u32;
    let mut new_services = 0u32;
    for e in &parsed.entries {
        match have.get(&service::identity_key(&e.spec, &node_addrs)) {
            Some(id) => fresh_backends += store::fresh_backends(&e.spec, cur.backends_of(*id)),
            None => {
                new_services += 1;
                fresh_backends += e.spec.backends.len() as u32;
            }
        }
    }
    let svc_ids = maps::alloc_svc_ids(state, new_services, !opts.dry_run)?;
    let mut svc_ids = svc_ids.into_iter();
    let mut ids = if opts.dry_run {
        Ids::dry(state.config()?.next_backend_id, fresh_backends)
    } else {
        Ids::alloc(state, fresh_backends)?
    };

    struct Clear(indicatif::ProgressBar);
    impl Drop for Clear {
        fn drop(&mut self) {
            self.0.finish_and_clear();
        }
    }
    let pb = progress(opts, parsed.entries.len() as u64);
    let _clear = Clear(pb.clone());
    pb.set_message("planning");
    for e in &parsed.entries {
        pb.inc(1);
        let idk = service::identity_key(&e.spec, &node_addrs);
        let (svc_id, old) = match have.get(&idk) {
            Some(id) => (*id, cur.spec(*id)?),
            None => (
                svc_ids
                    .next()
                    .context("internal error: fewer service ids than new services")?,
                None,
            ),
        };
        let changed = store::plan_write(&mut cur, &mut tx, &e.spec, svc_id, &mut ids)
            .map_err(|err| anyhow!("{}: {err:#}", e.source))?;
        match (old, changed) {
            (None, _) => report.added.push(describe(&e.spec)),
            (Some(o), true) => report.changed.push(diff(&o, &e.spec)),
            (Some(_), false) => report.unchanged += 1,
        }
    }
    report.strays_removed = store::plan_strays(&mut cur, &mut tx)?;
    pb.set_message("writing");
    pb.tick();
    let written = if opts.dry_run {
        None
    } else {
        Some(store::execute(state, tx))
    };
    pb.finish_and_clear();
    if let Some(done) = written {
        let done = done?;
        if let Some(p) = &redirects {
            p.write(state)?;
        }
        report.sockets_destroyed =
            crate::control::stale::after_change(state, &done, opts.destroy_tcp)?;
        if let Some(z) = &parsed.zone {
            crate::control::service::set_zone(state, z)?;
        }
        // Backends whose pod was replaced: their new netns.
        report
            .rebound
            .extend(crate::control::redirect::refresh(state)?);
    }
    Ok(report)
}
