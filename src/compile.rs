//! The compiler: pure functions from a validated revision, the sidecar workloads and one node's
//! configuration key to the Envoy resources that node receives.
//!
//! [`compile_mesh`] does all the work that can fail, once per (revision, workloads): it indexes
//! the Services, builds one EDS cluster and one `ClusterLoadAssignment` per HTTP/gRPC Service
//! port, and compiles every HTTPRoute and GRPCRoute rule into per-Service-port route tables,
//! already ordered by Gateway API precedence. It then checks the result is consistent (every
//! cluster a route names exists and has endpoints). Building the snapshot of one sidecar later
//! ([`Mesh::snapshot_for_key`]) is mechanical and cannot fail: it picks, per Service port, the
//! producer or consumer table that applies to the sidecar's namespace and writes the domains.
//!
//! The compile works part by part ([`Revision::parts`]: objects that name each other), and no
//! part looks at another, so [`compile_revision_cached`] compiles only the parts a change
//! touched and takes every other part's resources, the same allocations, from the previous
//! revision; [`CompiledRevision::mesh_after`] does the same for endpoints.
//!
//! # Names
//! - Cluster (and its `ClusterLoadAssignment`): `outbound|PORT||NAME.NS.svc.cluster.local`,
//!   as Istio names them, so dashboards and habits carry over ([`cluster_name`]).
//! - Listener: [`LISTENER_NAME`], with an HTTP connection manager whose routes are scoped per
//!   Service port ([`SCOPED_ROUTES_NAME`]; see the `listener` module).
//! - Scope, route configuration and its one virtual host: `NAME.NS:PORT`, and `passthrough`,
//!   which sends requests addressed to an `IP:PORT` to that address through the `ORIGINAL_DST`
//!   cluster [`PASSTHROUGH_CLUSTER`] (see the `passthrough` module).
//! - Route: `NS/ROUTE/rule-I[/match-J]` (or the rule's `name` instead of `rule-I`).

mod endpoints;
mod filters;
mod findings;
mod listener;
mod matches;
mod passthrough;
mod routes;
mod services;
mod timeouts;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::Route;

use crate::manifest::{Diagnostic, PartMemo, Pos, Revision};
use crate::node::{ConfigKey, NodeInfo};
use crate::registry::Workloads;
use crate::xds::resource::{Resource, ResourceType, Snapshot, SnapshotView, TypeResources};

use findings::Findings;
pub use passthrough::PASSTHROUGH_CLUSTER;
use routes::RouteTables;
use services::ServiceIndex;

/// The name of every sidecar's outbound HTTP listener.
pub const LISTENER_NAME: &str = "sluice_outbound";
/// The name of the outbound listener's scoped routes (Envoy groups scopes by it in its dumps).
pub const SCOPED_ROUTES_NAME: &str = "sluice_outbound";
pub use listener::{PASSTHROUGH_SCOPE, SCOPE_HEADER};

/// The cluster (and `ClusterLoadAssignment`) name of one Service port.
pub fn cluster_name(name: &str, namespace: &str, port: u16) -> String {
    format!("outbound|{port}||{name}.{namespace}.svc.cluster.local")
}

/// The revision's part of a compile: everything but the endpoints of connected sidecars.
/// Built once per revision; a change of sidecars only re-runs [`CompiledRevision::mesh`].
pub struct CompiledRevision {
    revision: String,
    /// CDS resources, the same for every sidecar.
    clusters: TypeResources,
    endpoints: endpoints::EndpointPlan,
    /// One scope per HTTP/gRPC Service port, and the passthrough scope; the same for every
    /// sidecar.
    scopes: TypeResources,
    /// The route configuration of each scope as clients without consumer routes see it.
    routes: TypeResources,
    /// Per client namespace with consumer routes, its route configurations: those above with
    /// every port of each Service those routes attach to replaced.
    consumer_routes: HashMap<String, TypeResources>,
    warnings: Vec<Diagnostic>,
}

impl fmt::Debug for CompiledRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledRevision")
            .field("revision", &self.revision)
            .field("clusters", &self.clusters.resources().len())
            .field("scopes", &self.scopes.resources().len())
            .field("warnings", &self.warnings.len())
            .finish()
    }
}

