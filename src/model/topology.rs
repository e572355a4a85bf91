//! Topology-aware routing, as kube-proxy does it.
//!
//! Followed from kubernetes/kubernetes pkg/proxy/topology.go
//! (`CategorizeEndpoints`, `topologyModeFromHints`, `availableForTopology`):
//! - kube-proxy reads the endpoints' hints, not the Service's
//!   `trafficDistribution` (the EndpointSlice controller turns that into
//!   hints). Only ready endpoints are looked at.
//! - Same node: when every ready endpoint has node hints and at least one
//!   names this node, the cluster-wide frontends use the ready endpoints
//!   whose hints name this node.
//! - Otherwise same zone: when every ready endpoint has zone hints and at
//!   least one names this node's zone, the ready endpoints whose hints name
//!   the zone.
//! - Otherwise every ready endpoint. With no ready endpoint, the
//!   serving-terminating ones, without topology.
//! - Node-local frontends (traffic policy Local) ignore topology.
//!
//! Native input has no EndpointSlice controller: netnsxl derives the hints
//! from the service's traffic distribution and each backend's `zone=` and
//! `node=` (or `local`) as the controller does (`derive_hints`).

use anyhow::{Result, bail};
use serde::Serialize;

use crate::bpf::types;

/// spec.trafficDistribution.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum TrafficDist {
    #[default]
    None,
    PreferClose,
    PreferSameZone,
    PreferSameNode,
}

impl TrafficDist {
    /// Kubernetes' spelling, or netnsxl's kebab-case one.
    pub fn parse(field: &str, s: &str) -> Result<TrafficDist> {
        Ok(match s {
            "PreferClose" | "prefer-close" => TrafficDist::PreferClose,
            "PreferSameZone" | "prefer-same-zone" => TrafficDist::PreferSameZone,
            "PreferSameNode" | "prefer-same-node" => TrafficDist::PreferSameNode,
            "" | "none" => TrafficDist::None,
            other => bail!(
                "{field} {other:?} is not one of prefer-close, prefer-same-zone, prefer-same-node (Kubernetes: PreferClose, PreferSameZone, PreferSameNode)"
            ),
        })
    }

    /// Kubernetes' spelling; None when unset.
    pub fn name(self) -> Option<&'static str> {
        match self {
            TrafficDist::None => None,
            TrafficDist::PreferClose => Some("PreferClose"),
            TrafficDist::PreferSameZone => Some("PreferSameZone"),
            TrafficDist::PreferSameNode => Some("PreferSameNode"),
        }
    }

    pub fn code(self) -> u8 {
        use types::nxl_traffic_dist as T;
        let t = match self {
            TrafficDist::None => T::NXL_TD_NONE,
            TrafficDist::PreferClose => T::NXL_TD_PREFER_CLOSE,
            TrafficDist::PreferSameZone => T::NXL_TD_PREFER_SAME_ZONE,
            TrafficDist::PreferSameNode => T::NXL_TD_PREFER_SAME_NODE,
        };
        t.0 as u8
    }

    pub fn from_code(c: u8) -> TrafficDist {
        [
            TrafficDist::PreferClose,
            TrafficDist::PreferSameZone,
            TrafficDist::PreferSameNode,
        ]
        .into_iter()
        .find(|t| t.code() == c)
        .unwrap_or_default()
    }
}

/// kube-proxy's topology mode: which hints the cluster-wide frontends follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    None,
    Zone,
    Node,
}

impl Mode {
    pub fn code(self) -> u8 {
        use types::nxl_topology as T;
        let t = match self {
            Mode::None => T::NXL_TOPO_NONE,
            Mode::Zone => T::NXL_TOPO_ZONE,
            Mode::Node => T::NXL_TOPO_NODE,
        };
        t.0 as u8
    }

    pub fn from_code(c: u8) -> Mode {
        [Mode::Zone, Mode::Node]
            .into_iter()
            .find(|m| m.code() == c)
            .unwrap_or_default()
    }
}

/// What a service records about topology: the mode its backends were
/// chosen with, and its traffic distribution (shown, and for native input
/// where the hints come from).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    pub mode: Mode,
    pub distribution: TrafficDist,
}

