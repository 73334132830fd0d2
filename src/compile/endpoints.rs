//! Endpoints of each served Service port, as one `ClusterLoadAssignment` per cluster.
//!
//! Two sources, merged: connected sidecars (a [`Workload`] in the Service's namespace whose
//! labels contain the Service's non-empty selector, at the port's numeric `targetPort`), and
//! EndpointSlices labelled `kubernetes.io/service-name` (every address of every ready endpoint,
//! at the slice port named like the Service port). Endpoints are grouped by locality
//! (region, zone); localities and addresses are sorted, so equal inputs give equal bytes.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use envoy_types::pb::envoy::config::core::v3::{Address, Locality, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};

use super::findings::Findings;
use super::origin;
use super::services::{PortEntry, ServiceEntry, ServiceIndex};
use crate::manifest::model::{EndpointSlice, SERVICE_NAME_LABEL};
use crate::manifest::{Object, ObjectKey, Revision};
use crate::registry::{Workload, Workloads};

/// (region, zone); empty strings when unknown.
type LocalityKey = (String, String);

/// Per cluster name: its assignment and the manifest positions it came from.
#[cfg(test)]
pub(crate) type Assignments = BTreeMap<String, (ClusterLoadAssignment, Vec<String>)>;

/// One EndpointSlice's ready endpoints, parsed once.
struct Slice<'a> {
    object: &'a Object<EndpointSlice>,
    /// Ready addresses with their zone.
    addresses: Vec<(IpAddr, Option<String>)>,
}

/// The revision's part of every served port's endpoints: what does not depend on which sidecars
/// are connected. Built once per revision; [`EndpointPlan::assignments`] adds the sidecars.
#[derive(Clone, Debug, Default)]
pub(crate) struct EndpointPlan {
    ports: Vec<Arc<PortPlan>>,
}

#[derive(Clone, Debug)]
pub(crate) struct PortPlan {
    cluster: String,
    namespace: String,
    /// Non-empty selector, with the numeric target port sidecars serve on; `None` when only
    /// EndpointSlices give this port endpoints.
    selector: Option<(BTreeMap<String, String>, u16)>,
    /// Endpoints from EndpointSlices.
    slice_addresses: BTreeMap<SocketAddr, LocalityKey>,
    /// The Service and the EndpointSlices used, as `file:line`, sorted.
    origins: Vec<String>,
}

impl EndpointPlan {
    pub(crate) fn build(
        revision: &Revision,
        services: &ServiceIndex,
        findings: &mut Findings,
    ) -> EndpointPlan {
        let slices = index_slices(revision, services, findings);
        let mut ports = Vec::new();
        for service in services.services.values() {
            let own_slices = slices.get(&service.key).map(Vec::as_slice).unwrap_or(&[]);
            let mut used_slices = BTreeSet::new();
            for port in service.served_ports() {
                let mut slice_addresses = BTreeMap::new();
                let mut origins = vec![origin(&service.pos)];
                for slice in own_slices {
                    let Some(slice_port) = slice_port_for(service, port, &slice.object.value)
                    else {
                        continue;
                    };
                    used_slices.insert(slice.object.key.clone());
                    origins.push(origin(&slice.object.pos));
                    for (ip, zone) in &slice.addresses {
                        slice_addresses
                            .entry(SocketAddr::new(*ip, slice_port))
                            .or_insert_with(|| (String::new(), zone.clone().unwrap_or_default()));
                    }
                }
                origins.sort();
                origins.dedup();
                ports.push(Arc::new(PortPlan {
                    cluster: port.cluster.clone(),
                    namespace: service.key.namespace.clone(),
                    selector: port
                        .target_port
                        .filter(|_| !service.selector.is_empty())
                        .map(|target| (service.selector.clone(), target)),
                    slice_addresses,
                    origins,
                }));
            }
            for slice in own_slices {
                if !used_slices.contains(&slice.object.key)
                    && service.served_ports().next().is_some()
                {
                    findings.warning(
                        &slice.object.pos,
                        format!(
                            "EndpointSlice {}: none of its ports is named like an HTTP port of \
                             Service {}, so its endpoints are not used",
                            slice.object.key, service.key
                        ),
                    );
                }
            }
        }
        EndpointPlan { ports }
    }

