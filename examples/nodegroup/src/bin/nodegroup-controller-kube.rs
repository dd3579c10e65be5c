//! `nodegroup-controller-kube`: the NodeGroup controller on kube-rs alone,
//! exactly as it would be written for Kubernetes: the kind from
//! `#[derive(CustomResource)]`, a `kube::runtime::Controller` that watches
//! NodeGroups and the Nodes they select, and `Client::try_default()`
//! (`$KUBECONFIG`). Nothing here is mube's: that it works against mube is
//! the point.
//!
//! `--install-crd` applies the CRD derived from the Rust type first
//! (server-side apply) and waits until it is established.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use kube::{Client, CustomResourceExt, ResourceExt};
use nodegroup::{concerns, error_policy, reconcile, Context, NodeGroup};

async fn install_crd(client: &Client) -> Result<(), Box<dyn std::error::Error>> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd = NodeGroup::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("nodegroup-controller-kube").force(),
        &Patch::Apply(crd),
    )
    .await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await??;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let client = Client::try_default().await?;
    if std::env::args().any(|a| a == "--install-crd") {
        install_crd(&client).await?;
        tracing::info!("CRD established");
    }
    let groups = Api::<NodeGroup>::all(client.clone());
    let (nodes, writer) = kube::runtime::reflector::store::<Node>();
    let node_events = kube::runtime::reflector(
        writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    );
    let controller = Controller::new(groups, watcher::Config::default());
    let group_cache = controller.store();
    let ctx = Arc::new(Context { client, nodes });
    controller
        .watches_stream(
            kube::runtime::WatchStreamExt::touched_objects(node_events),
            move |node: Node| {
                group_cache
                    .state()
                    .into_iter()
                    .filter(|g| concerns(g, &node))
                    .map(|g| ObjectRef::from_obj(g.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    Ok(())
}
