//! What this kernel can run, probed before the BPF object is loaded.
//!
//! netnsxl loads on every kernel that has what the datapath cannot do
//! without (the *required* features) and degrades feature by feature where
//! something is optional. Each probe asks the running kernel (libbpf's
//! program/map/helper probes, or kernel BTF for kfuncs, attach types and
//! iterator targets), never its version number: distribution kernels carry
//! backports. The version beside each feature is the mainline release that
//! brought it, for the error messages and the README's kernel matrix.

use std::ffi::OsStr;

use libbpf_rs::btf::{Btf, types as btf_types};
use libbpf_rs::libbpf_sys as sys;
use serde::Serialize;

use crate::bpf::types::nxl_feature as F;

/// The bits of `nxl_config.features` / `.rodata nxl_features`.
pub mod bits {
    use super::F;
    pub const RECORDED: u32 = F::NXL_FEAT_RECORDED.0;
    pub const SET_RETVAL: u32 = F::NXL_FEAT_SET_RETVAL.0;
    pub const SOCK_DESTROY: u32 = F::NXL_FEAT_SOCK_DESTROY.0;
    pub const INIT_COOKIE_BPF: u32 = F::NXL_FEAT_INIT_COOKIE_BPF.0;
    pub const DIAG_DESTROY: u32 = F::NXL_FEAT_DIAG_DESTROY.0;
}

/// The oldest mainline kernel that has every required feature.
pub const FLOOR: &str = "5.14";

/// One probed feature.
#[derive(Clone, Debug, Serialize)]
pub struct Feature {
    /// A short stable name (status JSON, attach's summary line).
    pub id: &'static str,
    pub name: &'static str,
    /// The mainline release that brought it.
    pub kernel: &'static str,
    /// Without it netnsxl refuses to attach.
    pub required: bool,
    pub available: bool,
    /// What netnsxl does without it (optional features).
    pub without: &'static str,
}

/// Every probe's result on the running kernel.
#[derive(Clone, Debug, Serialize)]
pub struct Probed {
    pub kernel_release: String,
    pub features: Vec<Feature>,
}

/// Probe ids, so callers ask by meaning, not by position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id {
    KernelBtf,
    SockAddrHooks,
    NetnsCookie,
    SkStorage,
    RingBuf,
    CgroupLinks,
    SocketIterators,
    SoNetnsCookie,
    SetRetval,
    SockDestroy,
    DiagDestroy,
    InitCookieTc,
}

struct Spec {
    id: Id,
    short: &'static str,
    name: &'static str,
    kernel: &'static str,
    required: bool,
    without: &'static str,
}

const SPECS: &[Spec] = &[
    Spec {
        id: Id::KernelBtf,
        short: "btf",
        name: "kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)",
        kernel: "5.4",
        required: true,
        without: "",
    },
    Spec {
        id: Id::SockAddrHooks,
        short: "sock_addr",
        name: "cgroup sock_addr hooks connect, sendmsg, recvmsg and getpeername",
        kernel: "5.8",
        required: true,
        without: "",
    },
    Spec {
        id: Id::NetnsCookie,
        short: "netns_cookie",
        name: "bpf_get_netns_cookie() in sock_addr hooks",
        kernel: "5.7",
        required: true,
        without: "",
    },
    Spec {
        id: Id::SkStorage,
        short: "sk_storage",
        name: "socket-local storage in sock_addr hooks (reverse translation)",
        kernel: "5.3",
        required: true,
        without: "",
    },
    Spec {
        id: Id::RingBuf,
        short: "ringbuf",
        name: "BPF ring buffer (trace)",
        kernel: "5.8",
        required: true,
        without: "",
    },
    Spec {
        id: Id::CgroupLinks,
        short: "cgroup_links",
        name: "BPF links for cgroups (pinned attachments)",
        kernel: "5.7",
        required: true,
        without: "",
    },
    Spec {
        id: Id::SocketIterators,
        short: "socket_iterators",
        name: "TCP and UDP socket iterators",
        kernel: "5.9",
        required: true,
        without: "",
    },
    Spec {
        id: Id::SoNetnsCookie,
        short: "so_netns_cookie",
        name: "getsockopt(SO_NETNS_COOKIE) (netns cookies from user space)",
        kernel: "5.14",
        required: true,
        without: "",
    },
    Spec {
        id: Id::SetRetval,
        short: "set_retval",
        name: "bpf_set_retval() in sock_addr hooks",
        kernel: "5.18",
        required: false,
        without: "a frontend with no usable backend refuses connect() with EPERM instead of ECONNREFUSED",
    },
    Spec {
        id: Id::SockDestroy,
        short: "sock_destroy",
        name: "bpf_sock_destroy() kfunc (stale sockets)",
        kernel: "6.5",
        required: false,
        without: "stale sockets are closed with netlink SOCK_DESTROY instead (diag_destroy)",
    },
    Spec {
        id: Id::DiagDestroy,
        short: "diag_destroy",
        name: "netlink SOCK_DESTROY (sock_diag, CONFIG_INET_DIAG_DESTROY)",
        kernel: "4.5",
        required: false,
        without: "without bpf_sock_destroy too, sockets connected to a removed backend are not closed; commands say so",
    },
    Spec {
        id: Id::InitCookieTc,
        short: "init_cookie_probe",
        name: "bpf_get_netns_cookie(NULL) in a test-run program",
        kernel: "6.15",
        required: false,
        without: "the initial netns cookie is read with SO_NETNS_COOKIE from the initial netns",
    },
];