    /// The plans of several parts as one.
    pub(crate) fn merge<'p>(plans: impl Iterator<Item = &'p EndpointPlan>) -> EndpointPlan {
        EndpointPlan {
            ports: plans.flat_map(|plan| plan.ports.iter().cloned()).collect(),
        }
    }

    /// The plan without `cluster`'s endpoints (for testing the consistency check).
    #[cfg(test)]
    pub(crate) fn without(&self, cluster: &str) -> EndpointPlan {
        let mut plan = self.clone();
        plan.ports.retain(|p| p.cluster != cluster);
        plan
    }

    /// Every EDS cluster's name, in order.
    pub(crate) fn clusters(&self) -> impl Iterator<Item = &str> {
        self.ports.iter().map(|p| p.cluster.as_str())
    }

    /// Every served port's plan, each shared with the compiled part it came from.
    pub(crate) fn ports(&self) -> &[Arc<PortPlan>] {
        &self.ports
    }

    /// The assignments with `workloads` connected.
    #[cfg(test)]
    pub(crate) fn assignments(&self, workloads: &Workloads) -> Assignments {
        let index = WorkloadIndex::new(workloads);
        self.ports
            .iter()
            .map(|port| (port.cluster.clone(), port.assignment(&index)))
            .collect()
    }
}

/// Workloads by (namespace, label), so each port looks only at the workloads carrying the first
/// label of its selector: the cost grows with Services plus workloads, not with their product.
pub(crate) struct WorkloadIndex<'w> {
    by_label: HashMap<(&'w str, &'w str, &'w str), Vec<&'w Workload>>,
}

impl<'w> WorkloadIndex<'w> {
    pub(crate) fn new(workloads: &'w Workloads) -> WorkloadIndex<'w> {
        WorkloadIndex::of(workloads.by_node.values().map(|w| &**w))
    }

    /// The workloads that differ between two sets: both versions of every node added, removed
    /// or changed (a node keeping its shared workload is unchanged). A port that selects none
    /// of them has the same endpoints with either set.
    pub(crate) fn changed(before: &'w Workloads, after: &'w Workloads) -> WorkloadIndex<'w> {
        let mut changed: Vec<&Workload> = Vec::new();
        let mut before = before.by_node.iter().peekable();
        let mut after = after.by_node.iter().peekable();
        loop {
            let order = match (before.peek(), after.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((b, _)), Some((a, _))) => b.cmp(a),
            };
            match order {
                Ordering::Less => changed.extend(before.next().map(|(_, w)| &**w)),
                Ordering::Greater => changed.extend(after.next().map(|(_, w)| &**w)),
                Ordering::Equal => {
                    if let (Some((_, b)), Some((_, a))) = (before.next(), after.next()) {
                        if !Arc::ptr_eq(b, a) {
                            changed.extend([&**b, &**a]);
                        }
                    }
                }
            }
        }
        WorkloadIndex::of(changed)
    }

    fn of(workloads: impl IntoIterator<Item = &'w Workload>) -> WorkloadIndex<'w> {
        let mut by_label: HashMap<(&str, &str, &str), Vec<&Workload>> = HashMap::new();
        for workload in workloads {
            for (k, v) in &workload.node.labels {
                by_label
                    .entry((workload.node.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(workload);
            }
        }
        WorkloadIndex { by_label }
    }
}

impl PortPlan {
    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    /// This port's assignment with the indexed workloads, and where it came from.
    pub(crate) fn assignment(
        &self,
        index: &WorkloadIndex<'_>,
    ) -> (ClusterLoadAssignment, Vec<String>) {
        let mut by_address: BTreeMap<SocketAddr, LocalityKey> = BTreeMap::new();
        if let Some((_, target)) = &self.selector {
            for workload in self.selected(index) {
                by_address
                    .entry(SocketAddr::new(workload.address, *target))
                    .or_insert_with(|| {
                        (
                            workload.node.region.clone().unwrap_or_default(),
                            workload.node.zone.clone().unwrap_or_default(),
                        )
                    });
            }
        }
        for (address, locality) in &self.slice_addresses {
            by_address
                .entry(*address)
                .or_insert_with(|| locality.clone());
        }
        (
            to_assignment(&self.cluster, by_address),
            self.origins.clone(),
        )
    }

    /// Whether this port's endpoints depend on any of the indexed workloads.
    pub(crate) fn selects_any(&self, index: &WorkloadIndex<'_>) -> bool {
        self.selected(index).next().is_some()
    }

    /// The indexed workloads this port's selector picks, in index order.
    fn selected<'i>(&'i self, index: &'i WorkloadIndex<'_>) -> impl Iterator<Item = &'i Workload> {
        let candidates = self.selector.as_ref().and_then(|(selector, _)| {
            let (k, v) = selector.iter().next()?;
            let found = index
                .by_label
                .get(&(self.namespace.as_str(), k.as_str(), v.as_str()))?;
            Some((selector, found))
        });
        candidates.into_iter().flat_map(move |(selector, found)| {
            found
                .iter()
                .copied()
                .filter(move |workload| selects(&self.namespace, selector, workload))
        })
    }
}

