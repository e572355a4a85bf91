//! Files `netnsxl apply` reads: netnsxl's own format and Kubernetes objects.
//!
//! netnsxl's format (YAML or JSON) is a list of services, with the fields of
//! `svc add` (see the README); the array `svc list -o json` prints is valid
//! input, so a dump can be applied again. Kubernetes input is what
//! `kubectl get services,endpointslices -A -o json` prints: v1 Services and
//! discovery.k8s.io/v1 EndpointSlices, joined by the
//! `kubernetes.io/service-name` label. One Kubernetes port becomes one
//! netnsxl service per frontend kind (each cluster IP, the NodePort, each
//! external IP, each load-balancer ingress IP).
//!
//! Every error names where in the file it is (`items[3] (Service web/api)
//! spec.ports[0].port`) and what to write instead.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Map, Value};

use crate::bpf::NAME_LEN;
use crate::model::addr::{BackendSpec, Proto, parse_endpoint};
use crate::model::redirect::{RedirectBackend, RedirectSpec};
use crate::model::service::{
    AFFINITY_TIMEOUT_DEFAULT, FrontendSpec, ServiceSpec, SvcType, select_topology,
};
use crate::model::topology::{self, Hints, Place, Topology, TrafficDist};

/// A service from a file, with where it came from (for errors).
#[derive(Clone, Debug)]
pub struct Entry {
    pub source: String,
    pub spec: ServiceSpec,
}

/// What a file holds, for the report.
#[derive(Debug, Default)]
pub struct Parsed {
    pub entries: Vec<Entry>,
    pub kubernetes: bool,
    /// Things left out on purpose (ExternalName, SCTP, headless...).
    pub skipped: Vec<String>,
    /// This node's zone, from the Node object named --node-name (Kubernetes
    /// input that holds Nodes): Some("") when that Node has no zone label.
    pub zone: Option<String>,
    /// Whether the file says which services there are (a native file may
    /// hold only redirects: then services are left as they are).
    pub has_services: bool,
    /// The local redirects a native file's `redirects:` lists (None: the
    /// file has no such list, and redirects are left as they are).
    pub redirects: Option<Vec<RedirectSpec>>,
}

/// Parse a file's text. `place` is this node: its name decides which
/// endpoints are local, its zone (unless the input holds this node's Node
/// object) which topology hints match.
pub fn parse(text: &str, place: Place) -> Result<Parsed> {
    let value = parse_value(text)?;
    if is_kubernetes(&value) {
        return kubernetes(&value, place);
    }
    native(&value, place)
}

/// JSON when it looks like JSON (its errors have line and column), else YAML.
fn parse_value(text: &str) -> Result<Value> {
    let t = text.trim_start();
    if t.is_empty() {
        bail!(
            "the file is empty: give a list of services, or Kubernetes objects as kubectl get -o json prints them"
        );
    }
    if t.starts_with('{') || t.starts_with('[') {
        // Several documents in a row (`{ kubectl get node N -o json;
        // kubectl get services,endpointslices -A -o json; }`) are one List
        // of all their objects.
        let mut docs = Vec::new();
        for d in serde_json::Deserializer::from_str(text).into_iter::<Strict>() {
            docs.push(d.map_err(|e| anyhow!("not valid JSON: {e}"))?.0);
        }
        if docs.len() == 1 {
            return Ok(docs.remove(0));
        }
        if !docs.iter().all(is_kubernetes) {
            bail!(
                "the input holds {} JSON documents: several in a row must all be Kubernetes objects or Lists",
                docs.len()
            );
        }
        let mut items = Vec::new();
        for d in docs {
            match d {
                Value::Object(mut o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                    if let Some(Value::Array(a)) = o.remove("items") {
                        items.extend(a);
                    }
                }
                Value::Array(a) => items.extend(a),
                other => items.push(other),
            }
        }
        Ok(serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}))
    } else {
        serde_yaml_ng::from_str::<Strict>(text)
            .map(|s| s.0)
            .map_err(|e| anyhow!("not valid YAML: {e}"))
    }
}

/// A JSON value read so that a key given twice in one mapping is an error
/// (both parsers would otherwise keep the last one silently).
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON or YAML value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Strict, E> {
        Ok(Strict(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Strict, E> {
        Ok(Strict(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }
    fn visit_unit<E>(self) -> std::result::Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_none<E>(self) -> std::result::Result<Strict, E> {
        Ok(Strict(Value::Null))
    }
    fn visit_some<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Strict, D::Error> {
        serde::Deserialize::deserialize(d)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format!(
                    "the key {k:?} is given twice in one mapping; give it once"
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Strict(Value::Object(out)))
    }
}

fn is_kubernetes(v: &Value) -> bool {
    let has_kind = |o: &Value| o.get("kind").is_some() && o.get("apiVersion").is_some();
    match v {
        Value::Object(_) if has_kind(v) => true,
        Value::Array(a) => a.first().is_some_and(has_kind),
        _ => false,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn obj<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| anyhow!("{at} is {}, expected a mapping", type_name(v)))
}

fn opt_str<'a>(o: &'a Map<String, Value>, field: &str, at: &str) -> Result<Option<&'a str>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => bail!("{at}.{field} is {}, expected a string", type_name(v)),
    }
}

fn req_str<'a>(o: &'a Map<String, Value>, field: &str, at: &str) -> Result<&'a str> {
    opt_str(o, field, at)?.ok_or_else(|| anyhow!("{at}.{field} is missing"))
}

fn opt_u64(o: &Map<String, Value>, field: &str, at: &str) -> Result<Option<u64>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| anyhow!("{at}.{field} is {n}, expected a whole number >= 0")),
        Some(v) => bail!("{at}.{field} is {}, expected a number", type_name(v)),
    }
}

fn opt_bool(o: &Map<String, Value>, field: &str, at: &str) -> Result<Option<bool>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => bail!("{at}.{field} is {}, expected true or false", type_name(v)),
    }
}

