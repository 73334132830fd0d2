//! Decoding ADS requests without decoding what a stream does not need as strings.
//!
//! SotW: Envoy repeats every name it subscribes to in every request, ACKs included: with a
//! large mesh an EDS or RDS ACK carries thousands of names, the same as the previous request of
//! its type, and decoding them into strings on every ACK of every stream is most of what a
//! change costs a SotW server. So the names of a request are compared with those of the
//! previous request of the same type on the stream (by a keyed 128-bit hash of their encoded
//! bytes) and only decoded when they differ.
//!
//! Delta: a connecting client subscribes to thousands of names per type, and a reconnecting one
//! also declares every (name, version) pair it holds (`initial_resource_versions`). Decoded by
//! prost they are a string per name and a hash map of owned strings, most of what a reconnect
//! costs; here they are a [`NameList`] and [`Declared`]: checked, counted and summed (their
//! digests) in one pass, and left where they lie in the message's bytes. The count and sum are
//! all a stream needs of a client naming every resource of a type, or declaring exactly what it
//! should hold; the names themselves are read only when they are not that.

use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::LazyLock;

use super::grpc::MessageDecoder;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::bytes::Bytes;
use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;
use tonic::Status;
use xxhash_rust::xxh3::Xxh3;

use super::resource::{entry_digest, key_digest, ResourceType};

/// `DiscoveryRequest.resource_names`.
const RESOURCE_NAMES: u32 = 3;
/// `DeltaDiscoveryRequest.resource_names_subscribe`.
const RESOURCE_NAMES_SUBSCRIBE: u32 = 3;
/// `DeltaDiscoveryRequest.initial_resource_versions`.
const INITIAL_RESOURCE_VERSIONS: u32 = 5;

/// The status the generated prost codec gives an undecodable message.
fn invalid(err: prost::DecodeError) -> Status {
    Status::internal(err.to_string())
}

/// A SotW request, with its names taken out of `request`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SotwRequest {
    /// The request; `resource_names` is always empty.
    pub request: DiscoveryRequest,
    pub names: Names,
}

/// A SotW request's `resource_names`.
#[derive(Clone, Debug, PartialEq)]
pub enum Names {
    /// Read where they lie in the message: a SotW client names every endpoint and route
    /// configuration it wants (thousands), and no name is copied out.
    Listed(NameList),
    /// Exactly the names of the previous request of this type on this stream.
    AsBefore,
}

impl Default for Names {
    fn default() -> Self {
        Names::Listed(NameList::default())
    }
}

impl From<DiscoveryRequest> for SotwRequest {
    /// The names are put on the wire as an encoder would, then read as those of a decoded
    /// request are.
    fn from(mut request: DiscoveryRequest) -> Self {
        let mut wire = Vec::new();
        for name in std::mem::take(&mut request.resource_names) {
            prost::encoding::string::encode(RESOURCE_NAMES, &name, &mut wire);
        }
        SotwRequest {
            request,
            names: Names::Listed(NameList::of(Bytes::from(wire), RESOURCE_NAMES)),
        }
    }
}

/// A hash key chosen at start-up, so a client cannot craft names that collide.
static SEED: LazyLock<u64> = LazyLock::new(|| std::hash::RandomState::new().hash_one(0u8));

/// The decoder of one SotW stream: it remembers, per served type, the hash of the previous
/// request's names.
#[derive(Default)]
pub struct SotwDecoder {
    /// Indexed by [`ResourceType::index`]; boxed, as the stream's task holds the decoder.
    previous: Box<[Option<Previous>; ResourceType::COUNT]>,
}

/// The names of the previous request of a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Previous {
    /// Of the names as encoded, then their count (see [`names_digest`]).
    digest: u128,
    /// When the names were one run of fields: its length in bytes, and the count.
    run: Option<(usize, u64)>,
}

/// The digest of names encoded as `runs` of fields (in order), `count` in all, keyed with
/// [`SEED`]. The same names in the same order give the same digest however the runs fall.
fn names_digest<'a>(runs: impl IntoIterator<Item = &'a [u8]>, count: u64) -> u128 {
    let mut hasher = Xxh3::with_seed(*SEED);
    for run in runs {
        hasher.update(run);
    }
    hasher.update(&count.to_le_bytes());
    hasher.digest128()
}

impl MessageDecoder for SotwDecoder {
    type Item = SotwRequest;

    fn decode(&mut self, message: Bytes) -> Result<SotwRequest, Status> {
        self.decode_bytes(message)
    }
}

