//! The `k8s` resolver, the collector's keys: the ready endpoints of a Service, from its
//! EndpointSlices (`discovery.k8s.io/v1`), listed and then watched through the Kubernetes
//! API. Every change of a slice sends the whole member list again; an endpoint that is not
//! ready or is terminating has left. A list that fails is reported (followers keep their
//! last good list); a watch that ends or fails is resumed, with a fresh list.
//!
//! Written on reqwest (already the service's HTTP client) rather than kube-rs: one list and
//! one watch of one resource type need a few JSON shapes, not a client for the whole API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::resolver::Resolution;
use crate::config::{Errors, HOUR, MS};

/// Where a pod finds its credentials and namespace.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The pause before a list or watch is tried again after it failed or ended.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sConfig {
    /// `name` or `name.namespace` (the pod's own namespace when absent).
    pub service: String,
    /// One member per endpoint and port.
    #[serde(default = "default_ports")]
    pub ports: Vec<u16>,
    /// For each request to the API.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Members as `hostname.service.namespace` instead of the endpoint's address.
    #[serde(default)]
    pub return_hostnames: bool,
    /// The API server's URL (tailgate's addition); inside a pod, the in-cluster address
    /// with the pod's service-account token and CA.
    #[serde(default)]
    pub api_server: Option<String>,
}

fn default_ports() -> Vec<u16> {
    vec![4317]
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

impl K8sConfig {
    pub(crate) fn validate(&self, path: &str, errors: &mut Errors) {
        if self.service.is_empty() {
            errors.push(format!("{path}.service"), "is required");
        }
        if self.ports.is_empty() {
            errors.push(format!("{path}.ports"), "needs at least one port");
        }
        errors.within_duration(format!("{path}.timeout"), self.timeout, MS, HOUR);
        if let Some(url) = &self.api_server {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                errors.push(
                    format!("{path}.api_server"),
                    format!("{url:?} is not an http(s) URL"),
                );
            }
        }
    }

    /// The Service's name and namespace.
    fn service(&self) -> (String, String) {
        match self.service.split_once('.') {
            Some((name, namespace)) => (name.to_owned(), namespace.to_owned()),
            None => {
                let namespace = std::fs::read_to_string(format!("{SERVICE_ACCOUNT}/namespace"))
                    .map(|n| n.trim().to_owned())
                    .unwrap_or_else(|_| "default".into());
                (self.service.clone(), namespace)
            }
        }
    }
}

/// Why the API could not be asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum K8sError {
    #[error("not in a pod (KUBERNETES_SERVICE_HOST unset) and no api_server configured")]
    NoApiServer,
    #[error("reading {0}: {1}")]
    Credentials(String, std::io::Error),
    #[error(transparent)]
    Http(#[from] reqwest::Error),
    #[error("the API answered {0}")]
    Status(reqwest::StatusCode),
    #[error("an answer that is not an EndpointSlice list or watch event: {0}")]
    Json(#[from] serde_json::Error),
}

/// The API, for one Service's slices.
pub(crate) struct Api {
    client: reqwest::Client,
    slices_url: String,
    token_file: Option<String>,
    name: String,
    namespace: String,
    config: K8sConfig,
}

#[derive(Deserialize)]
struct List {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<Slice>,
}

#[derive(Deserialize)]
struct ListMeta {
    #[serde(rename = "resourceVersion", default)]
    resource_version: String,
}

#[derive(Deserialize)]
struct Slice {
    metadata: SliceMeta,
    #[serde(default)]
    endpoints: Option<Vec<Endpoint>>,
}

#[derive(Deserialize)]
struct SliceMeta {
    name: String,
}

#[derive(Deserialize)]
struct Endpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Conditions,
    #[serde(default)]
    hostname: Option<String>,
}

/// Absent conditions mean ready and not terminating, as the API defines them.
#[derive(Deserialize, Default)]
struct Conditions {
    ready: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

impl Api {
    pub(crate) fn new(config: &K8sConfig) -> Result<Api, K8sError> {
        let (name, namespace) = config.service();
        let mut client = reqwest::Client::builder().connect_timeout(config.timeout);
        let (base, token_file) = match &config.api_server {
            Some(url) => (url.trim_end_matches('/').to_owned(), None),
            None => {
                let host =
                    std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| K8sError::NoApiServer)?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
                let ca_file = format!("{SERVICE_ACCOUNT}/ca.crt");
                let ca = std::fs::read(&ca_file).map_err(|e| K8sError::Credentials(ca_file, e))?;
                client = client.add_root_certificate(reqwest::Certificate::from_pem(&ca)?);
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                (
                    format!("https://{host}:{port}"),
                    Some(format!("{SERVICE_ACCOUNT}/token")),
                )
            }
        };
        Ok(Api {
            client: client.build()?,
            slices_url: format!(
                "{base}/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3D{name}"
            ),
            token_file,
            name,
            namespace,
            config: config.clone(),
        })
    }

    fn request(&self, url: &str) -> Result<reqwest::RequestBuilder, K8sError> {
        let mut request = self.client.get(url);
        if let Some(file) = &self.token_file {
            // Re-read each time: projected tokens are rotated on disk.
            let token = std::fs::read_to_string(file)
                .map_err(|e| K8sError::Credentials(file.clone(), e))?;
            request = request.bearer_auth(token.trim());
        }
        Ok(request)
    }

