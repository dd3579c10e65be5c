//! HTTPS against the real binary: the generated CA and serving
//! certificate (kept, reused on restart), user-provided certificate files,
//! and clients that do not trust the CA, speak plain HTTP, or send
//! garbage: each is refused with the connection, and the server stays up.

use std::time::Duration;

use mube_e2e::{node, Api, ApiServer, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NODES: &str = "/api/v1/nodes";

fn tls() -> Options {
    Options {
        nodes: vec![node("node-a")],
        tls: true,
        ..Default::default()
    }
}

async fn healthy(server: &ApiServer) {
    let answer = server
        .http_client()
        .get(format!("{}/readyz", server.url()))
        .send()
        .await
        .expect("the server still answers over TLS");
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn the_generated_ca_is_trusted_kept_and_reused() {
    let mut server = ApiServer::start(tls()).await;
    let api = Api::new(&server);
    assert!(server.url().starts_with("https://"));
    let list = api.get(NODES).await;
    assert_eq!(list.code, 200, "{}", list.body);
    let mut watch = api.watch(NODES, "").await;
    assert!(watch.next(Duration::from_secs(5)).await.is_some());

    let pki = server.data_dir().join("pki");
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "serving.key"] {
        let mode = std::fs::metadata(pki.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let kubeconfig = std::fs::read_to_string(server.data_dir().join("kubeconfig")).unwrap();
    assert!(
        kubeconfig.contains("server: https://127.0.0.1:"),
        "{kubeconfig}"
    );
    assert!(
        kubeconfig.contains("certificate-authority-data: "),
        "{kubeconfig}"
    );

    // A restart keeps the CA and the certificate: the same client still trusts it.
    let ca = std::fs::read(pki.join("ca.crt")).unwrap();
    let serving = std::fs::read(pki.join("serving.crt")).unwrap();
    server.terminate();
    server.restart().await;
    assert_eq!(std::fs::read(pki.join("ca.crt")).unwrap(), ca);
    assert_eq!(std::fs::read(pki.join("serving.crt")).unwrap(), serving);
    assert_eq!(api.get(NODES).await.code, 200);
}

#[tokio::test]
async fn untrusting_plain_and_garbage_clients_get_no_service() {
    let server = ApiServer::start(tls()).await;
    // A client that does not trust the cluster CA cannot connect.
    let stranger = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let refused = stranger
        .get(format!("{}{NODES}", server.url()))
        .send()
        .await;
    assert!(refused.is_err(), "a client without the CA was served");
    // Plain HTTP to the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}{NODES}", server.port))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP was served on the TLS port"
    );
    // Garbage instead of a handshake: the connection is closed.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef])
        .await
        .unwrap();
    tcp.write_all(&[0u8; 4096]).await.unwrap_or(());
    let mut buffer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buffer)).await;
    assert!(closed.is_ok(), "a garbage handshake kept its connection");
    healthy(&server).await;
}

#[tokio::test]
async fn certificate_files_from_the_config_are_used() {
    // Files made by one server's CA, given to another through tls.*File.
    let first = ApiServer::start(tls()).await;
    let files = tempfile::tempdir().unwrap();
    for f in ["ca.crt", "serving.crt", "serving.key"] {
        std::fs::copy(first.data_dir().join("pki").join(f), files.path().join(f)).unwrap();
    }
    drop(first);
    let path = |f: &str| files.path().join(f).display().to_string();
    let server = ApiServer::start(Options {
        tls: true,
        extra_config: format!(
            "tls: {{enabled: true, certFile: {}, keyFile: {}, caFile: {}}}\n",
            path("serving.crt"),
            path("serving.key"),
            path("ca.crt")
        ),
        ca_file: Some(files.path().join("ca.crt")),
        ..tls()
    })
    .await;
    assert!(
        !server.data_dir().join("pki").exists(),
        "nothing is generated when files are given"
    );
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(files.path().join("ca.crt")).unwrap())
                .unwrap(),
        )
        .build()
        .unwrap();
    let answer = client
        .get(format!("{}{NODES}", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

/// mubectl takes the server, the CA and the admin certificate from the
/// kubeconfig the server writes, as kubectl does.
#[tokio::test]
async fn mubectl_reads_the_ca_and_client_certificate_from_the_kubeconfig() {
    let server = ApiServer::start(tls()).await;
    let kubeconfig = server.data_dir().join("kubeconfig");
    let out = std::process::Command::new(mube_e2e::bin("mubectl"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "nodes"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("node-a"), "{stdout}");
    // Without the CA (only the URL), the server's certificate is not trusted.
    let (code, _, err) = mube_e2e::mubectl(&server.url(), &["get", "nodes"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the API server"), "{err}");
}

/// A mubelet given the cluster CA (`MUBELET_CA_FILE`) heartbeats over
/// HTTPS, and its node goes Ready.
#[tokio::test]
async fn mubelet_heartbeats_over_tls_with_the_cluster_ca() {
    let server = ApiServer::start(tls()).await;
    let ca = server.data_dir().join("pki/ca.crt");
    let _agent = mube_e2e::Mubelet::start_with(
        &server.url(),
        "node-a",
        "200ms",
        &[("MUBELET_CA_FILE", ca.to_str().unwrap())],
    );
    let api = Api::new(&server);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let node = api.get(&format!("{NODES}/node-a")).await.body;
        if mube_e2e::state(&node) == "Ready" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node-a never went Ready: {node}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
