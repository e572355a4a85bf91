//! Compiles the BPF datapath and generates its libbpf-rs skeleton into OUT_DIR.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/netnsxl.bpf.c";
const HDR: &str = "src/bpf/netnsxl.h";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH is set by cargo");
    let vmlinux = PathBuf::from("vmlinux").join(&arch);

    SkeletonBuilder::new()
        .source(SRC)
        .clang_args([
            "-I".into(),
            vmlinux.as_os_str().to_owned(),
            "-I".into(),
            "src/bpf".into(),
            // BPF ISA v3 (kernel 5.12+, below our 5.14 floor): the atomic
            // compare-and-exchange rev_tcp_map's slots are claimed with.
            "-mcpu=v3".into(),
            "-Wall".into(),
            "-Werror".into(),
        ])
        .build_and_generate(out.join("netnsxl.skel.rs"))
        .expect("compile src/bpf/netnsxl.bpf.c and generate its skeleton");

    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-changed={HDR}");
    println!(
        "cargo:rerun-if-changed={}",
        vmlinux.join("vmlinux.h").display()
    );
}
