//! `mube-apiserver`: see the README for configuration.

// jemalloc returns freed memory to the system where glibc's malloc kept it
// (measured: see BENCHMARKS.md), which matters for a server that lives long
// and sees bursts (registration, big lists).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    mube_process::main(
        "mube-apiserver",
        None,
        mube_apiserver::config::Config::from_env,
        mube_apiserver::server::run,
    )
}
