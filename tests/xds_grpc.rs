//! The ADS server driven by a plain gRPC client: the protocol as a sidecar speaks it, checked
//! through Sluice's own debug API and metrics. Runs against the real `sluice serve` binary.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use support::{ManifestDir, Sluice};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const SRDS: &str = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// The route configuration (and scope) of port 80 of the `echo` Service, which the weighted
/// route attaches to.
const ECHO_ROUTES: &str = "echo.default:80";

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: default}
spec:
  selector: {app: echo, version: v1}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: default}
spec:
  selector: {app: echo, version: v2}
  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]
"#;

fn route(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo-split, namespace: default}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - backendRefs:
    - {{name: echo-v1, port: 80, weight: {v1}}}
    - {{name: echo-v2, port: 80, weight: {v2}}}
"#
    )
}

fn string(s: &str) -> PbValue {
    PbValue {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn node(id: &str) -> Node {
    let mut fields = BTreeMap::new();
    fields.insert("namespace".to_string(), string("default"));
    fields.insert("address".to_string(), string("127.0.0.1"));
    Node {
        id: id.to_string(),
        cluster: "test".to_string(),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        ..Default::default()
    }
}

async fn mesh() -> (ManifestDir, Sluice) {
    let dir = ManifestDir::new();
    dir.write("services.yaml", SERVICES);
    dir.write("route.yaml", &route(90, 10));
    let sluice = Sluice::start(dir.path()).await;
    sluice.wait_ready().await;
    (dir, sluice)
}

async fn client(sluice: &Sluice) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    AggregatedDiscoveryServiceClient::connect(format!("http://{}", sluice.xds_addr()))
        .await
        .expect("connect to the xDS listener")
}

async fn next<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a response within 10 s")
        .expect("the stream stays up")
        .expect("the stream is not closed")
}