/// An endpoint's hints (hints.forZones[].name, hints.forNodes[].name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub zones: Vec<Box<str>>,
    pub nodes: Vec<Box<str>>,
}

/// Where this node is: its name and zone ("" when unknown).
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    pub node: &'a str,
    pub zone: &'a str,
}

/// One endpoint as the rules see it.
pub struct Candidate<'a> {
    pub ready: bool,
    pub hints: Option<&'a Hints>,
}

/// topologyModeFromHints: the mode, from the ready endpoints' hints.
pub fn mode<'a>(eps: impl Iterator<Item = Candidate<'a>>, place: Place) -> Mode {
    let ready = eps.filter(|e| e.ready);
    let (mut all_node, mut for_node, mut all_zone, mut for_zone) = (true, false, true, false);
    let mut any = false;
    for e in ready {
        any = true;
        let empty = Hints::default();
        let h = e.hints.unwrap_or(&empty);
        if h.zones.is_empty() {
            all_zone = false;
        } else if !place.zone.is_empty() && h.zones.iter().any(|z| &**z == place.zone) {
            for_zone = true;
        }
        if h.nodes.is_empty() {
            all_node = false;
        } else if h.nodes.iter().any(|n| &**n == place.node) {
            for_node = true;
        }
    }
    if !any {
        return Mode::None;
    }
    if all_node && for_node {
        Mode::Node
    } else if all_zone && for_zone {
        Mode::Zone
    } else {
        Mode::None
    }
}

/// availableForTopology: whether a ready endpoint is used in this mode.
pub fn available(hints: Option<&Hints>, mode: Mode, place: Place) -> bool {
    match (mode, hints) {
        (Mode::None, _) => true,
        (_, None) => false,
        (Mode::Node, Some(h)) => h.nodes.iter().any(|n| &**n == place.node),
        (Mode::Zone, Some(h)) => h.zones.iter().any(|z| &**z == place.zone),
    }
}

/// The hints the EndpointSlice controller gives an endpoint of a service
/// with this traffic distribution (pkg/controller/endpointslice's
/// trafficdist): the endpoint's zone for PreferClose and PreferSameZone;
/// its node and zone for PreferSameNode; none without a distribution.
pub fn derive_hints(dist: TrafficDist, zone: Option<&str>, node: Option<&str>) -> Option<Hints> {
    let zones: Vec<Box<str>> = zone.map(|z| vec![z.into()]).unwrap_or_default();
    let h = match dist {
        TrafficDist::None => return None,
        TrafficDist::PreferClose | TrafficDist::PreferSameZone => Hints {
            zones,
            nodes: Vec::new(),
        },
        TrafficDist::PreferSameNode => Hints {
            zones,
            nodes: node.map(|n| vec![n.into()]).unwrap_or_default(),
        },
    };
    (!h.zones.is_empty() || !h.nodes.is_empty()).then_some(h)
}

