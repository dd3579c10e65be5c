//! `nodegroup-controller --kubeconfig PATH`: keeps each NodeGroup's status
//! (`ready`, `nodes`, `healthy`) true to the Nodes it selects.
//!
//! Built as mube's own controllers are, from the parts the controller
//! manager uses: `mube-client` for the connection and leader election,
//! the controller manager's informers (one cache per kind, whose changes
//! trigger reconciles), and kube-runtime's `Controller` to run them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::controller::Controller;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use mube_controller_manager::informer::{informer, Triggers};
use nodegroup::{concerns, error_policy, reconcile, Context, NodeGroup};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(name = "nodegroup-controller")]
struct Args {
    /// The kubeconfig (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    election: mube_client::leader::Flags,
}

async fn controllers(client: Client, stop: CancellationToken) {
    let (to_groups, triggers) = Triggers::<NodeGroup>::new();
    let (groups, groups_run) = informer(Api::<NodeGroup>::all(client.clone()), |_: &NodeGroup| {});
    let groups_for_nodes = groups.clone();
    let (nodes, nodes_run) = informer(Api::<Node>::all(client.clone()), move |node: &Node| {
        for g in groups_for_nodes.state() {
            if concerns(&g, node) {
                to_groups.send(&g.name_any(), None);
            }
        }
    });
    let caches = tokio::spawn(async move {
        tokio::join!(groups_run, nodes_run);
    });
    let _ = nodes.wait_until_ready().await;
    let _ = groups.wait_until_ready().await;
    let ctx = Arc::new(Context {
        client: client.clone(),
        nodes,
    });
    Controller::new(Api::<NodeGroup>::all(client), watcher::Config::default())
        .reconcile_on(triggers)
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    caches.abort();
}

fn main() -> std::process::ExitCode {
    mube_process::main(
        "nodegroup-controller",
        None,
        || Ok(Args::parse()),
        |args: Args| async move {
            let election = args.election.election("nodegroup-controller")?;
            let client = mube_client::connect(args.kubeconfig).await?;
            mube_client::leader::run_until_signal(
                client,
                election,
                Duration::from_secs(5),
                controllers,
            )
            .await
        },
    )
}