impl CompiledRevision {
    /// The source revision (commit SHA or directory digest) this was compiled from.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Findings that did not refuse the revision (a route attached to a Gateway, a GRPCRoute
    /// that shadows an HTTPRoute, ...). The revision's own load warnings are not repeated here.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// The mesh with `workloads` connected: this revision plus their endpoints. Cannot fail.
    pub fn mesh(self: &Arc<Self>, workloads: &Workloads) -> Mesh {
        self.build_mesh(workloads, None, None)
    }

    /// [`CompiledRevision::mesh`], reusing the endpoints `previous` built for every port plan
    /// it shares with this revision (the unchanged parts) whose endpoints the workloads that
    /// changed since `previous` (if any) do not select.
    pub fn mesh_after(
        self: &Arc<Self>,
        workloads: &Arc<Workloads>,
        previous: Option<&Mesh>,
    ) -> Mesh {
        let reusable = previous.and_then(|previous| {
            let built_with = previous.workloads.as_ref()?;
            let changed = (!Arc::ptr_eq(built_with, workloads))
                .then(|| endpoints::WorkloadIndex::changed(built_with, workloads));
            Some((previous, changed))
        });
        self.build_mesh(workloads, Some(workloads.clone()), reusable)
    }

    /// `reusable`: a mesh built with other (or the same, `None`) workloads, whose endpoints are
    /// reused for the port plans it shares with this one that select no changed workload, and
    /// kept as the map when all are equal.
    fn build_mesh(
        self: &Arc<Self>,
        workloads: &Workloads,
        identity: Option<Arc<Workloads>>,
        reusable: Option<(&Mesh, Option<endpoints::WorkloadIndex<'_>>)>,
    ) -> Mesh {
        let mut index = None;
        let ports = self.endpoints.ports();
        let mut by_plan = HashMap::with_capacity(ports.len());
        let mut reused_all = true;
        let resources: Vec<Arc<Resource>> = ports
            .iter()
            .map(|port| {
                let plan = Arc::as_ptr(port) as usize;
                // A plan the previous mesh built, selecting none of the changed workloads.
                let reused = reusable.as_ref().and_then(|(built, changed)| {
                    let resource = built.by_plan.get(&plan)?;
                    let moved = changed.as_ref().is_some_and(|c| port.selects_any(c));
                    (!moved).then(|| resource.clone())
                });
                reused_all &= reused.is_some();
                let resource = reused.unwrap_or_else(|| {
                    let index =
                        index.get_or_insert_with(|| endpoints::WorkloadIndex::new(workloads));
                    let (assignment, origins) = port.assignment(index);
                    Arc::new(
                        Resource::new(ResourceType::Endpoint, port.cluster(), &assignment)
                            .with_origins(origins),
                    )
                });
                by_plan.insert(plan, resource.clone());
                resource
            })
            .collect();
        let previous = reusable.map(|(built, _)| built);
        // Every plan of the previous mesh and no other, each with its resource: its endpoints.
        let endpoints = match previous {
            Some(built)
                if reused_all
                    && by_plan.len() == ports.len()
                    && by_plan.len() == built.by_plan.len() =>
            {
                built.endpoints.clone()
            }
            _ => TypeResources::new_or_previous(resources, previous.map(|built| &built.endpoints)),
        };
        Mesh {
            compiled: self.clone(),
            endpoints,
            workloads: identity,
            by_plan,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

/// One compiled revision with the endpoints of the sidecars connected at the time: everything
/// needed to build any sidecar's snapshot without failing. Immutable once built; snapshots are
/// built on first use per [`ConfigKey`] and cached.
pub struct Mesh {
    compiled: Arc<CompiledRevision>,
    /// EDS resources, the same for every sidecar.
    endpoints: TypeResources,
    /// The workloads the endpoints were computed with, when known as a shared set.
    workloads: Option<Arc<Workloads>>,
    /// Each EDS resource by the address of the port plan it was built from (plans are kept
    /// alive by `compiled`), for the next mesh to reuse.
    by_plan: HashMap<usize, Arc<Resource>>,
    /// Built snapshots per configuration key. Filled outside the lock, so two sidecars with the
    /// same new key may both build it; the first one stored wins and both get equal content.
    cache: Mutex<HashMap<ConfigKey, Arc<Snapshot>>>,
}

impl fmt::Debug for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Mesh")
            .field("compiled", &self.compiled)
            .field("endpoints", &self.endpoints.resources().len())
            .field("cached_snapshots", &cached)
            .finish()
    }
}

impl Mesh {
    /// The source revision (commit SHA or directory digest) this mesh was compiled from.
    pub fn revision(&self) -> &str {
        &self.compiled.revision
    }

    /// See [`CompiledRevision::warnings`].
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.compiled.warnings
    }

    /// The revision part this mesh was built from.
    pub fn compiled(&self) -> &Arc<CompiledRevision> {
        &self.compiled
    }

    /// Same revision and same endpoints: every sidecar's snapshot would be identical, so there
    /// is nothing to publish.
    pub fn serves_the_same_as(&self, other: &Mesh) -> bool {
        Arc::ptr_eq(&self.compiled, &other.compiled)
            && self.endpoints.version() == other.endpoints.version()
    }

    /// The snapshot of every sidecar whose configuration key is `key`.
    pub fn snapshot_for_key(&self, key: &ConfigKey) -> Arc<Snapshot> {
        if let Some(found) = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return found.clone();
        }
        let built = Arc::new(self.build_snapshot(key));
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_insert(built)
            .clone()
    }

