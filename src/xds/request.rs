//! Decoding SotW requests. Envoy repeats every name it subscribes to in every request, ACKs
//! included: with a large mesh an EDS or RDS ACK carries thousands of names, the same as the
//! previous request of its type, and decoding them into strings on every ACK of every stream
//! is most of what a change costs a SotW server. So the names of a request are compared with
//! those of the previous request of the same type on the stream (by a keyed 128-bit hash of
//! their encoded bytes) and only decoded when they differ.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::marker::PhantomData;
use std::sync::LazyLock;

use super::grpc::MessageDecoder;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::bytes::{Buf, Bytes};
use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;
use tonic::Status;
use xxhash_rust::xxh3::Xxh3;

use super::resource::ResourceType;

/// `DiscoveryRequest.resource_names`.
const RESOURCE_NAMES: u32 = 3;

/// A SotW request, with what its names say.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwRequest {
    /// The request; `resource_names` is left empty when `names` is [`Names::AsBefore`].
    pub request: DiscoveryRequest,
    pub names: Names,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Names {
    /// The names are in `request.resource_names`.
    #[default]
    Decoded,
    /// Exactly the names of the previous request of this type on this stream.
    AsBefore,
}

impl From<DiscoveryRequest> for SotwRequest {
    fn from(request: DiscoveryRequest) -> Self {
        SotwRequest {
            request,
            names: Names::Decoded,
        }
    }
}

/// A hash key chosen at start-up, so a client cannot craft names that collide.
static SEED: LazyLock<u64> = LazyLock::new(|| std::hash::RandomState::new().hash_one(0u8));

/// The decoder of one SotW stream: it remembers, per served type URL, the hash of the previous
/// request's names.
#[derive(Default)]
pub struct SotwDecoder {
    previous: HashMap<String, u128>,
}

impl MessageDecoder for SotwDecoder {
    type Item = SotwRequest;

    fn decode(&mut self, message: Bytes) -> Result<SotwRequest, Status> {
        self.decode_bytes(message)
    }
}

impl SotwDecoder {
    pub(crate) fn decode_bytes(&mut self, bytes: Bytes) -> Result<SotwRequest, Status> {
        // The status the generated prost codec gives an undecodable message.
        let invalid = |err: prost::DecodeError| Status::internal(err.to_string());
        let Some(split) = split_names(&bytes) else {
            // Not a well-formed message: prost says why.
            return DiscoveryRequest::decode(bytes)
                .map(SotwRequest::from)
                .map_err(invalid);
        };
        let mut request = DiscoveryRequest::decode(split.rest.as_slice()).map_err(invalid)?;
        if self.previous.get(&request.type_url) == Some(&split.digest) {
            return Ok(SotwRequest {
                request,
                names: Names::AsBefore,
            });
        }
        let mut names = Vec::with_capacity(split.names.len());
        for range in split.names {
            let value = bytes.slice(range);
            let name = String::from_utf8(value.to_vec()).map_err(|_| {
                Status::internal(
                    "failed to decode Protobuf message: DiscoveryRequest.resource_names: invalid \
                     string value: data is not UTF-8 encoded",
                )
            })?;
            names.push(name);
        }
        request.resource_names = names;
        // Only the types Sluice serves are remembered: a client naming endless unknown types
        // cannot grow the map.
        if ResourceType::from_type_url(&request.type_url).is_some() {
            self.previous.insert(request.type_url.clone(), split.digest);
        }
        Ok(SotwRequest::from(request))
    }
}

/// A request's encoding taken apart: every field but the names, and where each name is.
struct Split {
    rest: Vec<u8>,
    names: Vec<std::ops::Range<usize>>,
    digest: u128,
}

