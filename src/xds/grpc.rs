//! The ADS gRPC service, written here rather than generated. It routes the two ADS methods to
//! stream tasks ([`super::server`]) and writes their replies with [`Reply::encode_to`], from the
//! snapshot's shared bytes straight into the HTTP/2 buffer.
//!
//! The service generated from the protos takes prost messages, and building one copies every
//! resource of a reply before the codec copies it again into the buffer. Requests are small and
//! are still decoded by prost.

use std::convert::Infallible;
use std::future::{ready, Future, Ready};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Status, Streaming};

use super::delta::DeltaStream;
use super::reply::Reply;
use super::server::{AdsServer, ReplyStream, StateMachine};
use super::sotw::SotwStream;

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest request taken: requests carry subscriptions and ACKs, never configuration.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest reply sent: a mesh's whole CDS or a large route configuration fits well below.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;

/// `envoy.service.discovery.v3.AggregatedDiscoveryService` as a tower service; cheap to clone.
#[derive(Clone)]
pub struct AdsService {
    server: AdsServer,
}

impl AdsService {
    pub fn new(server: AdsServer) -> AdsService {
        AdsService { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

impl tower::Service<http::Request<Body>> for AdsService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> ResponseFuture {
        match request.uri().path() {
            SOTW_PATH => Box::pin(serve(Method::<SotwStream>::new(&self.server), request)),
            DELTA_PATH => Box::pin(serve(Method::<DeltaStream>::new(&self.server), request)),
            // As the generated services answer a method they do not have.
            path => {
                let status = Status::unimplemented(format!("no method {path}"));
                Box::pin(ready(Ok(status.into_http())))
            }
        }
    }
}

async fn serve<M: StateMachine>(
    method: Method<M>,
    request: http::Request<Body>,
) -> Result<http::Response<Body>, Infallible> {
    let mut grpc = Grpc::new(AdsCodec::<M>(PhantomData))
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_REPLY_BYTES);
    Ok(grpc.streaming(method, request).await)
}

/// One ADS method: each call starts a stream task running a new `M`.
struct Method<M> {
    server: AdsServer,
    machine: PhantomData<fn() -> M>,
}

impl<M> Method<M> {
    fn new(server: &AdsServer) -> Self {
        Method {
            server: server.clone(),
            machine: PhantomData,
        }
    }
}

impl<M: StateMachine> StreamingService<M::Request> for Method<M> {
    type Response = M::Response;
    type ResponseStream = ReplyStream<M::Response>;
    type Future = Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<Streaming<M::Request>>) -> Self::Future {
        let replies = self.server.start(M::default(), request.into_inner());
        ready(Ok(tonic::Response::new(replies)))
    }
}

/// Decodes `M`'s requests with its decoder and encodes its replies with their own encoder.
struct AdsCodec<M>(PhantomData<fn() -> M>);

impl<M: StateMachine> Codec for AdsCodec<M> {
    type Encode = M::Response;
    type Decode = M::Request;
    type Encoder = ReplyEncoder<M::Response>;
    type Decoder = M::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ReplyEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        M::Decoder::default()
    }
}

struct ReplyEncoder<R>(PhantomData<fn(R)>);

impl<R: Reply> Encoder for ReplyEncoder<R> {
    type Item = R;
    type Error = Status;

    fn encode(&mut self, reply: R, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // One allocation for the whole reply rather than a doubling per growth.
        dst.reserve(reply.encoded_len());
        reply.encode_to(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::watch;
    use tower::Service;

    use super::*;
    use crate::metrics::Metrics;
    use crate::node::NodeInfo;
    use crate::xds::server::{ConnectionObserver, Shared, Streams};

    struct NoObserver;

    impl ConnectionObserver for NoObserver {
        fn connected(&self, _: u64, _: &NodeInfo) {}
        fn disconnected(&self, _: u64) {}
    }

    fn service() -> AdsService {
        let shared = Shared::new(
            watch::channel(None).1,
            Arc::new(Streams::default()),
            Arc::new(Metrics::default()),
            Arc::new(NoObserver),
            watch::channel(false).1,
        );
        AdsServer::new(Arc::new(shared)).into_service()
    }

    #[tokio::test]
    async fn an_unknown_method_is_unimplemented() {
        let request = http::Request::builder()
            .method("POST")
            .uri("http://sluice/envoy.service.discovery.v3.AggregatedDiscoveryService/Fetch")
            .header("content-type", "application/grpc")
            .body(Body::empty())
            .expect("a request");
        let Ok(response) = service().call(request).await;
        assert_eq!(response.status(), http::StatusCode::OK);
        let status = Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
    }
}