    fn build_snapshot(&self, key: &ConfigKey) -> Snapshot {
        let compiled = &self.compiled;
        let listener = TypeResources::new([Arc::new(listener::to_listener(key))]);
        let routes = compiled
            .consumer_routes
            .get(&key.namespace)
            .unwrap_or(&compiled.routes);
        // In `ResourceType::ALL` order; everything but the listener is shared with other keys.
        Snapshot::from_types(
            compiled.revision.clone(),
            [
                compiled.clusters.clone(),
                self.endpoints.clone(),
                listener,
                compiled.scopes.clone(),
                routes.clone(),
            ],
        )
    }
}

impl SnapshotView for Mesh {
    fn snapshot_for(&self, node: &NodeInfo) -> Arc<Snapshot> {
        self.snapshot_for_key(&node.config_key())
    }
}

/// Compiles the revision part: Services, clusters, route tables and the EndpointSlice part of
/// the endpoints. Returns every error found (and the warnings beside them).
pub fn compile_revision(
    revision_id: &str,
    revision: &Revision,
) -> Result<Arc<CompiledRevision>, Vec<Diagnostic>> {
    compile_revision_cached(revision_id, revision, &mut CompileCache::default())
}

/// What the compiles of earlier revisions made of each part of them (see
/// [`Revision::parts`]): a revision that changes one Service's files compiles that Service's
/// part and reuses the rest.
#[derive(Default)]
pub struct CompileCache {
    parts: PartMemo<Arc<CompiledPart>>,
    /// The last revision compiled without errors: its per-type maps are kept for types whose
    /// resources did not change.
    last: Option<Arc<CompiledRevision>>,
}

impl CompileCache {
    /// Parts compiled (not reused) since the cache was created.
    pub fn parts_compiled(&self) -> usize {
        self.parts.made()
    }
}

/// [`compile_revision`], compiling only the parts of `revision` that `cache` has not seen in
/// the previous revision. The result is exactly what [`compile_revision`] returns.
pub fn compile_revision_cached(
    revision_id: &str,
    revision: &Revision,
    cache: &mut CompileCache,
) -> Result<Arc<CompiledRevision>, Vec<Diagnostic>> {
    let parts: Vec<Arc<CompiledPart>> = revision
        .parts()
        .iter()
        .map(|part| {
            cache
                .parts
                .get_or_make(part, |part| Arc::new(compile_part(part)))
        })
        .collect();
    cache.parts.sweep();
    let compiled = assemble(revision_id, &parts, cache.last.as_deref())?;
    cache.last = Some(compiled.clone());
    Ok(compiled)
}

