//! The API server's own controllers (node lifecycle, namespaces, the CSR
//! signer) run once across API servers that share a store: the servers
//! elect a leader through the Lease `kube-system/mube-apiserver-controllers`,
//! with the same algorithm as the scheduler and the controller manager
//! (`mube_client::leader`), reaching the Lease in process.
//!
//! A server on its own log is alone by construction (its data directory
//! is locked), so it runs them without an election: nothing waits out a
//! Lease its previous run held.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use mube_apis::resources;
use mube_client::leader::{lead_with, Election, LeaseApi, Outcome};
use tokio_util::sync::CancellationToken;

use crate::registry::{managed, DryRun, Part, Registry};

/// The Lease the API servers elect their controllers' leader with.
pub const LEASE: &str = "mube-apiserver-controllers";

/// The election's Lease, through the registry (the same validation and
/// preconditions as through HTTP).
struct RegistryLease {
    registry: Arc<Registry>,
    namespace: String,
    name: String,
}

fn decode(stored: &crate::store::StoredObject) -> Result<Lease, String> {
    serde_json::from_slice(&stored.json).map_err(|e| format!("the leader Lease: {e}"))
}

fn encode(lease: &Lease) -> Result<serde_json::Value, String> {
    let mut value =
        serde_json::to_value(lease).map_err(|e| format!("encoding the leader Lease: {e}"))?;
    value["apiVersion"] = "coordination.k8s.io/v1".into();
    value["kind"] = "Lease".into();
    Ok(value)
}

impl RegistryLease {
    fn leases(&self) -> Result<Arc<crate::registry::Resource>, String> {
        self.registry
            .resource(&resources::LEASES)
            .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl LeaseApi for RegistryLease {
    async fn get(&self) -> Result<Option<Lease>, String> {
        let r = self.leases()?;
        match self
            .registry
            .get(&r, Some(&self.namespace), &self.name)
            .await
        {
            Ok(stored) => decode(&stored).map(Some),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn create(&self, lease: Lease) -> Result<bool, String> {
        let r = self.leases()?;
        match self
            .registry
            .create(
                &r,
                Some(&self.namespace),
                encode(&lease)?,
                managed::APISERVER,
                DryRun::No,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.is_already_exists() || e.is_conflict() => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn replace(&self, lease: Lease) -> Result<Option<Lease>, String> {
        let r = self.leases()?;
        match self
            .registry
            .update(
                &r,
                Some(&self.namespace),
                &self.name,
                Part::Main,
                encode(&lease)?,
                managed::APISERVER,
                DryRun::No,
            )
            .await
        {
            Ok(stored) => decode(&stored).map(Some),
            Err(e) if e.is_conflict() || e.is_not_found() => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// None: candidates read the Lease every retry period, as client-go's
    /// do. A dead leader's controllers are taken over within the lease
    /// duration plus one retry period (17 s by default, `leaderElection`).
    fn changes(&self) -> BoxStream<'static, LeaseSpec> {
        futures::stream::pending().boxed()
    }
}

/// Runs `controllers` until `shutdown`: with `shared_store`, only while
/// this server leads, campaigning again after a lost lease (unlike the
/// controller manager, an API server does not exit for it: it still
/// serves); without, at once.
pub async fn run<W, F>(
    registry: Arc<Registry>,
    shared_store: bool,
    durations: crate::config::LeaderElection,
    shutdown: CancellationToken,
    controllers: W,
) where
    W: Fn(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    if !shared_store {
        controllers(shutdown).await;
        return;
    }
    let mut election = Election::new(LEASE);
    election.lease_duration = durations.lease_duration;
    election.renew_deadline = durations.renew_deadline;
    election.retry_period = durations.retry_period;
    loop {
        let leases = RegistryLease {
            registry: registry.clone(),
            namespace: election.namespace.clone(),
            name: election.name.clone(),
        };
        match lead_with(leases, election.clone(), shutdown.clone(), &controllers).await {
            Ok(Outcome::Stopped) => return,
            Ok(Outcome::Lost) => {
                tracing::warn!("this API server's controllers lost their Lease; campaigning again")
            }
            Err(e) => {
                tracing::error!(error = %e, "the controllers' leader election cannot run");
                return;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
