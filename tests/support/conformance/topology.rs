//! The base topology outside Kubernetes: every pod of every Deployment in the base manifests is
//! an HTTP echo server (port 8080) and a gRPC echo server (port 7070, h2c) on its own loopback
//! address, with its own Envoy sidecar bootstrapped by `sluice bootstrap` with the pod's
//! namespace and labels (the Deployment's pod template labels). One `sluice serve --dir` serves
//! the base manifests and, one test at a time, the test's manifests.
//!
//! A change of manifests counts as applied once Sluice serves the new revision and every
//! sidecar has ACKed it (`/debug/source` and `/debug/syncz`); a revision Sluice refuses is
//! reported with its errors.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use super::super::echo::{EchoIdentity, EchoServer, Received};
use super::super::grpc_echo::{GrpcEchoClient, GrpcEchoIdentity, GrpcEchoServer};
use super::super::{loopback_ip, Envoy, ManifestDir, Protocol, Sidecar, Sluice, STARTUP_TIMEOUT};
use super::http;
use super::model::{PodRef, Request, Scheme, Target};
use super::verdict::{observed_from_grpc, Observed};

/// Where every pod serves HTTP, as the upstream echo image does.
pub const HTTP_PORT: u16 = 8080;
/// Where every pod serves gRPC (h2c), as the upstream echo image does.
pub const GRPC_PORT: u16 = 7070;

/// How long a change of manifests may take to be served and ACKed by every sidecar.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A Deployment of the base manifests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub pod: PodRef,
    pub replicas: usize,
    /// The pod template's labels.
    pub labels: BTreeMap<String, String>,
}

/// The Deployments in a manifest file (every other kind is left to Sluice).
pub fn deployments(text: &str) -> anyhow::Result<Vec<Deployment>> {
    let docs = YamlLoader::load_from_str(text).context("base manifests are not YAML")?;
    let mut out = Vec::new();
    for doc in docs {
        if doc["kind"].as_str() != Some("Deployment") {
            continue;
        }
        let name = doc["metadata"]["name"]
            .as_str()
            .context("a Deployment has no metadata.name")?;
        let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("default");
        let replicas = match &doc["spec"]["replicas"] {
            Yaml::Integer(n) => usize::try_from(*n).context("negative replicas")?,
            _ => 1,
        };
        let mut labels = BTreeMap::new();
        if let Some(map) = doc["spec"]["template"]["metadata"]["labels"].as_hash() {
            for (k, v) in map {
                let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                    bail!("Deployment {namespace}/{name}: a label is not a string");
                };
                labels.insert(k.to_owned(), v.to_owned());
            }
        }
        out.push(Deployment {
            pod: PodRef::new(namespace, name),
            replicas,
            labels,
        });
    }
    Ok(out)
}

/// A pod name as a ReplicaSet gives it: `<deployment>-<10 characters>-<5 characters>`, derived
/// from the namespace, deployment and replica so runs are reproducible.
pub fn pod_name(pod: &PodRef, replica: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("{}/{}/{replica}", pod.namespace, pod.deployment).bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut text = String::new();
    for i in 0..15 {
        if i == 10 {
            text.push('-');
        }
        text.push(char::from(
            ALPHABET[(hash % ALPHABET.len() as u64) as usize],
        ));
        hash = hash.rotate_right(5) ^ (hash >> 7);
    }
    format!("{}-{text}", pod.deployment)
}

/// One running pod: its echo servers and its sidecar.
pub struct Pod {
    pub pod: PodRef,
    pub hostname: String,
    pub ip: Ipv4Addr,
    envoy: Envoy,
    http: EchoServer,
    _grpc: GrpcEchoServer,
}

impl Pod {
    async fn start(
        deployment: &Deployment,
        replica: usize,
        sluice: &Sluice,
        protocol: Protocol,
    ) -> Pod {
        let hostname = pod_name(&deployment.pod, replica);
        let namespace = deployment.pod.namespace.clone();
        let ip = loopback_ip();
        let http = EchoServer::start_with(
            EchoIdentity {
                hostname: hostname.clone(),
                namespace: namespace.clone(),
            },
            SocketAddr::from((ip, HTTP_PORT)),
        )
        .await;
        let grpc = GrpcEchoServer::start(
            GrpcEchoIdentity {
                hostname: hostname.clone(),
                namespace: namespace.clone(),
                version: deployment
                    .labels
                    .get("version")
                    .cloned()
                    .unwrap_or_default(),
            },
            SocketAddr::from((ip, GRPC_PORT)),
        )
        .await;
        let labels = deployment
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let envoy = Sidecar::new(&node_id(&hostname, &namespace), sluice.xds_addr(), protocol)
            .namespace(&namespace)
            .labels(&labels)
            .address(ip)
            .start()
            .await;
        Pod {
            pod: deployment.pod.clone(),
            hostname,
            ip,
            envoy,
            http,
            _grpc: grpc,
        }
    }

