//! A stand-in for the Kubernetes API server, for netnsxl's tests and its
//! benchmark (never part of netnsxl itself): list and watch of
//! Services and EndpointSlices, GET of Nodes and /version, over plain HTTP
//! on loopback, from objects the test sets. It speaks the protocol the
//! client under test (kube-rs' watcher in `netnsxl agent`) expects:
//!
//! - a list carries the collection's resourceVersion, its items have no
//!   apiVersion or kind (as the API server sends them);
//! - a watch is a chunked response of one JSON event a line, from the
//!   resourceVersion asked for, with BOOKMARK events when asked for, ended
//!   after `timeoutSeconds` or when the test closes it;
//! - a resourceVersion older than the last compaction gets an ERROR event
//!   with a 410 Status (too old resource version), as the watch cache does;
//! - the test can stop the server (every connection dropped, the port
//!   closed), start it again on the same port, and cut a watch mid-event.
//!
//! `labelSelector` terms of the form `!key` are honoured.
//! Every request is counted by verb and resource.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The two collections, by URL path.
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";

#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// (resourceVersion, type, object) of every change.
    history: Vec<(u64, &'static str, Value)>,
}

#[derive(Default)]
struct St {
    rv: u64,
    collections: HashMap<&'static str, Collection>,
    nodes: HashMap<String, Value>,
    /// A watch from before this version gets 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch.
    generation: u64,
    /// Cut the next event every watch sends in half, then drop it.
    cut_next: bool,
    /// "LIST services", "WATCH endpointslices", "GET nodes", ... counts.
    requests: BTreeMap<String, usize>,
    /// Open connections, to drop them when the server stops.
    conns: Vec<TcpStream>,
    /// Lists being paged: token -> (resourceVersion, items).
    snapshots: HashMap<u64, (u64, Vec<Value>)>,
    next_snapshot: u64,
}

struct Inner {
    st: Mutex<St>,
    changed: Condvar,
    up: AtomicBool,
    bookmark_every: Duration,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct ApiServer {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    accept: Option<std::thread::JoinHandle<()>>,
}

fn collection_of(kind: &str) -> &'static str {
    match kind {
        "Service" => SERVICES,
        "EndpointSlice" => SLICES,
        other => panic!("the fixture serves no {other}"),
    }
}

impl ApiServer {
    pub fn start() -> ApiServer {
        let inner = Arc::new(Inner {
            st: Mutex::new(St {
                rv: 100,
                ..Default::default()
            }),
            changed: Condvar::new(),
            up: AtomicBool::new(false),
            bookmark_every: Duration::from_secs(1),
        });
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the fixture");
        let addr = l.local_addr().unwrap();
        let mut s = ApiServer {
            inner,
            addr,
            accept: None,
        };
        s.listen(l);
        s
    }