fn opt_list<'a>(o: &'a Map<String, Value>, field: &str, at: &str) -> Result<&'a [Value]> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => bail!("{at}.{field} is {}, expected a list", type_name(v)),
    }
}

fn port(o: &Map<String, Value>, field: &str, at: &str) -> Result<Option<u16>> {
    match opt_u64(o, field, at)? {
        None => Ok(None),
        Some(p) if (1..=65535).contains(&p) => Ok(Some(p as u16)),
        Some(p) => bail!("{at}.{field} {p} is out of range: use 1-65535"),
    }
}

/// Fit a name into the metadata field (it is informational only).
fn fit_name(s: &str) -> String {
    let mut n = s.to_string();
    while n.len() >= NAME_LEN {
        n.pop();
    }
    n
}

// ---------------------------------------------------------------------------
// netnsxl's own format

const NATIVE_FIELDS: &[&str] = &[
    "name",
    "type",
    "frontend",
    "proto",
    "node_port",
    "backends",
    "session_affinity",
    "affinity_timeout",
    "internal_traffic_policy",
    "external_traffic_policy",
    "traffic_distribution",
    "origin",
    // Printed by `svc list -o json`, ignored on input.
    "topology",
    "svc_id",
    "frontends",
    "state",
];

fn native(v: &Value, place: Place) -> Result<Parsed> {
    let mut redirects = None;
    let (items, prefix): (&[Value], &str) = match v {
        Value::Array(a) => (a, ""),
        Value::Object(o) => {
            for k in o.keys() {
                if k != "services" && k != "redirects" {
                    bail!(
                        "unknown top-level field {k:?}: a netnsxl file has the fields services and redirects (lists); Kubernetes objects need apiVersion and kind"
                    );
                }
            }
            if o.contains_key("redirects") {
                let mut list = Vec::new();
                for (i, r) in opt_list(o, "redirects", "the file")?.iter().enumerate() {
                    list.push(native_redirect(r, &format!("redirects[{i}]"))?);
                }
                redirects = Some(list);
            }
            match o.get("services") {
                None if redirects.is_some() => (&[][..], "services"),
                Some(Value::Array(a)) => (a, "services"),
                // An empty mapping or `services:` with nothing after it is
                // more likely a mistake than "no services", and with
                // --prune it would delete every one: say it explicitly.
                Some(Value::Null) => bail!(
                    "services is empty (null): to mean no services write services: [] (with --prune that removes every service)"
                ),
                None => bail!(
                    "the file has no services list: to mean no services write services: [] (with --prune that removes every service)"
                ),
                Some(other) => bail!("services is {}, expected a list", type_name(other)),
            }
        }
        other => bail!(
            "the file is {}, expected a list of services (or a mapping with services:)",
            type_name(other)
        ),
    };
    let mut out = Parsed {
        has_services: !(items.is_empty() && redirects.is_some() && !has_key(v, "services")),
        redirects,
        ..Default::default()
    };
    for (i, item) in items.iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        let mut spec = native_service(item, &at)?;
        spec.apply_topology(place);
        out.entries.push(Entry {
            source: format!(
                "{at} ({} {}/{})",
                spec.svc_type.name(),
                spec.frontend.display(),
                spec.proto
            ),
            spec,
        });
    }
    Ok(out)
}

fn enum_field<T: clap::ValueEnum>(
    o: &Map<String, Value>,
    field: &str,
    at: &str,
) -> Result<Option<T>> {
    let Some(s) = opt_str(o, field, at)? else {
        return Ok(None);
    };
    T::from_str(s, true).map(Some).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        anyhow!("{at}.{field} {s:?} is not one of {}", names.join(", "))
    })
}

fn policy(o: &Map<String, Value>, field: &str, at: &str) -> Result<bool> {
    match opt_str(o, field, at)?
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("cluster") => Ok(false),
        Some("local") => Ok(true),
        Some(other) => bail!("{at}.{field} {other:?} is not one of cluster, local"),
    }
}

fn has_key(v: &Value, k: &str) -> bool {
    v.as_object().is_some_and(|o| o.contains_key(k))
}

fn native_redirect(v: &Value, at: &str) -> Result<RedirectSpec> {
    const FIELDS: &[&str] = &["name", "frontend", "proto", "backends", "skip_from_backend"];
    // Printed by `redirect list -o json`, ignored on input.
    const SHOWN: &[&str] = &["origin"];
    let o = obj(v, at)?;
    for k in o.keys() {
        if !FIELDS.contains(&k.as_str()) && !SHOWN.contains(&k.as_str()) {
            bail!(
                "{at}: unknown field {k:?}; the fields are {}",
                FIELDS.join(", ")
            );
        }
    }
    let frontend = req_str(o, "frontend", at)?;
    let mut backends = Vec::new();
    for (j, b) in opt_list(o, "backends", at)?.iter().enumerate() {
        let bat = format!("{at}.backends[{j}]");
        let rb = match b {
            Value::String(s) => {
                RedirectBackend::parse(s).map_err(|e| anyhow!("{bat}: {}", file_terms(&e)))?
            }
            // What `redirect list -o json` prints: netns is the one the user
            // named; the rest is read-only and ignored.
            Value::Object(bo) => {
                for k in bo.keys() {
                    if !["addr", "netns", "netns_found", "netns_cookie", "live"]
                        .contains(&k.as_str())
                    {
                        bail!("{bat}: unknown field {k:?}; the fields are addr, netns");
                    }
                }
                let mut s = req_str(bo, "addr", &bat)?.to_string();
                if let Some(n) = opt_str(bo, "netns", &bat)? {
                    s.push_str(&format!(",netns={n}"));
                }
                RedirectBackend::parse(&s).map_err(|e| anyhow!("{bat}: {}", file_terms(&e)))?
            }
            other => bail!(
                "{bat} is {}, expected \"ADDR:PORT[,netns=NAME]\"",
                type_name(other)
            ),
        };
        backends.push(rb);
    }
    let spec = RedirectSpec {
        name: opt_str(o, "name", at)?.unwrap_or_default().to_string(),
        frontend: parse_endpoint(&format!("{at}.frontend"), frontend)?,
        proto: enum_field(o, "proto", at)?.unwrap_or(Proto::Tcp),
        backends,
        skip_from_backend: opt_bool(o, "skip_from_backend", at)?.unwrap_or(false),
        from_file: true,
    };
    spec.validate()
        .map_err(|e| anyhow!("{at}: {}", file_terms(&e)))?;
    Ok(spec)
}

