//! Controllers: API clients that watch resources and write back through the
//! same paths as any other client.

pub mod client;
pub mod csr_signer;
pub mod namespace;
pub mod node_lifecycle;
