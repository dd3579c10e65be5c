//! `mubelet`: mube's node agent. Configuration is by environment variable;
//! see the README.

// jemalloc, as the API server and controller manager: a hollow process's
// thousands of pod workers spent a third of its time in glibc's malloc
// and free (perf, 3,000 pods on 90 hollow nodes).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod agent;
mod config;
mod credentials;
mod cri;
mod exec_cleanup;
mod fake_runtime;
mod health;
mod heartbeat;
mod hollow;
mod informer;
mod logs;
mod metrics;
mod network;
mod node_status;
mod pods;
mod proxy;
mod registration;
mod servers;
mod streams;
mod system;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("hollow") {
        // Many nodes: every core.
        return mube_process::main(
            "mubelet hollow",
            None,
            || hollow::load(&args[2..]),
            hollow::run,
        );
    }
    // One worker thread: the agent's work is a heartbeat every few seconds
    // and runtime calls that mostly wait on containerd.
    mube_process::main("mubelet", Some(1), config::Config::from_env, agent::run)
}