impl SotwDecoder {
    pub(crate) fn decode_bytes(&mut self, bytes: Bytes) -> Result<SotwRequest, Status> {
        if let Some(request) = self.repeated(&bytes) {
            return Ok(request);
        }
        // Every field but the names is kept for prost; the names are remembered as runs of
        // consecutive fields (an encoder writes a repeated field in one run), not one by one:
        // an ACK of a large mesh repeats thousands.
        let mut rest = Vec::with_capacity(256);
        let mut runs: Vec<Range<usize>> = Vec::new();
        let (mut count, mut sum) = (0u64, 0u128);
        let walked = walk_fields(&bytes, |field| {
            if field.tag == RESOURCE_NAMES && field.wire_type == WireType::LengthDelimited {
                let name = bytes.get(field.payload)?;
                if !is_utf8(name) {
                    return None;
                }
                count += 1;
                sum = sum.wrapping_add(key_digest(name));
                match runs.last_mut() {
                    Some(run) if run.end == field.span.start => run.end = field.span.end,
                    _ => runs.push(field.span),
                }
            } else {
                rest.extend_from_slice(bytes.get(field.span)?);
            }
            Some(())
        });
        if walked.is_none() {
            // Not a well-formed message: prost says why.
            return DiscoveryRequest::decode(bytes)
                .map(SotwRequest::from)
                .map_err(invalid);
        }
        let request = DiscoveryRequest::decode(rest.as_slice()).map_err(invalid)?;
        // The walk found every run within `bytes`.
        let run_bytes = |run: &Range<usize>| bytes.get(run.clone()).unwrap_or_default();
        // The names as encoded, lengths included, then their count: one call per run.
        let digest = names_digest(runs.iter().map(run_bytes), count);
        // Only the types Sluice serves are remembered.
        if let Some(t) = ResourceType::from_type_url(&request.type_url) {
            if self.previous[t.index()].map(|p| p.digest) == Some(digest) {
                return Ok(SotwRequest {
                    request,
                    names: Names::AsBefore,
                });
            }
            let run = match runs.as_slice() {
                [run] => Some((run.len(), count)),
                _ => None,
            };
            self.previous[t.index()] = Some(Previous { digest, run });
        }
        let names = NameList {
            names: InPlace {
                message: bytes,
                tag: RESOURCE_NAMES,
                count: usize::try_from(count).unwrap_or(usize::MAX),
            },
            sum,
        };
        Ok(SotwRequest {
            request,
            names: Names::Listed(names),
        })
    }

    /// A request repeating, in one run of fields, the names the previous request of its type
    /// had in one run (an ACK): the run is recognised by its length and digest where the
    /// first name starts, not walked name by name. `None` when that is not the case (or the
    /// bytes are not well formed); the full decode then decides.
    fn repeated(&self, bytes: &[u8]) -> Option<SotwRequest> {
        // The fields before the first name.
        let mut before = Vec::with_capacity(256);
        let mut first_name = None;
        let walked = walk_fields(bytes, |field| {
            if field.tag == RESOURCE_NAMES {
                first_name = Some(field.span.start);
                return None;
            }
            before.extend_from_slice(bytes.get(field.span)?);
            Some(())
        });
        let start = match (walked, first_name) {
            (None, Some(start)) => start,
            _ => return None,
        };
        for (t, previous) in ResourceType::ALL.into_iter().zip(self.previous.iter()) {
            let Some(Previous {
                digest,
                run: Some((len, count)),
            }) = *previous
            else {
                continue;
            };
            let Some(run) = bytes.get(start..start.checked_add(len)?) else {
                continue;
            };
            if names_digest([run], count) != digest {
                continue;
            }
            // The same names; every field after them must be another field.
            let after = bytes.get(start + len..)?;
            let mut rest = before.clone();
            walk_fields(after, |field| {
                if field.tag == RESOURCE_NAMES {
                    return None;
                }
                rest.extend_from_slice(after.get(field.span)?);
                Some(())
            })?;
            let request = DiscoveryRequest::decode(rest.as_slice()).ok()?;
            if request.type_url == t.type_url() {
                return Some(SotwRequest {
                    request,
                    names: Names::AsBefore,
                });
            }
        }
        None
    }
}

/// A delta request, with its subscribed names and declared pairs taken out of `request`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeltaRequest {
    /// The request; `resource_names_subscribe` and `initial_resource_versions` are always
    /// empty.
    pub request: DeltaDiscoveryRequest,
    /// `resource_names_subscribe`.
    pub subscribe: NameList,
    /// `initial_resource_versions`.
    pub declared: Declared,
}

