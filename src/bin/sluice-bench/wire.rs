//! The bytes on the wire: lean ADS response messages that simulated sidecars decode without
//! copying, the gRPC codec of the sidecars, and the floor's codec, which writes pre-encoded
//! responses straight into the frame.
//!
//! The lean messages declare only the fields a sidecar reads, every string as `bytes` (the wire
//! format is the same), so decoding a response allocates one `Vec` per repeated field and
//! otherwise points into tonic's receive buffer. Unknown fields are skipped, as protobuf wants.

use std::marker::PhantomData;

use prost::bytes::{BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

pub const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
pub const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
pub const SERVICE_NAME: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

/// `DeltaDiscoveryResponse`, as a sidecar reads it.
#[derive(Clone, PartialEq, Message)]
pub struct DeltaResponse {
    #[prost(bytes = "bytes", tag = "1")]
    pub system_version_info: Bytes,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<DeltaResource>,
    #[prost(bytes = "bytes", tag = "4")]
    pub type_url: Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    pub nonce: Bytes,
    #[prost(bytes = "bytes", repeated, tag = "6")]
    pub removed_resources: Vec<Bytes>,
}

/// `envoy.service.discovery.v3.Resource`.
#[derive(Clone, PartialEq, Message)]
pub struct DeltaResource {
    #[prost(bytes = "bytes", tag = "1")]
    pub version: Bytes,
    #[prost(message, optional, tag = "2")]
    pub resource: Option<AnyBytes>,
    #[prost(bytes = "bytes", tag = "3")]
    pub name: Bytes,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, Message)]
pub struct AnyBytes {
    #[prost(bytes = "bytes", tag = "1")]
    pub type_url: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `DiscoveryResponse` (state of the world), as a sidecar reads it.
#[derive(Clone, PartialEq, Message)]
pub struct SotwResponse {
    #[prost(bytes = "bytes", tag = "1")]
    pub version_info: Bytes,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<AnyBytes>,
    #[prost(bytes = "bytes", tag = "4")]
    pub type_url: Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    pub nonce: Bytes,
}

/// The per-sidecar fields of a delta ACK (`DeltaDiscoveryRequest.response_nonce`); the type URL
/// is a shared piece.
#[derive(Clone, PartialEq, Message)]
pub struct DeltaAckFields {
    #[prost(bytes = "bytes", tag = "6")]
    pub response_nonce: Bytes,
}

/// The per-sidecar fields of a SotW request (`DiscoveryRequest.version_info` and
/// `response_nonce`); the type URL and the resource names are shared pieces.
#[derive(Clone, PartialEq, Message)]
pub struct SotwAckFields {
    #[prost(bytes = "bytes", tag = "1")]
    pub version_info: Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    pub response_nonce: Bytes,
}

/// The `nonce` field of both `DiscoveryResponse` and `DeltaDiscoveryResponse` (field 5, a
/// string), which the floor appends to a response encoded without it.
pub const RESPONSE_NONCE_TAG: u32 = 5;

/// A decoded message and the size of its encoding (the gRPC frame's payload).
#[derive(Debug)]
pub struct Received<M> {
    pub message: M,
    pub bytes: usize,
}

/// A request as a sidecar sends it: either a message, or pieces encoded beforehand and shared
/// between sidecars (a subscription to 2,000 names, the versions held on reconnect). Protobuf
/// merges concatenated encodings of one message type, so the pieces are simply written one
/// after the other.
#[derive(Debug)]
pub enum Outgoing<M> {
    Message(M),
    Parts(Vec<Bytes>),
}

/// The sidecars' codec: encodes [`Outgoing`] requests, decodes lean responses and counts their
/// bytes.
pub struct ClientCodec<Req, Resp>(PhantomData<fn(Req) -> Resp>);

impl<Req, Resp> Default for ClientCodec<Req, Resp> {
    fn default() -> Self {
        ClientCodec(PhantomData)
    }
}

impl<Req, Resp> Codec for ClientCodec<Req, Resp>
where
    Req: Message + Send + 'static,
    Resp: Message + Default + Send + 'static,
{
    type Encode = Outgoing<Req>;
    type Decode = Received<Resp>;
    type Encoder = OutgoingEncoder<Req>;
    type Decoder = CountingDecoder<Resp>;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        CountingDecoder(PhantomData)
    }
}

pub struct OutgoingEncoder<M>(PhantomData<fn(M)>);

impl<M: Message> Encoder for OutgoingEncoder<M> {
    type Item = Outgoing<M>;
    type Error = Status;

    fn encode(&mut self, item: Outgoing<M>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Message(message) => message
                .encode(dst)
                .map_err(|err| Status::internal(format!("encoding a request: {err}"))),
            Outgoing::Parts(parts) => {
                for part in parts {
                    dst.put_slice(&part);
                }
                Ok(())
            }
        }
    }
}

pub struct CountingDecoder<M>(PhantomData<fn() -> M>);