/// What one part of a revision compiles to; parts never look at each other.
#[derive(Default)]
struct CompiledPart {
    clusters: Vec<Arc<Resource>>,
    endpoints: endpoints::EndpointPlan,
    scopes: Vec<Arc<Resource>>,
    /// The route configuration of each scope, as clients without consumer routes see it.
    routes: Vec<Arc<Resource>>,
    /// Per client namespace with consumer routes, the route configurations they replace.
    consumer_routes: Vec<(String, Vec<Arc<Resource>>)>,
    /// Errors (the part compiled to nothing) and warnings.
    findings: Findings,
}

fn compile_part(revision: &Revision) -> CompiledPart {
    let mut findings = Findings::default();
    let services = ServiceIndex::build(revision, &mut findings);
    let endpoints = endpoints::EndpointPlan::build(revision, &services, &mut findings);
    let tables = routes::compile_routes(revision, &services, &mut findings);
    if !findings.errors.is_empty() {
        return CompiledPart {
            findings,
            ..CompiledPart::default()
        };
    }

    let mut clusters = Vec::new();
    for service in services.services.values() {
        for port in service.served_ports() {
            let cluster = services::to_cluster(port);
            clusters.push(Arc::new(
                Resource::new(ResourceType::Cluster, &port.cluster, &cluster)
                    .with_origins(vec![origin(&service.pos)]),
            ));
        }
    }
    let vhosts = listener::vhost_sources(&services);
    check_consistency(&clusters, &endpoints, &vhosts, &tables, &mut findings);
    if !findings.errors.is_empty() {
        return CompiledPart {
            findings,
            ..CompiledPart::default()
        };
    }

    let mut scopes = Vec::with_capacity(vhosts.len());
    let mut routes = Vec::with_capacity(vhosts.len());
    for source in &vhosts {
        let table = tables.producer_routes(&source.service, source.port);
        scopes.push(Arc::new(listener::to_scope(
            &source.scope_name(),
            vec![source.origin.clone()],
        )));
        routes.push(Arc::new(listener::to_route_configuration(source, table)));
    }
    let consumer_routes = tables
        .consumer
        .iter()
        .map(|(namespace, services)| {
            let replaced = vhosts
                .iter()
                .filter(|source| {
                    source.service.namespace != *namespace && services.contains_key(&source.service)
                })
                .map(|source| {
                    let table = tables.for_clients(namespace, &source.service, source.port);
                    Arc::new(listener::to_route_configuration(source, table))
                })
                .collect();
            (namespace.clone(), replaced)
        })
        .collect();
    CompiledPart {
        clusters,
        endpoints,
        scopes,
        routes,
        consumer_routes,
        findings,
    }
}

/// The resources of the passthrough, the same in every revision: built once.
struct Passthrough {
    cluster: Arc<Resource>,
    scope: Arc<Resource>,
    routes: Arc<Resource>,
}

static PASSTHROUGH: LazyLock<Passthrough> = LazyLock::new(|| Passthrough {
    cluster: Arc::new(Resource::new(
        ResourceType::Cluster,
        PASSTHROUGH_CLUSTER,
        &passthrough::to_passthrough_cluster(),
    )),
    scope: Arc::new(listener::to_scope(PASSTHROUGH_SCOPE, Vec::new())),
    routes: Arc::new(listener::to_passthrough_route_configuration()),
});

