//! The node's credential: a client certificate for `system:node:<name>` in
//! `system:nodes`, obtained as Kubernetes' TLS bootstrapping does.
//!
//! 1. With a join token (`MUBELET_TOKEN` or `MUBELET_TOKEN_FILE`) and no
//!    usable certificate under `MUBELET_STATE_DIR`, the agent makes a key
//!    (which never leaves the node) and sends a CertificateSigningRequest
//!    for its name, authenticated by the token; the API server approves and
//!    signs it, and the agent keeps the certificate and key in one file
//!    (`client.pem`, 0600, replaced whole: never a key beside another's
//!    certificate), once it has checked that the certificate is for its
//!    key and its name.
//! 2. On every start after, the kept certificate is used; the token is no
//!    longer needed.
//! 3. Before the certificate expires (at 70-90 % of its life, as the
//!    kubelet), the agent asks for a new one with the old one, and from
//!    then on uses the new one.
//!
//! Without a token or a kept certificate the agent sends no credential
//! (the original Mube's plain setup, for a server with security off).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// What Kubernetes' signer for node client certificates is called.
const SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// How long to wait for the server to sign.
const SIGN_WAIT: Duration = Duration::from_secs(60);

/// A client certificate and its key, PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Identity {
    /// The pair, if the certificate is for this key.
    fn parse(cert_pem: String, key_pem: String) -> Result<Identity, String> {
        let (not_before, not_after, _, public_key) = inspect(&cert_pem)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("not a private key: {e}"))?;
        if rcgen::PublicKeyData::der_bytes(&key) != public_key.as_slice() {
            return Err("the certificate is not for this key".into());
        }
        Ok(Identity {
            cert_pem,
            key_pem,
            not_before,
            not_after,
        })
    }

    /// When to renew: a random point in 70-90 % of the lifetime, so that a
    /// fleet started together does not renew together.
    fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life.mul_f64(0.7 + fastrand::f64() * 0.2)
    }

    fn expired(&self) -> bool {
        SystemTime::now() >= self.not_after
    }
}

/// (notBefore, notAfter, CN, public key bits) of a PEM certificate.
fn inspect(pem: &str) -> Result<(SystemTime, SystemTime, String, Vec<u8>), String> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = parsed
        .parse_x509()
        .map_err(|e| format!("not a certificate: {e}"))?;
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let validity = cert.validity();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or("")
        .to_string();
    let public_key = cert.public_key().subject_public_key.data.to_vec();
    Ok((
        at(validity.not_before),
        at(validity.not_after),
        cn,
        public_key,
    ))
}

/// The node's certificate and key, in one file.
pub fn pem_path(dir: &Path) -> PathBuf {
    dir.join("client.pem")
}

/// The kept certificate, if it is this node's, for the kept key, and not
/// expired; anything else is logged and not used.
fn load(config: &Config) -> Result<Option<Identity>, String> {
    let path = pem_path(&config.state_dir);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let Some(split) = text.find("-----BEGIN PRIVATE KEY-----") else {
        tracing::warn!(file = %path.display(), "the kept credential holds no key; not using it");
        return Ok(None);
    };
    let identity = match Identity::parse(text[..split].to_string(), text[split..].to_string()) {
        Ok(identity) => identity,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the kept credential is not usable");
            return Ok(None);
        }
    };
    let (_, _, cn, _) = inspect(&identity.cert_pem)?;
    if cn != format!("system:node:{}", config.node_name) {
        tracing::warn!(cert = %path.display(), %cn, "the kept certificate is for another node; not using it");
        return Ok(None);
    }
    if identity.expired() {
        tracing::warn!(cert = %path.display(), "the kept certificate has expired");
        return Ok(None);
    }
    Ok(Some(identity))
}

/// Writes `text` to `path` through a temporary file and a rename, so that a
/// crash never leaves half a key.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn save(dir: &Path, identity: &Identity) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("MUBELET_STATE_DIR: cannot create {}: {e}", dir.display()))?;
    let pem = format!("{}\n{}", identity.cert_pem.trim_end(), identity.key_pem);
    write_private(&pem_path(dir), &pem)
}