fn native_service(v: &Value, at: &str) -> Result<ServiceSpec> {
    let o = obj(v, at)?;
    for k in o.keys() {
        if !NATIVE_FIELDS.contains(&k.as_str()) {
            bail!(
                "{at}: unknown field {k:?}; the fields are {}",
                NATIVE_FIELDS[..11].join(", ")
            );
        }
    }
    let svc_type: SvcType = enum_field(o, "type", at)?.ok_or_else(|| {
        anyhow!(
            "{at}.type is missing: one of clusterip, nodeport, externalip, loadbalancer, hostport"
        )
    })?;
    let proto: Proto = enum_field(o, "proto", at)?.unwrap_or(Proto::Tcp);
    let node_port = port(o, "node_port", at)?;
    let mut backends = Vec::new();
    for (j, b) in opt_list(o, "backends", at)?.iter().enumerate() {
        let bat = format!("{at}.backends[{j}]");
        let spec = match b {
            Value::String(s) => {
                BackendSpec::parse(s).map_err(|e| anyhow!("{bat}: {}", file_terms(&e)))?
            }
            Value::Object(bo) => {
                for k in bo.keys() {
                    if ![
                        "addr",
                        "local",
                        "terminating",
                        "zone",
                        "node",
                        "id",
                        "off_topology",
                    ]
                    .contains(&k.as_str())
                    {
                        bail!(
                            "{bat}: unknown field {k:?}; the fields are addr, local, terminating, zone, node"
                        );
                    }
                }
                let addr = req_str(bo, "addr", &bat)?;
                let zone = opt_str(bo, "zone", &bat)?;
                if let Some(z) = zone {
                    topology::check_zone(&format!("{bat}.zone"), z)?;
                }
                BackendSpec {
                    local: opt_bool(bo, "local", &bat)?.unwrap_or(false),
                    terminating: opt_bool(bo, "terminating", &bat)?.unwrap_or(false),
                    zone: zone.map(Into::into),
                    node: opt_str(bo, "node", &bat)?.map(Into::into),
                    ..BackendSpec::new(parse_endpoint(&format!("{bat}.addr"), addr)?)
                }
            }
            other => bail!(
                "{bat} is {}, expected \"ADDR:PORT[,local][,terminating]\" or {{addr: ADDR:PORT}}",
                type_name(other)
            ),
        };
        backends.push(spec);
    }
    let frontend = match (svc_type, opt_str(o, "frontend", at)?, node_port) {
        (SvcType::Nodeport, None, Some(p)) => FrontendSpec {
            ip: None,
            port: p,
            ipv6: backends.first().is_some_and(|b| b.addr.is_ipv6()),
        },
        (_, Some(f), _) => {
            FrontendSpec::parse(f).map_err(|e| anyhow!("{at}.frontend: {}", file_terms(&e)))?
        }
        (_, None, _) => bail!("{at}.frontend is missing: ADDR:PORT (or :PORT for a nodeport)"),
    };
    let node_port = if svc_type == SvcType::Nodeport {
        if node_port.is_some_and(|p| p != frontend.port) {
            bail!(
                "{at}.node_port differs from the frontend's port: a nodeport's frontend is :PORT"
            );
        }
        None
    } else {
        node_port
    };
    let affinity_on = match opt_str(o, "session_affinity", at)?
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("none") => None,
        Some("client-ip") | Some("clientip") => Some(true),
        Some(other) => bail!("{at}.session_affinity {other:?} is not one of none, client-ip"),
    };
    let timeout = match opt_u64(o, "affinity_timeout", at)? {
        Some(t) if t > u32::MAX as u64 => {
            bail!("{at}.affinity_timeout {t} is out of range: 1..=86400 seconds")
        }
        t => t.map(|t| t as u32),
    };
    let affinity_timeout = match (affinity_on, timeout) {
        (Some(true), t) => Some(t.unwrap_or(AFFINITY_TIMEOUT_DEFAULT)),
        (_, Some(t)) => Some(t),
        _ => None,
    };
    let spec = ServiceSpec {
        name: opt_str(o, "name", at)?.unwrap_or_default().to_string(),
        svc_type,
        frontend,
        proto,
        node_port,
        backends,
        affinity_timeout,
        internal_local: policy(o, "internal_traffic_policy", at)?,
        external_local: policy(o, "external_traffic_policy", at)?,
        from_kubernetes: opt_str(o, "origin", at)? == Some("kubernetes"),
        topology: Topology {
            distribution: match opt_str(o, "traffic_distribution", at)? {
                Some(s) => TrafficDist::parse(&format!("{at}.traffic_distribution"), s)?,
                None => TrafficDist::None,
            },
            ..Topology::default()
        },
    };
    spec.validate()
        .map_err(|e| anyhow!("{at}: {}", file_terms(&e)))?;
    Ok(spec)
}

/// Errors written for the command line, in the file's field names.
pub fn file_terms(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .replace("--frontend", "frontend")
        .replace("--backend", "backend")
        .replace("--affinity-timeout", "affinity_timeout")
        .replace("--node-port", "node_port")
        .replace("--name", "name")
        .replace("--type loadbalancer", "type: loadbalancer")
        .replace("--traffic-distribution", "traffic_distribution")
        .replace("--skip-from-backend", "skip_from_backend")
}

