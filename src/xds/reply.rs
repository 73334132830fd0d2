//! The responses the state machines produce, and their protobuf encoding written by hand.
//!
//! A reply holds the `Arc<Resource>`s of the snapshot, not copies of their bytes, and a full
//! answer holds the snapshot's map of them itself ([`Resources::Map`]). The gRPC codec
//! ([`super::grpc`]) writes it as [`Pieces`]: the few fields before the resources, the
//! resources, and the fields after them. The resources of a large reply are encoded once for
//! every stream that sends the same list ([`shared_block`]): a thousand sidecars connecting
//! get their full CDS and EDS answers from one encoding, kept with the snapshot's map
//! ([`Encodings`]), which HTTP/2 writes to each socket without copying it again. Building a
//! prost `DiscoveryResponse` instead would copy every resource into the message first.
//!
//! The bytes are exactly what prost writes for the equivalent message ([`Reply::to_proto`]):
//! fields in tag order, proto3 defaults left out. The tests below hold the two encodings equal.

use std::cell::RefCell;
use std::collections::{btree_map, VecDeque};
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryResponse, Resource as DeltaResource,
};
use envoy_types::pb::google::protobuf::Any;
use prost::bytes::{BufMut, Bytes};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use super::resource::{Resource, ResourceMap, ResourceType};

/// A response the gRPC codec writes to the wire.
pub trait Reply: Send + 'static {
    /// The generated message with the same encoding.
    type Proto: prost::Message + Default;

    /// The encoded size, equal to `self.to_proto().encoded_len()`.
    fn encoded_len(&self) -> usize;

    /// Writes the protobuf encoding, byte for byte what `self.to_proto()` encodes to.
    fn encode_to(&self, buf: &mut impl BufMut);

    /// The encoding in three pieces whose concatenation is [`Reply::encode_to`]'s: the fields
    /// before the resources, the resources (shared between replies of the same list, see
    /// [`shared_block`]), the fields after them.
    fn pieces(&self) -> Pieces;

    /// The equivalent generated message. It copies every resource: for tests and tools, not for
    /// the stream path.
    fn to_proto(&self) -> Self::Proto;
}

/// A reply's encoding in the order it goes out (see [`Reply::pieces`]).
#[derive(Debug)]
pub struct Pieces {
    pub head: Vec<u8>,
    pub resources: Bytes,
    pub tail: Vec<u8>,
}