    pub fn node_id(&self) -> String {
        node_id(&self.hostname, &self.pod.namespace)
    }

    /// The requests its HTTP echo server answered.
    pub fn received(&self) -> Vec<Received> {
        self.http.received()
    }
}

fn node_id(hostname: &str, namespace: &str) -> String {
    format!("{hostname}.{namespace}")
}

/// Sluice, every pod, and the manifest folder Sluice serves. Fields drop in order: sidecars
/// first, then Sluice, then the manifests.
pub struct Topology {
    pub protocol: Protocol,
    pods: Vec<Pod>,
    sluice: Sluice,
    manifests: ManifestDir,
    grpc_clients: Mutex<HashMap<(PodRef, String), GrpcEchoClient>>,
}

impl Topology {
    /// Serves every base (`(name, manifests)`) and starts every pod they declare, then waits
    /// until every sidecar is SYNCED.
    pub async fn start(protocol: Protocol, bases: &[(String, String)]) -> anyhow::Result<Topology> {
        let manifests = ManifestDir::new();
        let mut all = Vec::new();
        for (name, text) in bases {
            manifests.write(&format!("base/{name}.yaml"), text);
            all.extend(deployments(text).with_context(|| format!("base {name}"))?);
        }
        let sluice = Sluice::start(manifests.path()).await;
        sluice.wait_ready().await;
        let starts = all.iter().flat_map(|deployment| {
            (0..deployment.replicas)
                .map(|replica| Pod::start(deployment, replica, &sluice, protocol))
                .collect::<Vec<_>>()
        });
        let pods = futures::future::join_all(starts).await;
        let topology = Topology {
            protocol,
            pods,
            sluice,
            manifests,
            grpc_clients: Mutex::new(HashMap::new()),
        };
        let source = topology.sluice.get_json("/debug/source").await?;
        let served = source["revision"].clone();
        topology
            .wait_synced(&served, STARTUP_TIMEOUT)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(topology)
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The first pod of a Deployment.
    pub fn pod(&self, pod: &PodRef) -> anyhow::Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.pod == *pod)
            .with_context(|| format!("no pod of Deployment {pod} in the base manifests"))
    }

    /// What Sluice logged last, for a failure report.
    pub fn sluice_log(&self) -> String {
        self.sluice.log()
    }

    /// Writes `files` (name, contents) under `folder` and waits until they are served.
    pub async fn apply(&self, folder: &str, files: &[(String, String)]) -> Result<(), String> {
        let before = self.source().await?;
        for (name, text) in files {
            self.manifests.write(&format!("{folder}/{name}"), text);
        }
        self.wait_applied(&before).await
    }

    /// Removes `names` from `folder` and waits until the result is served.
    pub async fn remove(&self, folder: &str, names: &[String]) -> Result<(), String> {
        let before = self.source().await?;
        for name in names {
            self.manifests.remove(&format!("{folder}/{name}"));
        }
        self.wait_applied(&before).await
    }

    async fn source(&self) -> Result<Value, String> {
        self.sluice
            .get_json("/debug/source")
            .await
            .map_err(|e| format!("{e:#}"))
    }

    /// Waits until Sluice serves a revision other than the one in `before` and every sidecar
    /// has ACKed it, or reports why the new revision was refused.
    async fn wait_applied(&self, before: &Value) -> Result<(), String> {
        let started = Instant::now();
        let served = loop {
            let source = self.source().await?;
            if source["revision"] != before["revision"] && !source["revision"].is_null() {
                break source["revision"].clone();
            }
            let error = &source["last_error"];
            if !error.is_null() && error["revision"] != before["last_error"]["revision"] {
                return Err(format!(
                    "Sluice refused the manifests: {}",
                    errors_of(error)
                ));
            }
            if started.elapsed() > APPLY_TIMEOUT {
                return Err(format!(
                    "Sluice did not serve the change within {APPLY_TIMEOUT:?}: /debug/source = \
                     {source}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.wait_synced(&served, APPLY_TIMEOUT).await
    }

    /// Waits until every pod's sidecar has the snapshot of revision `served` and has ACKed
    /// every resource type.
    async fn wait_synced(&self, served: &Value, timeout: Duration) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let syncz = self
                .sluice
                .get_json("/debug/syncz")
                .await
                .map_err(|e| format!("{e:#}"))?;
            let nodes = syncz["nodes"].as_array().cloned().unwrap_or_default();
            let mut waiting = Vec::new();
            for pod in &self.pods {
                let id = pod.node_id();
                let Some(node) = nodes.iter().find(|n| n["id"] == id.as_str()) else {
                    waiting.push(format!("{id}: not connected"));
                    continue;
                };
                for (kind, status) in node["types"].as_object().into_iter().flatten() {
                    if status["status"] == "NACKED" {
                        return Err(format!(
                            "sidecar {id} rejected the {kind} resources: {}",
                            status["last_nack"]
                        ));
                    }
                }
                let synced = ["cds", "eds", "lds", "rds"]
                    .iter()
                    .all(|t| node["types"][t]["status"] == "SYNCED");
                if node["revision"] != *served || !synced {
                    waiting.push(format!(
                        "{id}: revision {}, types {}",
                        node["revision"], node["types"]
                    ));
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "sidecars did not ACK revision {served} within {timeout:?}: {}",
                    waiting.join("; ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends `request` from its client pod through that pod's sidecar.
    pub async fn send(&self, request: &Request) -> anyhow::Result<Observed> {
        let client = self.pod(&request.client)?;
        let outbound = client.envoy.outbound();
        let authority = match &request.target {
            Target::Name(name) => name.clone(),
            Target::PodAddress { pod, port } => format!("{}:{port}", self.pod(pod)?.ip),
        };
        match &request.scheme {
            Scheme::Http => {
                let reply =
                    http::get(outbound, &authority, &request.path, &request.headers).await?;
                Ok(observed_from_http(reply))
            }
            Scheme::Grpc { method } => {
                let grpc = self.grpc_client(&request.client, outbound, &authority)?;
                let reply = grpc
                    .call(method, "sluice-conformance", &request.headers)
                    .await?;
                let observed = observed_from_grpc(&reply.message, reply.response_headers);
                if observed.status == 0 {
                    bail!("the gRPC reply has no StatusCode: {:?}", reply.message);
                }
                Ok(observed)
            }
        }
    }

    fn grpc_client(
        &self,
        client: &PodRef,
        outbound: SocketAddr,
        authority: &str,
    ) -> anyhow::Result<GrpcEchoClient> {
        let mut clients = self
            .grpc_clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (client.clone(), authority.to_owned());
        if let Some(found) = clients.get(&key) {
            return Ok(found.clone());
        }
        let made = GrpcEchoClient::new(outbound, authority)?;
        clients.insert(key, made.clone());
        Ok(made)
    }
}

/// `file:line:column: message` of each error of a refused revision.
fn errors_of(last_error: &Value) -> String {
    let errors: Vec<String> = last_error["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{}:{}:{}: {}",
                e["file"].as_str().unwrap_or("?"),
                e["line"],
                e["column"],
                e["message"].as_str().unwrap_or("?")
            )
        })
        .collect();
    if errors.is_empty() {
        last_error.to_string()
    } else {
        errors.join("; ")
    }
}

/// What an HTTP answer shows. The echo servers' JSON body carries the backend's side; anything
/// else (Envoy's own 404, a redirect) has no backend.
pub fn observed_from_http(reply: http::HttpReply) -> Observed {
    let mut observed = Observed {
        status: reply.status,
        response_headers: reply.headers,
        ..Observed::default()
    };
    let Ok(body) = serde_json::from_slice::<Value>(&reply.body) else {
        return observed;
    };
    let Some(hostname) = body["hostname"].as_str() else {
        return observed;
    };
    observed.hostname = hostname.to_owned();
    observed.url = body["url"].as_str().map(str::to_owned);
    observed.host = body["host"].as_str().map(str::to_owned);
    observed.request_headers = body["request_headers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|pair| {
            Some((
                pair.get(0)?.as_str()?.to_owned(),
                pair.get(1)?.as_str()?.to_owned(),
            ))
        })
        .collect();
    observed
}
