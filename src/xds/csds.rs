//! The Client Status Discovery Service (`envoy.service.status.v3.ClientStatusDiscoveryService`):
//! each connected sidecar's configuration and per-resource status, for standard xDS tooling.
//!
//! It reads the same per-stream entries as `/debug/syncz`; nothing here touches a stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher::MatchPattern, NodeMatcher};
use envoy_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::{
    ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use envoy_types::pb::google::protobuf::Timestamp;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::resource::ResourceType;
use super::server::{StreamEntry, Streams};
use super::stream::SyncState;

#[derive(Clone, Debug)]
pub struct CsdsServer {
    streams: Arc<Streams>,
}

impl CsdsServer {
    pub fn new(streams: Arc<Streams>) -> CsdsServer {
        CsdsServer { streams }
    }

    pub fn into_service(self) -> ClientStatusDiscoveryServiceServer<CsdsServer> {
        ClientStatusDiscoveryServiceServer::new(self).max_decoding_message_size(1024 * 1024)
    }
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<ClientStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for CsdsServer {
    type StreamClientStatusStream = StatusStream;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<StatusStream>, Status> {
        let streams = self.streams.clone();
        let answers = request.into_inner().map(move |request| {
            // A broken request stream ends the answers with its status.
            let request = request?;
            client_status(&streams, &request)
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        client_status(&self.streams, request.get_ref()).map(Response::new)
    }
}

/// The answer to one request: every connected sidecar that any matcher selects (all of them when
/// there is no matcher).
pub fn client_status(
    streams: &Streams,
    request: &ClientStatusRequest,
) -> Result<ClientStatusResponse, Status> {
    for matcher in &request.node_matchers {
        check_supported(matcher)?;
    }
    let config = streams
        .list()
        .iter()
        .filter(|entry| {
            request.node_matchers.is_empty()
                || request
                    .node_matchers
                    .iter()
                    .any(|m| matches(m, &entry.node.id))
        })
        .map(|entry| client_config(entry, request.exclude_resource_contents))
        .collect();
    Ok(ClientStatusResponse { config })
}

fn check_supported(matcher: &NodeMatcher) -> Result<(), Status> {
    if !matcher.node_metadatas.is_empty() {
        return Err(Status::invalid_argument(
            "node_metadatas matchers are not supported; match on node_id",
        ));
    }
    let pattern = matcher
        .node_id
        .as_ref()
        .and_then(|m| m.match_pattern.as_ref());
    match pattern {
        None
        | Some(MatchPattern::Exact(_))
        | Some(MatchPattern::Prefix(_))
        | Some(MatchPattern::Suffix(_))
        | Some(MatchPattern::Contains(_)) => Ok(()),
        Some(_) => Err(Status::invalid_argument(
            "node_id matchers support exact, prefix, suffix and contains",
        )),
    }
}

fn matches(matcher: &NodeMatcher, node_id: &str) -> bool {
    let Some(string_matcher) = &matcher.node_id else {
        return true;
    };
    let fold = |s: &str| {
        if string_matcher.ignore_case {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    let id = fold(node_id);
    match &string_matcher.match_pattern {
        None => true,
        Some(MatchPattern::Exact(v)) => id == fold(v),
        Some(MatchPattern::Prefix(v)) => id.starts_with(&fold(v)),
        Some(MatchPattern::Suffix(v)) => id.ends_with(&fold(v)),
        Some(MatchPattern::Contains(v)) => id.contains(&fold(v)),
        Some(_) => false,
    }
}

fn timestamp(time: SystemTime) -> Timestamp {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

fn client_config(entry: &StreamEntry, exclude_contents: bool) -> ClientConfig {
    let mut generic_xds_configs = Vec::new();
    if let Some(snapshot) = &entry.snapshot {
        for resource_type in ResourceType::ALL {
            let status = &entry.types[resource_type.index()];
            if !status.subscribed && status.sent_version.is_none() {
                continue;
            }
            let state = status.state();
            let (config_status, client_status) = match state {
                SyncState::Synced => (ConfigStatus::Synced, ClientResourceStatus::Acked),
                SyncState::Stale => (ConfigStatus::Stale, ClientResourceStatus::Requested),
                SyncState::Nacked => (ConfigStatus::Error, ClientResourceStatus::Nacked),
                SyncState::NotSent => (ConfigStatus::NotSent, ClientResourceStatus::Unknown),
            };
            let last_updated = entry.acked_at[resource_type.index()].map(timestamp);
            let error_state = status
                .last_nack
                .as_ref()
                .filter(|_| state == SyncState::Nacked)
                .map(|nack| UpdateFailureState {
                    failed_configuration: None,
                    last_update_attempt: SystemTime::UNIX_EPOCH
                        .checked_add(std::time::Duration::from_millis(nack.at_unix_ms))
                        .map(timestamp),
                    details: nack.message.clone(),
                    version_info: nack.version.clone(),
                });
            for resource in snapshot.resources(resource_type).values() {
                generic_xds_configs.push(GenericXdsConfig {
                    type_url: resource_type.type_url().to_string(),
                    name: resource.name.clone(),
                    version_info: resource.version.clone(),
                    xds_config: (!exclude_contents).then(|| resource.body.clone()),
                    last_updated,
                    config_status: config_status as i32,
                    client_status: client_status as i32,
                    error_state: error_state.clone(),
                    is_static_resource: false,
                });
            }
        }
    }
    #[allow(deprecated)]
    ClientConfig {
        node: Some(Node {
            id: entry.node.id.clone(),
            cluster: entry.node.namespace.clone(),
            ..Default::default()
        }),
        xds_config: Vec::new(),
        generic_xds_configs,
        client_scope: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;

    fn matcher(pattern: MatchPattern, ignore_case: bool) -> NodeMatcher {
        NodeMatcher {
            node_id: Some(StringMatcher {
                ignore_case,
                match_pattern: Some(pattern),
            }),
            node_metadatas: Vec::new(),
        }
    }

    #[test]
    fn node_id_matchers() {
        assert!(matches(
            &matcher(MatchPattern::Exact("client".into()), false),
            "client"
        ));
        assert!(!matches(
            &matcher(MatchPattern::Exact("client".into()), false),
            "client-2"
        ));
        assert!(matches(
            &matcher(MatchPattern::Prefix("echo-".into()), false),
            "echo-v1"
        ));
        assert!(matches(
            &matcher(MatchPattern::Suffix("-V1".into()), true),
            "echo-v1"
        ));
        assert!(matches(
            &matcher(MatchPattern::Contains("o-v".into()), false),
            "echo-v2"
        ));
        assert!(!matches(
            &matcher(MatchPattern::Prefix("x".into()), false),
            "echo-v2"
        ));
    }

    #[test]
    fn unsupported_matchers_are_refused() {
        let streams = Streams::default();
        let request = ClientStatusRequest {
            node_matchers: vec![NodeMatcher {
                node_id: None,
                node_metadatas: vec![Default::default()],
            }],
            ..Default::default()
        };
        let status = client_status(&streams, &request).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn no_connected_sidecar_gives_an_empty_answer() {
        let streams = Streams::default();
        let response = client_status(&streams, &ClientStatusRequest::default()).expect("answer");
        assert!(response.config.is_empty());
    }
}