// ---------------------------------------------------------------------------
// Kubernetes objects
//
// Each object is checked and reduced on its own (`K8sService::parse`,
// `K8sSlice::parse`), so a watch can keep the last good version of an
// object that fails and name it; `k8s_entries` then turns a Service and its
// slices into services. A file is the same steps over all its items.

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One port of a Service.
#[derive(Clone, Debug, PartialEq)]
struct K8sPort {
    name: Box<str>,
    number: u16,
    proto: Proto,
    node_port: Option<u16>,
}

/// A Service, checked, holding only what its frontends need.
#[derive(Clone, Debug, PartialEq)]
pub struct K8sService {
    /// Where it came from, for errors ("items[3] (Service ns/name)").
    at: Box<str>,
    pub namespace: Box<str>,
    pub name: Box<str>,
    cluster_ips: Vec<IpAddr>,
    /// IP families, false for IPv4.
    families: Vec<bool>,
    external: Vec<IpAddr>,
    ingress: Vec<IpAddr>,
    affinity_timeout: Option<u32>,
    internal_local: bool,
    external_local: bool,
    traffic_distribution: TrafficDist,
    ports: Vec<K8sPort>,
    /// What is left out on purpose (ExternalName, headless, SCTP ports).
    skipped: Vec<String>,
}

/// An EndpointSlice, checked, holding only its usable endpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct K8sSlice {
    /// The Service it belongs to (its kubernetes.io/service-name label).
    pub service: Box<str>,
    ipv6: bool,
    /// (name, protocol, number); SCTP ports are dropped.
    ports: Vec<(Box<str>, Proto, u16)>,
    /// Ready endpoints, and serving-terminating ones (marked terminating,
    /// used only when no ready one is left).
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq)]
struct SliceEndpoint {
    ip: IpAddr,
    local: bool,
    terminating: bool,
    /// hints.forZones / hints.forNodes (None: no hints at all).
    hints: Option<Box<Hints>>,
}

/// What one Kubernetes object is.
pub enum K8sObject {
    Service(K8sService),
    /// A slice, or None when it is left out (no service label, FQDN).
    Slice(Option<K8sSlice>),
    /// A Node: its name and topology.kubernetes.io/zone label ("" without).
    Node {
        name: String,
        zone: String,
    },
    /// Another kind: left out, with the reason.
    Other(String),
}

const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The kind, namespace and name of an object, before it is checked further.
pub fn k8s_identity(o: &Map<String, Value>, at: &str) -> Result<(String, String, String)> {
    let kind = req_str(o, "kind", at)?;
    let meta = obj(
        o.get("metadata")
            .ok_or_else(|| anyhow!("{at}.metadata is missing"))?,
        &format!("{at}.metadata"),
    )?;
    let name = req_str(meta, "name", &format!("{at}.metadata"))?;
    let namespace = opt_str(meta, "namespace", &format!("{at}.metadata"))?.unwrap_or("default");
    Ok((kind.to_string(), namespace.to_string(), name.to_string()))
}

/// Check one object. `at` names it in errors; `node_name` decides which
/// endpoints are local.
pub fn k8s_object(v: &Value, at: &str, node_name: &str) -> Result<K8sObject> {
    let o = obj(v, at)?;
    let (kind, namespace, name) = k8s_identity(o, at)?;
    let api = req_str(o, "apiVersion", at)?;
    match (kind.as_str(), api) {
        ("Service", "v1") => {
            let at = format!("{at} (Service {namespace}/{name})");
            Ok(K8sObject::Service(K8sService::parse(
                o, &at, &namespace, &name,
            )?))
        }
        ("EndpointSlice", "discovery.k8s.io/v1") => {
            let at = format!("{at} (EndpointSlice {namespace}/{name})");
            K8sSlice::parse(o, &at, node_name).map(K8sObject::Slice)
        }
        ("Node", "v1") => {
            let meta = obj(
                o.get("metadata")
                    .ok_or_else(|| anyhow!("{at}.metadata is missing"))?,
                &format!("{at}.metadata"),
            )?;
            let zone = match meta.get("labels") {
                Some(l) => opt_str(obj(l, &format!("{at}.metadata.labels"))?, ZONE_LABEL, at)?,
                None => None,
            }
            .unwrap_or_default()
            .to_string();
            topology::check_zone(
                &format!("{at} (Node {name}) metadata.labels[{ZONE_LABEL}]"),
                &zone,
            )?;
            Ok(K8sObject::Node { name, zone })
        }
        ("Endpoints", _) => Ok(K8sObject::Other(format!(
            "{at}: v1 Endpoints (EndpointSlices are read instead)"
        ))),
        _ => Ok(K8sObject::Other(format!("{at}: {api} {kind}"))),
    }
}

fn k8s_items(v: &Value) -> Result<Vec<(String, &Value)>> {
    let (items, prefix): (&[Value], &str) = match v {
        Value::Array(a) => (a, ""),
        Value::Object(o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
            (opt_list(o, "items", "the List")?, "items")
        }
        Value::Object(_) => return Ok(vec![("the object".to_string(), v)]),
        _ => (&[], ""),
    };
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, it)| (format!("{prefix}[{i}]"), it))
        .collect())
}

