//! The API servers this agent talks to: `MUBE_API_SERVER` is one URL, as
//! in the original Mube, or several separated by commas (mube's addition,
//! for API servers that share one etcd). Every request goes to the current
//! one; when it does not answer, the next request goes to the next one, so
//! the node's heartbeats move over well within its NotReady deadline.
//! (client-go has no list of servers either: kubelets reach several API
//! servers through a load balancer. A node agent that fails over itself
//! needs none.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct ApiServers {
    urls: Arc<[reqwest::Url]>,
    current: Arc<AtomicUsize>,
}

impl ApiServers {
    /// Parses `MUBE_API_SERVER`: one http(s) URL, or several separated by
    /// commas. Errors name the entry that is not a URL.
    pub fn parse(text: &str) -> Result<ApiServers, String> {
        let mut urls = Vec::new();
        for entry in text.split(',').map(str::trim) {
            if entry.is_empty() {
                return Err(format!(
                    "MUBE_API_SERVER: {text:?} has an empty entry; give URLs separated by commas"
                ));
            }
            let url = reqwest::Url::parse(entry)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                .ok_or_else(|| {
                    format!("MUBE_API_SERVER: {entry:?} is not an http(s) URL such as http://127.0.0.1:8080")
                })?;
            if urls.contains(&url) {
                return Err(format!("MUBE_API_SERVER: {entry:?} is listed twice"));
            }
            urls.push(url);
        }
        Ok(ApiServers {
            urls: urls.into(),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The server requests go to now.
    pub fn current(&self) -> &reqwest::Url {
        &self.urls[self.current.load(Ordering::Acquire) % self.urls.len()]
    }

    /// `path` on the current server.
    pub fn join(&self, path: &str) -> Result<reqwest::Url, String> {
        self.current()
            .join(path)
            .map_err(|e| format!("MUBE_API_SERVER: {e}"))
    }

    pub fn all(&self) -> &[reqwest::Url] {
        &self.urls
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// `url` (a server's, or a request's to it) did not answer: moves on
    /// to the next server, unless another request already has. Returns
    /// whether this call moved.
    pub fn failed(&self, url: &reqwest::Url) -> bool {
        if self.urls.len() < 2 {
            return false;
        }
        let now = self.current.load(Ordering::Acquire);
        let at = &self.urls[now % self.urls.len()];
        if at.origin() != url.origin() {
            return false;
        }
        let next = (now + 1) % self.urls.len();
        let moved = self
            .current
            .compare_exchange(now, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            tracing::warn!(
                from = %at.origin().ascii_serialization(),
                to = %self.urls[next].origin().ascii_serialization(),
                "API server does not answer; switching to the next one"
            );
        }
        moved
    }
}

impl std::fmt::Display for ApiServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<&str> = self.urls.iter().map(|u| u.as_str()).collect();
        f.write_str(&all.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_several() {
        let one = ApiServers::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one.current().as_str(), "http://127.0.0.1:8080/");
        let two = ApiServers::parse("https://a:8080, https://b:8080").unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two.current().as_str(), "https://a:8080/");
        for bad in [
            "",
            "a,,b",
            "ftp://x",
            "http://a:1,http://a:1",
            "https://a:8080,b",
        ] {
            assert!(ApiServers::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_failure_moves_on_once_and_wraps_around() {
        let s = ApiServers::parse("http://a:1,http://b:2,http://c:3").unwrap();
        let a = s.join("api/v1/nodes/heartbeat").unwrap();
        assert!(s.failed(&a));
        assert_eq!(s.current().as_str(), "http://b:2/");
        // A second request that failed on `a` does not skip `b`.
        assert!(!s.failed(&a));
        assert_eq!(s.current().as_str(), "http://b:2/");
        assert!(s.failed(s.current()));
        assert!(s.failed(s.current()));
        assert_eq!(s.current().as_str(), "http://a:1/");
        // One server: nowhere to go.
        let one = ApiServers::parse("http://a:1").unwrap();
        assert!(!one.failed(one.current()));
    }
}