    /// Every slice now, and the version to watch from.
    async fn list(&self) -> Result<Listed, K8sError> {
        let response = self
            .request(&self.slices_url)?
            .timeout(self.config.timeout)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(K8sError::Status(response.status()));
        }
        let list: List = serde_json::from_slice(&response.bytes().await?)?;
        let mut slices = Slices::default();
        for slice in list.items {
            slices.put(slice, self);
        }
        Ok(Listed {
            slices,
            version: list.metadata.resource_version,
        })
    }

    /// The members of one endpoint: `address:port` (or `hostname.service.namespace:port`)
    /// per configured port, none when it is not ready or is terminating.
    fn members(&self, endpoint: &Endpoint) -> Vec<String> {
        let c = &endpoint.conditions;
        if c.ready == Some(false) || c.terminating == Some(true) {
            return Vec::new();
        }
        let host = if self.config.return_hostnames {
            match &endpoint.hostname {
                Some(h) => format!("{h}.{}.{}", self.name, self.namespace),
                None => return Vec::new(),
            }
        } else {
            match endpoint.addresses.first() {
                Some(a) if a.contains(':') => format!("[{a}]"),
                Some(a) => a.clone(),
                None => return Vec::new(),
            }
        };
        self.config
            .ports
            .iter()
            .map(|p| format!("{host}:{p}"))
            .collect()
    }
}

/// The members of each slice, by slice name.
#[derive(Default)]
struct Slices(BTreeMap<String, Vec<String>>);

/// One list's slices, and the version a watch continues from.
pub(crate) struct Listed {
    slices: Slices,
    version: String,
}

impl Slices {
    fn put(&mut self, slice: Slice, api: &Api) {
        let members = slice
            .endpoints
            .unwrap_or_default()
            .iter()
            .flat_map(|e| api.members(e))
            .collect();
        self.0.insert(slice.metadata.name, members);
    }

    fn resolution(&self) -> Resolution {
        let all: BTreeSet<&String> = self.0.values().flatten().collect();
        if all.is_empty() {
            tracing::warn!("the Service has no ready endpoint; keeping the current backends");
            return Resolution::Failed;
        }
        Resolution::Members(all.into_iter().cloned().collect())
    }
}

/// The first answer, from one list, and the list for the watch to continue from.
pub(crate) async fn resolve_once(api: &Api) -> (Resolution, Option<Listed>) {
    match api.list().await {
        Ok(listed) => (listed.slices.resolution(), Some(listed)),
        Err(e) => {
            tracing::warn!(service = %api.config.service, error = %e, "listing the Service's endpoints failed; keeping the current backends");
            (Resolution::Failed, None)
        }
    }
}

/// Watches from `listed` (the first answer's list, already applied) or, after that, from a
/// new list, sending the members after every change, until `stop`; a failed list is sent as
/// a failure, and a watch that ends is resumed from a new list.
pub(crate) async fn watch(
    api: Api,
    mut listed: Option<Listed>,
    updates: mpsc::Sender<Resolution>,
    stop: CancellationToken,
) -> Result<(), std::convert::Infallible> {
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = list_and_watch(&api, listed.take(), &updates) => r,
        };
        if let Err(e) = result {
            tracing::warn!(service = %api.config.service, error = %e, "watching the Service's endpoints failed; listing again");
            if matches!(
                e,
                K8sError::Status(_) | K8sError::Http(_) | K8sError::Credentials(..)
            ) && updates.send(Resolution::Failed).await.is_err()
            {
                return Ok(());
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn list_and_watch(
    api: &Api,
    listed: Option<Listed>,
    updates: &mpsc::Sender<Resolution>,
) -> Result<(), K8sError> {
    let Listed {
        mut slices,
        version,
    } = match listed {
        Some(listed) => listed,
        None => {
            let listed = api.list().await?;
            if updates.send(listed.slices.resolution()).await.is_err() {
                return Ok(());
            }
            listed
        }
    };
    let url = format!(
        "{}&watch=true&allowWatchBookmarks=true&resourceVersion={version}",
        api.slices_url
    );
    let mut response = api.request(&url)?.send().await?;
    if !response.status().is_success() {
        return Err(K8sError::Status(response.status()));
    }
    // Events are JSON objects, one per line.
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let event: Event = serde_json::from_slice(&line)?;
            match event.kind.as_str() {
                "ADDED" | "MODIFIED" => {
                    slices.put(serde_json::from_value(event.object)?, api);
                }
                "DELETED" => {
                    let slice: Slice = serde_json::from_value(event.object)?;
                    slices.0.remove(&slice.metadata.name);
                }
                // A bookmark changes no member; an error (410 Gone: the version is too
                // old) ends this watch, and the next starts from a new list.
                "BOOKMARK" => continue,
                _ => return Ok(()),
            }
            if updates.send(slices.resolution()).await.is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(return_hostnames: bool) -> Api {
        Api::new(&K8sConfig {
            service: "workers.fleet".into(),
            ports: vec![4317, 4318],
            timeout: Duration::from_secs(1),
            return_hostnames,
            api_server: Some("http://127.0.0.1:1".into()),
        })
        .unwrap()
    }

    fn endpoint(address: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![address.into()],
            conditions: Conditions { ready, terminating },
            hostname: Some("worker-0".into()),
        }
    }

    #[test]
    fn members_are_ready_endpoints_per_port() {
        let by_address = api(false);
        assert_eq!(
            by_address.members(&endpoint("10.0.0.1", None, None)),
            ["10.0.0.1:4317", "10.0.0.1:4318"]
        );
        assert_eq!(
            by_address.members(&endpoint("fd00::1", Some(true), Some(false))),
            ["[fd00::1]:4317", "[fd00::1]:4318"]
        );
        assert!(by_address
            .members(&endpoint("10.0.0.2", Some(false), None))
            .is_empty());
        assert!(by_address
            .members(&endpoint("10.0.0.3", Some(true), Some(true)))
            .is_empty());
        assert_eq!(
            api(true).members(&endpoint("10.0.0.1", None, None)),
            ["worker-0.workers.fleet:4317", "worker-0.workers.fleet:4318"]
        );
    }
}
