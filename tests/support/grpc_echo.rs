//! A gRPC upstream that says who it is, and a client that calls it through a sidecar.
//!
//! The server speaks Sluice's own `proto/echo.proto` (service `proto.EchoTestService`, the method
//! the Gateway API mesh conformance suite calls) over h2c. Every call succeeds with a reply
//! message of newline-separated `Key=Value` lines:
//!
//! - `Host=<:authority>`;
//! - `RequestHeader=<name>:<value>`, one line per metadata value, sorted by name (values of one
//!   name in the order received), names ending in `-bin` left out;
//! - `StatusCode=200`, `Proto=GRPC`, `Method=<rpc name>`;
//! - `ServiceVersion=<version label>`, `ServicePort=<port>`, `IP=<caller address>`,
//!   `Namespace=<namespace>`;
//! - `Echo=<request message>`;
//! - `Hostname=<pod name>`.
//!
//! The client sends HTTP/2 with prior knowledge to a sidecar's outbound listener with the
//! Service as `:authority`, as an app in the mesh would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;
use tonic::codegen::http;
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

/// The code generated from `proto/echo.proto` by `build.rs`.
pub mod pb {
    tonic::include_proto!("proto");
}

use pb::echo_test_service_client::EchoTestServiceClient;
use pb::echo_test_service_server::{EchoTestService, EchoTestServiceServer};
use pb::{EchoRequest, EchoResponse};

/// One call the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcCall {
    /// `Echo` or `Ping`.
    pub method: String,
    pub authority: String,
    pub message: String,
}

/// Who the server says it is.
#[derive(Clone, Debug)]
pub struct GrpcEchoIdentity {
    pub hostname: String,
    pub namespace: String,
    /// The pod's `version` label; empty when it has none.
    pub version: String,
}

#[derive(Clone)]
struct Echo {
    identity: Arc<GrpcEchoIdentity>,
    port: u16,
    calls: Arc<Mutex<Vec<GrpcCall>>>,
}

impl Echo {
    fn answer(&self, method: &str, request: Request<EchoRequest>) -> Response<EchoResponse> {
        let caller = request
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let (metadata, extensions, message) = request.into_parts();
        let authority = extensions
            .get::<RequestAuthority>()
            .map(|a| a.0.clone())
            .unwrap_or_default();
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(GrpcCall {
                method: method.to_owned(),
                authority: authority.clone(),
                message: message.message.clone(),
            });
        let mut lines = vec![format!("Host={authority}")];
        lines.extend(
            sorted_metadata(&metadata)
                .into_iter()
                .map(|(name, value)| format!("RequestHeader={name}:{value}")),
        );
        let id = &self.identity;
        lines.extend([
            "StatusCode=200".to_owned(),
            format!("ServiceVersion={}", id.version),
            format!("ServicePort={}", self.port),
            format!("IP={caller}"),
            "Proto=GRPC".to_owned(),
            format!("Method={method}"),
            format!("Namespace={}", id.namespace),
            format!("Echo={}", message.message),
            format!("Hostname={}", id.hostname),
        ]);
        Response::new(EchoResponse {
            message: lines.join("\n"),
        })
    }
}

/// The `:authority` of a call. tonic hands services the metadata but not the request URI, so
/// [`AuthorityLayer`] copies it into the request's extensions.
#[derive(Clone, Debug)]
struct RequestAuthority(String);

#[derive(Clone, Copy, Debug)]
struct AuthorityLayer;

impl<S> tower::Layer<S> for AuthorityLayer {
    type Service = WithAuthority<S>;

    fn layer(&self, inner: S) -> WithAuthority<S> {
        WithAuthority(inner)
    }
}

#[derive(Clone, Debug)]
struct WithAuthority<S>(S);

impl<S, B> tower::Service<http::Request<B>> for WithAuthority<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> S::Future {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        request.extensions_mut().insert(RequestAuthority(authority));
        self.0.call(request)
    }
}