/// The revision from its compiled parts, or every error and warning of them all. A type whose
/// resources equal `previous`'s keeps `previous`'s map.
fn assemble(
    revision_id: &str,
    parts: &[Arc<CompiledPart>],
    previous: Option<&CompiledRevision>,
) -> Result<Arc<CompiledRevision>, Vec<Diagnostic>> {
    let findings = parts.iter().map(|part| &part.findings);
    if findings.clone().any(|f| !f.errors.is_empty()) {
        let mut all: Vec<Diagnostic> = findings
            .flat_map(|f| f.errors.iter().chain(&f.warnings))
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        return Err(all);
    }
    let mut warnings: Vec<Diagnostic> = findings.flat_map(|f| f.warnings.clone()).collect();
    warnings.sort();
    warnings.dedup();

    let clusters = parts.iter().flat_map(|part| part.clusters.iter().cloned());
    let scopes = parts.iter().flat_map(|part| part.scopes.iter().cloned());
    let routes = parts.iter().flat_map(|part| part.routes.iter().cloned());
    let routes = TypeResources::new_or_previous(
        routes.chain([PASSTHROUGH.routes.clone()]),
        previous.map(|p| &p.routes),
    );

    let mut replaced: BTreeMap<&str, Vec<Arc<Resource>>> = BTreeMap::new();
    for part in parts {
        for (namespace, resources) in &part.consumer_routes {
            replaced
                .entry(namespace)
                .or_default()
                .extend(resources.iter().cloned());
        }
    }
    let consumer_routes = replaced
        .into_iter()
        .map(|(namespace, resources)| (namespace.to_string(), routes.with(resources)))
        .collect();

    Ok(Arc::new(CompiledRevision {
        revision: revision_id.to_string(),
        clusters: TypeResources::new_or_previous(
            clusters.chain([PASSTHROUGH.cluster.clone()]),
            previous.map(|p| &p.clusters),
        ),
        endpoints: endpoints::EndpointPlan::merge(parts.iter().map(|part| &part.endpoints)),
        scopes: TypeResources::new_or_previous(
            scopes.chain([PASSTHROUGH.scope.clone()]),
            previous.map(|p| &p.scopes),
        ),
        routes,
        consumer_routes,
        warnings,
    }))
}

/// Compiles one revision with the current sidecar workloads: [`compile_revision`], then
/// [`CompiledRevision::mesh`].
pub fn compile_mesh(
    revision_id: &str,
    revision: &Revision,
    workloads: &Workloads,
) -> Result<Mesh, Vec<Diagnostic>> {
    Ok(compile_revision(revision_id, revision)?.mesh(workloads))
}

/// `file:line` of a manifest position, as resources carry it in their `origins`.
fn origin(pos: &Pos) -> String {
    format!("{}:{}", pos.file, pos.line)
}

/// Every cluster a route (or a mirror policy) names exists, and every EDS cluster (all but the
/// passthrough) has a `ClusterLoadAssignment`. A failure here is a compiler bug, reported rather
/// than served.
fn check_consistency(
    clusters: &[Arc<Resource>],
    endpoints: &endpoints::EndpointPlan,
    vhosts: &[listener::VhostSource],
    tables: &RouteTables,
    findings: &mut Findings,
) {
    let clusters: BTreeSet<&str> = clusters
        .iter()
        .map(|c| c.name.as_str())
        .chain([PASSTHROUGH_CLUSTER])
        .collect();
    let assignments: BTreeSet<&str> = endpoints.clusters().collect();
    for cluster in &clusters {
        if *cluster != PASSTHROUGH_CLUSTER && !assignments.contains(cluster) {
            findings.error(
                &Pos::default(),
                format!("internal error: cluster {cluster:?} has no ClusterLoadAssignment"),
            );
        }
    }
    let mut check_routes = |routes: &[Route], origins: &[String]| {
        for route in routes {
            for name in clusters_named_by(route) {
                if !clusters.contains(name) {
                    findings.error(
                        &Pos::default(),
                        format!(
                            "internal error: route {:?} (from {}) names cluster {name:?}, which \
                             does not exist",
                            route.name,
                            origins.join(", ")
                        ),
                    );
                }
            }
        }
    };
    for vhost in vhosts {
        check_routes(std::slice::from_ref(&vhost.default_route), &[]);
    }
    for table in tables.all() {
        check_routes(&table.routes, &table.origins);
    }
}

/// The clusters a route sends to or mirrors to.
fn clusters_named_by(route: &Route) -> Vec<&str> {
    let mut names = Vec::new();
    if let Some(Action::Route(action)) = &route.action {
        match &action.cluster_specifier {
            Some(ClusterSpecifier::Cluster(name)) => names.push(name.as_str()),
            Some(ClusterSpecifier::WeightedClusters(weighted)) => {
                names.extend(weighted.clusters.iter().map(|c| c.name.as_str()))
            }
            _ => {}
        }
        names.extend(
            action
                .request_mirror_policies
                .iter()
                .map(|m| m.cluster.as_str()),
        );
    }
    names
}