/// Walks the top-level fields; `None` when the encoding is not well formed.
fn split_names(bytes: &Bytes) -> Option<Split> {
    let mut buf: &[u8] = bytes;
    let mut rest = Vec::with_capacity(256);
    let mut names = Vec::new();
    let mut hasher = Xxh3::with_seed(*SEED);
    while !buf.is_empty() {
        let start = bytes.len() - buf.len();
        let (field, wire_type) = decode_key(&mut buf).ok()?;
        let value_start = bytes.len() - buf.len();
        let value_len = match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => usize::try_from(decode_varint(&mut buf).ok()?).ok()?,
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        if buf.len() < value_len {
            return None;
        }
        let payload_start = bytes.len() - buf.len();
        buf.advance(value_len);
        let end = bytes.len() - buf.len();
        if field == RESOURCE_NAMES && wire_type == WireType::LengthDelimited {
            hasher.update(&bytes[value_start..end]);
            names.push(payload_start..end);
        } else {
            rest.extend_from_slice(&bytes[start..end]);
        }
    }
    hasher.update(&(names.len() as u64).to_le_bytes());
    Some(Split {
        rest,
        names,
        digest: hasher.digest128(),
    })
}

/// The plain prost decoder, for delta requests.
pub struct ProstDecoder<T>(PhantomData<fn() -> T>);

impl<T> Default for ProstDecoder<T> {
    fn default() -> Self {
        ProstDecoder(PhantomData)
    }
}

impl<T: Message + Default + Send + 'static> MessageDecoder for ProstDecoder<T> {
    type Item = T;

    fn decode(&mut self, message: Bytes) -> Result<T, Status> {
        // The status the generated prost codec gives an undecodable message.
        T::decode(message).map_err(|err| Status::internal(err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;

    fn request(type_url: &str, names: &[&str], nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            response_nonce: nonce.into(),
            version_info: "v1".into(),
            node: Some(Node {
                id: "sidecar".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn decode(decoder: &mut SotwDecoder, request: &DiscoveryRequest) -> SotwRequest {
        decoder
            .decode_bytes(Bytes::from(request.encode_to_vec()))
            .expect("decodes")
    }

    #[test]
    fn names_repeated_for_a_type_are_not_decoded_again() {
        let mut decoder = SotwDecoder::default();
        let eds = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
        let rds = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
        let first = request(eds, &["a", "b"], "");
        assert_eq!(
            decode(&mut decoder, &first),
            SotwRequest::from(first.clone())
        );

        // The ACK repeats the names: everything else is decoded, the names are not.
        let ack = request(eds, &["a", "b"], "n1");
        let decoded = decode(&mut decoder, &ack);
        assert_eq!(decoded.names, Names::AsBefore);
        assert!(decoded.request.resource_names.is_empty());
        assert_eq!(
            decoded.request,
            DiscoveryRequest {
                resource_names: Vec::new(),
                ..ack.clone()
            }
        );

        // Another type has its own previous names.
        let other = request(rds, &["a", "b"], "");
        assert_eq!(decode(&mut decoder, &other).names, Names::Decoded);

        // Different names, fewer names, no names: decoded.
        for names in [&["a", "c"][..], &["a"], &[]] {
            let changed = request(eds, names, "n2");
            assert_eq!(decode(&mut decoder, &changed), SotwRequest::from(changed));
        }
        // Names split differently into entries ("ab" against "a", "b") are not the same.
        let joined = request(eds, &["ab"], "n3");
        assert_eq!(decode(&mut decoder, &joined).names, Names::Decoded);
        let split = request(eds, &["a", "b"], "n4");
        assert_eq!(decode(&mut decoder, &split).names, Names::Decoded);

        // Types Sluice does not serve are always decoded and never remembered.
        for i in 0..3 {
            let unknown = request(&format!("type.example/T{}", i % 2), &["a"], "");
            assert_eq!(decode(&mut decoder, &unknown).names, Names::Decoded);
        }
        assert_eq!(decoder.previous.len(), 2, "EDS and RDS only");
    }

    #[test]
    fn malformed_requests_are_refused_as_prost_refuses_them() {
        let mut decoder = SotwDecoder::default();
        let mut bytes = request("t", &["a"], "").encode_to_vec();
        bytes.truncate(bytes.len() - 1);
        let ours = decoder.decode_bytes(Bytes::from(bytes.clone()));
        let prost = DiscoveryRequest::decode(bytes.as_slice());
        assert!(ours.is_err() && prost.is_err());

        // A name that is not UTF-8.
        let mut bad = vec![(RESOURCE_NAMES << 3 | 2) as u8, 2, 0xff, 0xfe];
        bad.extend(request("t", &[], "").encode_to_vec());
        let error = decoder.decode_bytes(Bytes::from(bad)).expect_err("refused");
        assert!(error.message().contains("UTF-8"), "{error}");
    }
}
