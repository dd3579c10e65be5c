//! The cluster's certificates, as k3s makes them: at first start a cluster
//! CA and a serving certificate signed by it are generated under
//! `<dataDir>/pki/` (keys 0600) and reused on every start after; the
//! serving certificate is made again when it nears its expiry (checked at
//! start and every hour while running: the new one is served at once) or
//! no longer names every address the server answers on. Certificate files
//! given in the config are used instead, and read again every hour.
//!
//! Generation is rcgen's, reading certificates x509-parser's, TLS rustls's.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Certificate files from the config (`tls.certFile`, `tls.keyFile`,
/// `tls.caFile`), used instead of generated ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// What the server needs to speak TLS, and what clients need to trust it.
pub struct Pki {
    /// The CA certificate, PEM: written into the kubeconfig.
    pub ca_pem: String,
    pub server: Arc<rustls::ServerConfig>,
    /// The admin's client certificate and key, PEM (CN `system:admin`, O
    /// `system:masters`, as k3s names its admin), for the kubeconfig;
    /// `None` with user-provided files (no CA key to sign with).
    pub admin: Option<(String, String)>,
    /// Signs node client certificates (`None` with user-provided files:
    /// there is no CA key).
    pub signer: Option<Signer>,
    /// A bearer token for the admin (`pki/admin.token`, 0600), for tools
    /// such as curl that are simpler with a token than a certificate.
    pub admin_token: Option<String>,
    /// Renews the serving certificate while the server runs.
    pub renewal: Renewal,
}

/// 32 bytes from the system's secure random source, as hex: a bearer
/// token nobody can guess.
pub fn random_token() -> Result<String, String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    let urandom = Path::new("/dev/urandom");
    std::fs::File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| io("cannot read", urandom, e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The admin's bearer token under `dir`, made at first start.
fn admin_token(dir: &Path) -> Result<String, String> {
    let path = dir.join("admin.token");
    if path.exists() {
        let token = read(&path)?.trim().to_string();
        if token.len() >= 32 {
            return Ok(token);
        }
    }
    let token = random_token()?;
    write_file(&path, &format!("{token}\n"), true)?;
    Ok(token)
}

/// The cluster CA, as a signer of client certificates requested through
/// CertificateSigningRequests (Kubernetes' `csrsigning` controller).
#[derive(Clone)]
pub struct Signer {
    ca_pem: String,
    ca_key_pem: String,
}

/// The subject a PEM certificate request asks for: (CN, [O]), after its
/// signature is checked.
pub fn request_subject(csr_pem: &str) -> Result<(String, Vec<String>), String> {
    use x509_parser::prelude::FromDer;
    let der =
        rustls_pemfile::read_one(&mut csr_pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    let Some(rustls_pemfile::Item::Csr(der)) = der else {
        return Err("PEM block type must be CERTIFICATE REQUEST".into());
    };
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| format!("not a certificate request: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "the request's signature does not verify".to_string())?;
    let subject = &csr.certification_request_info.subject;
    // One CN, and nothing in the name but CN and O: what is approved is
    // exactly what is signed (a second CN could otherwise be the one a
    // signer keeps).
    let mut cn = None;
    let mut orgs = Vec::new();
    for attribute in subject.iter_attributes() {
        let value = attribute
            .as_str()
            .map_err(|_| "the subject holds a value that is not text".to_string())?
            .to_string();
        match attribute.attr_type() {
            t if *t == x509_parser::oid_registry::OID_X509_COMMON_NAME => {
                if cn.replace(value).is_some() {
                    return Err("the subject names more than one common name".into());
                }
            }
            t if *t == x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME => orgs.push(value),
            _ => return Err("the subject may hold only a common name and organizations".into()),
        }
    }
    Ok((cn.unwrap_or_default(), orgs))
}

impl Signer {
    /// A client certificate (client auth only, not a CA) for the key of
    /// `csr_pem`, naming exactly `subject` (CN, [O]) as the caller checked
    /// it (never the request's own name, taken again), valid for `lifetime`.
    pub fn sign_client(
        &self,
        csr_pem: &str,
        subject: &(String, Vec<String>),
        lifetime: Duration,
    ) -> Result<String, String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("cannot read the certificate request: {e}"))?;
        let params = &mut csr.params;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, subject.0.as_str());
        for o in &subject.1 {
            name.push(DnType::OrganizationName, o.as_str());
        }
        params.distinguished_name = name;
        params.subject_alt_names = Vec::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = SystemTime::now();
        // Backdated a little, as Kubernetes' signer does, for clock skew;
        // by a tenth at most, so that a short lifetime stays mostly ahead
        // (agents renew at 70-90 % of notBefore..notAfter).
        let backdate = Duration::from_secs(300).min(lifetime / 10);
        params.not_before = (now - backdate).into();
        params.not_after = (now + lifetime).into();
        let key = KeyPair::from_pem(&self.ca_key_pem)
            .map_err(|e| format!("cannot load the CA key: {e}"))?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_pem, key)
            .map_err(|e| format!("cannot use the CA: {e}"))?;
        let cert = csr
            .signed_by(&issuer)
            .map_err(|e| format!("cannot sign: {e}"))?;
        Ok(cert.pem())
    }
}

