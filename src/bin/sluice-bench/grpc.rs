//! A bidirectional gRPC stream over a sidecar's own tonic `Channel`, with the responses read
//! off the HTTP/2 body by hand.
//!
//! tonic's own decoder keeps, per stream, a receive buffer as large as the largest message it
//! ever held. A whole route table is one message of about a megabyte, so ten thousand simulated
//! sidecars would keep ten gigabytes of buffers on the machine that also runs the server under
//! test. Here each message is assembled in a buffer of its own, handed out whole (zero-copy when
//! it came in one DATA frame) and freed once the sidecar is done with it. Requests still go out
//! through tonic's `EncodeBody`.

use std::pin::Pin;

use anyhow::{bail, Context};
use prost::bytes::{Buf, Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codec::EncodeBody;
use tonic::codegen::http::{self, header, HeaderValue, Method, Request};
use tonic::codegen::Body as _;
use tonic::metadata::GRPC_CONTENT_TYPE;
use tonic::transport::Channel;
use tonic::Status;
use tower::Service;

use crate::wire::{Outgoing, OutgoingEncoder};

/// The gRPC length-prefixed message header: a compression flag and a big-endian length.
const HEADER: usize = 5;

/// Opens `path` on `channel`; the request stream is fed from `requests`.
pub async fn open<Req>(
    channel: &mut Channel,
    path: &'static str,
    requests: mpsc::Receiver<Outgoing<Req>>,
) -> anyhow::Result<Responses>
where
    Req: prost::Message + Send + 'static,
{
    let source = ReceiverStream::new(requests).map(Ok::<_, Status>);
    let body = Body::new(EncodeBody::new_client(
        OutgoingEncoder::default(),
        source,
        None,
        None,
    ));
    let mut request = Request::new(body);
    *request.method_mut() = Method::POST;
    *request.uri_mut() = http::Uri::from_static(path);
    let headers = request.headers_mut();
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    headers.insert(header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .context("waiting for the connection")?;
    let response = channel.call(request).await.context("sending the request")?;
    if response.status() != http::StatusCode::OK {
        bail!("the server answered HTTP {}", response.status());
    }
    if let Some(status) = Status::from_header_map(response.headers()) {
        if status.code() != tonic::Code::Ok {
            bail!("the server refused the stream: {status}");
        }
    }
    Ok(Responses {
        body: response.into_body(),
        pending: Pending::Empty,
        ended: false,
    })
}

/// The response side of a stream: whole messages, in order.
pub struct Responses {
    body: Body,
    pending: Pending,
    ended: bool,
}

/// Received bytes not yet handed out.
#[derive(Debug, Default)]
enum Pending {
    #[default]
    Empty,
    /// Part of one DATA frame, as received: messages inside it are sliced out without a copy.
    Frame(Bytes),
    /// A message spread over several frames, being copied together in a buffer of its size.
    Assembling(BytesMut),
}

impl Responses {
    /// The next message, or `None` once the server ended the stream with status OK.
    pub async fn next(&mut self) -> anyhow::Result<Option<Bytes>> {
        loop {
            if let Some(message) = self.take_message()? {
                return Ok(Some(message));
            }
            if self.ended {
                if !matches!(self.pending, Pending::Empty) {
                    bail!("the stream ended inside a message");
                }
                return Ok(None);
            }
            let frame = std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                None => self.ended = true,
                Some(Err(status)) => bail!("the stream failed: {status}"),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.push(data),
                    Err(frame) => {
                        self.ended = true;
                        if let Some(status) = frame.trailers_ref().and_then(Status::from_header_map)
                        {
                            if status.code() != tonic::Code::Ok {
                                bail!("the server ended the stream: {status}");
                            }
                        }
                    }
                },
            }
        }
    }

    fn push(&mut self, data: Bytes) {
        self.pending = match std::mem::take(&mut self.pending) {
            Pending::Empty => Pending::Frame(data),
            Pending::Frame(earlier) => {
                let mut buf = BytesMut::with_capacity(earlier.len() + data.len());
                buf.extend_from_slice(&earlier);
                buf.extend_from_slice(&data);
                Pending::Assembling(buf)
            }
            Pending::Assembling(mut buf) => {
                buf.extend_from_slice(&data);
                Pending::Assembling(buf)
            }
        };
    }

    /// Takes one whole message off the pending bytes, if there is one. A message that is not
    /// whole yet gets a buffer of its full size, so it is copied together only once, and that
    /// buffer is let go as soon as the message is handed out.
    fn take_message(&mut self) -> anyhow::Result<Option<Bytes>> {
        let available: &[u8] = match &self.pending {
            Pending::Empty => return Ok(None),
            Pending::Frame(bytes) => bytes,
            Pending::Assembling(buf) => buf,
        };
        if available.len() < HEADER {
            return Ok(None);
        }
        if available[0] != 0 {
            bail!("a compressed message, though no compression was asked for");
        }
        let len =
            u32::from_be_bytes([available[1], available[2], available[3], available[4]]) as usize;
        let whole = HEADER + len;
        match std::mem::take(&mut self.pending) {
            Pending::Empty => Ok(None),
            Pending::Frame(bytes) if bytes.len() < whole => {
                let mut buf = BytesMut::with_capacity(whole);
                buf.extend_from_slice(&bytes);
                self.pending = Pending::Assembling(buf);
                Ok(None)
            }
            Pending::Frame(bytes) => {
                let message = bytes.slice(HEADER..whole);
                if bytes.len() > whole {
                    self.pending = Pending::Frame(bytes.slice(whole..));
                }
                Ok(Some(message))
            }
            Pending::Assembling(mut buf) if buf.len() < whole => {
                buf.reserve(whole - buf.len());
                self.pending = Pending::Assembling(buf);
                Ok(None)
            }
            Pending::Assembling(mut buf) => {
                buf.advance(HEADER);
                let message = buf.split_to(len).freeze();
                if !buf.is_empty() {
                    // The start of the next message; copied out so the big buffer can go.
                    self.pending = Pending::Frame(Bytes::copy_from_slice(&buf));
                }
                Ok(Some(message))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn responses() -> Responses {
        Responses {
            body: Body::empty(),
            pending: Pending::Empty,
            ended: false,
        }
    }

    #[test]
    fn messages_split_across_frames_and_frames_holding_several_are_taken_whole() {
        let mut stream = framed(b"first");
        stream.extend(framed(b"second message"));
        stream.extend(framed(b""));
        let mut responses = responses();
        let mut taken = Vec::new();
        for chunk in stream.chunks(3) {
            responses.push(Bytes::copy_from_slice(chunk));
            while let Some(message) = responses.take_message().expect("uncompressed") {
                taken.push(message);
            }
        }
        assert_eq!(taken, [&b"first"[..], b"second message", b""]);
        assert!(matches!(responses.pending, Pending::Empty));
    }

    #[test]
    fn compressed_messages_are_refused() {
        let mut responses = responses();
        let mut frame = framed(b"x");
        frame[0] = 1;
        responses.push(Bytes::from(frame));
        assert!(responses.take_message().is_err());
    }
}
