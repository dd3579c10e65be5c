//! Node services: what the API server does for nodes beyond storing them.
//! They use the registry as any API client would; the Node kind itself is
//! declared in `registry/node.rs`.

mod heartbeat;
mod registration;

pub use heartbeat::{authorize_heartbeat, heartbeat};
pub use registration::{register_from_config, RegisteredNode};
