//! The container runtime, through Kubernetes' CRI (`runtime.v1`) over a
//! unix socket: containerd's, by default. The generated client comes from
//! `proto/cri-api-v1.proto` (see build.rs); this wraps the calls mubelet
//! makes, each with a deadline, so that a hung runtime never hangs a pod
//! worker.

use std::collections::HashMap;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

#[allow(clippy::all, clippy::pedantic)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}

use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;

/// Labels mubelet puts on every sandbox and container it creates. The
/// first three are the kubelet's own names; the node label keeps several
/// mubelets sharing one containerd apart.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
pub const POD_NAME: &str = "io.kubernetes.pod.name";
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
pub const NODE: &str = "io.mube.node";

/// A failed runtime call, said in one line.
#[derive(Debug, Clone)]
pub struct CriError {
    pub code: tonic::Code,
    pub message: String,
}

impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl CriError {
    /// The runtime did not answer at all (socket missing, refused, timeout).
    pub fn unreachable(&self) -> bool {
        matches!(
            self.code,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        )
    }
}

/// What a stream is for (`Runtime::stream_url`).
pub enum StreamRequest {
    Exec(api::ExecRequest),
    Attach(api::AttachRequest),
    PortForward(api::PortForwardRequest),
}

impl From<tonic::Status> for CriError {
    fn from(s: tonic::Status) -> CriError {
        let message = if s.message().is_empty() {
            format!("{:?}", s.code())
        } else {
            s.message().to_string()
        };
        CriError {
            code: s.code(),
            message,
        }
    }
}

pub type Result<T> = std::result::Result<T, CriError>;

#[derive(Clone)]
pub struct Runtime {
    /// A hollow node's runtime (`fake://`): every call is answered by it.
    fake: Option<std::sync::Arc<crate::fake_runtime::FakeRuntime>>,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    pub endpoint: String,
    timeout: Duration,
}

/// `unix:///run/containerd/containerd.sock` (kubelet's form), or a path.
pub fn socket_path(endpoint: &str) -> std::result::Result<String, String> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(format!(
            "{endpoint:?} is not a unix socket endpoint such as unix:///run/containerd/containerd.sock"
        ));
    }
    Ok(path.to_string())
}

