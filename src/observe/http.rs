//! The HTTP side of the watch loop and the agent (/metrics, /healthz,
//! /livez), built to stay up when any pod on the node can reach it.
//!
//! hyper's HTTP/1 server, with what a hostile client must not be able to
//! turn against the agent taken away:
//!
//! - **Heads are capped** at [`MAX_HEAD`] bytes and must arrive within
//!   [`Limits::head_timeout`]; a larger or slower head costs that connection.
//! - **Bodies are never read**: every route is a GET, whatever a request
//!   announces in Content-Length, no byte of its body is buffered, and the
//!   connection closes after its one response (no keep-alive), so a body
//!   never sent holds nothing but its own connection.
//! - **Connections are bounded** ([`Limits::max_conns`], from the file
//!   limit): past it, the oldest connection still waiting for its head is
//!   closed to make room, so idle connections cannot lock a probe out, and
//!   the process never runs out of descriptors because of them. An accept
//!   that fails (EMFILE included) closes the oldest idle connection, waits a
//!   moment and goes on: the listener never ends.
//! - **No panic path**: a route is a plain function run on a blocking
//!   thread; a panic there is a 500 for that request.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Notify;

/// The most a request head may take (hyper's smallest read buffer).
pub const MAX_HEAD: usize = 8192;

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(code: u16, body: impl Into<String>) -> Self {
        Reply {
            code,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// What answers a GET: the path (without the query) in, the reply out. It
/// runs on a blocking thread (it may read the pinned maps).
pub type Routes = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// How much one listener lets its clients take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most; past it the oldest idle one is closed.
    pub max_conns: usize,
    /// Time for a request head to arrive.
    pub head_timeout: Duration,
    /// Time for a whole connection, response included.
    pub conn_timeout: Duration,
}

impl Limits {
    /// Limits for a process with this many file descriptors at most (its
    /// RLIMIT_NOFILE): a quarter of them per listener, 1024 at most, so two
    /// listeners full of idle clients leave half for the maps, the netns
    /// walks and the API server's connections.
    pub fn for_fd_limit(nofile: u64) -> Self {
        let quarter = (nofile / 4).clamp(16, 1024);
        Limits {
            max_conns: quarter as usize,
            head_timeout: Duration::from_secs(5),
            conn_timeout: Duration::from_secs(30),
        }
    }

    /// [`Limits::for_fd_limit`] of this process's soft file limit.
    pub fn for_this_process() -> Self {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        Self::for_fd_limit(nofile)
    }
}

/// One open connection: whether it is being answered, and how to close it.
struct Conn {
    busy: AtomicBool,
    close: Notify,
}

/// The open connections of one listener, oldest first.
#[derive(Default)]
struct Open {
    next: u64,
    conns: BTreeMap<u64, Arc<Conn>>,
}

impl Open {
    /// Close the oldest connection that is not being answered. Returns
    /// whether there was one.
    fn evict_oldest_idle(&mut self, except: Option<u64>) -> bool {
        let victim = self
            .conns
            .iter()
            .find(|(id, c)| Some(**id) != except && !c.busy.load(Ordering::Relaxed))
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.conns.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// Bind `addr` now, so a bad or taken address fails the command at once.
/// `flag` names the option that gave it, for the error.
pub fn bind(addr: SocketAddr, flag: &str) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).with_context(|| {
        format!("{flag} {addr}: cannot listen (another process has the port, or the address is not on this host)")
    })?;
    l.set_nonblocking(true)
        .with_context(|| format!("{flag} {addr}: set non-blocking"))?;
    Ok(l)
}

/// Serve `routes` on `listener` until the runtime ends.
pub async fn serve(listener: std::net::TcpListener, routes: Routes, limits: Limits) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("netnsxl: http: cannot register the listener: {e}");
            return;
        }
    };
    let open = Arc::new(Mutex::new(Open::default()));
    let mut last_complaint: Option<Instant> = None;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors (or another passing error): make room
                // and go on; say so at most once a minute.
                if last_complaint.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    eprintln!(
                        "netnsxl: http: accept failed: {e}; closing the oldest idle connection"
                    );
                    last_complaint = Some(Instant::now());
                }
                lock(&open).evict_oldest_idle(None);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn {
            busy: AtomicBool::new(false),
            close: Notify::new(),
        });
        let id = {
            let mut o = lock(&open);
            let id = o.next;
            o.next += 1;
            o.conns.insert(id, conn.clone());
            if o.conns.len() > limits.max_conns && !o.evict_oldest_idle(Some(id)) {
                // Every other connection is being answered: this one waits
                // for nothing, it goes.
                o.conns.remove(&id);
                continue;
            }
            id
        };
        let routes = routes.clone();
        let open = open.clone();
        tokio::spawn(async move {
            one_connection(stream, conn, routes, limits).await;
            lock(&open).conns.remove(&id);
        });
    }
}

