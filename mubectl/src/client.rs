//! HTTP access to the API server, with errors people can act on.

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use mube_apis::status::Status;
use mube_apis::watch::WatchEvent;
use serde_json::Value;

/// What went wrong, printed as one line by `main`.
#[derive(Debug)]
pub enum CtlError {
    /// No answer from the server at all.
    Unreachable { server: String, cause: String },
    /// The server answered with a Status error.
    Server(Box<Status>),
    /// Anything else (bad input file, unexpected answer).
    Other(String),
}

impl std::fmt::Display for CtlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CtlError::Unreachable { server, cause } => write!(
                f,
                "error: cannot reach the API server at {server}: {cause} (is mube-apiserver running? set --server or MUBE_API_SERVER)"
            ),
            // kubectl's form, with the server's message as is.
            CtlError::Server(s) => write!(
                f,
                "Error from server ({}): {}",
                s.reason.as_deref().unwrap_or("Unknown"),
                s.message.as_deref().unwrap_or("")
            ),
            CtlError::Other(m) => write!(f, "error: {m}"),
        }
    }
}

impl CtlError {
    pub fn code(&self) -> Option<i32> {
        match self {
            CtlError::Server(s) => s.code,
            _ => None,
        }
    }
}

/// The media type of a server-side Table, as kubectl asks for it.
const TABLE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

#[derive(Clone)]
pub struct Client {
    server: String,
    http: reqwest::Client,
}

impl Client {
    pub fn new(target: &crate::kubeconfig::Target) -> Result<Client, CtlError> {
        let server = target.server.trim_end_matches('/').to_string();
        reqwest::Url::parse(&server)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| CtlError::Other(format!("--server {server:?} is not an http(s) URL")))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            // The server names a write's field manager after it ("mubectl").
            .user_agent(concat!("mubectl/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &target.ca_pem {
            let ca = reqwest::Certificate::from_pem(ca).map_err(|e| {
                CtlError::Other(format!("the kubeconfig's CA is not a PEM certificate: {e}"))
            })?;
            // The cluster's CA, and only it.
            builder = builder
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca);
        }
        if let Some(identity) = &target.identity_pem {
            let identity = reqwest::Identity::from_pem(identity).map_err(|e| {
                CtlError::Other(format!(
                    "the kubeconfig's client certificate and key do not load: {e}"
                ))
            })?;
            builder = builder.identity(identity);
        }
        if let Some(token) = &target.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| {
                    CtlError::Other("the kubeconfig's token is not valid in a header".into())
                })?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        let http = builder
            .build()
            .map_err(|e| CtlError::Other(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client { server, http })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn unreachable(&self, e: reqwest::Error) -> CtlError {
        CtlError::Unreachable {
            server: self.server.clone(),
            cause: mube_apis::errors::root_cause(&e),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, CtlError> {
        let response = request.send().await.map_err(|e| self.unreachable(e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let code = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        Err(match serde_json::from_slice::<Status>(&bytes) {
            Ok(status) if status.reason.is_some() || status.message.is_some() => {
                CtlError::Server(Box::new(status))
            }
            _ => CtlError::Other(format!(
                "the server answered {code}: {}",
                String::from_utf8_lossy(&bytes).trim()
            )),
        })
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, CtlError> {
        let response = self.send(request).await?;
        let bytes = response.bytes().await.map_err(|e| self.unreachable(e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CtlError::Other(format!("the server's answer is not JSON: {e}")))
    }

    fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.server)
    }

    pub async fn get(&self, path: &str) -> Result<Value, CtlError> {
        self.json(self.http.get(self.url(path))).await
    }

    /// GET as a server-side Table (`kubectl get`'s request).
    pub async fn get_table(&self, path: &str) -> Result<Value, CtlError> {
        self.json(self.http.get(self.url(path)).header("Accept", TABLE))
            .await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        self.json(self.http.post(self.url(path)).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, CtlError> {
        self.json(self.http.put(self.url(path)).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Value, CtlError> {
        self.json(self.http.delete(self.url(path))).await
    }

    /// Opens a watch and yields its events as they arrive; with `table`,
    /// each object comes as a server-side Table (kubectl get -w).
    pub async fn watch(
        &self,
        path_and_query: &str,
        table: bool,
    ) -> Result<BoxStream<'static, Result<WatchEvent, CtlError>>, CtlError> {
        let mut request = self.http.get(self.url(path_and_query));
        if table {
            request = request.header("Accept", TABLE);
        }
        let response = self.send(request).await?;
        let server = self.server.clone();
        let bytes = response.bytes_stream();
        Ok(lines(bytes)
            .map(move |line| {
                let line = line.map_err(|e| CtlError::Unreachable {
                    server: server.clone(),
                    cause: mube_apis::errors::root_cause(&e),
                })?;
                serde_json::from_slice::<WatchEvent>(&line)
                    .map_err(|e| CtlError::Other(format!("unexpected watch event: {e}")))
            })
            .boxed())
    }
}

/// Splits a byte stream into lines (newline-delimited JSON).
fn lines(
    bytes: impl Stream<Item = reqwest::Result<Bytes>> + Unpin,
) -> impl Stream<Item = reqwest::Result<Vec<u8>>> {
    futures::stream::unfold(
        (bytes, Vec::<u8>::new(), false),
        |(mut bytes, mut buffer, ended)| async move {
            loop {
                if let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=pos).collect();
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some((Ok(line), (bytes, buffer, ended)));
                }
                if ended {
                    return None;
                }
                match bytes.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (bytes, buffer, true))),
                    None => {
                        if buffer.iter().all(u8::is_ascii_whitespace) {
                            return None;
                        }
                        buffer.push(b'\n');
                        return Some((Ok(std::mem::take(&mut buffer)), (bytes, buffer, true)));
                    }
                }
            }
        },
    )
}
