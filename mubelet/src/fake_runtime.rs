//! The hollow node's runtime (`MUBELET_CONTAINER_RUNTIME_ENDPOINT=fake://`),
//! as kubemark's hollow kubelet: the CRI calls mubelet makes, answered from
//! memory. A sandbox gets the next free address of the node's pod CIDR at
//! once, a container runs as soon as it is started and exits 0 when
//! stopped, every image is present. Nothing runs; the rest of mubelet (pod
//! workers, status, deletion) is the real one, so a hundred hollow nodes
//! load the control plane as a hundred real ones would.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::cri::api;
use super::cri::Result;

pub const ENDPOINT: &str = "fake://";

#[derive(Default)]
struct State {
    sandboxes: HashMap<String, (api::PodSandbox, String)>,
    containers: HashMap<String, api::ContainerStatus>,
    /// Which sandbox each container is in.
    sandbox_of: HashMap<String, String>,
    /// The pod CIDR's network and prefix length, once known.
    cidr: Option<(u32, u8)>,
    used: BTreeSet<u32>,
    next_id: u64,
}

#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

fn matches(labels: &HashMap<String, String>, wanted: &HashMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `10.244.3.0/24` as (network, prefix length).
fn parse_cidr(cidr: &str) -> Option<(u32, u8)> {
    let (ip, bits) = cidr.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok().filter(|b| (8..=30).contains(b))?;
    let mask = u32::MAX << (32 - bits);
    Some((u32::from(ip) & mask, bits))
}

impl FakeRuntime {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// CRI `UpdateRuntimeConfig`: the node's pod CIDR, addresses come from.
    pub fn set_pod_cidr(&self, cidr: &str) {
        self.state().cidr = parse_cidr(cidr);
    }

    pub fn version(&self) -> api::VersionResponse {
        api::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "fake".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }
    }

    /// The containers of sandbox `id`.
    fn inside(state: &State, id: &str) -> Vec<String> {
        state
            .sandbox_of
            .iter()
            .filter(|(_, s)| s.as_str() == id)
            .map(|(c, _)| c.clone())
            .collect()
    }

    fn id(state: &mut State, what: &str) -> String {
        state.next_id += 1;
        format!("fake-{what}-{:016x}", state.next_id)
    }

    pub fn run_sandbox(&self, config: api::PodSandboxConfig) -> Result<String> {
        let mut state = self.state();
        let ip = match state.cidr {
            // The first address is the gateway's, as the bridge plugin has it.
            Some((network, bits)) => {
                let size = 1u32 << (32 - bits);
                let free = (2..size - 1)
                    .map(|i| network + i)
                    .find(|a| !state.used.contains(a));
                match free {
                    Some(a) => {
                        state.used.insert(a);
                        Ipv4Addr::from(a).to_string()
                    }
                    None => {
                        return Err(super::cri::CriError {
                            code: tonic::Code::ResourceExhausted,
                            message: "fake runtime: no free address in the pod CIDR".into(),
                        })
                    }
                }
            }
            None => String::new(),
        };
        let id = Self::id(&mut state, "sandbox");
        let sandbox = api::PodSandbox {
            id: id.clone(),
            metadata: config.metadata,
            state: api::PodSandboxState::SandboxReady as i32,
            created_at: now_nanos(),
            labels: config.labels,
            annotations: config.annotations,
            runtime_handler: String::new(),
        };
        state.sandboxes.insert(id.clone(), (sandbox, ip));
        Ok(id)
    }

    pub fn sandboxes(&self, labels: &HashMap<String, String>) -> Vec<api::PodSandbox> {
        self.state()
            .sandboxes
            .values()
            .filter(|(s, _)| matches(&s.labels, labels))
            .map(|(s, _)| s.clone())
            .collect()
    }

    pub fn sandbox_status(&self, id: &str) -> Option<api::PodSandboxStatus> {
        let state = self.state();
        let (s, ip) = state.sandboxes.get(id)?;
        Some(api::PodSandboxStatus {
            id: s.id.clone(),
            metadata: s.metadata.clone(),
            state: s.state,
            created_at: s.created_at,
            network: Some(api::PodSandboxNetworkStatus {
                ip: ip.clone(),
                additional_ips: Vec::new(),
            }),
            linux: None,
            labels: s.labels.clone(),
            annotations: s.annotations.clone(),
            runtime_handler: String::new(),
        })
    }

    pub fn stop_sandbox(&self, id: &str) {
        let mut state = self.state();
        let inside = Self::inside(&state, id);
        for c in inside {
            Self::exit(&mut state, &c);
        }
        if let Some((s, _)) = state.sandboxes.get_mut(id) {
            s.state = api::PodSandboxState::SandboxNotready as i32;
        }
    }

    pub fn remove_sandbox(&self, id: &str) {
        let mut state = self.state();
        if let Some((_, ip)) = state.sandboxes.remove(id) {
            if let Ok(a) = ip.parse::<Ipv4Addr>() {
                state.used.remove(&u32::from(a));
            }
        }
        let inside = Self::inside(&state, id);
        for c in inside {
            state.containers.remove(&c);
            state.sandbox_of.remove(&c);
        }
    }

    pub fn create_container(
        &self,
        sandbox_id: &str,
        config: api::ContainerConfig,
    ) -> Result<String> {
        let mut state = self.state();
        if !state.sandboxes.contains_key(sandbox_id) {
            return Err(super::cri::CriError {
                code: tonic::Code::NotFound,
                message: format!("fake runtime: no sandbox {sandbox_id}"),
            });
        }
        let id = Self::id(&mut state, "container");
        let image = config.image.clone().unwrap_or_default();
        let status = api::ContainerStatus {
            id: id.clone(),
            metadata: config.metadata,
            state: api::ContainerState::ContainerCreated as i32,
            created_at: now_nanos(),
            image_ref: format!("fake://{}", image.image),
            image: Some(image),
            labels: config.labels,
            annotations: config.annotations,
            ..Default::default()
        };
        state.containers.insert(id.clone(), status);
        state.sandbox_of.insert(id.clone(), sandbox_id.to_string());
        Ok(id)
    }

    pub fn start_container(&self, id: &str) {
        if let Some(c) = self.state().containers.get_mut(id) {
            c.state = api::ContainerState::ContainerRunning as i32;
            c.started_at = now_nanos();
        }
    }

    fn exit(state: &mut State, id: &str) {
        if let Some(c) = state.containers.get_mut(id) {
            if c.state != api::ContainerState::ContainerExited as i32 {
                c.state = api::ContainerState::ContainerExited as i32;
                c.finished_at = now_nanos();
                c.exit_code = 0;
                c.reason = "Completed".into();
            }
        }
    }

    pub fn stop_container(&self, id: &str) {
        Self::exit(&mut self.state(), id);
    }

    pub fn remove_container(&self, id: &str) {
        let mut state = self.state();
        state.containers.remove(id);
        state.sandbox_of.remove(id);
    }

    pub fn container_status(&self, id: &str) -> Option<api::ContainerStatus> {
        self.state().containers.get(id).cloned()
    }

    pub fn containers(&self, labels: &HashMap<String, String>) -> Vec<api::Container> {
        let state = self.state();
        state
            .containers
            .values()
            .filter(|c| matches(&c.labels, labels))
            .map(|c| api::Container {
                id: c.id.clone(),
                pod_sandbox_id: state.sandbox_of.get(&c.id).cloned().unwrap_or_default(),
                metadata: c.metadata.clone(),
                image: c.image.clone(),
                image_ref: c.image_ref.clone(),
                state: c.state,
                created_at: c.created_at,
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
                ..Default::default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandboxes_get_addresses_from_the_pod_cidr_and_give_them_back() {
        let rt = FakeRuntime::default();
        rt.set_pod_cidr("10.244.3.0/24");
        let labels = HashMap::from([("io.mube.node".to_string(), "n1".to_string())]);
        let config = api::PodSandboxConfig {
            labels: labels.clone(),
            ..Default::default()
        };
        let a = rt.run_sandbox(config.clone()).unwrap();
        let b = rt.run_sandbox(config.clone()).unwrap();
        let ip = |id: &str| rt.sandbox_status(id).unwrap().network.unwrap().ip;
        assert_eq!((ip(&a), ip(&b)), ("10.244.3.2".into(), "10.244.3.3".into()));
        let c = rt
            .create_container(
                &a,
                api::ContainerConfig {
                    labels: labels.clone(),
                    ..Default::default()
                },
            )
            .unwrap();
        rt.start_container(&c);
        assert_eq!(
            rt.container_status(&c).unwrap().state,
            api::ContainerState::ContainerRunning as i32
        );
        assert_eq!(rt.containers(&labels).len(), 1);
        rt.stop_sandbox(&a);
        assert_eq!(
            rt.container_status(&c).unwrap().state,
            api::ContainerState::ContainerExited as i32
        );
        rt.remove_sandbox(&a);
        assert!(rt.container_status(&c).is_none());
        let again = rt.run_sandbox(config).unwrap();
        assert_eq!(ip(&again), "10.244.3.2");
        assert_eq!(rt.sandboxes(&labels).len(), 2);
    }
}
