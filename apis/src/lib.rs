//! Types and wire formats shared by every mube binary.
//!
//! Nothing in this crate does I/O: the API server, the node agent and the
//! command-line client all speak through these definitions, so the wire format
//! lives in exactly one place. Kubernetes-defined objects come from
//! `k8s-openapi`; this crate adds what mube defines on top (the heartbeat body,
//! `status.state`) and the generic API machinery (Status errors, watch events,
//! selectors, name validation) that `k8s-openapi` does not provide.

pub mod address;
pub mod duration;
pub mod errors;
pub mod heartbeat;
pub mod join_token;
pub mod jsonpath;
pub mod node;
pub mod quantity;
pub mod resources;
pub mod schema;
pub mod selector;
pub mod status;
pub mod table;
pub mod validation;
pub mod watch;

pub use k8s_openapi;

/// Namespace that holds one Lease per node, as in Kubernetes.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