/// A zone as Kubernetes allows a label value: at most 63 characters of
/// [A-Za-z0-9-_.], starting and ending with a letter or digit; "" for none.
pub fn check_zone(field: &str, z: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !z.is_empty()
        && (z.len() > 63
            || !z.chars().all(ok_char)
            || !edge(z.chars().next())
            || !edge(z.chars().last()))
    {
        bail!(
            "{field} {:?} is not a zone: a Kubernetes label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit), e.g. us-east-1a",
            z.chars().take(80).collect::<String>()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(zones: &[&str], nodes: &[&str]) -> Option<Hints> {
        Some(Hints {
            zones: zones.iter().map(|z| (*z).into()).collect(),
            nodes: nodes.iter().map(|n| (*n).into()).collect(),
        })
    }

    const HERE: Place = Place {
        node: "node-1",
        zone: "zone-a",
    };

    /// (ready, hints) endpoints -> (mode, which are available), the shape of
    /// kube-proxy's TestCategorizeEndpoints for the cluster endpoints.
    fn run(eps: &[(bool, Option<Hints>)], place: Place) -> (Mode, Vec<usize>) {
        let cands = || {
            eps.iter().map(|(r, h)| Candidate {
                ready: *r,
                hints: h.as_ref(),
            })
        };
        let m = mode(cands(), place);
        let used = eps
            .iter()
            .enumerate()
            .filter(|(_, (r, h))| *r && available(h.as_ref(), m, place))
            .map(|(i, _)| i)
            .collect();
        (m, used)
    }

    #[test]
    fn hints_for_this_zone_are_followed() {
        let eps = [
            (true, h(&["zone-a"], &[])),
            (true, h(&["zone-b"], &[])),
            (true, h(&["zone-c"], &[])),
            (true, h(&["zone-a"], &[])),
        ];
        assert_eq!(run(&eps, HERE), (Mode::Zone, vec![0, 3]));
    }

    #[test]
    fn one_endpoint_without_hints_turns_topology_off() {
        let eps = [
            (true, h(&["zone-a"], &[])),
            (true, None),
            (true, h(&["zone-a"], &[])),
        ];
        assert_eq!(run(&eps, HERE), (Mode::None, vec![0, 1, 2]));
    }

    #[test]
    fn no_hint_for_this_zone_or_no_zone_uses_all() {
        let eps = [(true, h(&["zone-b"], &[])), (true, h(&["zone-c"], &[]))];
        assert_eq!(run(&eps, HERE), (Mode::None, vec![0, 1]));
        let eps = [(true, h(&["zone-a"], &[])), (true, h(&["zone-b"], &[]))];
        let nowhere = Place {
            node: "node-1",
            zone: "",
        };
        assert_eq!(run(&eps, nowhere), (Mode::None, vec![0, 1]));
    }

    #[test]
    fn endpoints_that_are_not_ready_do_not_count_for_the_mode() {
        // An unhinted endpoint that is not ready does not turn topology off.
        let eps = [
            (true, h(&["zone-a"], &[])),
            (false, None),
            (true, h(&["zone-b"], &[])),
        ];
        assert_eq!(run(&eps, HERE), (Mode::Zone, vec![0]));
    }

    #[test]
    fn node_hints_win_over_zone_hints_when_one_names_this_node() {
        let eps = [
            (true, h(&["zone-a"], &["node-1"])),
            (true, h(&["zone-a"], &["node-2"])),
            (true, h(&["zone-b"], &["node-3"])),
        ];
        assert_eq!(run(&eps, HERE), (Mode::Node, vec![0]));
        // No endpoint for this node: fall to zone hints.
        let eps = [
            (true, h(&["zone-a"], &["node-2"])),
            (true, h(&["zone-b"], &["node-3"])),
        ];
        assert_eq!(run(&eps, HERE), (Mode::Zone, vec![0]));
        // Node hints on some only: zone hints.
        let eps = [
            (true, h(&["zone-a"], &["node-1"])),
            (true, h(&["zone-a"], &[])),
            (true, h(&["zone-b"], &[])),
        ];
        assert_eq!(run(&eps, HERE), (Mode::Zone, vec![0, 1]));
    }

    #[test]
    fn the_controller_hints_follow_the_distribution() {
        assert_eq!(derive_hints(TrafficDist::None, Some("a"), Some("n")), None);
        assert_eq!(
            derive_hints(TrafficDist::PreferClose, Some("a"), Some("n")),
            h(&["a"], &[])
        );
        assert_eq!(
            derive_hints(TrafficDist::PreferSameNode, Some("a"), Some("n")),
            h(&["a"], &["n"])
        );
        assert_eq!(
            derive_hints(TrafficDist::PreferSameZone, None, Some("n")),
            None
        );
    }

    #[test]
    fn zones_are_label_values() {
        assert!(check_zone("--zone", "us-east-1a").is_ok());
        assert!(check_zone("--zone", "").is_ok());
        for bad in ["-a", "a b", "a/b", &"z".repeat(64)] {
            let e = check_zone("--zone", bad).unwrap_err().to_string();
            assert!(e.contains("--zone") && e.contains("label value"), "{e}");
        }
    }

    #[test]
    fn codes_round_trip() {
        for t in [
            TrafficDist::None,
            TrafficDist::PreferClose,
            TrafficDist::PreferSameZone,
            TrafficDist::PreferSameNode,
        ] {
            assert_eq!(TrafficDist::from_code(t.code()), t);
        }
        for m in [Mode::None, Mode::Zone, Mode::Node] {
            assert_eq!(Mode::from_code(m.code()), m);
        }
    }
}