/// A serving certificate is made again when less than this is left.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const CA_NAME: &str = "mube-ca";

fn io(what: &str, path: &Path, e: impl std::fmt::Display) -> String {
    format!("{what} {}: {e}", path.display())
}

/// Writes `text` to `path`, readable by the owner only when `secret`.
fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    crate::files::write_atomically(path, text.as_bytes(), if secret { 0o600 } else { 0o644 })
        .map_err(|e| io("cannot write", path, e))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| io("cannot read", path, e))
}

/// The names the serving certificate must carry: loopback, the host name
/// and its addresses, the address listened on, and the config's extras.
pub fn serving_names(listen: IpAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    if let Some(host) = host_name() {
        names.push(host.clone());
        if let Ok(addresses) = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), 0)) {
            names.extend(addresses.map(|a| a.ip().to_string()));
        }
    }
    if !listen.is_unspecified() {
        names.push(listen.to_string());
    }
    names.extend(extra.iter().cloned());
    let mut unique = Vec::new();
    for n in names {
        if !unique.contains(&n) {
            unique.push(n);
        }
    }
    unique
}

/// The machine's host name (Linux: the kernel's), if it has one.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

fn ca_params() -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + CA_LIFETIME).into();
    Ok(params)
}

fn san(name: &str) -> Result<SanType, String> {
    match name.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => {
            Ok(SanType::DnsName(name.to_string().try_into().map_err(
                |e| format!("tls.sans: {name:?} is not a DNS name: {e}"),
            )?))
        }
    }
}

/// Seconds since the epoch at which the certificate expires, and the names
/// it carries; `None` if it cannot be read.
fn inspect(pem: &str) -> Option<(i64, Vec<String>)> {
    let der = rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let mut names = Vec::new();
    if let Ok(Some(sans)) = cert.subject_alternative_name() {
        for name in &sans.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some((not_after, names))
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether a serving certificate is still good: readable, not within
/// `RENEW_BEFORE` of its expiry, and naming every name in `names`.
fn still_good(pem: &str, names: &[String]) -> bool {
    match inspect(pem) {
        Some((not_after, has)) => {
            not_after - now_seconds() > RENEW_BEFORE.as_secs() as i64
                && names.iter().all(|n| {
                    let n = n
                        .parse::<IpAddr>()
                        .map(|ip| ip.to_string())
                        .unwrap_or(n.clone());
                    has.contains(&n)
                })
        }
        None => false,
    }
}

/// The generated CA (made at first start, reused after): its PEM and key.
/// `.2` is whether it was made just now: then nothing it did not sign
/// may be reused.
fn cluster_ca(dir: &Path) -> Result<(String, KeyPair, bool), String> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    if crt.exists() && key.exists() {
        let key_pem = read(&key)?;
        let pair = KeyPair::from_pem(&key_pem).map_err(|e| io("cannot load", &key, e))?;
        return Ok((read(&crt)?, pair, false));
    }
    let pair = KeyPair::generate().map_err(|e| format!("cannot generate the CA key: {e}"))?;
    let cert = ca_params()?
        .self_signed(&pair)
        .map_err(|e| format!("cannot make the CA certificate: {e}"))?;
    write_file(&key, &pair.serialize_pem(), true)?;
    write_file(&crt, &cert.pem(), false)?;
    tracing::info!(ca = %crt.display(), "generated the cluster CA");
    Ok((cert.pem(), pair, true))
}

/// A certificate signed by the cluster CA, kept as `{name}.crt` and
/// `{name}.key`: reused while still good, else made anew.
struct Leaf<'a> {
    name: &'a str,
    common_name: &'a str,
    organization: Option<&'a str>,
    names: &'a [String],
    usage: ExtendedKeyUsagePurpose,
    /// The CA is new: certificates on disk were signed by another.
    new_ca: bool,
}

