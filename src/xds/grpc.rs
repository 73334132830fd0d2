//! The ADS gRPC service, written here rather than generated. It routes the two ADS methods to
//! stream tasks ([`super::server`]) and writes their replies with [`Reply::encode_to`], from the
//! snapshot's shared bytes straight into a buffer handed to HTTP/2.
//!
//! The service generated from the protos takes prost messages, and building one copies every
//! resource of a reply before the codec copies it again into the buffer. Requests are small and
//! are still decoded by prost.
//!
//! Replies are not written through tonic's encoding body either: it keeps one buffer per stream
//! and reuses it, so the buffer grows to the stream's largest reply (a whole CDS or EDS, about a
//! megabyte per thousand Services) and stays that large while the stream lives. Here each reply
//! is framed into a buffer of its own, freed once HTTP/2 has written it ([`streaming_response`]).

use std::convert::Infallible;
use std::future::{ready, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use http_body::{Body as _, Frame};
use prost::bytes::{BufMut, Bytes, BytesMut};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tonic::Status;

use super::delta::DeltaStream;
use super::reply::Reply;
use super::server::{AdsServer, StateMachine};
use super::sotw::SotwStream;

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest request taken: requests carry subscriptions and ACKs, never configuration.
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest reply sent: a mesh's whole CDS or a large route configuration fits well below.
const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// The gRPC message header: a compressed flag and the message length (big-endian u32).
const HEADER_BYTES: usize = 5;
/// Shared parts of a message from this size on go out as chunks of their own, not copied.
const SHARED_CHUNK_MIN: usize = 16 * 1024;

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
        let response = match request.uri().path() {
            SOTW_PATH => serve(&self.server, SotwStream::default(), request),
            DELTA_PATH => serve(&self.server, DeltaStream::default(), request),
            // As the generated services answer a method they do not have.
            path => Status::unimplemented(format!("no method {path}")).into_http(),
        };
        Box::pin(ready(Ok(response)))
    }
}

/// Starts a stream task running `machine` on the call's requests and answers with its replies.
fn serve<M: StateMachine>(
    server: &AdsServer,
    machine: M,
    request: http::Request<Body>,
) -> http::Response<Body> {
    match request_stream(request, M::Decoder::default(), MAX_REQUEST_BYTES) {
        Ok(requests) => streaming_response(server.start(machine, requests), encode_reply),
        Err(refused) => refused.into_http(),
    }
}

/// A reply as the chunks of one gRPC message: its header with the fields before the
/// resources, the resources (shared with other streams sending the same list, and written to
/// the socket without another copy), the fields after them.
fn encode_reply<R: Reply>(reply: R) -> Result<Vec<Bytes>, Status> {
    let pieces = reply.pieces();
    message_chunks(&pieces.head, pieces.resources, pieces.tail)
}

/// One gRPC message made of `head`, `shared` and `tail`, as the chunks [`streaming_response`]
/// writes one after another: the header with `head`, then `shared` as it is (HTTP/2 writes a
/// large chunk to the socket from where it lies), then `tail`. A message whose `shared` part is
/// below [`SHARED_CHUNK_MIN`] is one chunk: copying it costs less than a frame of its own.
pub fn message_chunks(head: &[u8], shared: Bytes, tail: Vec<u8>) -> Result<Vec<Bytes>, Status> {
    let len = head.len() + shared.len() + tail.len();
    if shared.len() < SHARED_CHUNK_MIN {
        let whole = frame(len, |buf| {
            buf.put_slice(head);
            buf.put_slice(&shared);
            buf.put_slice(&tail);
        })?;
        return Ok(vec![whole]);
    }
    let mut first = Vec::with_capacity(HEADER_BYTES + head.len());
    first.extend_from_slice(&message_header(len)?);
    first.extend_from_slice(head);
    let chunks = [Bytes::from(first), shared, Bytes::from(tail)];
    Ok(chunks
        .into_iter()
        .filter(|chunk| !chunk.is_empty())
        .collect())
}

/// The messages of a client-streaming call, decoded by `decoder`; a message above `max_bytes`
/// ends the stream with an error. A call whose messages are compressed is refused with the
/// status to answer it with (`UNIMPLEMENTED`, naming `identity` as the one encoding taken), the
/// way tonic's generated services refuse an encoding they were not built with.
pub fn request_stream<D: MessageDecoder>(
    request: http::Request<Body>,
    decoder: D,
    max_bytes: usize,
) -> Result<Requests<D>, Status> {
    if let Some(encoding) = request
        .headers()
        .get("grpc-encoding")
        .filter(|e| e.as_bytes() != b"identity")
    {
        let mut status = Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        ));
        status.metadata_mut().insert(
            "grpc-accept-encoding",
            MetadataValue::from_static("identity"),
        );
        return Err(status);
    }
    Ok(Requests {
        body: request.into_body(),
        buf: BytesMut::new(),
        decoder,
        max_bytes,
        ended: false,
    })
}