impl<M: Message + Default> Decoder for CountingDecoder<M> {
    type Item = Received<M>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Received<M>>, Status> {
        use prost::bytes::Buf;
        let bytes = src.remaining();
        let message = M::decode(src)
            .map_err(|err| Status::internal(format!("decoding a response: {err}")))?;
        Ok(Some(Received { message, bytes }))
    }
}

/// A response the floor sends: a message encoded once without its nonce, and the stream's nonce
/// for it.
#[derive(Clone, Debug)]
pub struct Prebuilt {
    pub body: Bytes,
    pub nonce: u64,
}

impl Prebuilt {
    /// The size on the wire: the body and the appended nonce field.
    pub fn encoded_len(&self) -> usize {
        self.body.len() + nonce_field_len(self.nonce)
    }
}

fn nonce_field_len(nonce: u64) -> usize {
    let digits = decimal_digits(nonce);
    prost::encoding::key_len(RESPONSE_NONCE_TAG)
        + prost::encoding::encoded_len_varint(digits as u64)
        + digits
}

fn decimal_digits(mut n: u64) -> usize {
    let mut digits = 1;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits
}

/// The floor's codec: `put_slice`s a [`Prebuilt`] body and appends the nonce field; decodes
/// requests with prost.
pub struct FloorCodec<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for FloorCodec<Req> {
    fn default() -> Self {
        FloorCodec(PhantomData)
    }
}

impl<Req: Message + Default + Send + 'static> Codec for FloorCodec<Req> {
    type Encode = Prebuilt;
    type Decode = Req;
    type Encoder = PrebuiltEncoder;
    type Decoder = ProstDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        PrebuiltEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(PhantomData)
    }
}

pub struct PrebuiltEncoder;

impl Encoder for PrebuiltEncoder {
    type Item = Prebuilt;
    type Error = Status;

    fn encode(&mut self, item: Prebuilt, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        put_prebuilt(&item, dst);
        Ok(())
    }
}

/// Writes the body, then the nonce as field 5 (a decimal string).
fn put_prebuilt(item: &Prebuilt, dst: &mut impl BufMut) {
    dst.put_slice(&item.body);
    let digits = itoa_buffer(item.nonce);
    prost::encoding::encode_key(
        RESPONSE_NONCE_TAG,
        prost::encoding::WireType::LengthDelimited,
        dst,
    );
    prost::encoding::encode_varint(digits.len() as u64, dst);
    dst.put_slice(digits.as_bytes());
}

/// The decimal digits of `n`, without allocating.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buffer(mut n: u64) -> Digits {
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    Digits { buf, start }
}

pub struct ProstDecoder<M>(PhantomData<fn() -> M>);

impl<M: Message + Default> Decoder for ProstDecoder<M> {
    type Item = M;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<M>, Status> {
        M::decode(src)
            .map(Some)
            .map_err(|err| Status::internal(format!("decoding a request: {err}")))
    }
}

/// Encodes `message` into shared bytes (a request piece or a pre-encoded response).
pub fn encode<M: Message>(message: &M) -> Bytes {
    Bytes::from(message.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use envoy_types::pb::google::protobuf::Any;

    use super::*;

    #[test]
    fn a_prebuilt_body_with_an_appended_nonce_decodes_as_the_whole_response() {
        let whole = DeltaDiscoveryResponse {
            system_version_info: "v1".into(),
            resources: vec![Resource {
                name: "a".into(),
                version: "1".into(),
                resource: Some(Any {
                    type_url: "t".into(),
                    value: vec![1, 2, 3],
                }),
                ..Default::default()
            }],
            type_url: "t".into(),
            nonce: "1234567".into(),
            ..Default::default()
        };
        let body = encode(&DeltaDiscoveryResponse {
            nonce: String::new(),
            ..whole.clone()
        });
        let prebuilt = Prebuilt {
            body,
            nonce: 1234567,
        };
        let mut buf = prost::bytes::BytesMut::new();
        put_prebuilt(&prebuilt, &mut buf);
        assert_eq!(buf.len(), prebuilt.encoded_len());
        let decoded = DeltaDiscoveryResponse::decode(buf.freeze()).expect("decodes");
        assert_eq!(decoded, whole);
    }

    #[test]
    fn lean_messages_read_what_envoy_types_wrote() {
        let response = DiscoveryResponse {
            version_info: "v7".into(),
            resources: vec![Any {
                type_url: "t".into(),
                value: vec![9; 10],
            }],
            type_url: "t".into(),
            nonce: "3".into(),
            ..Default::default()
        };
        let lean = SotwResponse::decode(encode(&response)).expect("decodes");
        assert_eq!(&lean.version_info[..], b"v7");
        assert_eq!(&lean.nonce[..], b"3");
        assert_eq!(lean.resources.len(), 1);
        assert_eq!(&lean.resources[0].value[..], &[9; 10]);
    }

    #[test]
    fn digits() {
        for n in [0, 7, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(itoa_buffer(n).as_bytes(), n.to_string().as_bytes());
            assert_eq!(decimal_digits(n), n.to_string().len());
        }
    }
}
