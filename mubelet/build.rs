//! Generates the CRI client (`runtime.v1`) from Kubernetes' own protocol
//! definition, `proto/cri-api-v1.proto` (k8s.io/cri-api, Apache-2.0).
//!
//! The `k8s-cri` crate carries the same file but runs `protoc` at build
//! time, which these machines (and many users') do not have; `protox`
//! parses the file in Rust instead, so a fresh clone builds with cargo
//! alone.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cri-api-v1.proto");
    let descriptors = protox::compile(["cri-api-v1.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