/// Turns one whole gRPC message into a request.
pub trait MessageDecoder: Send + 'static {
    type Item: Send + 'static;

    fn decode(&mut self, message: Bytes) -> Result<Self::Item, Status>;
}

/// The requests of a call, as [`request_stream`] made them.
pub struct Requests<D> {
    body: Body,
    /// Received bytes not yet taken as a message. Dropped whenever it is empty: the first
    /// requests of a stream name every subscribed resource (a hundred kilobytes and more in a
    /// large mesh) and the ACKs after them are small, so a buffer kept for the stream's life
    /// would stay as large as its largest request (as tonic's does).
    buf: BytesMut,
    decoder: D,
    max_bytes: usize,
    /// The body ended.
    ended: bool,
}

impl<D: MessageDecoder> Requests<D> {
    /// The next request; `None` once the client ended its side of the call, an error when the
    /// transport failed or a message is malformed (the call is then over).
    pub async fn message(&mut self) -> Result<Option<D::Item>, Status> {
        loop {
            if let Some(message) = self.take_message()? {
                if self.buf.is_empty() {
                    // The message's allocation is freed once it is decoded and dropped.
                    self.buf = BytesMut::new();
                }
                return self.decoder.decode(message).map(Some);
            }
            if self.ended {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Status::internal("the call ended within a message"))
                };
            }
            let body = &mut self.body;
            match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                Some(Err(error)) => return Err(Status::from_error(error.into())),
                None => self.ended = true,
            }
        }
    }

    /// The next whole message in the buffer, without its header.
    fn take_message(&mut self) -> Result<Option<Bytes>, Status> {
        let Some(header) = self.buf.get(..HEADER_BYTES) else {
            return Ok(None);
        };
        if header[0] != 0 {
            return Err(Status::internal(
                "a compressed message, but no compression was agreed",
            ));
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > self.max_bytes {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max_bytes
            )));
        }
        if self.buf.len() < HEADER_BYTES + len {
            self.buf.reserve(HEADER_BYTES + len - self.buf.len());
            return Ok(None);
        }
        let _ = self.buf.split_to(HEADER_BYTES);
        Ok(Some(self.buf.split_to(len).freeze()))
    }
}