fn kubernetes(v: &Value, place: Place) -> Result<Parsed> {
    let mut out = Parsed {
        kubernetes: true,
        has_services: true,
        ..Default::default()
    };
    let mut services = Vec::new();
    let mut slices: HashMap<(String, String), Vec<K8sSlice>> = HashMap::new();
    for (at, item) in k8s_items(v)? {
        match k8s_object(item, &at, place.node)? {
            K8sObject::Node { name, zone } => {
                if name == place.node {
                    out.zone = Some(zone);
                }
            }
            K8sObject::Service(s) => services.push(s),
            K8sObject::Slice(Some(s)) => {
                let (_, namespace, _) = k8s_identity(obj(item, &at)?, &at)?;
                slices
                    .entry((namespace, s.service.to_string()))
                    .or_default()
                    .push(s);
            }
            K8sObject::Slice(None) => {
                // Left out: say why (the reason is in the slice itself).
                let o = obj(item, &at)?;
                let (_, namespace, name) = k8s_identity(o, &at)?;
                out.skipped.push(slice_skip_reason(
                    o,
                    &format!("{at} (EndpointSlice {namespace}/{name})"),
                ));
            }
            K8sObject::Other(why) => out.skipped.push(why),
        }
    }
    let zone = out.zone.clone();
    let place = Place {
        zone: zone.as_deref().unwrap_or(place.zone),
        ..place
    };
    for s in &services {
        let mine: Vec<&K8sSlice> = slices
            .get(&(s.namespace.to_string(), s.name.to_string()))
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        out.entries.extend(k8s_entries(s, &mine, place)?);
        out.skipped.extend(s.skipped.iter().cloned());
    }
    Ok(out)
}

fn slice_skip_reason(o: &Map<String, Value>, at: &str) -> String {
    if o.get("addressType").and_then(Value::as_str) == Some("FQDN") {
        format!("{at}: FQDN endpoints")
    } else {
        format!("{at}: no {SERVICE_NAME_LABEL} label")
    }
}

fn k8s_proto(o: &Map<String, Value>, at: &str) -> Result<Option<Proto>> {
    match opt_str(o, "protocol", at)?.unwrap_or("TCP") {
        "TCP" => Ok(Some(Proto::Tcp)),
        "UDP" => Ok(Some(Proto::Udp)),
        "SCTP" => Ok(None),
        other => bail!("{at}.protocol {other:?} is not one of TCP, UDP, SCTP"),
    }
}

impl K8sSlice {
    /// Check a slice whole. None when it is left out on purpose (no
    /// service label, FQDN addresses).
    pub fn parse(o: &Map<String, Value>, at: &str, node_name: &str) -> Result<Option<K8sSlice>> {
        let meta = obj(
            o.get("metadata")
                .ok_or_else(|| anyhow!("{at}.metadata is missing"))?,
            &format!("{at}.metadata"),
        )?;
        let labels = match meta.get("labels") {
            Some(l) => Some(obj(l, &format!("{at}.metadata.labels"))?),
            None => None,
        };
        let Some(service) = labels
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .and_then(Value::as_str)
        else {
            return Ok(None);
        };
        let ipv6 = match req_str(o, "addressType", at)? {
            "IPv4" => false,
            "IPv6" => true,
            "FQDN" => return Ok(None),
            other => bail!("{at}.addressType {other:?} is not one of IPv4, IPv6, FQDN"),
        };
        let mut ports = Vec::new();
        for (j, p) in opt_list(o, "ports", at)?.iter().enumerate() {
            let pat = format!("{at}.ports[{j}]");
            let po = obj(p, &pat)?;
            let name = opt_str(po, "name", &pat)?.unwrap_or("");
            let proto = k8s_proto(po, &pat)?;
            let number = port(po, "port", &pat)?;
            if let Some(proto) = proto {
                let number = number.ok_or_else(|| anyhow!("{pat}.port is missing"))?;
                ports.push((name.into(), proto, number));
            }
        }
        let mut endpoints = Vec::new();
        for (j, e) in opt_list(o, "endpoints", at)?.iter().enumerate() {
            let eat = format!("{at}.endpoints[{j}]");
            let eo = obj(e, &eat)?;
            let cond = match eo.get("conditions") {
                Some(c) => obj(c, &format!("{eat}.conditions"))?.clone(),
                None => Map::new(),
            };
            let cat = format!("{eat}.conditions");
            // Kubernetes: an unset ready means ready; unset serving follows
            // ready; unset terminating means not terminating.
            let ready = opt_bool(&cond, "ready", &cat)?.unwrap_or(true);
            let serving = opt_bool(&cond, "serving", &cat)?.unwrap_or(ready);
            let terminating = opt_bool(&cond, "terminating", &cat)?.unwrap_or(false);
            let local = opt_str(eo, "nodeName", &eat)? == Some(node_name);
            let addrs = opt_list(eo, "addresses", &eat)?;
            if addrs.is_empty() {
                bail!("{eat}.addresses is missing or empty");
            }
            let usable_terminating = !ready && serving && terminating;
            let hints = slice_hints(eo, &eat)?;
            for (k, a) in addrs.iter().enumerate() {
                let aat = format!("{eat}.addresses[{k}]");
                let a = a
                    .as_str()
                    .ok_or_else(|| anyhow!("{aat} is {}, expected an IP address", type_name(a)))?;
                let ip: IpAddr = a
                    .parse()
                    .map_err(|_| anyhow!("{aat} {a:?} is not an IP address"))?;
                if ip.is_ipv6() != ipv6 {
                    bail!("{aat} {a} is not of the slice's addressType");
                }
                if ready || usable_terminating {
                    endpoints.push(SliceEndpoint {
                        ip,
                        local,
                        terminating: !ready,
                        hints: hints.clone(),
                    });
                }
            }
        }
        Ok(Some(K8sSlice {
            service: service.into(),
            ipv6,
            ports,
            endpoints,
        }))
    }
}