fn leaf(
    dir: &Path,
    ca_pem: &str,
    ca_key_pem: &str,
    leaf: Leaf,
) -> Result<(String, String), String> {
    let (crt, key) = (
        dir.join(format!("{}.crt", leaf.name)),
        dir.join(format!("{}.key", leaf.name)),
    );
    if crt.exists() && key.exists() && !leaf.new_ca {
        let pem = read(&crt)?;
        if still_good(&pem, leaf.names) {
            return Ok((pem, read(&key)?));
        }
        tracing::info!(cert = %crt.display(), "renewing a certificate (near expiry, or new names)");
    }
    let ca_key =
        KeyPair::from_pem(ca_key_pem).map_err(|e| format!("cannot load the CA key: {e}"))?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key)
        .map_err(|e| format!("cannot use the CA in {}: {e}", dir.display()))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, leaf.common_name);
    if let Some(o) = leaf.organization {
        dn.push(DnType::OrganizationName, o);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = leaf
        .names
        .iter()
        .map(|n| san(n))
        .collect::<Result<_, _>>()?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![leaf.usage];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(3600)).into();
    params.not_after = (now + SERVING_LIFETIME).into();
    let pair = KeyPair::generate().map_err(|e| format!("cannot generate the serving key: {e}"))?;
    let cert = params
        .signed_by(&pair, &issuer)
        .map_err(|e| format!("cannot sign the serving certificate: {e}"))?;
    write_file(&key, &pair.serialize_pem(), true)?;
    write_file(&crt, &cert.pem(), false)?;
    Ok((cert.pem(), pair.serialize_pem()))
}

/// The user a client certificate names, Kubernetes' way: CN is the user,
/// each O a group.
pub fn certificate_user(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let user = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some((user, groups))
}

/// The serving certificate the TLS config presents, replaceable while the
/// server runs (renewal swaps it; connections already open keep theirs).
#[derive(Debug)]
pub struct ServingCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    pem: std::sync::Mutex<String>,
}

impl ServingCert {
    fn new(cert_pem: &str, key_pem: &str) -> Result<ServingCert, String> {
        Ok(ServingCert {
            current: std::sync::RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?)),
            pem: std::sync::Mutex::new(cert_pem.to_string()),
        })
    }

    /// Presents `cert_pem` from now on, if it differs; whether it did.
    fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<bool, String> {
        let mut pem = self.pem.lock().unwrap_or_else(|p| p.into_inner());
        if *pem == cert_pem {
            return Ok(false);
        }
        let key = Arc::new(certified_key(cert_pem, key_pem)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        *pem = cert_pem.to_string();
        Ok(true)
    }
}

impl rustls::server::ResolvesServerCert for ServingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<rustls::sign::CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the serving certificate is not PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the serving certificate file holds no certificate".into());
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_bytes())
        .map_err(|e| format!("the serving key is not PEM: {e}"))?
        .ok_or("the serving key file holds no private key")?;
    rustls::sign::CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(|e| format!("the serving certificate and key do not fit: {e}"))
}

/// The TLS config: the serving certificate, and client certificates
/// verified against the cluster CA when a client offers one (a client
/// without one is not refused here: it may carry a token).
/// `client_ca`: the CA whose client certificates log users in; `None`
/// turns certificate login off.
fn server_config(
    serving: Arc<ServingCert>,
    client_ca: Option<&str>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca_pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
                let ca = ca.map_err(|e| format!("the CA is not PEM: {e}"))?;
                roots
                    .add(ca)
                    .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
            }
            let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("cannot verify client certificates with the CA: {e}"))?;
            builder.with_client_cert_verifier(clients)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(serving);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Keeps the serving certificate fresh while the server runs: the
