//! The HTTP ceiling: how many heartbeat requests this machine answers when
//! the server only parses each body and replies (no store, no fsync), with
//! the same load generator on the same cores. It bounds what any HTTP server
//! can reach here, so a throughput target can be read against it.
//!
//! The endpoint runs in a child process (`mube-bench serve-bare`), like the
//! API server, with its own runtime.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;

use crate::server::free_port;

/// About the size of the Node the API server answers a heartbeat with.
const REPLY: &str = concat!(
    r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-00000","resourceVersion":"1"},"#,
    r#""status":{"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","#,
    r#""message":"mubelet is posting ready status."}],"state":"Ready","padding":""#,
    "..........................................................................................",
    "..........................................................................................",
    "..........................................................................................",
    r#""}}"#
);

/// Serves the bare endpoint until killed.
pub async fn serve(port: u16) -> Result<(), String> {
    let app = Router::new().route(
        "/api/v1/nodes/heartbeat",
        post(|body: axum::body::Bytes| async move {
            match mube_apis::heartbeat::Heartbeat::parse(&body) {
                Ok(_) => (StatusCode::ACCEPTED, REPLY),
                Err(_) => (StatusCode::BAD_REQUEST, "{}"),
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen on {port}: {e}"))?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

/// The bare endpoint in a child process; killed when dropped.
pub struct Bare {
    child: Child,
    pub url: String,
}

impl Bare {
    pub async fn start() -> Result<Bare, String> {
        let port = free_port()?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args(["serve-bare", "--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the bare endpoint: {e}"))?;
        let bare = Bare {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(10) {
                return Err("the bare endpoint did not start listening".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(bare)
    }
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
