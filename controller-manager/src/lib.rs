//! mube's controller manager: the controllers that keep declared state
//! true, each an API client built from shared parts (kube-runtime's
//! watcher, reflector and `Controller` with its work queue and back-off,
//! and the informers in `informer.rs`), run by the leader of the copies
//! (`mube_client::leader`).
//!
//! Each controller's decision is a pure function (`plan`, `decide`,
//! `retaint`), unit-tested without a server; the rest carries it out.

pub mod deployment;
pub mod endpointslice;
pub mod eviction;
pub mod gc;
pub mod informer;
pub mod manager;
pub mod metrics;
pub mod pods;
pub mod replicaset;

/// A controller's failed pass: retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
}