async fn silent<T: std::fmt::Debug>(stream: &mut Streaming<T>, for_: Duration) {
    if let Ok(message) = tokio::time::timeout(for_, stream.message()).await {
        panic!("expected no response, got {message:?}");
    }
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(sluice: &Sluice) -> Delta {
        let (tx, requests) = mpsc::channel(16);
        let rx = client(sluice)
            .await
            .delta_aggregated_resources(ReceiverStream::new(requests))
            .await
            .expect("delta stream opens")
            .into_inner();
        Delta { tx, rx }
    }

    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.tx.send(request).await.expect("request sent");
    }

    /// Subscribes to a type and returns the response.
    async fn subscribe(
        &mut self,
        type_url: &str,
        names: &[&str],
        node: Option<Node>,
    ) -> DeltaDiscoveryResponse {
        self.send(DeltaDiscoveryRequest {
            node,
            type_url: type_url.to_string(),
            resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await;
        let response = next(&mut self.rx).await;
        assert_eq!(response.type_url, type_url);
        response
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

/// Subscribes to everything a sidecar of the mesh needs, the way Envoy does, and ACKs it all.
async fn delta_sync(delta: &mut Delta, id: &str) -> DeltaDiscoveryResponse {
    let cds = delta.subscribe(CDS, &[], Some(node(id))).await;
    assert!(
        !cds.resources.is_empty(),
        "the first CDS response is complete"
    );
    delta.ack(&cds).await;
    // Like Envoy, ask for the endpoints of EDS clusters only (not of the passthrough cluster).
    let clusters: Vec<String> = cds
        .resources
        .iter()
        .filter(|r| {
            let cluster = Cluster::decode(r.resource.as_ref().expect("a body").value.as_slice())
                .expect("a Cluster");
            cluster.cluster_discovery_type
                == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        })
        .map(|r| r.name.clone())
        .collect();
    let names: Vec<&str> = clusters.iter().map(String::as_str).collect();
    let eds = delta.subscribe(EDS, &names, None).await;
    assert_eq!(
        eds.resources.len(),
        names.len(),
        "every cluster has its endpoints"
    );
    delta.ack(&eds).await;
    let lds = delta.subscribe(LDS, &[], None).await;
    assert_eq!(lds.resources.len(), 1);
    delta.ack(&lds).await;
    // The listener's scoped routes: a wildcard subscription to the scopes, one per Service port.
    let srds = delta.subscribe(SRDS, &[], None).await;
    assert!(
        srds.resources.iter().any(|r| r.name == ECHO_ROUTES),
        "a scope for echo:80"
    );
    delta.ack(&srds).await;
    // Envoy subscribes to every scope's route configuration; the tests follow echo's.
    let rds = delta.subscribe(RDS, &[ECHO_ROUTES], None).await;
    assert_eq!(rds.resources.len(), 1);
    delta.ack(&rds).await;
    rds
}

fn weights(route: &DeltaDiscoveryResponse) -> Vec<u32> {
    let any = route.resources[0].resource.as_ref().expect("resource body");
    let config = RouteConfiguration::decode(any.value.as_slice()).expect("a RouteConfiguration");
    assert_eq!(config.name, ECHO_ROUTES);
    let vhost = &config.virtual_hosts[0];
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier,
    };
    let Some(Action::Route(action)) = vhost.routes[0].action.as_ref() else {
        panic!("a route action");
    };
    let Some(ClusterSpecifier::WeightedClusters(weighted)) = action.cluster_specifier.as_ref()
    else {
        panic!("weighted clusters");
    };
    weighted
        .clusters
        .iter()
        .map(|c| c.weight.as_ref().map_or(0, |w| w.value))
        .collect()
}

#[tokio::test]
async fn delta_stream_syncs_and_shows_synced_in_syncz() {
    let (_dir, sluice) = mesh().await;
    let mut delta = Delta::open(&sluice).await;
    let rds = delta_sync(&mut delta, "grpc-delta").await;
    assert_eq!(weights(&rds), vec![90, 10]);

    let node = sluice.wait_synced("grpc-delta").await;
    for t in ["cds", "eds", "lds", "srds", "rds"] {
        assert_eq!(node["types"][t]["status"], "SYNCED", "{t}: {node}");
    }
    assert_eq!(node["protocol"], "delta");
    // An ACK sends nothing back.
    silent(&mut delta.rx, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn delta_nack_is_recorded_traced_to_the_manifest_and_not_resent() {
    let (dir, sluice) = mesh().await;
    let mut delta = Delta::open(&sluice).await;
    delta_sync(&mut delta, "grpc-nack").await;

    dir.write("route.yaml", &route(50, 50));
    let update = next(&mut delta.rx).await;
    assert_eq!(
        update.type_url, RDS,
        "a weight change sends only the route configuration"
    );
    assert_eq!(weights(&update), vec![50, 50]);
    delta
        .send(DeltaDiscoveryRequest {
            type_url: RDS.to_string(),
            response_nonce: update.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "route rejected by test".to_string(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    // No resend loop: the rejected version is not sent again.
    silent(&mut delta.rx, Duration::from_secs(2)).await;

    let synced = support::wait_for(Duration::from_secs(10), "NACK in syncz", || async {
        let node = sluice.syncz_node("grpc-nack").await.ok().flatten()?;
        (node["types"]["rds"]["status"] == "NACKED").then_some(node)
    })
    .await;
    let rds = &synced["types"]["rds"];
    assert_eq!(
        rds["last_nack"]["message"], "route rejected by test",
        "{rds}"
    );
    let origins = rds["nack_origins"].to_string();
    assert!(
        origins.contains("route.yaml"),
        "the NACK names the manifest: {rds}"
    );
    assert_eq!(
        synced["types"]["cds"]["status"], "SYNCED",
        "a route NACK leaves clusters alone"
    );
    assert_eq!(
        sluice.metric("sluice_xds_nacks_total{type=\"rds\"}").await,
        1.0
    );

    // The next real change is sent normally.
    dir.write("route.yaml", &route(70, 30));
    let update = next(&mut delta.rx).await;
    assert_eq!(weights(&update), vec![70, 30]);
}

#[tokio::test]
async fn delta_reconnect_with_initial_versions_sends_only_what_changed() {
    let (dir, sluice) = mesh().await;
    let mut delta = Delta::open(&sluice).await;
    let cds = delta
        .subscribe(CDS, &[], Some(node("grpc-reconnect")))
        .await;
    delta.ack(&cds).await;
    let versions: std::collections::HashMap<String, String> = cds
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(delta);

    // One cluster changes while the sidecar is away: echo-v2 gets a second port.
    dir.write(
        "services.yaml",
        &SERVICES.replace(
            "selector: {app: echo, version: v2}\n  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}]",
            "selector: {app: echo, version: v2}\n  ports: [{name: http, port: 80, targetPort: 8080, appProtocol: http}, {name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}]",
        ),
    );
    support::wait_until(
        Duration::from_secs(10),
        "the new revision is served",
        || async { sluice.metric("sluice_revisions_applied_total").await >= 2.0 },
    )
    .await;

    let mut delta = Delta::open(&sluice).await;
    delta
        .send(DeltaDiscoveryRequest {
            node: Some(node("grpc-reconnect")),
            type_url: CDS.to_string(),
            initial_resource_versions: versions.clone().into_iter().collect(),
            ..Default::default()
        })
        .await;
    let response = next(&mut delta.rx).await;
    let sent: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        sent,
        vec!["outbound|9090||echo-v2.default.svc.cluster.local"],
        "only the new cluster"
    );
    assert!(response.removed_resources.is_empty());
}

#[tokio::test]
async fn sotw_stream_syncs_and_a_nack_is_not_resent() {
    let (dir, sluice) = mesh().await;
    let (tx, requests) = mpsc::channel(16);
    let mut rx = client(&sluice)
        .await
        .stream_aggregated_resources(ReceiverStream::new(requests))
        .await
        .expect("sotw stream opens")
        .into_inner();
    let request = |type_url: &str, names: &[&str], version: &str, nonce: &str| DiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.to_string(),
        response_nonce: nonce.to_string(),
        ..Default::default()
    };
    let mut first = request(CDS, &[], "", "");
    first.node = Some(node("grpc-sotw"));
    tx.send(first).await.expect("send");
    let cds: DiscoveryResponse = next(&mut rx).await;
    assert_eq!(cds.type_url, CDS);
    assert_eq!(
        cds.resources.len(),
        4,
        "one cluster per Service port, and the passthrough"
    );
    assert!(!cds.version_info.is_empty());
    tx.send(request(CDS, &[], &cds.version_info, &cds.nonce))
        .await
        .expect("ack");

    tx.send(request(LDS, &[], "", "")).await.expect("send");
    let lds = next(&mut rx).await;
    assert_eq!(lds.type_url, LDS);
    tx.send(request(LDS, &[], &lds.version_info, &lds.nonce))
        .await
        .expect("ack");
    tx.send(request(RDS, &[ECHO_ROUTES], "", ""))
        .await
        .expect("send");
    let rds = next(&mut rx).await;
    assert_eq!(rds.type_url, RDS);
    tx.send(request(RDS, &[ECHO_ROUTES], &rds.version_info, &rds.nonce))
        .await
        .expect("ack");
    silent(&mut rx, Duration::from_millis(300)).await;

    dir.write("route.yaml", &route(50, 50));
    let update = next(&mut rx).await;
    assert_eq!(update.type_url, RDS);
    assert_ne!(update.version_info, rds.version_info);
    assert_ne!(update.nonce, rds.nonce, "every response has a fresh nonce");
    let mut nack = request(RDS, &[ECHO_ROUTES], &rds.version_info, &update.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "rejected".to_string(),
        details: vec![],
    });
    tx.send(nack).await.expect("nack");
    silent(&mut rx, Duration::from_secs(2)).await;
    let node = support::wait_for(Duration::from_secs(10), "NACK in syncz", || async {
        let node = sluice.syncz_node("grpc-sotw").await.ok().flatten()?;
        (node["types"]["rds"]["status"] == "NACKED").then_some(node)
    })
    .await;
    assert_eq!(node["protocol"], "sotw");
    assert_eq!(node["types"]["lds"]["status"], "SYNCED");
}

#[tokio::test]
async fn a_first_request_without_node_is_refused_with_a_clear_status() {
    let (_dir, sluice) = mesh().await;
    let (tx, requests) = mpsc::channel(4);
    let mut rx = client(&sluice)
        .await
        .stream_aggregated_resources(ReceiverStream::new(requests))
        .await
        .expect("stream opens")
        .into_inner();
    tx.send(DiscoveryRequest {
        type_url: CDS.to_string(),
        ..Default::default()
    })
    .await
    .expect("send");
    let status = tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("an answer")
        .expect_err("the stream fails");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{}", status.message());
    // The server is still fine.
    let healthz = reqwest::get(format!("http://{}/healthz", sluice.debug_addr()))
        .await
        .expect("healthz answers");
    assert_eq!(healthz.status(), 200);
}

#[tokio::test]
async fn client_status_discovery_reports_each_sidecar_and_resource() {
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        string_matcher::MatchPattern, NodeMatcher, StringMatcher,
    };
    use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
    use envoy_types::pb::envoy::service::status::v3::{ClientStatusRequest, ConfigStatus};

    let (_dir, sluice) = mesh().await;
    let mut delta = Delta::open(&sluice).await;
    delta_sync(&mut delta, "csds-node").await;
    sluice.wait_synced("csds-node").await;

    let mut csds =
        ClientStatusDiscoveryServiceClient::connect(format!("http://{}", sluice.xds_addr()))
            .await
            .expect("connect to CSDS on the xDS listener");
    let by_id = |id: &str| ClientStatusRequest {
        node_matchers: vec![NodeMatcher {
            node_id: Some(StringMatcher {
                ignore_case: false,
                match_pattern: Some(MatchPattern::Exact(id.to_string())),
            }),
            node_metadatas: vec![],
        }],
        ..Default::default()
    };

    // Unary.
    let response = csds
        .fetch_client_status(by_id("csds-node"))
        .await
        .expect("fetch_client_status")
        .into_inner();
    assert_eq!(response.config.len(), 1);
    let config = &response.config[0];
    assert_eq!(
        config.node.as_ref().map(|n| n.id.as_str()),
        Some("csds-node")
    );
    let route = config
        .generic_xds_configs
        .iter()
        .find(|c| c.type_url == RDS && c.name == ECHO_ROUTES)
        .expect("the route configuration is reported");
    assert_eq!(route.config_status, ConfigStatus::Synced as i32);
    assert!(!route.version_info.is_empty());
    assert!(
        route.xds_config.is_some(),
        "contents are included unless excluded"
    );
    for type_url in [CDS, EDS, LDS, SRDS, RDS] {
        assert!(
            config
                .generic_xds_configs
                .iter()
                .any(|c| c.type_url == type_url),
            "{type_url} missing"
        );
    }

    // Streaming, with contents excluded; an unknown node gives an empty answer.
    let (tx, requests) = mpsc::channel(4);
    let mut answers = csds
        .stream_client_status(ReceiverStream::new(requests))
        .await
        .expect("stream_client_status")
        .into_inner();
    let mut excluded = by_id("csds-node");
    excluded.exclude_resource_contents = true;
    tx.send(excluded).await.expect("send");
    let answer = next(&mut answers).await;
    assert!(answer.config[0]
        .generic_xds_configs
        .iter()
        .all(|c| c.xds_config.is_none()));
    tx.send(by_id("nobody")).await.expect("send");
    assert!(next(&mut answers).await.config.is_empty());
}

#[tokio::test]
async fn sigterm_closes_streams_and_exits_0() {
    let (_dir, mut sluice) = mesh().await;
    let mut delta = Delta::open(&sluice).await;
    delta_sync(&mut delta, "drain-node").await;

    let status = std::process::Command::new("kill")
        .args(["-TERM", &sluice.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // The stream ends at once (closed or failed), so the sidecar reconnects elsewhere.
    let ended = tokio::time::timeout(Duration::from_secs(5), delta.rx.message())
        .await
        .expect("the stream ends within the drain");
    assert!(
        !matches!(ended, Ok(Some(_))),
        "unexpected response: {ended:?}"
    );
    support::wait_until(Duration::from_secs(10), "sluice exits", || {
        std::future::ready(!sluice.is_running())
    })
    .await;
    assert_eq!(sluice.exit_code(), Some(0), "{}", sluice.full_log());
}

/// Rule 15: a sidecar that stops reading gets the newest configuration when it reads again, not
/// a backlog, and never delays the others.
#[tokio::test]
async fn rule_15_a_stuck_sidecar_gets_the_newest_config_not_a_backlog() {
    // A route with enough matches that each of its route configurations is large (~100 KB):
    // the transport's flow-control windows fill after a few responses, so the stuck stream
    // really stops taking data.
    // (Gateway API allows 16 rules of 64 matches; the weighted rule comes first.)
    let big_route = |v1: u32, v2: u32| {
        let mut text = route(v1, v2);
        for rule in 0..15 {
            text.push_str(&format!(
                "  - backendRefs: [{{name: echo-v1, port: 80, weight: {v1}}}, {{name: echo-v2, port: 80, weight: {v2}}}]\n    matches:\n"
            ));
            for i in 0..64 {
                text.push_str(&format!(
                    "    - path: {{type: PathPrefix, value: /some/rather/long/prefix/{rule}/{i}}}\n"
                ));
            }
        }
        text
    };
    let dir = ManifestDir::new();
    dir.write("services.yaml", SERVICES);
    dir.write("route.yaml", &big_route(99, 1));
    let sluice = Sluice::start(dir.path()).await;
    sluice.wait_ready().await;

    // A small receive window, as a sidecar that stops reading its socket has.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", sluice.xds_addr()))
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let (tx, requests) = mpsc::channel(16);
    let rx = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(ReceiverStream::new(requests))
        .await
        .expect("delta stream opens")
        .into_inner();
    let mut stuck = Delta { tx, rx };
    delta_sync(&mut stuck, "stuck").await;
    let mut live = Delta::open(&sluice).await;
    delta_sync(&mut live, "live").await;

    // The stuck sidecar reads nothing while 30 changes land; the live one follows each at once.
    let changes = 30;
    for i in 2..=changes + 1 {
        dir.write("route.yaml", &big_route(100 - i, i));
        let update = next(&mut live.rx).await;
        assert_eq!(
            weights(&update),
            vec![100 - i, i],
            "the live sidecar follows every change"
        );
        live.ack(&update).await;
    }

    // Reading again: a few responses at most were in flight, and the last is the newest config.
    let mut received = Vec::new();
    while let Ok(Ok(Some(response))) =
        tokio::time::timeout(Duration::from_millis(1500), stuck.rx.message()).await
    {
        received.push(response);
    }
    eprintln!(
        "the stuck sidecar received {} responses for {changes} changes",
        received.len()
    );
    let last = received
        .last()
        .expect("the stuck sidecar gets the newest config");
    assert_eq!(weights(last), vec![100 - (changes + 1), changes + 1]);
    assert!(
        received.len() < changes as usize / 2,
        "a backlog of {} responses for {changes} changes",
        received.len()
    );
}