/// The response of a server-streaming call: `messages`, each framed by `encode` (see
/// [`frame`]) and handed to HTTP/2 as a buffer of its own, then the `grpc-status` trailers:
/// OK when the stream ends, or the error the stream (or `encode`) ends with.
pub fn streaming_response<T, S>(
    messages: S,
    encode: fn(T) -> Result<Vec<Bytes>, Status>,
) -> http::Response<Body>
where
    T: Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
{
    let mut response = http::Response::new(Body::new(MessageBody {
        messages,
        encode,
        pending: Vec::new().into_iter(),
        ended: false,
    }));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

/// One gRPC message of `len` bytes that `write` puts, with its header, in a buffer of exactly
/// that size. A message above the largest reply is an error, as tonic makes it.
pub fn frame(len: usize, write: impl FnOnce(&mut BytesMut)) -> Result<Bytes, Status> {
    let header = message_header(len)?;
    let mut buf = BytesMut::with_capacity(HEADER_BYTES + len);
    buf.put_slice(&header);
    write(&mut buf);
    debug_assert_eq!(
        buf.len(),
        HEADER_BYTES + len,
        "a message wrote another length than it announced"
    );
    Ok(buf.freeze())
}

/// The header of an uncompressed gRPC message of `len` bytes. A message above the largest
/// reply is an error, as tonic makes it.
fn message_header(len: usize) -> Result<[u8; HEADER_BYTES], Status> {
    if len > MAX_REPLY_BYTES {
        return Err(Status::out_of_range(format!(
            "Error, encoded message length too large: found {len} bytes, the limit is: {MAX_REPLY_BYTES} bytes"
        )));
    }
    // Below MAX_REPLY_BYTES, so it fits.
    let [a, b, c, d] = (len as u32).to_be_bytes();
    Ok([0, a, b, c, d])
}

/// The body of [`streaming_response`].
struct MessageBody<S, T> {
    messages: S,
    encode: fn(T) -> Result<Vec<Bytes>, Status>,
    /// The chunks of the current message not yet handed out.
    pending: std::vec::IntoIter<Bytes>,
    /// The trailers went out.
    ended: bool,
}

impl<S, T> MessageBody<S, T> {
    fn end(&mut self, status: Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.ended = true;
        let mut trailers = http::HeaderMap::new();
        Poll::Ready(Some(
            status
                .add_header(&mut trailers)
                .map(|()| Frame::trailers(trailers)),
        ))
    }
}

impl<T, S> http_body::Body for MessageBody<S, T>
where
    S: Stream<Item = Result<T, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        // Every field is Unpin.
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(chunk) = this.pending.next() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match std::task::ready!(Pin::new(&mut this.messages).poll_next(cx)) {
            Some(Ok(message)) => match (this.encode)(message) {
                Ok(chunks) => {
                    this.pending = chunks.into_iter();
                    match this.pending.next() {
                        Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                        None => this.end(Status::internal("an empty message")),
                    }
                }
                Err(status) => this.end(status),
            },
            Some(Err(status)) => this.end(status),
            None => this.end(Status::ok("")),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tower::Service;

    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    use http_body::Body as _;
    use prost::Message as _;

    use super::*;
    use crate::xds::reply::DeltaReply;
    use crate::xds::resource::ResourceType;
    use crate::xds::server::testing::shared;
    use crate::xds::stream::testing::resource;

    fn service() -> AdsService {
        AdsServer::new(shared()).into_service()
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

    /// Every frame of a response body, until it ends.
    async fn frames(body: Body) -> Vec<Frame<Bytes>> {
        let mut body = std::pin::pin!(body);
        let mut frames = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            frames.push(frame.expect("a frame"));
        }
        assert!(body.is_end_stream());
        frames
    }

    fn reply(nonce: &str, resources: usize) -> DeltaReply {
        DeltaReply {
            system_version_info: "v1".into(),
            resource_type: ResourceType::Cluster,
            resources: (0..resources)
                .map(|i| Arc::new(resource(ResourceType::Cluster, &format!("c{i}"), 1)))
                .collect(),
            removed_resources: vec!["gone".into()],
            nonce: nonce.into(),
        }
    }

    fn trailers_status(frame: &Frame<Bytes>) -> Status {
        let trailers = frame.trailers_ref().expect("trailers");
        Status::from_header_map(trailers).expect("a gRPC status")
    }

    #[tokio::test]
    async fn replies_go_out_one_framed_message_each_then_ok() {
        let replies = vec![reply("1", 1000), reply("2", 0)];
        let response = streaming_response(
            futures::stream::iter(replies.clone().into_iter().map(Ok)),
            encode_reply::<DeltaReply>,
        );
        assert_eq!(
            response.headers().get(http::header::CONTENT_TYPE),
            Some(&http::HeaderValue::from_static("application/grpc"))
        );
        let frames = frames(response.into_body()).await;
        let (trailers, data) = frames.split_last().expect("frames");
        // A message goes out in chunks (the shared resources on their own), which read on
        // the wire as one message after the other.
        assert!(reply("1", 1000).pieces().resources.len() >= SHARED_CHUNK_MIN);
        assert_eq!(
            data.len(),
            3 + 1,
            "1,000 resources apart, no resources in one chunk"
        );
        let mut wire: Vec<u8> = data
            .iter()
            .flat_map(|frame| frame.data_ref().expect("data").to_vec())
            .collect();
        for reply in &replies {
            let expected = reply.to_proto().encode_to_vec();
            assert_eq!(wire[0], 0, "not compressed");
            assert_eq!(wire[1..5], (expected.len() as u32).to_be_bytes());
            let rest = wire.split_off(5 + expected.len());
            assert_eq!(wire[5..], expected[..]);
            let decoded = DeltaDiscoveryResponse::decode(&wire[5..]).expect("decodes");
            assert_eq!(decoded, reply.to_proto());
            wire = rest;
        }
        assert!(wire.is_empty());
        assert_eq!(trailers_status(trailers).code(), tonic::Code::Ok);
    }

    #[tokio::test]
    async fn a_stream_error_ends_the_body_with_its_status() {
        let replies = vec![
            Ok(reply("1", 1)),
            Err(Status::resource_exhausted("too many streams")),
            Ok(reply("2", 1)),
        ];
        let response =
            streaming_response(futures::stream::iter(replies), encode_reply::<DeltaReply>);
        let frames = frames(response.into_body()).await;
        let (trailers, data) = frames.split_last().expect("frames");
        assert!(data.iter().all(Frame::is_data));
        let sent: usize = data
            .iter()
            .map(|f| f.data_ref().map_or(0, Bytes::len))
            .sum();
        assert_eq!(
            sent,
            5 + reply("1", 1).encoded_len(),
            "nothing after the error"
        );
        let status = trailers_status(trailers);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "too many streams");
    }

    #[test]
    fn a_message_over_the_limit_is_refused_before_it_is_written() {
        let refused = frame(MAX_REPLY_BYTES + 1, |_| panic!("written"));
        assert_eq!(refused.map_err(|s| s.code()), Err(tonic::Code::OutOfRange));
        let framed = frame(3, |buf| buf.put_slice(b"abc")).expect("framed");
        assert_eq!(&framed[..], b"\0\0\0\0\x03abc");
    }

    #[tokio::test]
    async fn compressed_requests_are_refused_and_identity_is_served() {
        let call = |encoding: &'static str| {
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("http://sluice{DELTA_PATH}"))
                .header("content-type", "application/grpc")
                .header("grpc-encoding", encoding)
                .body(Body::empty())
                .expect("a request");
            service().call(request)
        };
        let Ok(refused) = call("gzip").await;
        let status = Status::from_header_map(refused.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(
            refused.headers().get("grpc-accept-encoding"),
            Some(&http::HeaderValue::from_static("identity"))
        );
        let Ok(served) = call("identity").await;
        assert!(Status::from_header_map(served.headers()).is_none());
        // No request arrives: the stream ends with OK.
        let frames = frames(served.into_body()).await;
        assert_eq!(
            trailers_status(frames.last().expect("trailers")).code(),
            tonic::Code::Ok
        );
    }

    /// A request body that yields these chunks as data frames, then ends.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }
    }

    struct Raw;

    impl MessageDecoder for Raw {
        type Item = Bytes;

        fn decode(&mut self, message: Bytes) -> Result<Bytes, Status> {
            Ok(message)
        }
    }

    fn requests(chunks: Vec<Vec<u8>>, max_bytes: usize) -> Requests<Raw> {
        let body = Body::new(Chunks(chunks.into_iter().map(Bytes::from).collect()));
        let request = http::Request::builder().body(body).expect("a request");
        request_stream(request, Raw, max_bytes).unwrap_or_else(|_| panic!("refused"))
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        frame(message.len(), |buf| buf.put_slice(message))
            .expect("framed")
            .to_vec()
    }

    #[tokio::test]
    async fn requests_are_taken_whole_however_the_frames_split_them() {
        let big = vec![7u8; 100_000];
        let mut wire = framed(b"first");
        wire.extend(framed(&big));
        wire.extend(framed(b""));
        wire.extend(framed(b"last"));
        // Two frames split anywhere in the first 40 bytes (headers and the first message), in
        // the middle of the large message, or before the last byte.
        for split in (0..40).chain([wire.len() / 2, wire.len() - 1]) {
            let mut calls = requests(
                vec![wire[..split].to_vec(), wire[split..].to_vec()],
                1 << 20,
            );
            let mut got = Vec::new();
            while let Some(message) = calls.message().await.expect("a message") {
                got.push(message.to_vec());
            }
            assert_eq!(
                got,
                [b"first".to_vec(), big.clone(), Vec::new(), b"last".to_vec()],
                "split at {split}"
            );
        }
    }

    #[tokio::test]
    async fn a_large_request_does_not_keep_its_buffer() {
        let big = vec![1u8; 200_000];
        let mut calls = requests(vec![framed(&big), framed(b"ack")], 1 << 20);
        assert_eq!(
            calls.message().await.expect("a message").map(|m| m.len()),
            Some(big.len())
        );
        assert_eq!(
            calls.buf.capacity(),
            0,
            "the large request's buffer is kept"
        );
        assert_eq!(
            calls.message().await.expect("a message").as_deref(),
            Some(&b"ack"[..])
        );
        assert!(calls.buf.capacity() < 1024);
        assert_eq!(calls.message().await.expect("the end"), None);
    }

    #[tokio::test]
    async fn malformed_requests_end_the_call_with_an_error() {
        let code = |chunks: Vec<Vec<u8>>| async move {
            requests(chunks, 1000)
                .message()
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        };
        // Over the limit, before it is read.
        let mut header = vec![0u8];
        header.extend(1001u32.to_be_bytes());
        assert_eq!(code(vec![header]).await, Err(tonic::Code::OutOfRange));
        // Compressed though nothing was agreed.
        let mut compressed = framed(b"x");
        compressed[0] = 1;
        assert_eq!(code(vec![compressed]).await, Err(tonic::Code::Internal));
        // Cut off within a message, or within a header.
        let whole = framed(b"hello");
        assert_eq!(
            code(vec![whole[..7].to_vec()]).await,
            Err(tonic::Code::Internal)
        );
        assert_eq!(
            code(vec![whole[..3].to_vec()]).await,
            Err(tonic::Code::Internal)
        );
        assert_eq!(code(vec![]).await, Ok(()));
    }
}