impl From<DeltaDiscoveryRequest> for DeltaRequest {
    /// The names and pairs are put on the wire as an encoder would, then read as those of a
    /// decoded request are.
    fn from(mut request: DeltaDiscoveryRequest) -> Self {
        use prost::encoding::{hash_map, string};
        let mut wire = Vec::new();
        for name in std::mem::take(&mut request.resource_names_subscribe) {
            string::encode(RESOURCE_NAMES_SUBSCRIBE, &name, &mut wire);
        }
        hash_map::encode(
            string::encode,
            string::encoded_len,
            string::encode,
            string::encoded_len,
            INITIAL_RESOURCE_VERSIONS,
            &std::mem::take(&mut request.initial_resource_versions),
            &mut wire,
        );
        let (_, subscribe, declared) = split_delta(&Bytes::from(wire)).unwrap_or_default();
        DeltaRequest {
            request,
            subscribe,
            declared,
        }
    }
}

/// The values of the length-delimited fields `tag` of an encoded message, read where they lie:
/// the message's bytes are shared, not copied. Checked when the message was decoded.
#[derive(Clone, Default)]
struct InPlace {
    message: Bytes,
    tag: u32,
    count: usize,
}

impl InPlace {
    fn values(&self) -> impl Iterator<Item = &[u8]> {
        let tag = self.tag;
        Fields::new(&self.message)
            .filter(move |field| field.tag == tag && field.wire_type == WireType::LengthDelimited)
            .map(|field| self.message.get(field.payload).unwrap_or_default())
    }
}

/// A string checked to be UTF-8 when its message was decoded.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// Whether `bytes` are UTF-8, answered at once for ASCII.
fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// The names of a delta request's `resource_names_subscribe` or a SotW request's
/// `resource_names`, in the order sent, with the wrapping sum of their [`key_digest`]s: a
/// client subscribing to exactly the names of a snapshot's map has that map's count and sum.
#[derive(Clone, Default)]
pub struct NameList {
    names: InPlace,
    sum: u128,
}

impl NameList {
    /// The fields `tag` of `message`, known to be well-formed UTF-8 strings.
    fn of(message: Bytes, tag: u32) -> NameList {
        let mut names = InPlace {
            message,
            tag,
            count: 0,
        };
        let (count, sum) = (names.values()).fold((0, 0u128), |(count, sum), name| {
            (count + 1, sum.wrapping_add(key_digest(name)))
        });
        names.count = count;
        NameList { names, sum }
    }

    /// The number of names sent (a name sent twice counts twice).
    pub fn len(&self) -> usize {
        self.names.count
    }

    pub fn is_empty(&self) -> bool {
        self.names.count == 0
    }

    /// The wrapping sum of the names' digests.
    pub fn sum(&self) -> u128 {
        self.sum
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.values().map(text)
    }
}