/// An HTTP client for the API server: trusting the cluster CA, and
/// presenting `identity` when given.
pub fn http_client(
    config: &Config,
    identity: Option<&Identity>,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // A connection for the heartbeat, one for the node's status, and
        // the pod workers' writes; the pod watch holds its own.
        .pool_max_idle_per_host(crate::pods::API_WRITES + 2)
        .tcp_nodelay(true);
    if let Some(pem) = &config.ca_pem {
        let ca = reqwest::Certificate::from_pem(pem)
            .map_err(|e| format!("MUBELET_CA_FILE: not a PEM certificate: {e}"))?;
        // The cluster's CA, and only it.
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
    }
    if let Some(identity) = identity {
        let pem = format!("{}\n{}", identity.cert_pem, identity.key_pem);
        let identity = reqwest::Identity::from_pem(pem.as_bytes())
            .map_err(|e| format!("the node certificate does not load: {e}"))?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// The identity to start with: the kept one, else one obtained with the
/// join token, else none.
pub async fn initial(config: &Config) -> Result<Option<Identity>, String> {
    if let Some(identity) = load(config)? {
        tracing::info!(cert = %pem_path(&config.state_dir).display(), "using the kept node certificate");
        return Ok(Some(identity));
    }
    let Some(token) = &config.token else {
        return Ok(None);
    };
    Ok(Some(join(config, token).await?))
}

/// A certificate got with the join token, kept.
async fn join(config: &Config, token: &str) -> Result<Identity, String> {
    let client = http_client(config, None, Duration::from_secs(10))?;
    let identity = request(config, &client, Some(token))
        .await
        .map_err(|e| format!("joining the cluster with the join token failed: {e}"))?;
    save(&config.state_dir, &identity)?;
    tracing::info!(cert = %pem_path(&config.state_dir).display(), "joined: got a node certificate");
    Ok(identity)
}

/// Asks the API server to sign a new key for this node: a
/// CertificateSigningRequest, then its status until it is issued.
async fn request(
    config: &Config,
    client: &reqwest::Client,
    token: Option<&str>,
) -> Result<Identity, String> {
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("system:node:{}", config.node_name),
    );
    dn.push(DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| format!("cannot make a certificate request: {e}"))?;
    let collection = config
        .api_servers
        .join("apis/certificates.k8s.io/v1/certificatesigningrequests")?;
    let body = json!({
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "node-csr-"},
        "spec": {
            "request": base64::engine::general_purpose::STANDARD.encode(csr),
            "signerName": SIGNER,
            "usages": ["digital signature", "client auth"],
        },
    });
    let with_token = |r: reqwest::RequestBuilder| match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let created = answer(with_token(client.post(collection.clone())).json(&body)).await?;
    let name = created
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or("the server's answer has no name")?
        .to_string();
    let url = collection
        .join(&format!("certificatesigningrequests/{name}"))
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + SIGN_WAIT;
    loop {
        let csr = answer(with_token(client.get(url.clone()))).await?;
        if let Some(cert) = csr.pointer("/status/certificate").and_then(Value::as_str) {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(cert)
                .map_err(|e| format!("the certificate is not base64: {e}"))?;
            let pem = String::from_utf8(pem).map_err(|_| "the certificate is not PEM")?;
            // Only a certificate for this key and this node is kept.
            let identity = Identity::parse(pem, key.serialize_pem())
                .map_err(|e| format!("certificate request {name}: {e}"))?;
            let (_, _, cn, _) = inspect(&identity.cert_pem)?;
            if cn != format!("system:node:{}", config.node_name) {
                return Err(format!("certificate request {name}: issued for {cn:?}"));
            }
            return Ok(identity);
        }
        let refused = csr
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| matches!(c["type"].as_str(), Some("Denied" | "Failed")));
        if let Some(c) = refused {
            return Err(format!(
                "certificate request {name} was {}: {}",
                c["type"].as_str().unwrap_or_default().to_lowercase(),
                c["message"].as_str().unwrap_or_default()
            ));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "certificate request {name} is still pending after {SIGN_WAIT:?}: the server did not approve it (is the token's group bound to system:certificates.k8s.io:certificatesigningrequests:nodeclient? `kubectl get csr` shows it)"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A request's JSON answer, or the server's message as the error.
async fn answer(request: reqwest::RequestBuilder) -> Result<Value, String> {
    let response = request
        .send()
        .await
        .map_err(|e| mube_apis::errors::chain(&e))?;
    let code = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if code.is_success() {
        return Ok(body);
    }
    Err(format!(
        "{} {}",
        code.as_u16(),
        body["message"].as_str().unwrap_or("(no message)")
    ))
}

/// Renews the certificate before it expires, for as long as the agent
/// runs, publishing each new client to `clients`.
pub async fn renew(
    config: std::sync::Arc<Config>,
    mut identity: Identity,
    timeout: Duration,
    clients: watch::Sender<reqwest::Client>,
    shutdown: CancellationToken,
) {
    // Never two renewals within a second, whatever the certificate says.
    let mut at_least = Duration::ZERO;
    loop {
        let wait = identity
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .max(at_least);
        at_least = Duration::from_secs(1);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        // An expired certificate cannot renew itself: join again with
        // the token, when there is one.
        let renewed = match (&config.token, identity.expired()) {
            (Some(token), true) => join(&config, token).await,
            _ => match http_client(&config, Some(&identity), Duration::from_secs(10)) {
                Ok(client) => match request(&config, &client, None).await {
                    Ok(id) => save(&config.state_dir, &id).map(|_| id),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            },
        };
        let fresh = renewed.and_then(|id| {
            let client = http_client(&config, Some(&id), timeout)?;
            Ok((id, client))
        });
        match fresh {
            Ok((id, client)) => {
                tracing::info!("renewed the node certificate");
                identity = id;
                let _ = clients.send(client);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the node certificate; trying again in 10s");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                }
            }
        }
    }
}