impl Pieces {
    pub fn len(&self) -> usize {
        self.head.len() + self.resources.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The resources of a reply, in the order they go on the wire. Two are equal when they hold
/// equal resources in the same order, listed or mapped.
#[derive(Clone, Debug)]
pub enum Resources {
    /// Listed one by one: a change, or what a client lacks of a type.
    List(Vec<Arc<Resource>>),
    /// Every resource of a map, in name order. A full answer carries the snapshot's own map:
    /// a sidecar connecting costs no list of every resource (12,000 in a mesh of 1,000
    /// Services), and every stream sending that map shares one encoding of it.
    Map(Arc<ResourceMap>),
}

impl Resources {
    pub fn len(&self) -> usize {
        match self {
            Resources::List(list) => list.len(),
            Resources::Map(map) => map.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> ResourcesIter<'_> {
        match self {
            Resources::List(list) => ResourcesIter::List(list.iter()),
            Resources::Map(map) => ResourcesIter::Map(map.values()),
        }
    }

    /// The very same resources (the same allocations) in the same order.
    fn same_as(&self, other: &Resources) -> bool {
        if let (Resources::Map(a), Resources::Map(b)) = (self, other) {
            if Arc::ptr_eq(a, b) {
                return true;
            }
        }
        self.len() == other.len()
            && self
                .iter()
                .zip(other.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl PartialEq for Resources {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Resources {}

impl<'a> IntoIterator for &'a Resources {
    type Item = &'a Arc<Resource>;
    type IntoIter = ResourcesIter<'a>;

    fn into_iter(self) -> ResourcesIter<'a> {
        self.iter()
    }
}

/// The resources of a [`Resources`], in order.
pub enum ResourcesIter<'a> {
    List(std::slice::Iter<'a, Arc<Resource>>),
    Map(btree_map::Values<'a, String, Arc<Resource>>),
}

impl<'a> Iterator for ResourcesIter<'a> {
    type Item = &'a Arc<Resource>;

    fn next(&mut self) -> Option<&'a Arc<Resource>> {
        match self {
            ResourcesIter::List(list) => list.next(),
            ResourcesIter::Map(map) => map.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            ResourcesIter::List(list) => list.size_hint(),
            ResourcesIter::Map(map) => map.size_hint(),
        }
    }
}

impl ExactSizeIterator for ResourcesIter<'_> {}

impl From<Vec<Arc<Resource>>> for Resources {
    fn from(list: Vec<Arc<Resource>>) -> Self {
        Resources::List(list)
    }
}

impl FromIterator<Arc<Resource>> for Resources {
    fn from_iter<I: IntoIterator<Item = Arc<Resource>>>(resources: I) -> Self {
        Resources::List(resources.into_iter().collect())
    }
}

impl Default for Resources {
    fn default() -> Self {
        Resources::List(Vec::new())
    }
}

/// Replies with fewer resources are encoded for their stream alone: a change's few resources
/// cost less to encode than to look up.
const SHARED_FROM: usize = 16;
/// Encoded resource lists kept per thread for other streams: lists (and maps built for one
/// stream) that a snapshot's map does not keep the encoding of.
const SHARED_KEPT: usize = 8;

/// How the resources of a reply are laid out: each a `Resource` message (delta) or an `Any`
/// (state of the world).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Delta,
    Sotw,
}

/// A reply as its fields fall on the wire: those before the resources, the resources in
/// `LAYOUT`, those after. Both replies encode, whole or in [`Pieces`], through it.
trait Framed {
    const LAYOUT: Layout;

    fn resources(&self) -> &Resources;
    fn put_head(&self, buf: &mut impl BufMut);
    fn put_tail(&self, buf: &mut impl BufMut);

    fn encode_framed(&self, buf: &mut impl BufMut) {
        self.put_head(buf);
        for resource in self.resources() {
            put_resource(Self::LAYOUT, resource, buf);
        }
        self.put_tail(buf);
    }

    fn framed_pieces(&self) -> Pieces {
        let (mut head, mut tail) = (Vec::new(), Vec::new());
        self.put_head(&mut head);
        self.put_tail(&mut tail);
        Pieces {
            head,
            resources: shared_block(Self::LAYOUT, self.resources()),
            tail,
        }
    }
}

/// The encodings of a snapshot map's resources, one per layout, kept with the map
/// ([`ResourceMap::encodings`]): every stream sending the whole map, on any thread, shares the
/// one the first made. Sidecars connecting all get every resource of most types: kept per
/// thread instead, each thread made and held a copy of the mesh's encoding (2.7 MB for 1,000
/// Services).
#[derive(Debug, Default)]
pub struct Encodings {
    delta: OnceLock<Bytes>,
    sotw: OnceLock<Bytes>,
}

impl Encodings {
    fn of(&self, layout: Layout) -> &OnceLock<Bytes> {
        match layout {
            Layout::Delta => &self.delta,
            Layout::Sotw => &self.sotw,
        }
    }
}

type Kept = (Layout, Resources, Bytes);

thread_local! {
    /// Per thread, so streams served by one thread share without waiting on each other.
    static KEPT: RefCell<VecDeque<Kept>> = const { RefCell::new(VecDeque::new()) };
}

/// `resources` encoded as the repeated `resources` field of a response. A snapshot's map of
/// [`SHARED_FROM`] resources or more is encoded once, and the encoding kept with it
/// ([`Encodings`]). Any other list that long is encoded once per thread: a reply with the very
/// same resources (the same allocations, in the same order) gets the same bytes while they are
/// among the [`SHARED_KEPT`] last. The kept lists hold their resources alive, so an address
/// cannot be taken by another resource while it is kept.
fn shared_block(layout: Layout, resources: &Resources) -> Bytes {
    let encode = || {
        let mut block = Vec::with_capacity(block_len(layout, resources));
        for resource in resources {
            put_resource(layout, resource, &mut block);
        }
        Bytes::from(block)
    };
    if resources.len() < SHARED_FROM {
        return encode();
    }
    if let Resources::Map(map) = resources {
        if let Some(encodings) = map.encodings() {
            return encodings.of(layout).get_or_init(encode).clone();
        }
    }
    let same = |(kept_layout, kept, _): &&Kept| *kept_layout == layout && kept.same_as(resources);
    let found = KEPT.with_borrow(|kept| kept.iter().find(same).map(|(_, _, block)| block.clone()));
    if let Some(block) = found {
        return block;
    }
    let block = encode();
    KEPT.with_borrow_mut(|kept| {
        if kept.len() == SHARED_KEPT {
            kept.pop_front();
        }
        kept.push_back((layout, resources.clone(), block.clone()));
    });
    block
}

/// The size of `resources` as the repeated `resources` field: for a list long enough to be
/// shared, the size of its shared encoding (made now if it is not kept yet, for the reply to
/// use), so a thousand streams sending one list do not each walk its resources to size it.
fn resources_len(layout: Layout, resources: &Resources) -> usize {
    if resources.len() < SHARED_FROM {
        block_len(layout, resources)
    } else {
        shared_block(layout, resources).len()
    }
}

/// The size of `resources` as the repeated `resources` field, summed resource by resource.
fn block_len(layout: Layout, resources: &Resources) -> usize {
    let one = |resource: &Arc<Resource>| match layout {
        Layout::Delta => delimited_len(delta_response::RESOURCES, delta_resource_len(resource)),
        Layout::Sotw => delimited_len(sotw_response::RESOURCES, any_len(&resource.body)),
    };
    resources.iter().map(one).sum()
}

/// One element of the repeated `resources` field.
fn put_resource(layout: Layout, resource: &Resource, buf: &mut impl BufMut) {
    match layout {
        Layout::Delta => {
            put_header(delta_response::RESOURCES, delta_resource_len(resource), buf);
            put_string(delta_resource::VERSION, &resource.version, buf);
            // `resource` is a set message field: written even when the `Any` is empty.
            put_header(delta_resource::RESOURCE, any_len(&resource.body), buf);
            put_any(&resource.body, buf);
            put_string(delta_resource::NAME, &resource.name, buf);
        }
        Layout::Sotw => {
            put_header(sotw_response::RESOURCES, any_len(&resource.body), buf);
            put_any(&resource.body, buf);
        }
    }
}

/// A delta (`DeltaDiscoveryResponse`) reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaReply {
    /// `system_version_info`: see [`super::stream::response_version`].
    pub system_version_info: String,
    /// The reply's type; its `type_url` goes on the wire.
    pub resource_type: ResourceType,
    /// Resources added or changed, shared with the snapshot.
    pub resources: Resources,
    /// Names the client holds and should drop.
    pub removed_resources: Vec<String>,
    /// Fresh per response; the client's ACK or NACK names it.
    pub nonce: String,
}

/// A state-of-the-world (`DiscoveryResponse`) reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SotwReply {
    /// `version_info`: see [`super::stream::response_version`].
    pub version_info: String,
    /// The reply's type; its `type_url` goes on the wire.
    pub resource_type: ResourceType,
    /// Shared with the snapshot: for LDS, CDS and scoped RDS every resource the client should
    /// hold of the type; for EDS and RDS what it does not hold yet at the current version.
    pub resources: Resources,
    /// Fresh per response; the client's ACK or NACK names it.
    pub nonce: String,
}

/// Field numbers of `envoy.service.discovery.v3.DeltaDiscoveryResponse`.
mod delta_response {
    pub const SYSTEM_VERSION_INFO: u32 = 1;
    pub const RESOURCES: u32 = 2;
    pub const TYPE_URL: u32 = 4;
    pub const NONCE: u32 = 5;
    pub const REMOVED_RESOURCES: u32 = 6;
}

/// Field numbers of `envoy.service.discovery.v3.Resource`.
mod delta_resource {
    pub const VERSION: u32 = 1;
    pub const RESOURCE: u32 = 2;
    pub const NAME: u32 = 3;
}

/// Field numbers of `envoy.service.discovery.v3.DiscoveryResponse`.
mod sotw_response {
    pub const VERSION_INFO: u32 = 1;
    pub const RESOURCES: u32 = 2;
    pub const TYPE_URL: u32 = 4;
    pub const NONCE: u32 = 5;
}

/// Field numbers of `google.protobuf.Any`.
mod any {
    pub const TYPE_URL: u32 = 1;
    pub const VALUE: u32 = 2;
}

impl Reply for DeltaReply {
    type Proto = DeltaDiscoveryResponse;

    fn encoded_len(&self) -> usize {
        string_len(
            delta_response::SYSTEM_VERSION_INFO,
            &self.system_version_info,
        ) + resources_len(Layout::Delta, &self.resources)
            + string_len(delta_response::TYPE_URL, self.resource_type.type_url())
            + string_len(delta_response::NONCE, &self.nonce)
            + self
                .removed_resources
                .iter()
                .map(|name| delimited_len(delta_response::REMOVED_RESOURCES, name.len()))
                .sum::<usize>()
    }

    fn encode_to(&self, buf: &mut impl BufMut) {
        self.encode_framed(buf);
    }

    fn pieces(&self) -> Pieces {
        self.framed_pieces()
    }

    fn to_proto(&self) -> DeltaDiscoveryResponse {
        DeltaDiscoveryResponse {
            system_version_info: self.system_version_info.clone(),
            resources: self
                .resources
                .iter()
                .map(|r| DeltaResource {
                    name: r.name.clone(),
                    version: r.version.clone(),
                    resource: Some(r.body.clone()),
                    ..Default::default()
                })
                .collect(),
            type_url: self.resource_type.type_url().to_string(),
            removed_resources: self.removed_resources.clone(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl Framed for DeltaReply {
    const LAYOUT: Layout = Layout::Delta;

    fn resources(&self) -> &Resources {
        &self.resources
    }

    fn put_head(&self, buf: &mut impl BufMut) {
        put_string(
            delta_response::SYSTEM_VERSION_INFO,
            &self.system_version_info,
            buf,
        );
    }

    fn put_tail(&self, buf: &mut impl BufMut) {
        put_string(delta_response::TYPE_URL, self.resource_type.type_url(), buf);
        put_string(delta_response::NONCE, &self.nonce, buf);
        // A repeated string writes every element, empty ones included.
        for name in &self.removed_resources {
            put_header(delta_response::REMOVED_RESOURCES, name.len(), buf);
            buf.put_slice(name.as_bytes());
        }
    }
}

impl Reply for SotwReply {
    type Proto = DiscoveryResponse;

    fn encoded_len(&self) -> usize {
        string_len(sotw_response::VERSION_INFO, &self.version_info)
            + resources_len(Layout::Sotw, &self.resources)
            + string_len(sotw_response::TYPE_URL, self.resource_type.type_url())
            + string_len(sotw_response::NONCE, &self.nonce)
    }

    fn encode_to(&self, buf: &mut impl BufMut) {
        self.encode_framed(buf);
    }

    fn pieces(&self) -> Pieces {
        self.framed_pieces()
    }

    fn to_proto(&self) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: self.version_info.clone(),
            resources: self.resources.iter().map(|r| r.body.clone()).collect(),
            type_url: self.resource_type.type_url().to_string(),
            nonce: self.nonce.clone(),
            ..Default::default()
        }
    }
}

impl Framed for SotwReply {
    const LAYOUT: Layout = Layout::Sotw;

    fn resources(&self) -> &Resources {
        &self.resources
    }

    fn put_head(&self, buf: &mut impl BufMut) {
        put_string(sotw_response::VERSION_INFO, &self.version_info, buf);
    }

    fn put_tail(&self, buf: &mut impl BufMut) {
        put_string(sotw_response::TYPE_URL, self.resource_type.type_url(), buf);
        put_string(sotw_response::NONCE, &self.nonce, buf);
    }
}

/// The size of a `Resource` message of a delta response, without its own key and length.
fn delta_resource_len(resource: &Resource) -> usize {
    string_len(delta_resource::VERSION, &resource.version)
        + delimited_len(delta_resource::RESOURCE, any_len(&resource.body))
        + string_len(delta_resource::NAME, &resource.name)
}

/// The size of an `Any` message, without its own key and length.
fn any_len(body: &Any) -> usize {
    string_len(any::TYPE_URL, &body.type_url)
        + if body.value.is_empty() {
            0
        } else {
            delimited_len(any::VALUE, body.value.len())
        }
}

fn put_any(body: &Any, buf: &mut impl BufMut) {
    put_string(any::TYPE_URL, &body.type_url, buf);
    if !body.value.is_empty() {
        put_header(any::VALUE, body.value.len(), buf);
        buf.put_slice(&body.value);
    }
}

/// The size of a length-delimited field holding `len` bytes: key, length and payload.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The key and length of a length-delimited field; the caller writes the `len` bytes next.
fn put_header(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A singular proto3 string is left out when empty.
fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        delimited_len(tag, value.len())
    }
}

fn put_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_header(tag, value.len(), buf);
        buf.put_slice(value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, VirtualHost};
    use proptest::prelude::*;
    use prost::Message;

    use std::collections::BTreeMap;

    use super::*;
    use crate::xds::stream::testing::resource;

    /// The reply's own encoding is prost's, byte for byte, and its length is prost's.
    fn assert_encodes_like_prost<R: Reply>(reply: &R) {
        let expected = reply.to_proto().encode_to_vec();
        let mut got = Vec::new();
        reply.encode_to(&mut got);
        assert_eq!(got, expected);
        assert_eq!(reply.encoded_len(), expected.len());
        let pieces = reply.pieces();
        assert_eq!(pieces.len(), expected.len());
        assert_eq!(
            [&pieces.head[..], &pieces.resources, &pieces.tail].concat(),
            expected
        );
    }

    fn sotw(resources: Vec<Arc<Resource>>, version: &str, nonce: &str) -> SotwReply {
        SotwReply {
            version_info: version.into(),
            resource_type: ResourceType::Cluster,
            resources: resources.into(),
            nonce: nonce.into(),
        }
    }

    fn delta(
        resources: Vec<Arc<Resource>>,
        removed: &[&str],
        version: &str,
        nonce: &str,
    ) -> DeltaReply {
        DeltaReply {
            system_version_info: version.into(),
            resource_type: ResourceType::Route,
            resources: resources.into(),
            removed_resources: removed.iter().map(|n| n.to_string()).collect(),
            nonce: nonce.into(),
        }
    }

    /// `count` resources of type `t`, by name.
    fn entries(t: ResourceType, count: usize) -> BTreeMap<String, Arc<Resource>> {
        (0..count as u32)
            .map(|i| {
                let r = Arc::new(resource(t, &format!("r{i:02}"), i));
                (r.name.clone(), r)
            })
            .collect()
    }

    fn delta_of(resources: Resources) -> DeltaReply {
        DeltaReply {
            system_version_info: "v".into(),
            resource_type: ResourceType::Cluster,
            resources,
            removed_resources: vec!["gone".into()],
            nonce: "1".into(),
        }
    }

    fn sotw_of(resources: Resources) -> SotwReply {
        SotwReply {
            version_info: "v".into(),
            resource_type: ResourceType::Cluster,
            resources,
            nonce: "1".into(),
        }
    }

    /// A resource built by hand, so its name, version and `Any` can be anything, empty included.
    fn raw(name: &str, version: &str, type_url: &str, value: Vec<u8>) -> Arc<Resource> {
        Arc::new(Resource {
            name: name.into(),
            version: version.into(),
            body: Any {
                type_url: type_url.into(),
                value,
            },
            origins: Vec::new(),
        })
    }

    /// A full answer carries the snapshot's map: it encodes as the list of the map's resources
    /// in name order does, and every reply of that map, on any thread, gets the one encoding
    /// the map keeps.
    #[test]
    fn a_reply_of_a_map_encodes_as_its_list_and_shares_one_encoding() {
        let map = Arc::new(ResourceMap::shared(entries(
            ResourceType::Cluster,
            SHARED_FROM * 2,
        )));
        let list: Vec<Arc<Resource>> = map.values().cloned().collect();
        let by_map = Resources::Map(Arc::clone(&map));
        assert_eq!(by_map.len(), list.len());
        assert!(by_map.iter().eq(list.iter()));
        // The same resources in the same order are the same reply, mapped or listed.
        assert_eq!(delta_of(by_map.clone()), delta_of(list.clone().into()));
        assert_ne!(by_map, Resources::from(list[1..].to_vec()));
        for reply in [
            delta_of(by_map.clone()),
            delta_of(Resources::Map(Arc::default())),
        ] {
            assert_encodes_like_prost(&reply);
        }
        assert_encodes_like_prost(&sotw_of(by_map.clone()));
        assert_eq!(
            delta_of(by_map.clone()).to_proto(),
            delta_of(list.clone().into()).to_proto()
        );
        // Two streams sending the map share its bytes, whichever thread serves them.
        let first = delta_of(by_map.clone()).pieces().resources;
        let second = delta_of(Resources::Map(Arc::clone(&map)))
            .pieces()
            .resources;
        let elsewhere = std::thread::scope(|s| {
            s.spawn(|| {
                delta_of(Resources::Map(Arc::clone(&map)))
                    .pieces()
                    .resources
            })
            .join()
            .expect("the encoding thread finishes")
        });
        assert_eq!(first.as_ptr(), second.as_ptr());
        assert_eq!(first.as_ptr(), elsewhere.as_ptr());
        let kept = map.encodings().expect("a snapshot's map keeps encodings");
        assert_eq!(kept.of(Layout::Delta).get(), Some(&first));
        let sotw = sotw_of(by_map.clone()).pieces().resources;
        assert_eq!(kept.of(Layout::Sotw).get(), Some(&sotw));
        assert_ne!(sotw, first, "each layout has its own");
        // A list of the same resources is encoded to the same bytes, shared between lists on
        // the thread.
        let listed = delta_of(list.clone().into()).pieces().resources;
        assert_eq!(listed, first);
        let again = delta_of(list.into()).pieces().resources;
        assert_eq!(listed.as_ptr(), again.as_ptr());
    }

    /// A map built for one stream (a SotW subset) keeps no encoding of its own: only the few
    /// last ones per thread are kept. A snapshot's map changed in place by its last holder
    /// drops what it kept.
    #[test]
    fn only_a_snapshots_unchanged_map_keeps_its_encodings() {
        let entries = entries(ResourceType::Endpoint, SHARED_FROM);
        let own = Arc::new(ResourceMap::from(entries.clone()));
        let first = sotw_of(Resources::Map(Arc::clone(&own))).pieces().resources;
        assert!(own.encodings().is_none());
        let again = sotw_of(Resources::Map(Arc::clone(&own))).pieces().resources;
        assert_eq!(first.as_ptr(), again.as_ptr(), "kept on the thread");
        assert!(Arc::new(ResourceMap::clone(&own)).encodings().is_none());

        let mut shared = Arc::new(ResourceMap::shared(entries));
        let before = sotw_of(Resources::Map(Arc::clone(&shared)))
            .pieces()
            .resources;
        assert!(shared.encodings().is_some());
        assert!(
            ResourceMap::clone(&shared).encodings().is_none(),
            "a copy is one stream's"
        );
        let held = Arc::make_mut(&mut shared).edit();
        held.pop_first();
        assert!(shared.encodings().is_none());
        let after = sotw_of(Resources::Map(Arc::clone(&shared)))
            .pieces()
            .resources;
        assert_ne!(before, after);
        assert_encodes_like_prost(&sotw_of(Resources::Map(shared)));
    }

    #[test]
    fn table_of_replies_encodes_like_prost() {
        let cluster = Arc::new(resource(ResourceType::Cluster, "a", 0));
        let route = Arc::new(resource(ResourceType::Route, "ルート/ñ", 3));
        let empty_any = raw("", "", "", Vec::new());
        let value_only = raw("v", "1", "", vec![0, 1, 2]);
        let type_only = raw("t", "", ResourceType::Listener.type_url(), Vec::new());
        // Lengths past one and two varint bytes.
        let long = raw("long", "2", "x", vec![7; 200]);
        let longer = raw("longer", "3", "y", vec![9; 20_000]);
        let all = vec![
            cluster.clone(),
            route.clone(),
            empty_any.clone(),
            value_only.clone(),
            type_only.clone(),
            long.clone(),
            longer.clone(),
        ];

        for resources in [Vec::new(), vec![cluster], vec![empty_any], all.clone()] {
            for (version, nonce) in [("", ""), ("rev-abc", "1"), ("版本", "ノンス")] {
                assert_encodes_like_prost(&sotw(resources.clone(), version, nonce));
                for removed in [&[][..], &[""][..], &["gone", "", "消えた"][..]] {
                    assert_encodes_like_prost(&delta(resources.clone(), removed, version, nonce));
                }
            }
        }
        for t in ResourceType::ALL {
            let mut reply = delta(all.clone(), &["x"], "v", "n");
            reply.resource_type = t;
            assert_encodes_like_prost(&reply);
            let mut reply = sotw(all.clone(), "v", "n");
            reply.resource_type = t;
            assert_encodes_like_prost(&reply);
        }
    }

    #[test]
    fn a_large_route_configuration_encodes_like_prost() {
        // Past the 2 MiB of a three-byte varint length.
        let route = RouteConfiguration {
            name: "big".into(),
            virtual_hosts: (0..40_000)
                .map(|i| VirtualHost {
                    name: format!("host-{i:05}-padding-padding-padding"),
                    domains: vec![format!("host-{i}.example.com")],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let resource = Arc::new(Resource::new(ResourceType::Route, "big", &route));
        assert!(resource.body.value.len() > 2 << 20);
        assert_encodes_like_prost(&delta(vec![resource.clone()], &[], "v", "1"));
        let mut reply = sotw(vec![resource], "v", "1");
        reply.resource_type = ResourceType::Route;
        assert_encodes_like_prost(&reply);
    }

    /// The per-stream cost of a reply, the old way (a prost message holding a copy of every
    /// resource, then encoded) against the new (shared resources, encoded once into the buffer):
    /// `cargo test --release --lib reply_encoding_cost -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark; run in release"]
    fn reply_encoding_cost() {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster;
        use envoy_types::pb::envoy::config::route::v3::{route, route_action, Route, RouteAction};
        use envoy_types::pb::google::protobuf::Duration;
        use prost::bytes::BytesMut;
        use std::time::Instant;

        use crate::xds::resource::Snapshot;

        let routes = (0..7_000)
            .map(|i| Route {
                name: format!("route-{i}"),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(format!(
                        "outbound|8080||service-{i}.namespace.svc.cluster.local"
                    ))),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .collect();
        let big_route = RouteConfiguration {
            name: "big".into(),
            virtual_hosts: vec![VirtualHost {
                name: "all".into(),
                domains: vec!["*".into()],
                routes,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut items = vec![(
            ResourceType::Route,
            Resource::new(ResourceType::Route, "big", &big_route),
        )];
        for i in 0..2_000 {
            let name = format!("outbound|8080||service-{i}.namespace.svc.cluster.local");
            let cluster = Cluster {
                name: name.clone(),
                connect_timeout: Some(Duration {
                    seconds: 1,
                    nanos: 0,
                }),
                ..Default::default()
            };
            items.push((
                ResourceType::Cluster,
                Resource::new(ResourceType::Cluster, name, &cluster),
            ));
        }
        let snapshot = Snapshot::new("rev", items);
        let route = snapshot.resources(ResourceType::Route)["big"].clone();
        println!("route configuration: {} bytes", route.body.value.len());

        const ROUNDS: u32 = 1_000;
        const BATCHES: u32 = 10;
        let cases: [(&str, ResourceType); 2] = [
            ("one 500 KB route configuration", ResourceType::Route),
            ("2,000 clusters", ResourceType::Cluster),
        ];
        for (what, t) in cases {
            let resources: Vec<Arc<Resource>> = snapshot.resources(t).values().cloned().collect();
            let sotw_reply = || SotwReply {
                version_info: "rev-0123456789abcdef".into(),
                resource_type: t,
                resources: resources.clone().into(),
                nonce: "42".into(),
            };
            let delta_reply = || DeltaReply {
                system_version_info: "rev-0123456789abcdef".into(),
                resource_type: t,
                resources: resources.clone().into(),
                removed_resources: Vec::new(),
                nonce: "42".into(),
            };
            let mut sink = 0usize;
            // The best of several batches, so other work on the machine counts less.
            let mut time = |label: &str, f: &mut dyn FnMut() -> usize| {
                let per = (0..BATCHES)
                    .map(|_| {
                        let start = Instant::now();
                        for _ in 0..ROUNDS / BATCHES {
                            sink = sink.wrapping_add(std::hint::black_box(f()));
                        }
                        start.elapsed() / (ROUNDS / BATCHES)
                    })
                    .min()
                    .unwrap_or_default();
                println!("{what:>32} {label:<22} {per:>10.1?} per reply");
            };
            time("sotw, prost message", &mut || {
                sotw_reply().to_proto().encode_to_vec().len()
            });
            time("sotw, encode_to", &mut || {
                let reply = sotw_reply();
                let mut buf = BytesMut::with_capacity(reply.encoded_len());
                reply.encode_to(&mut buf);
                buf.len()
            });
            time("delta, prost message", &mut || {
                delta_reply().to_proto().encode_to_vec().len()
            });
            time("delta, encode_to", &mut || {
                let reply = delta_reply();
                let mut buf = BytesMut::with_capacity(reply.encoded_len());
                reply.encode_to(&mut buf);
                buf.len()
            });
            assert!(sink > 0);
        }
    }

    #[test]
    fn replies_of_the_same_long_list_share_its_encoding() {
        let t = ResourceType::Cluster;
        let list: Vec<Arc<Resource>> = (0..SHARED_FROM)
            .map(|i| Arc::new(resource(t, &format!("c{i}"), 0)))
            .collect();
        let block = |reply: &dyn Fn(Vec<Arc<Resource>>) -> Pieces, list: &[Arc<Resource>]| {
            reply(list.to_vec()).resources
        };
        let as_delta = |list| delta(list, &[], "v1", "n1").pieces();
        let as_sotw = |list| sotw(list, "v1", "n2").pieces();
        for reply in [&as_delta as &dyn Fn(_) -> Pieces, &as_sotw] {
            let first = block(reply, &list);
            // Another stream, another nonce: the same bytes, not a copy.
            assert_eq!(block(reply, &list).as_ptr(), first.as_ptr());
            // One resource in another allocation, even of equal content: encoded afresh.
            let mut other = list.clone();
            other[3] = Arc::new(resource(t, "c3", 0));
            let again = block(reply, &other);
            assert_ne!(again.as_ptr(), first.as_ptr());
            assert_eq!(again, first);
            // Short lists are encoded for their stream alone.
            let short = &list[..SHARED_FROM - 1];
            assert_ne!(block(reply, short).as_ptr(), block(reply, short).as_ptr());
        }
        // Delta and SotW lay the same list out differently.
        assert_ne!(block(&as_delta, &list), block(&as_sotw, &list));
    }

    fn arb_resource() -> impl Strategy<Value = Arc<Resource>> {
        (
            any::<String>(),
            any::<String>(),
            any::<String>(),
            prop_oneof![
                Just(0usize),
                1usize..130,
                16_380usize..16_390,
                100_000usize..200_000
            ],
        )
            .prop_map(|(name, version, type_url, len)| {
                let value = (0..len).map(|i| i as u8).collect();
                raw(&name, &version, &type_url, value)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_replies_encode_like_prost(
            resources in proptest::collection::vec(arb_resource(), 0..20),
            removed in proptest::collection::vec(any::<String>(), 0..6),
            version in any::<String>(),
            nonce in any::<String>(),
            t in 0usize..4,
        ) {
            let resource_type = ResourceType::ALL[t];
            assert_encodes_like_prost(&DeltaReply {
                system_version_info: version.clone(),
                resource_type,
                resources: resources.clone().into(),
                removed_resources: removed,
                nonce: nonce.clone(),
            });
            assert_encodes_like_prost(&SotwReply {
                version_info: version,
                resource_type,
                resources: resources.into(),
                nonce,
            });
        }
    }
}
