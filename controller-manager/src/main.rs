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
use std::time::Duration;

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
    /// Elect a leader among the copies through a Lease (only the leader
    /// acts). Turn off only when a single copy runs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// How long a leader's Lease holds without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    leader_elect_lease_duration: Duration,
    /// How long a leader keeps trying to renew before it stops acting.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    leader_elect_renew_deadline: Duration,
    /// How often candidates try to take the Lease, and leaders renew it.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    leader_elect_retry_period: Duration,
    /// The Lease's namespace.
    #[arg(long, default_value = "kube-system")]
    leader_elect_resource_namespace: String,
    /// The Lease's name.
    #[arg(long, default_value = "kube-controller-manager")]
    leader_elect_resource_name: String,
}

fn main() -> std::process::ExitCode {
    mube_process::main(
        "mube-controller-manager",
        None,
        || Ok(Args::parse()),
        |args: Args| async move {
            let client = mube_client::connect(args.kubeconfig).await?;
            let mut election = mube_client::leader::Election::new(&args.leader_elect_resource_name);
            election.namespace = args.leader_elect_resource_namespace;
            election.lease_duration = args.leader_elect_lease_duration;
            election.renew_deadline = args.leader_elect_renew_deadline;
            election.retry_period = args.leader_elect_retry_period;
            election
                .check()
                .map_err(|e| format!("--leader-elect-*: {e}"))?;
            manager::run(client, args.leader_elect.then_some(election)).await
        },
    )
}