/// An endpoint's hints.forZones[].name and hints.forNodes[].name.
fn slice_hints(eo: &Map<String, Value>, eat: &str) -> Result<Option<Box<Hints>>> {
    let Some(h) = eo.get("hints").filter(|h| !h.is_null()) else {
        return Ok(None);
    };
    let hat = format!("{eat}.hints");
    let ho = obj(h, &hat)?;
    let names = |field: &str| -> Result<Vec<Box<str>>> {
        let mut out = Vec::new();
        for (i, z) in opt_list(ho, field, &hat)?.iter().enumerate() {
            let zat = format!("{hat}.{field}[{i}]");
            out.push(req_str(obj(z, &zat)?, "name", &zat)?.into());
        }
        Ok(out)
    };
    let hints = Hints {
        zones: names("forZones")?,
        nodes: names("forNodes")?,
    };
    Ok((!hints.zones.is_empty() || !hints.nodes.is_empty()).then(|| Box::new(hints)))
}

/// The backends of one Service port in one family, from its slices, with
/// kube-proxy's topology mode (the ones it leaves out marked).
fn k8s_backends(
    slices: &[&K8sSlice],
    port_name: &str,
    proto: Proto,
    ipv6: bool,
    place: Place,
) -> (Vec<BackendSpec>, topology::Mode) {
    let mut out: BTreeMap<SocketAddr, (BackendSpec, Option<Hints>)> = BTreeMap::new();
    for s in slices.iter().filter(|s| s.ipv6 == ipv6) {
        let Some(number) = s
            .ports
            .iter()
            .rev()
            .find(|(n, p, _)| &**n == port_name && *p == proto)
            .map(|(_, _, n)| *n)
        else {
            continue;
        };
        for e in &s.endpoints {
            let addr = SocketAddr::new(e.ip, number);
            let b = BackendSpec {
                local: e.local,
                terminating: e.terminating,
                ..BackendSpec::new(addr)
            };
            let hints = e.hints.as_deref().cloned();
            // The same endpoint in two slices: ready wins.
            out.entry(addr)
                .and_modify(|(o, h)| {
                    if o.terminating && !b.terminating {
                        o.terminating = false;
                        h.clone_from(&hints);
                    }
                })
                .or_insert((b, hints));
        }
    }
    let (mut backends, hints): (Vec<BackendSpec>, Vec<Option<Hints>>) = out.into_values().unzip();
    let mode = select_topology(&mut backends, &hints, place);
    (backends, mode)
}

impl K8sService {
    /// What of it is not served, each as "where: why".
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    pub fn parse(
        o: &Map<String, Value>,
        at: &str,
        namespace: &str,
        name: &str,
    ) -> Result<K8sService> {
        let mut out = K8sService {
            at: at.into(),
            namespace: namespace.into(),
            name: name.into(),
            cluster_ips: Vec::new(),
            families: Vec::new(),
            external: Vec::new(),
            ingress: Vec::new(),
            affinity_timeout: None,
            internal_local: false,
            external_local: false,
            traffic_distribution: TrafficDist::None,
            ports: Vec::new(),
            skipped: Vec::new(),
        };
        let spec = obj(
            o.get("spec")
                .ok_or_else(|| anyhow!("{at}.spec is missing"))?,
            &format!("{at}.spec"),
        )?;
        let sat = format!("{at}.spec");
        let ty = opt_str(spec, "type", &sat)?.unwrap_or("ClusterIP");
        match ty {
            "ClusterIP" | "NodePort" | "LoadBalancer" => {}
            "ExternalName" => {
                out.skipped.push(format!("{at}: ExternalName (DNS only)"));
                return Ok(out);
            }
            other => bail!(
                "{sat}.type {other:?} is not one of ClusterIP, NodePort, LoadBalancer, ExternalName"
            ),
        }
        let mut cluster_ips: Vec<String> = opt_list(spec, "clusterIPs", &sat)?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if cluster_ips.is_empty()
            && let Some(ip) = opt_str(spec, "clusterIP", &sat)?
        {
            cluster_ips.push(ip.to_string());
        }
        for (i, c) in cluster_ips.iter().enumerate() {
            if c == "None" || c.is_empty() {
                continue;
            }
            out.cluster_ips.push(
                c.parse::<IpAddr>()
                    .map_err(|_| anyhow!("{sat}.clusterIPs[{i}] {c:?} is not an IP address"))?,
            );
        }
        if out.cluster_ips.is_empty() && !cluster_ips.is_empty() {
            out.skipped.push(format!("{at}: headless (clusterIP None)"));
            return Ok(out);
        }
        let mut families: Vec<bool> = out.cluster_ips.iter().map(|ip| ip.is_ipv6()).collect();
        if families.is_empty() {
            for f in opt_list(spec, "ipFamilies", &sat)? {
                families.push(f.as_str() == Some("IPv6"));
            }
        }
        if families.is_empty() {
            families.push(false);
        }
        families.dedup();
        for (i, e) in opt_list(spec, "externalIPs", &sat)?.iter().enumerate() {
            let s = e.as_str().unwrap_or_default();
            out.external.push(
                s.parse::<IpAddr>()
                    .map_err(|_| anyhow!("{sat}.externalIPs[{i}] {e} is not an IP address"))?,
            );
        }
        if ty == "LoadBalancer"
            && let Some(status) = o.get("status")
            && let Some(lb) = obj(status, &format!("{at}.status"))?.get("loadBalancer")
        {
            let lat = format!("{at}.status.loadBalancer");
            for (i, g) in opt_list(obj(lb, &lat)?, "ingress", &lat)?
                .iter()
                .enumerate()
            {
                let gat = format!("{lat}.ingress[{i}]");
                // kube-proxy leaves an ingress IP whose load balancer
                // proxies (ipMode Proxy) to it: clients in the cluster go
                // through the load balancer too.
                if opt_str(obj(g, &gat)?, "ipMode", &gat)? == Some("Proxy") {
                    out.skipped.push(format!(
                        "{gat}: ipMode Proxy (reached through the load balancer)"
                    ));
                    continue;
                }
                if let Some(ip) = opt_str(obj(g, &gat)?, "ip", &gat)? {
                    out.ingress.push(
                        ip.parse::<IpAddr>()
                            .map_err(|_| anyhow!("{gat}.ip {ip:?} is not an IP address"))?,
                    );
                }
            }
        }
        out.affinity_timeout = match opt_str(spec, "sessionAffinity", &sat)?.unwrap_or("None") {
            "None" => None,
            "ClientIP" => {
                let t = spec
                    .get("sessionAffinityConfig")
                    .and_then(|c| c.get("clientIP"))
                    .and_then(|c| c.get("timeoutSeconds"));
                match t {
                    None | Some(Value::Null) => Some(AFFINITY_TIMEOUT_DEFAULT),
                    Some(v) => Some(
                        v.as_u64()
                            .filter(|t| (1..=86400).contains(t))
                            .ok_or_else(|| anyhow!("{sat}.sessionAffinityConfig.clientIP.timeoutSeconds {v} is out of range: 1..=86400"))?
                            as u32,
                    ),
                }
            }
            other => bail!("{sat}.sessionAffinity {other:?} is not one of None, ClientIP"),
        };
        let local =
            |field: &str| -> Result<bool> { Ok(opt_str(spec, field, &sat)? == Some("Local")) };
        out.internal_local = local("internalTrafficPolicy")?;
        out.external_local = local("externalTrafficPolicy")?;
        if let Some(td) = opt_str(spec, "trafficDistribution", &sat)? {
            // An unknown value is ignored by kube-proxy and the controller.
            out.traffic_distribution =
                TrafficDist::parse("trafficDistribution", td).unwrap_or_default();
        }
        out.families = families;

        let ports = opt_list(spec, "ports", &sat)?;
        if ports.is_empty() {
            out.skipped.push(format!("{at}: no ports"));
        }
        for (j, p) in ports.iter().enumerate() {
            let pat = format!("{sat}.ports[{j}]");
            let po = obj(p, &pat)?;
            let number = port(po, "port", &pat)?.ok_or_else(|| anyhow!("{pat}.port is missing"))?;
            let Some(proto) = k8s_proto(po, &pat)? else {
                out.skipped.push(format!("{pat}: SCTP"));
                continue;
            };
            let port_name = opt_str(po, "name", &pat)?.unwrap_or("");
            let node_port = if ty == "ClusterIP" {
                None
            } else {
                port(po, "nodePort", &pat)?
            };
            out.ports.push(K8sPort {
                name: port_name.into(),
                number,
                proto,
                node_port,
            });
        }
        // The frontends must be valid on their own (e.g. names that fit):
        // refuse the Service now, not when its slices arrive.
        let nowhere = Place { node: "", zone: "" };
        k8s_entries(&out, &[], nowhere)?;
        Ok(out)
    }
}

