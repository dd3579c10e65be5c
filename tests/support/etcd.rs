//! A real etcd (`etcd` on PATH, Debian's etcd-server) on free loopback
//! ports with a temporary data directory, for the tests of mube's etcd
//! backend: its conformance suite (`apiserver/src/store/conformance.rs`)
//! and `tests/etcd.rs`.

use std::process::{Child, Command, Stdio};

use crate::free_port;

pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    peer_url: String,
    dir: tempfile::TempDir,
}

/// Whether every one of `tools` is installed. A missing one is said on
/// stderr (the caller skips its test), except under `CI=true`, where the
/// tests must run and it panics.
pub fn available(tools: &[&str]) -> bool {
    for tool in tools {
        let installed = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{tool} is not installed, and CI must run the etcd tests"
            );
            eprintln!("{tool} is not installed: this etcd test is skipped");
            return false;
        }
    }
    true
}

impl Etcd {
    /// Starts one (check `available(&["etcd"])` first); it answers
    /// shortly after.
    pub fn start() -> Etcd {
        let mut etcd = Etcd {
            child: None,
            url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        etcd.spawn();
        etcd
    }

    /// Starts etcd (again) on this one's ports and data directory.
    pub fn spawn(&mut self) {
        let child = Command::new("etcd")
            .args(["--name", "e2e", "--data-dir"])
            .arg(self.dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &self.url,
                "--advertise-client-urls",
                &self.url,
            ])
            .args([
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
            ])
            .args(["--initial-cluster", &format!("e2e={}", self.peer_url)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// kill -9.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
