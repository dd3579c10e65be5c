//! `mube-scheduler --kubeconfig PATH`: binds pods without a node to the
//! node the algorithm picks, as an API client like any other (its
//! Kubernetes counterpart takes the same flag).

mod metrics;
mod run;

use std::path::PathBuf;

use clap::Parser;

/// Binds each pending pod to a node.
#[derive(Parser, Debug)]
#[command(name = "mube-scheduler", version)]
pub struct Args {
    /// The kubeconfig to reach the API server with (default: $KUBECONFIG,
    /// then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    election: mube_client::leader::Flags,
    /// Where to serve GET /metrics (Prometheus) and /healthz, plain HTTP;
    /// kube-scheduler's port on loopback by default, `off` for none.
    #[arg(long, default_value = "127.0.0.1:10259")]
    metrics_address: String,
}

fn main() -> std::process::ExitCode {
    mube_process::main(
        "mube-scheduler",
        None,
        || Ok(Args::parse()),
        |args: Args| async move {
            let election = args.election.election("kube-scheduler")?;
            mube_process::metrics::serve(&args.metrics_address).await;
            run::run(args.kubeconfig, election).await
        },
    )
}