fn lock(open: &Mutex<Open>) -> std::sync::MutexGuard<'_, Open> {
    // A panic while the lock is held cannot leave the map half-changed
    // (each change is one call), so a poisoned lock is still good.
    open.lock().unwrap_or_else(|p| p.into_inner())
}

async fn one_connection(
    stream: tokio::net::TcpStream,
    conn: Arc<Conn>,
    routes: Routes,
    limits: Limits,
) {
    let busy = conn.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let routes = routes.clone();
        let busy = busy.clone();
        async move {
            busy.busy.store(true, Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(answer(&req, routes).await)
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(MAX_HEAD)
        .max_headers(64)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = tokio::time::timeout(limits.conn_timeout, served) => {}
        _ = conn.close.notified() => {}
    }
}

async fn answer(req: &Request<Incoming>, routes: Routes) -> Response<Full<Bytes>> {
    let reply = if req.method() != Method::GET && req.method() != Method::HEAD {
        Reply::text(405, "only GET is served\n")
    } else {
        let path = req.uri().path().to_string();
        match tokio::task::spawn_blocking(move || routes(&path)).await {
            Ok(r) => r,
            Err(_) => Reply::text(500, "the handler failed\n"),
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = StatusCode::from_u16(reply.code).unwrap_or(StatusCode::OK);
    if let Ok(v) = hyper::header::HeaderValue::from_str(reply.content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// Serve each (listener, routes) on a thread of its own with a small
/// runtime: for `apply --watch`, whose loop is not async.
pub fn serve_on_thread(listeners: Vec<(std::net::TcpListener, Routes)>) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the HTTP server's runtime")?;
    let limits = Limits::for_this_process();
    std::thread::Builder::new()
        .name("netnsxl-http".into())
        .spawn(move || {
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (l, r) in listeners {
                    tasks.push(tokio::spawn(serve(l, r, limits)));
                }
                for t in tasks {
                    let _ = t.await;
                }
            })
        })
        .context("start the HTTP server's thread")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_leave_half_the_descriptors() {
        let l = Limits::for_fd_limit(1024);
        assert_eq!(l.max_conns, 256);
        assert_eq!(Limits::for_fd_limit(1 << 20).max_conns, 1024);
        assert_eq!(Limits::for_fd_limit(20).max_conns, 16);
    }

    #[test]
    fn eviction_takes_the_oldest_idle_connection() {
        let mut o = Open::default();
        for id in 0..3 {
            o.conns.insert(
                id,
                Arc::new(Conn {
                    busy: AtomicBool::new(id == 0),
                    close: Notify::new(),
                }),
            );
        }
        // 0 is busy, so 1 goes; 2 is the caller's own.
        assert!(o.evict_oldest_idle(Some(2)));
        assert_eq!(o.conns.keys().copied().collect::<Vec<_>>(), vec![0, 2]);
        assert!(!o.evict_oldest_idle(Some(2)));
    }
}
