//! Finds `kubectl` for the kubectl compatibility tests.
//!
//! With kubectl on PATH the tests run (`cfg(has_kubectl)`); without it they
//! are compiled as ignored, so the test summary counts them as skipped, never
//! as passed, and the build says so loudly. In CI (`CI=true`) a missing
//! kubectl is an error: the CI machine has one, and a silent skip there would
//! hide a broken setup.

use std::path::PathBuf;

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn main() {
    // etcd (Debian: etcd-server) for the benchmark's etcd scenario smoke run.
    println!("cargo:rustc-check-cfg=cfg(has_etcd)");
    match find_on_path("etcd") {
        Some(_) => println!("cargo:rustc-cfg=has_etcd"),
        None => println!("cargo:warning=etcd is not on PATH: the benchmark's etcd smoke run is SKIPPED (reported as ignored)"),
    }
    println!("cargo:rustc-check-cfg=cfg(has_kubectl)");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=CI");
    match find_on_path("kubectl") {
        Some(path) => {
            println!("cargo:rustc-cfg=has_kubectl");
            println!("cargo:rerun-if-changed={}", path.display());
        }
        None if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("kubectl is not on PATH, and CI=true: the kubectl compatibility tests must run in CI");
        }
        None => {
            println!("cargo:warning=kubectl is not on PATH: the kubectl compatibility tests are SKIPPED (reported as ignored)");
        }
    }
}