fn helper(prog_type: sys::bpf_prog_type, func: sys::bpf_func_id) -> bool {
    // SAFETY: with no options the probe loads a tiny program calling `func`
    // and unloads it; it only returns a number.
    unsafe { sys::libbpf_probe_bpf_helper(prog_type, func, std::ptr::null()) == 1 }
}

fn map_type(t: sys::bpf_map_type) -> bool {
    // SAFETY: as above, for a map of type `t`.
    unsafe { sys::libbpf_probe_bpf_map_type(t, std::ptr::null()) == 1 }
}

fn enum_has(btf: Option<&Btf<'_>>, enum_name: &str, value: &str) -> bool {
    let Some(btf) = btf else { return false };
    btf.type_by_name::<btf_types::Enum<'_>>(enum_name)
        .is_some_and(|e| e.iter().any(|m| m.name == Some(OsStr::new(value))))
}

fn has_struct(btf: Option<&Btf<'_>>, name: &str) -> bool {
    btf.is_some_and(|b| b.type_by_name::<btf_types::Struct<'_>>(name).is_some())
}

fn has_func(btf: Option<&Btf<'_>>, name: &str) -> bool {
    btf.is_some_and(|b| b.type_by_name::<btf_types::Func<'_>>(name).is_some())
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// Probe every feature on the running kernel (root, or CAP_BPF).
pub fn probe() -> Probed {
    let btf = Btf::from_vmlinux().ok();
    let btf = btf.as_ref();
    let sa = sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR;
    let features = SPECS
        .iter()
        .map(|s| {
            let available = match s.id {
                Id::KernelBtf => btf.is_some(),
                Id::SockAddrHooks => {
                    enum_has(btf, "bpf_attach_type", "BPF_CGROUP_INET4_GETPEERNAME")
                        && enum_has(btf, "bpf_attach_type", "BPF_CGROUP_UDP4_RECVMSG")
                }
                Id::NetnsCookie => helper(sa, sys::BPF_FUNC_get_netns_cookie),
                Id::SkStorage => helper(sa, sys::BPF_FUNC_sk_storage_get),
                Id::RingBuf => map_type(sys::BPF_MAP_TYPE_RINGBUF),
                Id::CgroupLinks => enum_has(btf, "bpf_link_type", "BPF_LINK_TYPE_CGROUP"),
                Id::SocketIterators => {
                    has_struct(btf, "bpf_iter__tcp") && has_struct(btf, "bpf_iter__udp")
                }
                Id::SoNetnsCookie => crate::sys::current_netns_cookie().is_ok(),
                Id::SetRetval => helper(sa, sys::BPF_FUNC_set_retval),
                Id::SockDestroy => has_func(btf, "bpf_sock_destroy"),
                Id::DiagDestroy => crate::sys::sockdiag::destroy_supported(),
                Id::InitCookieTc => {
                    helper(sys::BPF_PROG_TYPE_SCHED_CLS, sys::BPF_FUNC_get_netns_cookie)
                }
            };
            Feature {
                id: s.short,
                name: s.name,
                kernel: s.kernel,
                required: s.required,
                available,
                without: s.without,
            }
        })
        .collect();
    Probed {
        kernel_release: kernel_release(),
        features,
    }
}

impl Probed {
    pub fn has(&self, id: Id) -> bool {
        SPECS
            .iter()
            .zip(&self.features)
            .any(|(s, f)| s.id == id && f.available)
    }

    /// The first required feature this kernel lacks, as the one line attach
    /// fails with.
    pub fn refusal(&self) -> Option<String> {
        let f = self.features.iter().find(|f| f.required && !f.available)?;
        Some(format!(
            "this kernel ({}) lacks {} (Linux {}); netnsxl needs Linux {FLOOR} or newer",
            self.kernel_release, f.name, f.kernel
        ))
    }

    /// The NXL_FEAT_* bits for .rodata and the config, from the probes.
    pub fn bits(&self) -> u32 {
        let mut b = bits::RECORDED;
        if self.has(Id::SetRetval) {
            b |= bits::SET_RETVAL;
        }
        if self.has(Id::SockDestroy) {
            b |= bits::SOCK_DESTROY;
        }
        if self.has(Id::DiagDestroy) {
            b |= bits::DIAG_DESTROY;
        }
        b
    }

    /// One line for attach: which optional features are on.
    pub fn optional_summary(&self) -> String {
        let parts: Vec<String> = self
            .features
            .iter()
            .filter(|f| !f.required)
            .map(|f| format!("{} {}", f.id, if f.available { "on" } else { "off" }))
            .collect();
        format!("kernel {}: {}", self.kernel_release, parts.join(", "))
    }
}

/// How this attachment closes stale sockets (from the features attach
/// recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stale {
    /// The iterators call the bpf_sock_destroy kfunc (6.5+).
    Kfunc,
    /// The iterators list the sockets; netlink SOCK_DESTROY closes them.
    SockDiag,
    /// Neither: stale sockets stay open.
    None,
}

impl Stale {
    pub fn of(features: u32) -> Stale {
        if features & bits::RECORDED == 0 || features & bits::SOCK_DESTROY != 0 {
            Stale::Kfunc
        } else if features & bits::DIAG_DESTROY != 0 {
            Stale::SockDiag
        } else {
            Stale::None
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Stale::Kfunc => "closed by bpf_sock_destroy",
            Stale::SockDiag => "closed by netlink SOCK_DESTROY (sock_diag)",
            Stale::None => {
                "this kernel has neither bpf_sock_destroy (6.5) nor netlink SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)"
            }
        }
    }
}

/// What a config's feature bits say, for status; None for pins written
/// before features were recorded.
pub fn recorded(bits_: u32) -> Option<Vec<(&'static str, bool)>> {
    if bits_ & bits::RECORDED == 0 {
        return None;
    }
    Some(vec![
        ("set_retval", bits_ & bits::SET_RETVAL != 0),
        ("sock_destroy", bits_ & bits::SOCK_DESTROY != 0),
        ("diag_destroy", bits_ & bits::DIAG_DESTROY != 0),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed(missing: &[Id]) -> Probed {
        Probed {
            kernel_release: "5.4.0-test".into(),
            features: SPECS
                .iter()
                .map(|s| Feature {
                    id: s.short,
                    name: s.name,
                    kernel: s.kernel,
                    required: s.required,
                    available: !missing.contains(&s.id),
                    without: s.without,
                })
                .collect(),
        }
    }

    #[test]
    fn a_missing_required_feature_is_one_line_naming_it_and_its_kernel() {
        let p = probed(&[Id::RingBuf]);
        let msg = p.refusal().unwrap();
        assert_eq!(
            msg,
            "this kernel (5.4.0-test) lacks BPF ring buffer (trace) (Linux 5.8); netnsxl needs Linux 5.14 or newer"
        );
        assert!(
            probed(&[Id::SockDestroy, Id::SetRetval])
                .refusal()
                .is_none()
        );
    }

    #[test]
    fn optional_features_become_bits_and_a_summary() {
        let all = probed(&[]);
        assert_eq!(
            all.bits(),
            bits::RECORDED | bits::SET_RETVAL | bits::SOCK_DESTROY | bits::DIAG_DESTROY
        );
        let old = probed(&[Id::SockDestroy, Id::InitCookieTc]);
        assert_eq!(
            old.bits(),
            bits::RECORDED | bits::SET_RETVAL | bits::DIAG_DESTROY
        );
        assert_eq!(
            old.optional_summary(),
            "kernel 5.4.0-test: set_retval on, sock_destroy off, diag_destroy on, init_cookie_probe off"
        );
        assert_eq!(recorded(0), None);
        assert_eq!(
            recorded(old.bits()).unwrap(),
            vec![
                ("set_retval", true),
                ("sock_destroy", false),
                ("diag_destroy", true)
            ]
        );
    }

    #[test]
    fn every_spec_has_a_version_and_optional_ones_say_what_happens_without() {
        for s in SPECS {
            assert!(s.kernel.split('.').all(|p| p.parse::<u32>().is_ok()));
            assert_eq!(s.required, s.without.is_empty(), "{}", s.name);
            if s.required {
                assert!(
                    version(s.kernel) <= version(FLOOR),
                    "{} is newer than the floor",
                    s.name
                );
            }
        }
    }

    fn version(v: &str) -> (u32, u32) {
        let mut it = v.split('.').map(|p| p.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    }
}