fn selects(namespace: &str, selector: &BTreeMap<String, String>, workload: &Workload) -> bool {
    workload.node.namespace == namespace
        && selector
            .iter()
            .all(|(k, v)| workload.node.labels.get(k) == Some(v))
}

/// The slice port that serves `port`: the one with the same name (no name equals no name), or,
/// when both the Service and the slice have a single port, that one.
fn slice_port_for(service: &ServiceEntry, port: &PortEntry, slice: &EndpointSlice) -> Option<u16> {
    let named = slice
        .ports
        .iter()
        .find(|p| p.name.as_deref().unwrap_or_default() == port.name);
    match named {
        Some(p) => Some(p.port),
        None if slice.ports.len() == 1 && service.ports.len() == 1 => {
            slice.ports.first().map(|p| p.port)
        }
        None => None,
    }
}

/// Validates every EndpointSlice and groups the usable ones by their Service.
fn index_slices<'a>(
    revision: &'a Revision,
    services: &ServiceIndex,
    findings: &mut Findings,
) -> BTreeMap<ObjectKey, Vec<Slice<'a>>> {
    let mut slices: BTreeMap<ObjectKey, Vec<Slice<'a>>> = BTreeMap::new();
    for (key, object) in &revision.endpoint_slices {
        let slice = &object.value;
        let what = format!("EndpointSlice {key}");
        let want_v6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            other => {
                findings.error(
                    &object.pos,
                    format!(
                        "{what}: addressType {other:?} is not supported; Envoy endpoints need \
                         IP addresses (IPv4 or IPv6)"
                    ),
                );
                continue;
            }
        };
        let mut addresses = Vec::new();
        for (i, endpoint) in slice.endpoints.iter().enumerate() {
            for (j, text) in endpoint.addresses.iter().enumerate() {
                match text.parse::<IpAddr>() {
                    Ok(ip) if ip.is_ipv6() == want_v6 => {
                        if endpoint.conditions.ready.unwrap_or(true) {
                            addresses.push((ip, endpoint.zone.clone()));
                        }
                    }
                    Ok(_) => findings.error(
                        &endpoint.pos,
                        format!(
                            "{what}: endpoints[{i}].addresses[{j}]: {text:?} is not an {} \
                             address, as addressType says",
                            slice.address_type
                        ),
                    ),
                    Err(_) => findings.error(
                        &endpoint.pos,
                        format!(
                            "{what}: endpoints[{i}].addresses[{j}]: {text:?} is not an IP address"
                        ),
                    ),
                }
            }
        }
        for (i, port) in slice.ports.iter().enumerate() {
            if port.port == 0 {
                findings.error(
                    &object.pos,
                    format!("{what}: ports[{i}].port: 0 is not a valid port"),
                );
            }
        }
        let Some(service_name) = slice.metadata.labels.get(SERVICE_NAME_LABEL) else {
            findings.warning(
                &object.pos,
                format!(
                    "{what} has no {SERVICE_NAME_LABEL} label, so no Service uses its endpoints"
                ),
            );
            continue;
        };
        if services.get(&key.namespace, service_name).is_none() {
            findings.warning(
                &object.pos,
                format!(
                    "{what}: its {SERVICE_NAME_LABEL} label names Service {service_name:?}, \
                     which is not in namespace {:?}",
                    key.namespace
                ),
            );
            continue;
        }
        slices
            .entry(ObjectKey::new(key.namespace.clone(), service_name.clone()))
            .or_default()
            .push(Slice { object, addresses });
    }
    slices
}

fn to_assignment(
    cluster: &str,
    by_address: BTreeMap<SocketAddr, LocalityKey>,
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<LocalityKey, Vec<SocketAddr>> = BTreeMap::new();
    for (address, locality) in by_address {
        by_locality.entry(locality).or_default().push(address);
    }
    ClusterLoadAssignment {
        cluster_name: cluster.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|((region, zone), addresses)| LocalityLbEndpoints {
                locality: (!region.is_empty() || !zone.is_empty()).then(|| Locality {
                    region,
                    zone,
                    sub_zone: String::new(),
                }),
                lb_endpoints: addresses.into_iter().map(to_lb_endpoint).collect(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn to_lb_endpoint(address: SocketAddr) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
            address: Some(socket_address(address)),
            ..Default::default()
        })),
        ..Default::default()
    }
}

pub(crate) fn socket_address(address: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: Protocol::Tcp as i32,
            address: address.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(address.port()))),
            ..Default::default()
        })),
    }
}
