//! The bytes on the wire: how simulated sidecars read responses cheaply, the gRPC codec of the
//! sidecars, and the floor's codec, which writes pre-encoded responses straight into the frame.
//!
//! A sidecar does not decode a response: it gets the message's bytes (see [`crate::grpc`]) and
//! [`scan`] walks only the top-level fields, for the type,
//! the nonce, the number of resources and a key (a hash of everything but the nonce). What the
//! response means is looked up by that key (see [`crate::facts`]); only a response never seen
//! before is decoded, with the lean messages below. Those declare only the fields a sidecar
//! reads, every string as `bytes` (the wire format is the same), so even then nothing is
//! copied. Unknown fields are skipped, as protobuf wants.

use std::marker::PhantomData;

use prost::bytes::{BufMut, Bytes};
use prost::Message;
use tonic::codec::{EncodeBuf, Encoder};
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

/// The top-level fields of a `DiscoveryResponse` or `DeltaDiscoveryResponse` (both have
/// version 1, resources 2, type URL 4, nonce 5; delta adds removed names 6).
#[derive(Debug, PartialEq, Eq)]
pub struct Scan<'a> {
    pub version: &'a [u8],
    pub type_url: &'a [u8],
    pub nonce: &'a [u8],
    pub resources: usize,
    /// A hash of the response without its nonce: equal keys, equal responses to a sidecar.
    pub key: u64,
}

/// Walks the top-level fields of a response without decoding the resources.
pub fn scan(message: &[u8]) -> anyhow::Result<Scan<'_>> {
    let mut scan = Scan {
        version: &[],
        type_url: &[],
        nonce: &[],
        resources: 0,
        key: 0,
    };
    let mut nonce_field = 0..0;
    for field in fields(message) {
        let field = field?;
        match field.tag {
            1 => scan.version = field.payload,
            2 => scan.resources += 1,
            4 => scan.type_url = field.payload,
            RESPONSE_NONCE_TAG => {
                scan.nonce = field.payload;
                nonce_field = field.span;
            }
            _ => {}
        }
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&message[..nonce_field.start]);
    hasher.update(&message[nonce_field.end..]);
    scan.key = hasher.digest();
    Ok(scan)
}

/// What the floor reads of a request: its type and, for a delta reconnect, a digest of the
/// `initial_resource_versions` it declares.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestScan<'a> {
    pub type_url: &'a [u8],
    pub initial_versions: VersionsDigest,
}

/// An order-independent digest of a set of `name → version` map entries: their number and the
/// sum of their hashes. Equal sets, equal digests, without building a map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionsDigest {
    pub entries: usize,
    pub sum: u64,
}

impl VersionsDigest {
    /// Adds one map entry, given as its encoding (field 1 the name, field 2 the version).
    pub fn add(&mut self, entry: &[u8]) {
        self.entries += 1;
        self.sum = self.sum.wrapping_add(xxhash_rust::xxh3::xxh3_64(entry));
    }

    /// The digest of `(name, version)` pairs, encoded as prost encodes map entries.
    pub fn of<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> VersionsDigest {
        let mut digest = VersionsDigest::default();
        let mut entry = Vec::new();
        for (name, version) in pairs {
            entry.clear();
            prost::encoding::string::encode(1, &name.to_string(), &mut entry);
            prost::encoding::string::encode(2, &version.to_string(), &mut entry);
            digest.add(&entry);
        }
        digest
    }
}

/// Walks a request's top-level fields: `type_url` at `type_url_tag`, and map entries at
/// `versions_tag` (delta's `initial_resource_versions`, 5) if given.
pub fn scan_request(
    message: &[u8],
    type_url_tag: u32,
    versions_tag: Option<u32>,
) -> anyhow::Result<RequestScan<'_>> {
    let mut scan = RequestScan::default();
    for field in fields(message) {
        let field = field?;
        if field.tag == type_url_tag {
            scan.type_url = field.payload;
        } else if Some(field.tag) == versions_tag {
            scan.initial_versions.add(field.payload);
        }
    }
    Ok(scan)
}

/// One length-delimited top-level field.
struct Field<'a> {
    tag: u32,
    payload: &'a [u8],
    /// Where the whole field (key, length and payload) sits in the message.
    span: std::ops::Range<usize>,
}