    fn listen(&mut self, l: TcpListener) {
        l.set_nonblocking(true).unwrap();
        self.inner.up.store(true, Ordering::SeqCst);
        let inner = self.inner.clone();
        self.accept = Some(std::thread::spawn(move || {
            while inner.up.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        if let Ok(clone) = c.try_clone() {
                            let mut st = inner.lock();
                            // Forget the connections that ended.
                            st.conns.retain(|c| c.peer_addr().is_ok());
                            st.conns.push(clone);
                        }
                        let inner = inner.clone();
                        std::thread::spawn(move || serve(&inner, c));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig that points at this server, written into `dir`.
    pub fn kubeconfig(&self, dir: &Path) -> String {
        kubeconfig_for(dir, &self.url())
    }

    /// Add many objects at once (ADDED to every watch), for large lists.
    pub fn apply_all(&self, objs: impl IntoIterator<Item = Value>) {
        let mut st = self.inner.lock();
        for mut obj in objs {
            st.rv += 1;
            let rv = st.rv;
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            let kind = obj["kind"].as_str().unwrap().to_string();
            let key = key_of(&obj);
            let c = st.collections.entry(collection_of(&kind)).or_default();
            c.objects.insert(key, obj.clone());
            c.history.push((rv, "ADDED", obj));
        }
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Add or change an object (ADDED or MODIFIED to every watch).
    pub fn apply(&self, mut obj: Value) {
        let mut st = self.inner.lock();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let kind = obj["kind"].as_str().unwrap().to_string();
        if kind == "Node" {
            let name = obj["metadata"]["name"].as_str().unwrap().to_string();
            st.nodes.insert(name, obj);
            return;
        }
        let key = key_of(&obj);
        let c = st.collections.entry(collection_of(&kind)).or_default();
        let ty = if c.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        c.objects.insert(key, obj.clone());
        c.history.push((rv, ty, obj));
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Delete an object (DELETED to every watch).
    pub fn delete(&self, kind: &str, ns: &str, name: &str) {
        let mut st = self.inner.lock();
        st.rv += 1;
        let rv = st.rv;
        let c = st.collections.entry(collection_of(kind)).or_default();
        let mut obj = c
            .objects
            .remove(&(ns.to_string(), name.to_string()))
            .unwrap_or_else(|| panic!("the fixture has no {kind} {ns}/{name}"));
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        c.history.push((rv, "DELETED", obj));
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Forget the history: a watch that resumes from before now gets 410.
    pub fn compact(&self) {
        let mut st = self.inner.lock();
        st.compacted = st.rv + 1;
        st.rv += 1;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// End every open watch, as the API server does after its timeout.
    pub fn close_watches(&self) {
        self.inner.lock().generation += 1;
        self.inner.changed.notify_all();
    }

    /// The next event every open watch sends is cut in half, and the
    /// connection dropped.
    pub fn cut_next_event(&self) {
        self.inner.lock().cut_next = true;
    }

    /// Stop: the port closes and every connection drops.
    pub fn stop(&mut self) {
        self.inner.up.store(false, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let mut st = self.inner.lock();
        st.generation += 1;
        for c in st.conns.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Start again on the same port.
    pub fn start_again(&mut self) {
        let l = TcpListener::bind(self.addr).expect("bind the fixture's port again");
        self.listen(l);
    }

    /// How many requests of `verb` ("LIST", "WATCH", "GET") for `resource`
    /// ("services", "endpointslices", "nodes") came.
    pub fn requests(&self, verb: &str, resource: &str) -> usize {
        self.inner
            .lock()
            .requests
            .get(&format!("{verb} {resource}"))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A kubeconfig naming `server`, with a token (the fixture ignores it).
pub fn kubeconfig_for(dir: &Path, server: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let f = dir.join(format!("kubeconfig-{}-{n}", std::process::id()));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fx\n  cluster:\n    server: {server}\nusers:\n- name: fx\n  user:\n    token: fixture\ncontexts:\n- name: fx\n  context:\n    cluster: fx\n    user: fx\ncurrent-context: fx\n"
    );
    std::fs::write(&f, text).unwrap();
    f.to_str().unwrap().to_string()
}

fn key_of(obj: &Value) -> (String, String) {
    (
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        obj["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an object passes `!key` terms of a label selector.
fn selected(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter_map(|t| t.trim().strip_prefix('!'))
        .all(|key| obj["metadata"]["labels"].get(key).is_none())
}

/// One connection: one request, then the connection closes (the clone in
/// `St::conns` would keep it open otherwise).
fn serve(inner: &Inner, c: TcpStream) {
    let end = c.try_clone();
    request(inner, c);
    if let Ok(end) = end {
        let _ = end.shutdown(std::net::Shutdown::Both);
    }
}

fn request(inner: &Inner, c: TcpStream) {
    let mut reader = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // The rest of the head.
    loop {
        let mut h = String::new();
        match reader.read_line(&mut h) {
            Ok(0) | Err(_) => return,
            Ok(_) if h == "\r\n" || h == "\n" => break,
            Ok(_) => {}
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: HashMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect();
    let mut c = c;
    let watch = params.get("watch").is_some_and(|v| v == "true" || v == "1");
    match path {
        SERVICES | SLICES => {
            let path: &'static str = if path == SERVICES { SERVICES } else { SLICES };
            let res = path.rsplit('/').next().unwrap();
            let verb = if watch { "WATCH" } else { "LIST" };
            // The generation this request belongs to, read as it is
            // counted: a close that follows the count ends this watch too.
            let generation = {
                let mut st = inner.lock();
                *st.requests.entry(format!("{verb} {res}")).or_default() += 1;
                st.generation
            };
            let selector = params.get("labelSelector").cloned().unwrap_or_default();
            if watch {
                let rv = params
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let timeout = params
                    .get("timeoutSeconds")
                    .and_then(|v| v.parse().ok())
                    .map_or(Duration::from_secs(300), Duration::from_secs);
                let bookmarks = params
                    .get("allowWatchBookmarks")
                    .is_some_and(|v| v == "true");
                let w = Watch {
                    path,
                    rv,
                    timeout,
                    bookmarks,
                    generation,
                };
                watch_stream(inner, &mut c, w, &selector);
            } else {
                // Pages of `limit` items from a snapshot taken at the first
                // page, as the API server serves a list at one version; the
                // continue token names the snapshot and the next offset.
                let limit = params
                    .get("limit")
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|l| *l > 0)
                    .unwrap_or(usize::MAX);
                let mut st = inner.lock();
                let (token, from): (u64, usize) =
                    match params.get("continue").and_then(|c| c.split_once(':')) {
                        Some((t, o)) => (t.parse().unwrap_or(0), o.parse().unwrap_or(0)),
                        None => {
                            let all: Vec<Value> = st
                                .collections
                                .get(path)
                                .map(|c| {
                                    c.objects
                                        .values()
                                        .filter(|o| selected(o, &selector))
                                        .cloned()
                                        .map(|mut o| {
                                            let m = o.as_object_mut().unwrap();
                                            m.remove("apiVersion");
                                            m.remove("kind");
                                            o
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            st.next_snapshot += 1;
                            let t = st.next_snapshot;
                            let rv = st.rv;
                            st.snapshots.insert(t, (rv, all));
                            (t, 0)
                        }
                    };
                let page = st.snapshots.get(&token).map(|(rv, all)| {
                    let end = from.saturating_add(limit).min(all.len());
                    let items: Vec<Value> = all.get(from..end).unwrap_or_default().to_vec();
                    let next = (end < all.len()).then(|| format!("{token}:{end}"));
                    (*rv, items, next)
                });
                let Some((rv, items, next)) = page else {
                    drop(st);
                    respond(
                        &mut c,
                        410,
                        &status(410, "Expired", "the continue token has expired"),
                    );
                    return;
                };
                if next.is_none() {
                    st.snapshots.remove(&token);
                }
                let list_kind = if path == SERVICES {
                    "ServiceList"
                } else {
                    "EndpointSliceList"
                };
                let body = json!({
                    "kind": list_kind,
                    "apiVersion": if path == SERVICES { "v1" } else { "discovery.k8s.io/v1" },
                    "metadata": {"resourceVersion": rv.to_string(),
                                 "continue": next.unwrap_or_default()},
                    "items": items,
                });
                drop(st);
                respond(&mut c, 200, &body);
            }
        }
        // Discovery, for kubectl: the two groups and their resources.
        "/api" => respond(
            &mut c,
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        ),
        "/apis" => respond(
            &mut c,
            200,
            &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
                "name": "discovery.k8s.io",
                "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
                "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}}]}),
        ),
        "/api/v1" => respond(
            &mut c,
            200,
            &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                resource("services", "Service", true, &["svc"]),
                resource("nodes", "Node", false, &["no"])]}),
        ),
        "/apis/discovery.k8s.io/v1" => respond(
            &mut c,
            200,
            &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
                    "resources": [resource("endpointslices", "EndpointSlice", true, &[])]}),
        ),
        "/version" => respond(
            &mut c,
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0"}),
        ),
        p if p.starts_with("/api/v1/nodes/") => {
            *inner.lock().requests.entry("GET nodes".into()).or_default() += 1;
            let name = &p["/api/v1/nodes/".len()..];
            let node = inner.lock().nodes.get(name).cloned();
            match node {
                Some(n) => respond(&mut c, 200, &n),
                None => respond(&mut c, 404, &status(404, "NotFound", "node not found")),
            }
        }
        _ => respond(
            &mut c,
            404,
            &status(404, "NotFound", "the fixture serves no such path"),
        ),
    }
}

fn resource(name: &str, kind: &str, namespaced: bool, short: &[&str]) -> Value {
    json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
           "verbs": ["get", "list", "watch"], "shortNames": short})
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn respond(c: &mut TcpStream, code: u16, body: &Value) {
    let body = body.to_string();
    let _ = write!(
        c,
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn chunk(c: &mut TcpStream, data: &[u8]) -> bool {
    c.write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .and_then(|_| c.write_all(data))
        .and_then(|_| c.write_all(b"\r\n"))
        .and_then(|_| c.flush())
        .is_ok()
}

/// One watch request: its collection, the version it starts after, its
/// timeout, whether it asked for bookmarks, and the generation it belongs to.
struct Watch {
    path: &'static str,
    rv: u64,
    timeout: Duration,
    bookmarks: bool,
    generation: u64,
}

fn watch_stream(inner: &Inner, c: &mut TcpStream, w: Watch, selector: &str) {
    let Watch {
        path,
        mut rv,
        timeout,
        bookmarks,
        generation,
    } = w;
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if c.write_all(head.as_bytes()).is_err() {
        return;
    }
    let started = Instant::now();
    let mut last_bookmark = Instant::now();
    let mut st = inner.lock();
    if rv < st.compacted {
        let ev = json!({"type": "ERROR", "object": status(410, "Expired",
            &format!("too old resource version: {rv} ({})", st.compacted))});
        drop(st);
        chunk(c, format!("{ev}\n").as_bytes());
        let _ = c.write_all(b"0\r\n\r\n");
        return;
    }
    loop {
        if st.generation != generation
            || !inner.up.load(Ordering::SeqCst)
            || started.elapsed() >= timeout
        {
            drop(st);
            let _ = c.write_all(b"0\r\n\r\n");
            return;
        }
        let events: Vec<(u64, &'static str, Value)> = st
            .collections
            .get(path)
            .map(|col| {
                // The history is in resourceVersion order.
                let from = col.history.partition_point(|(v, _, _)| *v <= rv);
                col.history[from..]
                    .iter()
                    .filter(|(_, _, o)| selected(o, selector))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let cut = st.cut_next && !events.is_empty();
        if cut {
            st.cut_next = false;
        }
        let now_rv = st.rv;
        drop(st);
        for (v, ty, obj) in events {
            let line = format!("{}\n", json!({"type": ty, "object": obj}));
            if cut {
                chunk(c, &line.as_bytes()[..line.len() / 2]);
                let _ = c.shutdown(std::net::Shutdown::Both);
                return;
            }
            if !chunk(c, line.as_bytes()) {
                return;
            }
            rv = v;
        }
        if bookmarks && last_bookmark.elapsed() >= inner.bookmark_every {
            let kind = if path == SERVICES {
                json!({"kind": "Service", "apiVersion": "v1"})
            } else {
                json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1"})
            };
            let mut obj = kind;
            obj["metadata"] = json!({"resourceVersion": now_rv.to_string()});
            if !chunk(
                c,
                format!("{}\n", json!({"type": "BOOKMARK", "object": obj})).as_bytes(),
            ) {
                return;
            }
            rv = rv.max(now_rv);
            last_bookmark = Instant::now();
        }
        st = inner.lock();
        st = inner
            .changed
            .wait_timeout(st, Duration::from_millis(200))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}