/// generated one is made again within `RENEW_BEFORE` of its expiry (as at
/// start), and user files are read again, so that a certificate renewed
/// on disk (by cert-manager, certbot, ...) is served without a restart.
pub struct Renewal {
    serving: Arc<ServingCert>,
    source: Source,
}

enum Source {
    Files(UserFiles),
    Generated {
        dir: PathBuf,
        ca_pem: String,
        ca_key_pem: String,
        names: Vec<String>,
    },
}

impl Renewal {
    /// Checks once; whether a new certificate is now served.
    pub fn check(&self) -> Result<bool, String> {
        let (cert, key) = match &self.source {
            Source::Files(files) => (read(&files.cert)?, read(&files.key)?),
            Source::Generated {
                dir,
                ca_pem,
                ca_key_pem,
                names,
            } => leaf(dir, ca_pem, ca_key_pem, serving_leaf(names, false))?,
        };
        self.serving.replace(&cert, &key)
    }
}

fn serving_leaf(names: &[String], new_ca: bool) -> Leaf<'_> {
    Leaf {
        name: "serving",
        common_name: "mube-apiserver",
        organization: None,
        names,
        usage: ExtendedKeyUsagePurpose::ServerAuth,
        new_ca,
    }
}

/// Loads or makes the certificates: the user's files when given, else the
/// generated ones under `<data_dir>/pki/`, naming `names`.
pub fn load(data_dir: &Path, files: Option<&UserFiles>, names: &[String]) -> Result<Pki, String> {
    if let Some(files) = files {
        let ca_pem = read(&files.ca)?;
        // The given CA may be a company's or a public one that signs for
        // many: its client certificates do not log anyone in here.
        let serving = Arc::new(ServingCert::new(&read(&files.cert)?, &read(&files.key)?)?);
        let server = server_config(serving.clone(), None)?;
        return Ok(Pki {
            ca_pem,
            server,
            admin: None,
            signer: None,
            admin_token: None,
            renewal: Renewal {
                serving,
                source: Source::Files(files.clone()),
            },
        });
    }
    let dir = data_dir.join("pki");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io("cannot create", &dir, e))?;
    }
    let (ca_pem, ca_key, new_ca) = cluster_ca(&dir)?;
    let ca_key = ca_key.serialize_pem();
    let (cert, key) = leaf(&dir, &ca_pem, &ca_key, serving_leaf(names, new_ca))?;
    let admin = leaf(
        &dir,
        &ca_pem,
        &ca_key,
        Leaf {
            name: "admin",
            common_name: "system:admin",
            organization: Some("system:masters"),
            names: &[],
            usage: ExtendedKeyUsagePurpose::ClientAuth,
            new_ca,
        },
    )?;
    let serving = Arc::new(ServingCert::new(&cert, &key)?);
    let server = server_config(serving.clone(), Some(&ca_pem))?;
    Ok(Pki {
        signer: Some(Signer {
            ca_pem: ca_pem.clone(),
            ca_key_pem: ca_key.clone(),
        }),
        admin_token: Some(admin_token(&dir)?),
        renewal: Renewal {
            serving,
            source: Source::Generated {
                dir,
                ca_pem: ca_pem.clone(),
                ca_key_pem: ca_key,
                names: names.to_vec(),
            },
        },
        ca_pem,
        server,
        admin: Some(admin),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(names: &[(DnType, &str)]) -> String {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for (t, v) in names {
            dn.push(t.clone(), *v);
        }
        params.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn the_serving_certificate_is_renewed_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string()];
        let pki = load(dir.path(), None, &names).unwrap();
        assert!(!pki.renewal.check().unwrap(), "fresh: nothing to do");
        // On disk, one a day from expiry (as a year later would find it).
        let pki_dir = dir.path().join("pki");
        let issuer = Issuer::from_ca_cert_pem(
            &read(&pki_dir.join("ca.crt")).unwrap(),
            KeyPair::from_pem(&read(&pki_dir.join("ca.key")).unwrap()).unwrap(),
        )
        .unwrap();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.not_after = (SystemTime::now() + Duration::from_secs(24 * 3600)).into();
        let key = KeyPair::generate().unwrap();
        let old = params.signed_by(&key, &issuer).unwrap();
        write_file(&pki_dir.join("serving.crt"), &old.pem(), false).unwrap();
        write_file(&pki_dir.join("serving.key"), &key.serialize_pem(), true).unwrap();
        assert!(pki.renewal.check().unwrap(), "due: renewed and served");
        let renewed = read(&pki_dir.join("serving.crt")).unwrap();
        assert_ne!(renewed, old.pem());
        assert!(still_good(&renewed, &names));
        assert!(!pki.renewal.check().unwrap(), "and not again");
    }

    #[test]
    fn a_request_is_signed_for_exactly_the_name_that_was_checked() {
        let good = request(&[
            (DnType::CommonName, "system:node:n1"),
            (DnType::OrganizationName, "system:nodes"),
        ]);
        let subject = request_subject(&good).unwrap();
        assert_eq!(
            subject,
            (
                "system:node:n1".to_string(),
                vec!["system:nodes".to_string()]
            )
        );
        // A second CN (one signer might keep the last): refused.
        let two = request(&[
            (DnType::CommonName, "system:node:n1"),
            (DnType::CustomDnType(vec![2, 5, 4, 3]), "system:node:n2"),
        ]);
        assert!(request_subject(&two).unwrap_err().contains("more than one"));
        let dir = tempfile::tempdir().unwrap();
        let pki = load(dir.path(), None, &["localhost".to_string()]).unwrap();
        let cert = pki
            .signer
            .unwrap()
            .sign_client(&good, &subject, Duration::from_secs(60))
            .unwrap();
        let der = rustls_pemfile::certs(&mut cert.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(certificate_user(&der).unwrap(), subject);
    }

    #[test]
    fn generated_once_reused_and_renewed_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = serving_names("127.0.0.1".parse().unwrap(), &["mube.example".into()]);
        let first = load(dir.path(), None, &names).unwrap();
        let pki = dir.path().join("pki");
        let serving = read(&pki.join("serving.crt")).unwrap();
        let (_, has) = inspect(&serving).unwrap();
        for n in ["localhost", "127.0.0.1", "::1", "mube.example"] {
            assert!(has.contains(&n.to_string()), "{n} missing from {has:?}");
        }
        use std::os::unix::fs::PermissionsExt;
        for key in ["ca.key", "serving.key"] {
            let mode = std::fs::metadata(pki.join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        // Reused as they are on the next start.
        let again = load(dir.path(), None, &names).unwrap();
        assert_eq!(again.ca_pem, first.ca_pem);
        assert_eq!(read(&pki.join("serving.crt")).unwrap(), serving);
        // A new name: a new serving certificate from the same CA.
        let more = [names.clone(), vec!["10.9.8.7".to_string()]].concat();
        let renewed = load(dir.path(), None, &more).unwrap();
        assert_eq!(renewed.ca_pem, first.ca_pem);
        let new_serving = read(&pki.join("serving.crt")).unwrap();
        assert_ne!(new_serving, serving);
        assert!(inspect(&new_serving)
            .unwrap()
            .1
            .contains(&"10.9.8.7".to_string()));
        assert!(still_good(&new_serving, &more));
        // A new CA (the old one deleted): nothing the old one signed is kept.
        let admin = read(&pki.join("admin.crt")).unwrap();
        std::fs::remove_file(pki.join("ca.crt")).unwrap();
        std::fs::remove_file(pki.join("ca.key")).unwrap();
        let rotated = load(dir.path(), None, &more).unwrap();
        assert_ne!(rotated.ca_pem, first.ca_pem);
        assert_ne!(read(&pki.join("serving.crt")).unwrap(), new_serving);
        assert_ne!(read(&pki.join("admin.crt")).unwrap(), admin);
        assert!(std::fs::read_dir(&pki).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }
}