/// The length-delimited top-level fields of a message, in order; other wire types are skipped.
fn fields(message: &[u8]) -> impl Iterator<Item = anyhow::Result<Field<'_>>> {
    use prost::encoding::{decode_key, decode_varint, WireType};
    let mut rest = message;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let start = message.len() - rest.len();
        let next = (|| -> anyhow::Result<Option<Field<'_>>> {
            let (tag, wire_type) = decode_key(&mut rest)?;
            if wire_type != WireType::LengthDelimited {
                prost::encoding::skip_field(wire_type, tag, &mut rest, Default::default())?;
                return Ok(None);
            }
            let len = usize::try_from(decode_varint(&mut rest)?)?;
            if len > rest.len() {
                anyhow::bail!("field {tag} is {len} bytes long, but {} remain", rest.len());
            }
            let (payload, after) = rest.split_at(len);
            rest = after;
            Ok(Some(Field {
                tag,
                payload,
                span: start..message.len() - rest.len(),
            }))
        })();
        match next {
            Ok(Some(field)) => return Some(Ok(field)),
            Ok(None) => continue,
            Err(err) => {
                rest = &[];
                return Some(Err(err));
            }
        }
    })
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

/// Encodes a sidecar's [`Outgoing`] requests into the request stream.
pub struct OutgoingEncoder<M>(PhantomData<fn(M)>);

impl<M> Default for OutgoingEncoder<M> {
    fn default() -> Self {
        OutgoingEncoder(PhantomData)
    }
}

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

/// A [`Prebuilt`] as one gRPC message, in chunks the way Sluice writes its replies (see
/// `sluice::xds::grpc::message_chunks`): the shared body as it is, the nonce after it.
pub fn frame_prebuilt(item: Prebuilt) -> Result<Vec<Bytes>, Status> {
    let mut nonce = Vec::with_capacity(nonce_field_len(item.nonce));
    put_nonce(item.nonce, &mut nonce);
    sluice::xds::grpc::message_chunks(&[], item.body, nonce)
}

/// Writes the body, then the nonce as field 5 (a decimal string).
#[cfg(test)]
fn put_prebuilt(item: &Prebuilt, dst: &mut impl BufMut) {
    dst.put_slice(&item.body);
    put_nonce(item.nonce, dst);
}

/// The nonce as field 5 (a decimal string).
fn put_nonce(nonce: u64, dst: &mut impl BufMut) {
    let digits = itoa_buffer(nonce);
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

/// Takes a whole message as bytes, without decoding it.
pub struct RawDecoder;

impl sluice::xds::grpc::MessageDecoder for RawDecoder {
    type Item = Bytes;

    fn decode(&mut self, message: Bytes) -> Result<Bytes, Status> {
        Ok(message)
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
    fn a_scan_finds_the_fields_and_its_key_ignores_the_nonce() {
        let response = |nonce: &str| DeltaDiscoveryResponse {
            system_version_info: "v1".into(),
            resources: vec![Resource::default(), Resource::default()],
            type_url: "t".into(),
            nonce: nonce.into(),
            removed_resources: vec!["gone".into()],
            ..Default::default()
        };
        let one = encode(&response("1"));
        let two = encode(&response("22"));
        let (a, b) = (scan(&one).expect("scans"), scan(&two).expect("scans"));
        assert_eq!(
            (a.version, a.type_url, a.nonce),
            (&b"v1"[..], &b"t"[..], &b"1"[..])
        );
        assert_eq!(a.resources, 2);
        assert_eq!(a.key, b.key);
        let mut other = response("1");
        other.removed_resources.clear();
        assert_ne!(scan(&encode(&other)).expect("scans").key, a.key);
        assert!(scan(&one[..one.len() - 1]).is_err());
    }

    #[test]
    fn the_request_scan_digests_initial_versions_in_any_order() {
        use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
        let request = DeltaDiscoveryRequest {
            type_url: "t".into(),
            initial_resource_versions: [("a", "1"), ("b", "2"), ("c", "3")]
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let bytes = encode(&request);
        let scan = scan_request(&bytes, 2, Some(5)).expect("scans");
        assert_eq!(scan.type_url, b"t");
        let expected = VersionsDigest::of([("c", "3"), ("a", "1"), ("b", "2")].into_iter());
        assert_eq!(scan.initial_versions, expected);
        let other = VersionsDigest::of([("a", "1"), ("b", "2"), ("c", "4")].into_iter());
        assert_ne!(scan.initial_versions, other);
    }

    #[test]
    fn digits() {
        for n in [0, 7, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(itoa_buffer(n).as_bytes(), n.to_string().as_bytes());
            assert_eq!(decimal_digits(n), n.to_string().len());
        }
    }
}