/// Metadata as (name, value) pairs sorted by name, values of one name in the order received.
fn sorted_metadata(metadata: &MetadataMap) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = metadata
        .iter()
        .filter_map(|entry| match entry {
            KeyAndValueRef::Ascii(key, value) => Some((
                key.as_str().to_owned(),
                String::from_utf8_lossy(value.as_encoded_bytes()).into_owned(),
            )),
            KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    // Stable: equal names keep their order.
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

#[tonic::async_trait]
impl EchoTestService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(self.answer("Echo", request))
    }

    async fn ping(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(self.answer("Ping", request))
    }
}

/// A running gRPC echo server; stops on drop.
pub struct GrpcEchoServer {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<GrpcCall>>>,
    shutdown: Option<oneshot::Sender<()>>,
}

impl GrpcEchoServer {
    /// Serves h2c on `addr` as `identity`. Must be called inside a Tokio runtime.
    pub async fn start(identity: GrpcEchoIdentity, addr: SocketAddr) -> GrpcEchoServer {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "gRPC echo server {:?} cannot bind {addr}: {e}",
                    identity.hostname
                )
            });
        let addr = listener.local_addr().expect("local address");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let service = Echo {
            identity: Arc::new(identity),
            port: addr.port(),
            calls: calls.clone(),
        };
        let (shutdown, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = Server::builder()
                .layer(AuthorityLayer)
                .add_service(EchoTestServiceServer::new(service))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                    let _ = stopped.await;
                })
                .await;
        });
        GrpcEchoServer {
            addr,
            calls,
            shutdown: Some(shutdown),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every call answered so far.
    pub fn calls(&self) -> Vec<GrpcCall> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for GrpcEchoServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// What a call returned: the reply's `Key=Value` lines and the response metadata (headers and
/// trailers) the client saw.
#[derive(Clone, Debug, Default)]
pub struct GrpcReply {
    pub message: String,
    pub response_headers: Vec<(String, String)>,
}

/// A gRPC client bound to one sidecar's outbound listener, calling one Service (`authority`,
/// such as `echo:7070`). The channel is made on first use and kept.
#[derive(Clone)]
pub struct GrpcEchoClient {
    client: EchoTestServiceClient<Channel>,
    authority: String,
}

impl GrpcEchoClient {
    pub fn new(outbound: SocketAddr, authority: &str) -> anyhow::Result<GrpcEchoClient> {
        let origin: http::Uri = format!("http://{authority}")
            .parse()
            .with_context(|| format!("{authority:?} is not an authority"))?;
        let channel = Endpoint::from_shared(format!("http://{outbound}"))?
            .origin(origin)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(GrpcEchoClient {
            client: EchoTestServiceClient::new(channel),
            authority: authority.to_owned(),
        })
    }

    /// Calls `method` (`Echo` or `Ping`) with `metadata`. An error is a failed call: a transport
    /// error or a non-OK gRPC status.
    pub async fn call(
        &self,
        method: &str,
        message: &str,
        metadata: &[(String, String)],
    ) -> anyhow::Result<GrpcReply> {
        let mut request = Request::new(EchoRequest {
            message: message.to_owned(),
        });
        for (name, value) in metadata {
            let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .with_context(|| format!("{name:?} is not a metadata name"))?;
            let value = MetadataValue::try_from(value.as_str())
                .with_context(|| format!("{value:?} is not a metadata value"))?;
            request.metadata_mut().append(key, value);
        }
        let mut client = self.client.clone();
        let what = || format!("gRPC {method} to {}", self.authority);
        let response = match method {
            "Echo" => client.echo(request).await,
            "Ping" => client.ping(request).await,
            other => anyhow::bail!("unknown method {other:?}"),
        }
        .with_context(what)?;
        let response_headers = response
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                KeyAndValueRef::Ascii(key, value) => Some((
                    key.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_encoded_bytes()).into_owned(),
                )),
                KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        Ok(GrpcReply {
            message: response.into_inner().message,
            response_headers,
        })
    }
}
