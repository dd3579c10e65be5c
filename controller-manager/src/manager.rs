//! Runs the controllers: informers shared between them, then each
//! controller once the caches it reads have synced (a ReplicaSet that
//! counted its pods in an empty cache would create them all again: this is
//! what keeps a new leader from duplicating pods).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use kube::Client;
use mube_client::leader::{self, Election};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::informer::{controller_of, informer, Triggers};
use crate::{deployment, endpointslice, eviction, gc, replicaset, Error};

/// Runs until SIGINT/SIGTERM; with an election, only while leading.
pub async fn run(client: Client, election: Option<Election>) -> Result<(), String> {
    tracing::info!("mube-controller-manager started");
    leader::run_until_signal(client, election, Duration::from_secs(5), controllers).await
}

fn error_policy<K>(object: Arc<K>, error: &Error, _: Arc<impl Send + Sync>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    crate::metrics::metrics()
        .retries
        .with_label_values(&[&K::kind(&()).to_lowercase()])
        .inc();
    tracing::warn!(name = %object.meta().name.clone().unwrap_or_default(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(1))
}

/// Until `stop`, or forever.
async fn until<F: std::future::Future<Output = ()>>(stop: &CancellationToken, f: F) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = f => {}
    }
}

/// Every controller, until `stop`.
pub async fn controllers(client: Client, stop: CancellationToken) {
    let (to_sets, set_triggers) = Triggers::<ReplicaSet>::new();
    let (to_deployments, deployment_triggers) = Triggers::<Deployment>::new();
    let nodes_or_pods_changed = Arc::new(Notify::new());
    let (to_services, service_triggers) = Triggers::<Service>::new();

    // The endpoint controller's caches: Services, and the slices (a slice
    // changed or deleted by someone else is put right).
    let (services, services_run) = informer(Api::<Service>::all(client.clone()), |_: &Service| {});
    let to_services_of_slices = to_services.clone();
    let (slices, slices_run) = informer(
        Api::<EndpointSlice>::all(client.clone()),
        move |slice: &EndpointSlice| {
            let labels = slice.metadata.labels.as_ref();
            if labels
                .and_then(|l| l.get(endpointslice::MANAGED_BY_LABEL))
                .map(String::as_str)
                == Some(endpointslice::MANAGED_BY)
            {
                if let Some(service) = labels.and_then(|l| l.get(endpointslice::SERVICE_NAME_LABEL))
                {
                    to_services_of_slices.send(service, slice.metadata.namespace.as_deref());
                }
            }
        },
    );
    let (services_for_pods, slices_for_pods) = (services.clone(), slices.clone());

    let to_deployments_of_sets = to_deployments.clone();
    let (sets, sets_run) = informer(
        Api::<ReplicaSet>::all(client.clone()),
        move |rs: &ReplicaSet| {
            if let Some(owner) = controller_of(&rs.metadata).filter(|o| o.kind == "Deployment") {
                to_deployments.send(&owner.name, rs.metadata.namespace.as_deref());
            }
        },
    );
    let sets_for_pods = sets.clone();
    let to_deployments_of_pods = to_deployments_of_sets;
    let changed = nodes_or_pods_changed.clone();
    let (pods, pods_run) = informer(Api::<Pod>::all(client.clone()), move |pod: &Pod| {
        changed.notify_one();
        let ns = pod.metadata.namespace.as_deref();
        for service in endpointslice::services_of_pod(&services_for_pods, &slices_for_pods, pod) {
            to_services.send(&service.name, service.namespace.as_deref());
        }
        match controller_of(&pod.metadata) {
            Some(owner) if owner.kind == "ReplicaSet" => {
                to_sets.send(&owner.name, ns);
                // A Recreate rollout waits for old pods to be gone: their
                // Deployment hears of them too.
                let set = kube::runtime::reflector::ObjectRef::<ReplicaSet>::new(&owner.name)
                    .within(ns.unwrap_or_default());
                if let Some(d) = sets_for_pods.get(&set).and_then(|rs| {
                    controller_of(&rs.metadata)
                        .filter(|o| o.kind == "Deployment")
                        .map(|o| o.name.clone())
                }) {
                    to_deployments_of_pods.send(&d, ns);
                }
            }
            Some(_) => {}
            // An orphan: the ReplicaSets that may adopt it.
            None => {
                for r in replicaset::selecting(&sets_for_pods, ns, pod.metadata.labels.as_ref()) {
                    to_sets.send(&r.name, r.namespace.as_deref());
                }
            }
        }
    });
    let changed = nodes_or_pods_changed.clone();
    let (nodes, nodes_run) = informer(Api::<Node>::all(client.clone()), move |_: &Node| {
        changed.notify_one();
    });
    let gc_changed = Arc::new(Notify::new());
    let (gc_kinds, gc_stores, gc_runs) = gc::informers(&client, gc_changed.clone());
    let caches = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let all = futures::future::join_all(gc_runs);
            until(&stop, async move {
                tokio::join!(sets_run, pods_run, nodes_run, services_run, slices_run, all);
            })
            .await
        })
    };

    // Nothing acts on a cache that has not listed yet.
    let synced = async {
        let _ = sets.wait_until_ready().await;
        let _ = pods.wait_until_ready().await;
        let _ = nodes.wait_until_ready().await;
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
        for s in &gc_stores {
            let _ = s.wait_until_ready().await;
        }
    };
    tokio::select! {
        _ = stop.cancelled() => { caches.abort(); return; }
        _ = synced => {}
    }
    tracing::info!("caches synced; controllers running");

    let config = controller::Config::default().concurrency(16);
    let set_context = Arc::new(replicaset::Context {
        client: client.clone(),
        pods: pods.clone(),
        pending: Mutex::new(Default::default()),
    });
    let set_controller = Controller::new(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(config.clone())
    .reconcile_on(set_triggers)
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(
        |rs, ctx| crate::metrics::timed("replicaset", replicaset::reconcile(rs, ctx)),
        error_policy,
        set_context,
    )
    .for_each(|result| {
        if let Err(e) = result {
            tracing::debug!(error = %e, "replicaset controller");
        }
        futures::future::ready(())
    });
    let deployment_context = Arc::new(deployment::Context {
        client: client.clone(),
        sets: sets.clone(),
        pods: pods.clone(),
    });
    let deployment_controller = Controller::new(
        Api::<Deployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(config)
    .reconcile_on(deployment_triggers)
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(
        |d, ctx| crate::metrics::timed("deployment", deployment::reconcile(d, ctx)),
        error_policy,
        deployment_context,
    )
    .for_each(|result| {
        if let Err(e) = result {
            tracing::debug!(error = %e, "deployment controller");
        }
        futures::future::ready(())
    });
    let endpoint_context = Arc::new(endpointslice::Context {
        client: client.clone(),
        pods: pods.clone(),
        slices,
        written: Mutex::new(Default::default()),
    });
    let endpoint_controller = Controller::new(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .with_config(controller::Config::default().concurrency(16))
    .reconcile_on(service_triggers)
    .graceful_shutdown_on(stop.clone().cancelled_owned())
    .run(
        |s, ctx| crate::metrics::timed("endpointslice", endpointslice::reconcile(s, ctx)),
        error_policy,
        endpoint_context,
    )
    .for_each(|result| {
        if let Err(e) = result {
            tracing::debug!(error = %e, "endpointslice controller");
        }
        futures::future::ready(())
    });
    let evictor = eviction::Eviction {
        client: client.clone(),
        nodes,
        pods,
        changed: nodes_or_pods_changed,
    };
    let collector = gc::Collector {
        client,
        kinds: gc_kinds,
        stores: gc_stores,
        changed: gc_changed,
    };
    tokio::join!(
        set_controller,
        deployment_controller,
        endpoint_controller,
        evictor.run(stop.clone()),
        collector.run(stop.clone()),
    );
    caches.abort();
}