impl Runtime {
    /// A client that connects on first use, and again after the runtime
    /// restarts: nothing here waits for the runtime to be up.
    pub fn new(endpoint: &str, timeout: Duration) -> std::result::Result<Runtime, String> {
        let fake = endpoint == crate::fake_runtime::ENDPOINT;
        // A hollow node's client is never dialled.
        let path = if fake {
            "/nonexistent".to_string()
        } else {
            socket_path(endpoint)?
        };
        // The URI is required by tonic but unused: the connector below
        // dials the socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        Ok(Runtime {
            fake: fake.then(Default::default),
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(16 << 20),
            images: ImageServiceClient::new(channel),
            endpoint: endpoint.to_string(),
            timeout,
        })
    }

    /// The node's pod CIDR, as the kubelet passes it in CRI
    /// `UpdateRuntimeConfig`. Real runtimes read it from the CNI config
    /// mubelet writes (`network.rs`); a hollow node's takes it here.
    pub fn set_pod_cidr(&self, cidr: &str) {
        if let Some(f) = &self.fake {
            f.set_pod_cidr(cidr);
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.timed(message, self.timeout)
    }

    fn timed<T>(&self, message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        request
    }

    pub async fn version(&self) -> Result<api::VersionResponse> {
        if let Some(f) = &self.fake {
            return Ok(f.version());
        }
        let mut client = self.runtime.clone();
        let r = client.version(self.request(api::VersionRequest {
            version: "v1".into(),
        }));
        Ok(r.await?.into_inner())
    }

    pub async fn sandboxes(&self, labels: HashMap<String, String>) -> Result<Vec<api::PodSandbox>> {
        if let Some(f) = &self.fake {
            return Ok(f.sandboxes(&labels));
        }
        let filter = api::PodSandboxFilter {
            label_selector: labels,
            ..Default::default()
        };
        let mut client = self.runtime.clone();
        let r = client.list_pod_sandbox(self.request(api::ListPodSandboxRequest {
            filter: Some(filter),
        }));
        Ok(r.await?.into_inner().items)
    }

    pub async fn sandbox_status(&self, id: &str) -> Result<Option<api::PodSandboxStatus>> {
        if let Some(f) = &self.fake {
            return Ok(f.sandbox_status(id));
        }
        let mut client = self.runtime.clone();
        let r = client.pod_sandbox_status(self.request(api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        }));
        Ok(r.await?.into_inner().status)
    }

    /// Runs a sandbox. Its network set-up (CNI) can take a while on a busy
    /// machine, so it gets a longer deadline than other calls.
    pub async fn run_sandbox(&self, config: api::PodSandboxConfig) -> Result<String> {
        if let Some(f) = &self.fake {
            return f.run_sandbox(config);
        }
        let mut client = self.runtime.clone();
        let r = client.run_pod_sandbox(self.timed(
            api::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            },
            self.timeout * 4,
        ));
        Ok(r.await?.into_inner().pod_sandbox_id)
    }

    pub async fn stop_sandbox(&self, id: &str) -> Result<()> {
        if let Some(f) = &self.fake {
            f.stop_sandbox(id);
            return Ok(());
        }
        let mut client = self.runtime.clone();
        let r = client.stop_pod_sandbox(self.timed(
            api::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            },
            self.timeout * 4,
        ));
        r.await?;
        Ok(())
    }

    pub async fn remove_sandbox(&self, id: &str) -> Result<()> {
        if let Some(f) = &self.fake {
            f.remove_sandbox(id);
            return Ok(());
        }
        let mut client = self.runtime.clone();
        let r = client.remove_pod_sandbox(self.request(api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        }));
        r.await?;
        Ok(())
    }

    pub async fn containers(&self, labels: HashMap<String, String>) -> Result<Vec<api::Container>> {
        if let Some(f) = &self.fake {
            return Ok(f.containers(&labels));
        }
        let filter = api::ContainerFilter {
            label_selector: labels,
            ..Default::default()
        };
        let mut client = self.runtime.clone();
        let r = client.list_containers(self.request(api::ListContainersRequest {
            filter: Some(filter),
        }));
        Ok(r.await?.into_inner().containers)
    }

    /// The host PID of a running container's first process, from the
    /// runtime's verbose status (containerd: `info.pid`).
    pub async fn container_pid(&self, id: &str) -> Result<Option<u32>> {
        if self.fake.is_some() {
            return Ok(None);
        }
        let mut client = self.runtime.clone();
        let r = client.container_status(self.request(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        }));
        let info = r.await?.into_inner().info;
        Ok(info
            .get("info")
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .and_then(|v| v.get("pid").and_then(serde_json::Value::as_u64))
            .and_then(|pid| u32::try_from(pid).ok())
            .filter(|pid| *pid > 0))
    }

    /// CRI `Exec`, `Attach` or `PortForward`: the URL of the runtime's
    /// streaming server that serves this one stream.
    pub async fn stream_url(&self, request: StreamRequest) -> Result<String> {
        if self.fake.is_some() {
            return Err(CriError {
                code: tonic::Code::Unimplemented,
                message: "a hollow node runs no containers to stream from".into(),
            });
        }
        let mut client = self.runtime.clone();
        Ok(match request {
            StreamRequest::Exec(r) => client.exec(self.request(r)).await?.into_inner().url,
            StreamRequest::Attach(r) => client.attach(self.request(r)).await?.into_inner().url,
            StreamRequest::PortForward(r) => {
                client.port_forward(self.request(r)).await?.into_inner().url
            }
        })
    }

    pub async fn container_status(&self, id: &str) -> Result<Option<api::ContainerStatus>> {
        if let Some(f) = &self.fake {
            return Ok(f.container_status(id));
        }
        let mut client = self.runtime.clone();
        let r = client.container_status(self.request(api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        }));
        Ok(r.await?.into_inner().status)
    }

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: api::ContainerConfig,
        sandbox: api::PodSandboxConfig,
    ) -> Result<String> {
        if let Some(f) = &self.fake {
            return f.create_container(sandbox_id, config);
        }
        let mut client = self.runtime.clone();
        let r = client.create_container(self.request(api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox),
        }));
        Ok(r.await?.into_inner().container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        if let Some(f) = &self.fake {
            f.start_container(id);
            return Ok(());
        }
        let mut client = self.runtime.clone();
        let r = client.start_container(self.request(api::StartContainerRequest {
            container_id: id.into(),
        }));
        r.await?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace` (the runtime does both).
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        if let Some(f) = &self.fake {
            f.stop_container(id);
            return Ok(());
        }
        let mut client = self.runtime.clone();
        let r = client.stop_container(self.timed(
            api::StopContainerRequest {
                container_id: id.into(),
                timeout: grace.as_secs() as i64,
            },
            grace + self.timeout,
        ));
        r.await?;
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        if let Some(f) = &self.fake {
            f.remove_container(id);
            return Ok(());
        }
        let mut client = self.runtime.clone();
        let r = client.remove_container(self.request(api::RemoveContainerRequest {
            container_id: id.into(),
        }));
        r.await?;
        Ok(())
    }

    /// The image's ID when the runtime has it.
    pub async fn image_present(&self, image: &str) -> Result<Option<String>> {
        if self.fake.is_some() {
            return Ok(Some(format!("fake://{image}")));
        }
        let mut client = self.images.clone();
        let r = client.image_status(self.request(api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        }));
        Ok(r.await?.into_inner().image.map(|i| i.id))
    }

    /// Pulls can be slow; they get a minute and more.
    pub async fn pull(&self, image: &str) -> Result<String> {
        if self.fake.is_some() {
            return Ok(format!("fake://{image}"));
        }
        let mut client = self.images.clone();
        let r = client.pull_image(self.timed(
            api::PullImageRequest {
                image: Some(api::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                auth: None,
                sandbox_config: None,
            },
            Duration::from_secs(120).max(self.timeout),
        ));
        Ok(r.await?.into_inner().image_ref)
    }
}
