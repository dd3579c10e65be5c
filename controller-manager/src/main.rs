//! `mube-controller-manager --kubeconfig PATH`: runs ReplicaSets,
//! Deployments, garbage collection and taint-based eviction as an API
//! client, as several copies with one leader (as its Kubernetes
//! counterpart, whose flags it takes).

// jemalloc, as the API server: the caches churn through many small
// allocations (every pod event replaces one), where glibc's malloc spent a
// tenth of the process's time consolidating free chunks (perf, 3,000 pods).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::PathBuf;

use clap::Parser;
use mube_controller_manager::manager;

/// Keeps Deployments, ReplicaSets and their pods as declared.
#[derive(Parser, Debug)]
#[command(name = "mube-controller-manager", version)]
pub struct Args {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG,
    /// then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    election: mube_client::leader::Flags,
    /// Where to serve GET /metrics (Prometheus) and /healthz, plain HTTP;
    /// kube-controller-manager's port on loopback by default, `off` for none.
    #[arg(long, default_value = "127.0.0.1:10257")]
    metrics_address: String,
}

fn main() -> std::process::ExitCode {
    mube_process::main(
        "mube-controller-manager",
        None,
        || Ok(Args::parse()),
        |args: Args| async move {
            let election = args.election.election("kube-controller-manager")?;
            mube_process::metrics::serve(&args.metrics_address).await;
            let client = mube_client::connect(args.kubeconfig).await?;
            manager::run(client, election).await
        },
    )
}