/// The services (one per port, protocol and frontend) a Service and its
/// slices describe.
pub fn k8s_entries(svc: &K8sService, slices: &[&K8sSlice], place: Place) -> Result<Vec<Entry>> {
    let (at, namespace, name) = (&*svc.at, &*svc.namespace, &*svc.name);
    let sat = format!("{at}.spec");
    let mut out = Vec::new();
    for (j, p) in svc.ports.iter().enumerate() {
        let pat = format!("{sat}.ports[{j}]");
        let label = if p.name.is_empty() {
            format!("{namespace}/{name}:{}", p.number)
        } else {
            format!("{namespace}/{name}:{}", p.name)
        };
        let mut push = |svc_type: SvcType, ip: Option<IpAddr>, fport: u16, v6: bool, what: &str| {
            let (backends, mode) = k8s_backends(slices, &p.name, p.proto, v6, place);
            let spec = ServiceSpec {
                name: fit_name(&label),
                svc_type,
                frontend: FrontendSpec {
                    ip,
                    port: fport,
                    ipv6: v6,
                },
                proto: p.proto,
                node_port: None,
                backends,
                affinity_timeout: svc.affinity_timeout,
                internal_local: svc.internal_local,
                external_local: svc.external_local,
                from_kubernetes: true,
                topology: Topology {
                    mode,
                    distribution: svc.traffic_distribution,
                },
            };
            out.push(Entry {
                source: format!("{pat} ({what} {}/{})", spec.frontend.display(), p.proto),
                spec,
            });
        };
        for ip in &svc.cluster_ips {
            push(
                SvcType::Clusterip,
                Some(*ip),
                p.number,
                ip.is_ipv6(),
                "cluster IP",
            );
        }
        if let Some(np) = p.node_port {
            for &v6 in &svc.families {
                push(SvcType::Nodeport, None, np, v6, "node port");
            }
        }
        for (ips, ty, what) in [
            (&svc.external, SvcType::Externalip, "external IP"),
            (&svc.ingress, SvcType::Loadbalancer, "load-balancer ingress"),
        ] {
            for ip in ips {
                if svc.families.contains(&ip.is_ipv6()) {
                    push(ty, Some(*ip), p.number, ip.is_ipv6(), what);
                }
            }
        }
    }
    for e in &out {
        e.spec
            .validate()
            .with_context(|| e.source.clone())
            .map_err(|err| anyhow!("{}", file_terms(&err)))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N1: Place = Place {
        node: "n1",
        zone: "",
    };

    fn err(text: &str) -> String {
        format!("{:#}", parse(text, N1).unwrap_err())
    }

    #[test]
    fn a_node_document_before_a_list_gives_the_zone_and_hints_choose_backends() {
        let node = r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "zone-b"}}}"#;
        let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"clusterIP": "198.51.100.1", "trafficDistribution": "PreferClose", "ports": [{"name": "http", "port": 80}]}},
          {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
           "endpoints": [
             {"addresses": ["203.0.113.1"], "hints": {"forZones": [{"name": "zone-a"}]}},
             {"addresses": ["203.0.113.2"], "hints": {"forZones": [{"name": "zone-b"}]}}]}]}"#;
        let p = parse(
            &format!(
                "{node}
{list}"
            ),
            N1,
        )
        .unwrap();
        assert_eq!(p.zone.as_deref(), Some("zone-b"));
        let s = &p.entries[0].spec;
        assert_eq!(s.topology.mode, topology::Mode::Zone);
        assert_eq!(s.topology.distribution, TrafficDist::PreferClose);
        let off: Vec<bool> = s.backends.iter().map(|b| b.off_topology).collect();
        assert_eq!(off, [true, false]);
        let bad = list.replace(r#"{"name": "zone-a"}"#, r#"{"nam": "zone-a"}"#);
        let e = format!("{:#}", parse(&bad, N1).unwrap_err());
        assert!(
            e.contains("endpoints[0].hints.forZones[0].name is missing"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            parse(
                &format!(
                    "{node}
[]
{{}}"
                ),
                N1
            )
            .unwrap_err()
        );
        assert!(e.contains("3 JSON documents"), "{e}");
    }

    #[test]
    fn native_yaml_and_json_give_the_same_services() {
        let yaml = "services:\n  - {name: a/b, type: clusterip, frontend: 198.51.100.1:80, backends: [\"203.0.113.1:8080,local\", {addr: \"203.0.113.2:8080\", terminating: true}], session_affinity: client-ip}\n";
        let json = r#"[{"name": "a/b", "type": "clusterip", "frontend": "198.51.100.1:80", "backends": ["203.0.113.1:8080,local", {"addr": "203.0.113.2:8080", "terminating": true}], "affinity_timeout": 10800, "svc_id": 7, "state": "ok", "frontends": []}]"#;
        let (a, b) = (parse(yaml, N1).unwrap(), parse(json, N1).unwrap());
        assert!(!a.kubernetes);
        let (sa, sb) = (&a.entries[0].spec, &b.entries[0].spec);
        assert_eq!(sa.backends, sb.backends);
        assert_eq!(sa.affinity_timeout, Some(AFFINITY_TIMEOUT_DEFAULT));
        assert_eq!(sb.affinity_timeout, Some(AFFINITY_TIMEOUT_DEFAULT));
        assert!(sa.backends[0].local && sa.backends[1].terminating);
    }

    #[test]
    fn errors_name_the_place_and_the_field() {
        assert!(err("services: 3").contains("services is a number, expected a list"));
        assert!(err("{}").contains("the file has no services list"));
        assert!(err("services:").contains("services is empty (null)"));
        assert!(parse("services: []", N1).unwrap().entries.is_empty());
        let dup = err("{\"services\": [{\"name\": \"a\", \"name\": \"b\"}]}");
        assert!(
            dup.contains("the key \"name\" is given twice") && dup.contains("line 1"),
            "{dup}"
        );
        assert!(err("services:\n  - name: a\n    name: b\n").contains("given twice"));
        assert!(err("{\"servics\": []}").contains("unknown top-level field \"servics\""));
        assert!(err("[{\"type\": \"clusterip\"}]").contains("[0].frontend is missing"));
        assert!(
            err("[{\"type\": \"nodeport\", \"frontend\": \":30080\", \"node_port\": 30081}]")
                .contains("node_port differs")
        );
        assert!(
            err(
                "[{\"type\": \"clusterip\", \"frontend\": \"198.51.100.1:80\", \"backends\": [7]}]"
            )
            .contains("[0].backends[0] is a number")
        );
        assert!(err("[{\"type\": \"clusterip\", \"frontend\": \"198.51.100.1:80\", \"internal_traffic_policy\": \"nearest\"}]")
            .contains("internal_traffic_policy \"nearest\" is not one of cluster, local"));
        assert!(err("[{\"type\": \"clusterip\", \"frontend\": \"198.51.100.1:80\", \"affinity_timeout\": 4294967296}]")
            .contains("affinity_timeout 4294967296 is out of range"));
        let k = r#"{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s", "labels": {"kubernetes.io/service-name": "a"}}, "addressType": "IPv5"}"#;
        assert!(err(k).contains("(EndpointSlice default/s).addressType \"IPv5\""));
    }

    #[test]
    fn kubernetes_endpoint_conditions_follow_kube_proxy() {
        let doc = r#"{"apiVersion": "v1", "kind": "List", "items": [
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "n"},
           "spec": {"clusterIP": "198.51.100.9", "ports": [{"port": 80}]}},
          {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "a-1", "namespace": "n", "labels": {"kubernetes.io/service-name": "a"}},
           "addressType": "IPv4", "ports": [{"port": 8080}],
           "endpoints": [
             {"addresses": ["203.0.113.1"], "nodeName": "n1"},
             {"addresses": ["203.0.113.2"], "conditions": {"ready": false, "serving": true, "terminating": true}},
             {"addresses": ["203.0.113.3"], "conditions": {"ready": false}},
             {"addresses": ["203.0.113.4"], "conditions": {"ready": false, "serving": true, "terminating": false}}
           ]}]}"#;
        let p = parse(doc, N1).unwrap();
        assert!(p.kubernetes);
        assert_eq!(p.entries.len(), 1);
        let s = &p.entries[0].spec;
        assert_eq!(s.name, "n/a:80");
        let got: Vec<(String, bool, bool)> = s
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.local, b.terminating))
            .collect();
        assert_eq!(
            got,
            vec![
                ("203.0.113.1:8080".to_string(), true, false),
                ("203.0.113.2:8080".to_string(), false, true),
            ]
        );
    }

    /// The fuzzers' seeds (and any input a fuzzer ever crashed on) parse or
    /// fail without a panic.
    #[test]
    fn fuzz_seeds_do_not_panic() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/parse_file");
        for e in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            let _ = parse(&text, N1);
        }
        for text in [
            "",
            "-",
            "[",
            "{}",
            "[[]]",
            "~",
            "services:",
            "kind: List\napiVersion: v1\nitems: 3",
        ] {
            let _ = parse(text, N1);
        }
    }
}