impl PartialEq for NameList {
    fn eq(&self, other: &Self) -> bool {
        self.sum == other.sum && self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for NameList {}

impl std::fmt::Debug for NameList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The (name, version) pairs of a delta request's `initial_resource_versions`, in the order
/// sent, with their number and the wrapping sum of their [`entry_digest`]s: a client declaring
/// exactly a snapshot's map has that map's count and sum.
#[derive(Clone, Default)]
pub struct Declared {
    entries: InPlace,
    sum: u128,
}

impl Declared {
    /// The number of pairs sent (a name sent twice counts twice; the later pair is the one in
    /// force, as in a protobuf map).
    pub fn len(&self) -> usize {
        self.entries.count
    }

    pub fn is_empty(&self) -> bool {
        self.entries.count == 0
    }

    /// The wrapping sum of the pairs' digests.
    pub fn sum(&self) -> u128 {
        self.sum
    }

    /// The pairs, in the order sent.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        (self.entries.values())
            .map(|entry| map_entry(entry).map_or(("", ""), |(n, v)| (text(n), text(v))))
    }
}

impl PartialEq for Declared {
    fn eq(&self, other: &Self) -> bool {
        self.sum == other.sum && self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Declared {}

impl std::fmt::Debug for Declared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The name and version of one map entry of `initial_resource_versions` (a message of its
/// own: the key is field 1, the value field 2, both optional (empty when absent), the last
/// occurrence winning, other fields skipped); `None` if it is not as prost would accept it,
/// UTF-8 aside.
fn map_entry(entry: &[u8]) -> Option<(&[u8], &[u8])> {
    // As encoders write it, with both strings under 128 bytes: key, then value, each a
    // one-byte tag and a one-byte length. Read in place; anything else takes the walk.
    if let [0x0a, name_len, rest @ ..] = entry {
        if let Some((name, [0x12, version_len, version @ ..])) =
            rest.split_at_checked(usize::from(*name_len))
        {
            if *name_len < 0x80 && *version_len < 0x80 && version.len() == usize::from(*version_len)
            {
                return Some((name, version));
            }
        }
    }
    let (mut name, mut version): (&[u8], &[u8]) = (&[], &[]);
    walk_fields(entry, |field| {
        match (field.tag, field.wire_type) {
            (1, WireType::LengthDelimited) => name = entry.get(field.payload)?,
            (2, WireType::LengthDelimited) => version = entry.get(field.payload)?,
            (1 | 2, _) => return None,
            _ => {}
        }
        Some(())
    })?;
    Some((name, version))
}

/// Reads a delta request in one pass: every field but the subscribed names and the declared
/// pairs is copied out for prost; those are checked, counted and summed where they lie, with
/// no copy or allocation per name (a reconnecting client declares thousands per type). `None`
/// when something is not as prost would accept it.
fn split_delta(bytes: &Bytes) -> Option<(Vec<u8>, NameList, Declared)> {
    let mut rest = Vec::with_capacity(256);
    let (mut names, mut names_sum) = (0, 0u128);
    let (mut pairs, mut pairs_sum) = (0, 0u128);
    walk_fields(bytes, |field| {
        match (field.tag, field.wire_type) {
            (RESOURCE_NAMES_SUBSCRIBE, WireType::LengthDelimited) => {
                let name = bytes.get(field.payload)?;
                if !is_utf8(name) {
                    return None;
                }
                names += 1;
                names_sum = names_sum.wrapping_add(key_digest(name));
            }
            (INITIAL_RESOURCE_VERSIONS, WireType::LengthDelimited) => {
                let entry = bytes.get(field.payload)?;
                let (name, version) = map_entry(entry)?;
                // An entry all ASCII (lengths and keys included) holds ASCII strings.
                if !(entry.is_ascii() || is_utf8(name) && is_utf8(version)) {
                    return None;
                }
                pairs += 1;
                pairs_sum = pairs_sum.wrapping_add(entry_digest(name, version));
            }
            _ => rest.extend_from_slice(bytes.get(field.span)?),
        }
        Some(())
    })?;
    let in_place = |tag, count| InPlace {
        message: bytes.clone(),
        tag,
        count,
    };
    let subscribe = NameList {
        names: in_place(RESOURCE_NAMES_SUBSCRIBE, names),
        sum: names_sum,
    };
    let declared = Declared {
        entries: in_place(INITIAL_RESOURCE_VERSIONS, pairs),
        sum: pairs_sum,
    };
    Some((rest, subscribe, declared))
}

/// The decoder of delta requests.
#[derive(Default)]
pub struct DeltaDecoder;

impl MessageDecoder for DeltaDecoder {
    type Item = DeltaRequest;

    fn decode(&mut self, bytes: Bytes) -> Result<DeltaRequest, Status> {
        let Some((rest, subscribe, declared)) = split_delta(&bytes) else {
            // Not well formed as read here: prost decides, and says why if it refuses.
            return DeltaDiscoveryRequest::decode(bytes)
                .map(DeltaRequest::from)
                .map_err(invalid);
        };
        let request = DeltaDiscoveryRequest::decode(rest.as_slice()).map_err(invalid)?;
        Ok(DeltaRequest {
            request,
            subscribe,
            declared,
        })
    }
}

/// One top-level field of an encoded message.
struct Field {
    tag: u32,
    wire_type: WireType,
    /// The whole field: key, length and payload.
    span: Range<usize>,
    /// The value; for a length-delimited field, without its length.
    payload: Range<usize>,
}

/// The top-level fields of an encoded message, in order, up to the first one that is not well
/// formed (groups included), after which `malformed` is set.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
    malformed: bool,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields {
            bytes,
            at: 0,
            malformed: false,
        }
    }

    fn read(&mut self) -> Option<Field> {
        let start = self.at;
        let mut buf = self.bytes.get(start..)?;
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        let len = match wire_type {
            WireType::Varint => {
                decode_varint(&mut buf).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => usize::try_from(decode_varint(&mut buf).ok()?).ok()?,
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        if buf.len() < len {
            return None;
        }
        let payload_start = self.bytes.len() - buf.len();
        let end = payload_start + len;
        self.at = end;
        Some(Field {
            tag,
            wire_type,
            span: start..end,
            payload: payload_start..end,
        })
    }
}

impl Iterator for Fields<'_> {
    type Item = Field;

    fn next(&mut self) -> Option<Field> {
        if self.at >= self.bytes.len() {
            return None;
        }
        let field = self.read();
        if field.is_none() {
            self.malformed = true;
            self.at = self.bytes.len();
        }
        field
    }
}

/// Calls `each` with every top-level field of `bytes`, in order; `None` when the encoding is not
/// well formed (groups included) or `each` returns `None`.
fn walk_fields(bytes: &[u8], mut each: impl FnMut(Field) -> Option<()>) -> Option<()> {
    let mut fields = Fields::new(bytes);
    for field in &mut fields {
        each(field)?;
    }
    (!fields.malformed).then_some(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

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

        // The ACK repeats the names: everything else is decoded, the names are not (and not
        // even walked one by one: the run is recognised where it starts).
        let ack = request(eds, &["a", "b"], "n1");
        assert!(decoder.repeated(&ack.encode_to_vec()).is_some());
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
        assert!(matches!(
            decode(&mut decoder, &other).names,
            Names::Listed(_)
        ));

        // Different names, fewer names, no names: decoded.
        for names in [&["a", "c"][..], &["a"], &[]] {
            let changed = request(eds, names, "n2");
            assert_eq!(decode(&mut decoder, &changed), SotwRequest::from(changed));
        }
        // Names split differently into entries ("ab" against "a", "b") are not the same.
        let joined = request(eds, &["ab"], "n3");
        assert!(matches!(
            decode(&mut decoder, &joined).names,
            Names::Listed(_)
        ));
        let split = request(eds, &["a", "b"], "n4");
        assert!(matches!(
            decode(&mut decoder, &split).names,
            Names::Listed(_)
        ));

        // Types Sluice does not serve are always decoded and never remembered.
        for i in 0..3 {
            let unknown = request(&format!("type.example/T{}", i % 2), &["a"], "");
            assert!(matches!(
                decode(&mut decoder, &unknown).names,
                Names::Listed(_)
            ));
        }
        assert_eq!(
            decoder.previous.iter().flatten().count(),
            2,
            "EDS and RDS only"
        );

        // Names interleaved with other fields (runs of names apart) read as prost reads them,
        // and are the same names as the same names written in one run.
        let mut interleaved = Vec::new();
        let name = |tag: u32, value: &str, out: &mut Vec<u8>| {
            prost::encoding::string::encode(tag, &value.to_string(), out)
        };
        name(3, "x", &mut interleaved);
        name(4, eds, &mut interleaved);
        name(3, "y", &mut interleaved);
        name(5, "n5", &mut interleaved);
        name(3, "z", &mut interleaved);
        let mut decoder = SotwDecoder::default();
        let decoded = decoder
            .decode_bytes(Bytes::from(interleaved.clone()))
            .expect("decodes");
        let prost = DiscoveryRequest::decode(interleaved.as_slice()).expect("prost decodes");
        assert_eq!(prost.resource_names, ["x", "y", "z"]);
        assert_eq!(decoded, SotwRequest::from(prost));
        let mut together = DiscoveryRequest {
            type_url: eds.into(),
            resource_names: vec!["x".into(), "y".into(), "z".into()],
            response_nonce: "n6".into(),
            ..Default::default()
        };
        assert_eq!(decode(&mut decoder, &together).names, Names::AsBefore);
        together.resource_names.push("w".into());
        assert!(matches!(
            decode(&mut decoder, &together).names,
            Names::Listed(_)
        ));
    }

    fn delta_decode(bytes: Vec<u8>) -> Result<DeltaRequest, Status> {
        DeltaDecoder.decode(Bytes::from(bytes))
    }

    /// The pairs as prost's map holds them: the later of two pairs of one name wins.
    fn as_map(declared: &Declared) -> HashMap<String, String> {
        declared
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// One map entry of `initial_resource_versions`, encoded field by field.
    fn entry(fields: &[(u32, &[u8])]) -> Vec<u8> {
        let mut entry = Vec::new();
        for (tag, value) in fields {
            prost::encoding::bytes::encode(*tag, &value.to_vec(), &mut entry);
        }
        let mut field = Vec::new();
        prost::encoding::bytes::encode(INITIAL_RESOURCE_VERSIONS, &entry, &mut field);
        field
    }

    #[test]
    fn a_reconnects_names_and_pairs_are_read_where_they_lie_in_the_message() {
        let request = DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            resource_names_subscribe: (0..50).map(|i| format!("svc-{i:04}")).collect(),
            initial_resource_versions: (0..50)
                .map(|i| (format!("svc-{i:04}"), format!("v{i}")))
                .collect(),
            ..Default::default()
        };
        let message = Bytes::from(request.encode_to_vec());
        let decoded = DeltaDecoder.decode(message.clone()).expect("decodes");
        let within = |text: &str| message.as_ptr_range().contains(&text.as_ptr());
        assert_eq!(decoded.subscribe.len(), 50);
        assert!(decoded.subscribe.iter().all(within), "a name was copied");
        assert_eq!(decoded.declared.len(), 50);
        assert!(
            (decoded.declared.iter()).all(|(name, version)| within(name) && within(version)),
            "a pair was copied"
        );
        // The request itself holds the message, not a copy of it.
        drop(decoded);
        assert!(message.is_unique(), "the message outlived its request");
    }

    #[test]
    fn a_sotw_requests_names_are_read_where_they_lie_in_the_message() {
        let names: Vec<String> = (0..50).map(|i| format!("svc-{i:04}")).collect();
        let request = DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            resource_names: names.clone(),
            ..Default::default()
        };
        let message = Bytes::from(request.encode_to_vec());
        let decoded = (SotwDecoder::default().decode_bytes(message.clone())).expect("decodes");
        let Names::Listed(listed) = &decoded.names else {
            panic!("a first request's names are listed");
        };
        let within = |text: &str| message.as_ptr_range().contains(&text.as_ptr());
        assert!(listed.iter().eq(names.iter().map(String::as_str)));
        assert!(listed.iter().all(within), "a name was copied");
        assert!(decoded.request.resource_names.is_empty());
        drop(decoded);
        assert!(message.is_unique(), "the message outlived its request");
    }

    #[test]
    fn delta_requests_decode_as_prost_decodes_them_with_the_pairs_kept_as_text_and_a_sum() {
        let request = DeltaDiscoveryRequest {
            node: Some(Node {
                id: "sidecar".into(),
                ..Default::default()
            }),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            resource_names_subscribe: vec!["a".into(), "ü".into()],
            resource_names_unsubscribe: vec!["z".into()],
            initial_resource_versions: HashMap::from([
                ("a".to_string(), "1".to_string()),
                ("ü".to_string(), "ß".to_string()),
                ("".to_string(), "".to_string()),
                ("c".to_string(), String::new()),
            ]),
            response_nonce: "n7".into(),
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        let decoded = delta_decode(bytes.clone()).expect("decodes");
        let prost = DeltaDiscoveryRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(
            decoded.request,
            DeltaDiscoveryRequest {
                resource_names_subscribe: Vec::new(),
                initial_resource_versions: HashMap::new(),
                ..prost.clone()
            }
        );
        assert_eq!(
            decoded.subscribe.iter().collect::<Vec<_>>(),
            prost.resource_names_subscribe
        );
        assert_eq!(decoded.subscribe.len(), 2);
        let key_sum = (prost.resource_names_subscribe.iter())
            .fold(0u128, |s, n| s.wrapping_add(key_digest(n)));
        assert_eq!(decoded.subscribe.sum(), key_sum);
        assert_eq!(as_map(&decoded.declared), prost.initial_resource_versions);
        assert_eq!(decoded.declared.len(), 4);
        let sum = (prost.initial_resource_versions.iter())
            .fold(0u128, |s, (n, v)| s.wrapping_add(entry_digest(n, v)));
        assert_eq!(decoded.declared.sum(), sum);
        // The conversion the tests use gives the same pairs and sum.
        let converted = DeltaRequest::from(prost);
        assert_eq!(as_map(&converted.declared), as_map(&decoded.declared));
        assert_eq!(converted.declared.sum(), sum);
        assert_eq!(converted.subscribe, decoded.subscribe);
        assert_eq!(converted.request, decoded.request);

        // Map entries as other encoders may write them: fields in either order or missing,
        // repeated (the last wins), unknown fields inside, entries between other fields.
        let mut bytes = entry(&[(2, b"v1"), (1, b"x")]);
        bytes.extend(entry(&[(1, b"only-a-name")]));
        bytes.extend(entry(&[(2, b"only-a-version")]));
        prost::encoding::string::encode(6, &"nonce".to_string(), &mut bytes);
        bytes.extend(entry(&[(1, b"y"), (1, b"w"), (2, b"v2"), (9, b"unknown")]));
        bytes.extend(entry(&[(1, b"x"), (2, b"v3")]));
        let decoded = delta_decode(bytes.clone()).expect("decodes");
        let prost = DeltaDiscoveryRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(as_map(&decoded.declared), prost.initial_resource_versions);
        assert_eq!(decoded.request.response_nonce, "nonce");
        assert_eq!(
            decoded.declared.iter().collect::<Vec<_>>(),
            [
                ("x", "v1"),
                ("only-a-name", ""),
                ("", "only-a-version"),
                ("w", "v2"),
                ("x", "v3")
            ]
        );
    }

    #[test]
    fn malformed_delta_requests_are_refused_as_prost_refuses_them() {
        let name = |bytes: &[u8]| {
            let mut field = Vec::new();
            prost::encoding::bytes::encode(RESOURCE_NAMES_SUBSCRIBE, &bytes.to_vec(), &mut field);
            field
        };
        let cases: [(&str, Vec<u8>); 7] = [
            ("a subscribed name that is not UTF-8", name(&[b'a', 0xff])),
            ("a subscribed name cut short", {
                let mut field = name(b"abc");
                field.pop();
                field
            }),
            (
                "a name that is not UTF-8",
                entry(&[(1, &[0xff, 0xfe]), (2, b"1")]),
            ),
            (
                "a version that is not UTF-8",
                entry(&[(1, b"a"), (2, &[0xc3])]),
            ),
            ("a name of the wrong wire type", {
                let mut inner = Vec::new();
                prost::encoding::uint64::encode(1, &7, &mut inner);
                let mut field = Vec::new();
                prost::encoding::bytes::encode(INITIAL_RESOURCE_VERSIONS, &inner, &mut field);
                field
            }),
            ("an entry cut short", {
                let mut field = entry(&[(1, b"abc")]);
                field[3] += 1;
                field
            }),
            ("a message cut inside an entry", {
                let mut field = entry(&[(1, b"abc"), (2, b"1")]);
                field.pop();
                field
            }),
        ];
        for (case, bytes) in cases {
            let ours = delta_decode(bytes.clone()).expect_err(case);
            let prost = DeltaDiscoveryRequest::decode(bytes.as_slice()).expect_err(case);
            assert_eq!(ours.message(), prost.to_string(), "{case}");
        }
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

#[cfg(test)]
mod proptests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::rpc;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            "[a-c]{1,3}",
            "outbound\\|80\\|\\|[a-z]{1,8}\\.svc",
            "\\PC{0,6}",
        ]
    }

    fn delta_request() -> impl Strategy<Value = DeltaDiscoveryRequest> {
        (
            proptest::collection::vec(text(), 0..6),
            proptest::collection::vec(text(), 0..3),
            proptest::collection::hash_map(text(), text(), 0..6),
            text(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(subscribe, unsubscribe, declared, nonce, node, nack)| {
                DeltaDiscoveryRequest {
                    node: node.then(|| Node {
                        id: "sidecar".into(),
                        ..Default::default()
                    }),
                    type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    initial_resource_versions: declared,
                    response_nonce: nonce,
                    error_detail: nack.then(|| rpc::Status {
                        code: 3,
                        message: "rejected".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
    }

    /// (type index, names, nonce, names written in two runs, damages).
    fn sotw_request() -> impl Strategy<Value = (usize, Vec<String>, String, bool, Vec<Damage>)> {
        let name = prop_oneof![Just("a"), Just("b"), Just("outbound|80||x.svc")];
        (
            0..3usize,
            proptest::collection::vec(name.prop_map(String::from), 0..4),
            text(),
            any::<bool>(),
            proptest::collection::vec(prop_oneof![8 => Just(Damage::None), 1 => damage()], 0..2),
        )
    }

    /// A SotW request as Envoy encodes it (fields in number order), or with the names in two
    /// runs around the type URL.
    fn sotw_bytes(type_url: &str, names: &[String], nonce: &str, split: bool) -> Vec<u8> {
        use prost::encoding::string;
        let mut out = Vec::new();
        string::encode(1, &"v1".to_string(), &mut out);
        let (first, second) = names.split_at(if split { names.len() / 2 } else { names.len() });
        string::encode_repeated(3, first, &mut out);
        string::encode(4, &type_url.to_string(), &mut out);
        string::encode_repeated(3, second, &mut out);
        string::encode(5, &nonce.to_string(), &mut out);
        out
    }

    /// What a client or the network may do to a well-formed request.
    #[derive(Clone, Debug)]
    enum Damage {
        None,
        Cut(usize),
        Flip(usize, u8),
        Insert(usize, u8),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            Just(Damage::None),
            any::<usize>().prop_map(Damage::Cut),
            (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Damage::Flip(at, bits)),
            (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Damage::Insert(at, byte)),
        ]
    }

    fn damaged(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
        // Often a key: field 1 to 15 of any wire type.
        let key = |byte: u8| {
            if byte.is_multiple_of(2) {
                (byte >> 1) & 0x7f
            } else {
                byte
            }
        };
        let len = bytes.len().max(1);
        match *damage {
            Damage::None => {}
            Damage::Cut(at) => bytes.truncate(at % len),
            Damage::Flip(at, bits) => {
                if let Some(byte) = bytes.get_mut(at % len) {
                    *byte ^= bits;
                }
            }
            Damage::Insert(at, byte) => bytes.insert(at % (bytes.len() + 1), key(byte)),
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever the bytes, the decoders never panic, refuse exactly what prost refuses,
        /// and read what prost reads.
        #[test]
        fn decoders_read_any_bytes_as_prost_does(
            request in delta_request(),
            damages in proptest::collection::vec(damage(), 0..4),
        ) {
            let bytes = damages.iter().fold(request.encode_to_vec(), damaged);
            let ours = DeltaDecoder.decode(Bytes::from(bytes.clone()));
            match DeltaDiscoveryRequest::decode(bytes.as_slice()) {
                Err(_) => {
                    // Refused as prost refuses it; the reason may differ in its last words
                    // (the fields around a damaged one are decoded apart).
                    let ours = ours.expect_err("prost refuses it");
                    prop_assert!(ours.message().starts_with("failed to decode Protobuf message"));
                }
                Ok(prost) => {
                    let ours = ours.expect("prost reads it");
                    prop_assert_eq!(
                        ours.subscribe.iter().collect::<Vec<_>>(),
                        prost.resource_names_subscribe.clone()
                    );
                    let declared: HashMap<String, String> = (ours.declared.iter())
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect();
                    prop_assert_eq!(&declared, &prost.initial_resource_versions);
                    prop_assert_eq!(ours.request, DeltaDiscoveryRequest {
                        resource_names_subscribe: Vec::new(),
                        initial_resource_versions: HashMap::new(),
                        ..prost
                    });
                }
            }

            // The same bytes read as a SotW request by a fresh decoder.
            let ours = SotwDecoder::default().decode_bytes(Bytes::from(bytes.clone()));
            match DiscoveryRequest::decode(bytes.as_slice()) {
                Err(_) => prop_assert!(ours.is_err()),
                Ok(prost) => prop_assert_eq!(ours.expect("prost reads it"), SotwRequest::from(prost)),
            }
        }

        /// One stream's decoder over a sequence of requests: what prost reads, with the names
        /// left out exactly when they are those of the previous request of a served type.
        #[test]
        fn a_sotw_decoder_leaves_out_exactly_the_names_its_type_had_before(
            requests in proptest::collection::vec(sotw_request(), 1..12),
        ) {
            let types = [
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
                "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                "type.example/Unknown",
            ];
            let mut decoder = SotwDecoder::default();
            let mut before: HashMap<&str, Vec<String>> = HashMap::new();
            for (t, names, nonce, split, damages) in requests {
                let type_url = types[t];
                let bytes = damages.iter().fold(sotw_bytes(type_url, &names, &nonce, split), damaged);
                let ours = decoder.decode_bytes(Bytes::from(bytes.clone()));
                let prost = match DiscoveryRequest::decode(bytes.as_slice()) {
                    Err(_) => {
                        prop_assert!(ours.is_err());
                        continue;
                    }
                    Ok(prost) => prost,
                };
                let ours = ours.expect("prost reads it");
                let served = ResourceType::from_type_url(&prost.type_url).is_some();
                let type_url = prost.type_url.clone();
                if served && before.get(type_url.as_str()) == Some(&prost.resource_names) {
                    prop_assert_eq!(ours, SotwRequest {
                        request: DiscoveryRequest { resource_names: Vec::new(), ..prost },
                        names: Names::AsBefore,
                    });
                } else {
                    if served {
                        let known = types.iter().find(|t| **t == type_url).copied();
                        if let Some(known) = known {
                            before.insert(known, prost.resource_names.clone());
                        }
                    }
                    prop_assert_eq!(ours, SotwRequest::from(prost));
                }
            }
        }
    }
}
