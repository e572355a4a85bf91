//! The `apply` file parser (netnsxl's format and Kubernetes objects, JSON
//! and YAML): any input gets services or an error, never a panic, and every
//! service it returns passed validation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = netnsxl::model::manifest::parse(s, netnsxl::model::topology::Place { node: "node-a", zone: "zone-a" }) {
        for e in &parsed.entries {
            e.spec.validate().expect("parsed services are valid");
        }
    }
});
