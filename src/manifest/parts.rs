//! A revision split into independent parts, and results derived from parts reused across
//! revisions.
//!
//! Objects only look at each other through names: an EndpointSlice names its Service in its
//! `kubernetes.io/service-name` label, a route names Services as parents, backends and mirror
//! targets. Objects linked that way, directly or through others, form one part; nothing a check
//! or the compiler derives from a part depends on any other part. A change to one Service's
//! files therefore touches one part, and [`PartMemo`] hands back what was derived from every
//! other part the last time, recognising them by their objects' addresses (a revision shares
//! the objects of every file that did not change with the previous one).
//!
//! Linking is by name alone, whatever kind or group a reference gives, and a name that resolves
//! to nothing still links what names it: linking more than needed only makes parts larger,
//! while missing a link would let a stale result stand.

use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use super::model::{
    EndpointSlice, GrpcRoute, HttpBackendRef, HttpRoute, HttpRouteFilter, ParentRef, Service,
    SERVICE_NAME_LABEL,
};
use super::{Object, Revision, Spanned};

/// One part of a revision: its objects, shared with the revision, in the revision's order.
#[derive(Clone, Debug, Default)]
pub struct Part {
    pub services: Vec<Arc<Object<Service>>>,
    pub endpoint_slices: Vec<Arc<Object<EndpointSlice>>>,
    pub http_routes: Vec<Arc<Object<HttpRoute>>>,
    pub grpc_routes: Vec<Arc<Object<GrpcRoute>>>,
}

impl Part {
    /// The part as a revision of its own (holding no warnings), for the checks and the
    /// compiler.
    pub fn to_revision(&self) -> Revision {
        Revision {
            services: self
                .services
                .iter()
                .map(|o| (o.key.clone(), o.clone()))
                .collect(),
            endpoint_slices: self
                .endpoint_slices
                .iter()
                .map(|o| (o.key.clone(), o.clone()))
                .collect(),
            http_routes: self.http_routes.clone(),
            grpc_routes: self.grpc_routes.clone(),
            ..Revision::default()
        }
    }

    /// The addresses of the part's objects, kind by kind: equal for two parts exactly when
    /// they hold the same objects, while those objects are alive.
    fn identity(&self) -> Vec<usize> {
        fn address<T>(object: &Arc<Object<T>>) -> usize {
            Arc::as_ptr(object) as usize
        }
        let mut id = Vec::with_capacity(
            self.services.len()
                + self.endpoint_slices.len()
                + self.http_routes.len()
                + self.grpc_routes.len()
                + 3,
        );
        id.extend(self.services.iter().map(address));
        id.push(0);
        id.extend(self.endpoint_slices.iter().map(address));
        id.push(0);
        id.extend(self.http_routes.iter().map(address));
        id.push(0);
        id.extend(self.grpc_routes.iter().map(address));
        id
    }
}

impl Revision {
    /// The revision split into parts (sharing the objects). Routes keep their precedence order
    /// within a part. The parts are ordered by their first object: Services by key, then
    /// EndpointSlices, then routes.
    pub fn parts(&self) -> Arc<[Part]> {
        match &self.parts {
            Some(parts) => parts.clone(),
            None => self.split().into(),
        }
    }

    /// Splits the revision once, for everyone who asks for its parts afterwards. `like` is the
    /// split of a revision whose objects were the same kinds and keys in the same order, naming
    /// each other the same way: its parts are this revision's too, and the objects are placed
    /// as there without linking names again. Also returns the split, for the next revision.
    pub(super) fn keep_parts(&mut self, like: Option<Split>) -> (Arc<[Part]>, Split) {
        let (parts, split) = match like.and_then(|split| Some((self.place(&split)?, split))) {
            Some(reused) => reused,
            None => {
                let split = self.split_places();
                let parts = self.place(&split).unwrap_or_default();
                (parts, split)
            }
        };
        let parts: Arc<[Part]> = parts.into();
        self.parts = Some(parts.clone());
        (parts, split)
    }

    fn split(&self) -> Vec<Part> {
        // A split always places the objects it was made of.
        self.place(&self.split_places()).unwrap_or_default()
    }

    /// The parts of `split`, when it places as many objects of each kind as the revision has.
    fn place(&self, split: &Split) -> Option<Vec<Part>> {
        fn put<T>(
            parts: &mut [Part],
            objects: impl ExactSizeIterator<Item = T>,
            places: &[usize],
            list: impl Fn(&mut Part) -> &mut Vec<T>,
        ) -> Option<()> {
            if objects.len() != places.len() {
                return None;
            }
            for (object, &place) in objects.zip(places) {
                list(parts.get_mut(place)?).push(object);
            }
            Some(())
        }
        let mut parts = vec![Part::default(); split.parts];
        put(
            &mut parts,
            self.services.values().cloned(),
            &split.services,
            |p| &mut p.services,
        )?;
        put(
            &mut parts,
            self.endpoint_slices.values().cloned(),
            &split.endpoint_slices,
            |p| &mut p.endpoint_slices,
        )?;
        put(
            &mut parts,
            self.http_routes.iter().cloned(),
            &split.http_routes,
            |p| &mut p.http_routes,
        )?;
        put(
            &mut parts,
            self.grpc_routes.iter().cloned(),
            &split.grpc_routes,
            |p| &mut p.grpc_routes,
        )?;
        Some(parts)
    }

    /// Which part each object goes to, linking the names they give.
    fn split_places(&self) -> Split {
        // Every object is a node, and most are named (a route's references mostly name
        // Services already counted).
        let objects = self.services.len()
            + self.endpoint_slices.len()
            + self.http_routes.len()
            + self.grpc_routes.len();
        let mut links = Links::with_capacity(self.services.len(), objects + self.services.len());
        let services: Vec<usize> = self
            .services
            .keys()
            .map(|key| links.name(&key.namespace, &key.name))
            .collect();
        let slices: Vec<usize> = self
            .endpoint_slices
            .iter()
            .map(|(key, slice)| {
                let node = links.fresh();
                if let Some(service) = slice.value.metadata.labels.get(SERVICE_NAME_LABEL) {
                    let named = links.name(&key.namespace, service);
                    links.union(node, named);
                }
                node
            })
            .collect();
        let http = links.routes(&self.http_routes);
        let grpc = links.routes(&self.grpc_routes);

        // Parts are numbered in the order their first object comes.
        let mut parts = 0;
        let mut part_of_root = vec![usize::MAX; links.parent.len()];
        let mut place = |nodes: &[usize]| -> Vec<usize> {
            (nodes.iter())
                .map(|&node| {
                    let root = links.find(node);
                    if part_of_root[root] == usize::MAX {
                        part_of_root[root] = parts;
                        parts += 1;
                    }
                    part_of_root[root]
                })
                .collect()
        };
        let (services, endpoint_slices) = (place(&services), place(&slices));
        let (http_routes, grpc_routes) = (place(&http), place(&grpc));
        Split {
            services,
            endpoint_slices,
            http_routes,
            grpc_routes,
            parts,
        }
    }
}

/// Where each object of a revision went: the index of its part, by kind, in the revision's
/// order.
#[derive(Debug, Default)]
pub(super) struct Split {
    services: Vec<usize>,
    endpoint_slices: Vec<usize>,
    http_routes: Vec<usize>,
    grpc_routes: Vec<usize>,
    parts: usize,
}

/// Union-find over names and objects.
struct Links<'r> {
    parent: Vec<usize>,
    names: HashMap<(&'r str, &'r str), usize>,
}

impl<'r> Links<'r> {
    fn fresh(&mut self) -> usize {
        self.parent.push(self.parent.len());
        self.parent.len() - 1
    }

    /// Room for `names` names and `nodes` nodes in all.
    fn with_capacity(names: usize, nodes: usize) -> Links<'r> {
        Links {
            parent: Vec::with_capacity(nodes),
            names: HashMap::with_capacity(names),
        }
    }

    /// The node of the name `namespace/name`.
    fn name(&mut self, namespace: &'r str, name: &'r str) -> usize {
        let parent = &mut self.parent;
        *self.names.entry((namespace, name)).or_insert_with(|| {
            parent.push(parent.len());
            parent.len() - 1
        })
    }

    fn find(&mut self, mut node: usize) -> usize {
        while self.parent[node] != node {
            self.parent[node] = self.parent[self.parent[node]];
            node = self.parent[node];
        }
        node
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            self.parent[a.max(b)] = a.min(b);
        }
    }

    /// The node of each route, in order.
    fn routes<R: References>(&mut self, routes: &'r [Arc<Object<R>>]) -> Vec<usize> {
        routes
            .iter()
            .map(|route| self.route(&route.key.namespace, &route.value))
            .collect()
    }

    /// A route's node, linked to every name it references.
    fn route<R: References>(&mut self, namespace: &'r str, route: &'r R) -> usize {
        let node = self.fresh();
        references(namespace, route, |ns, name| {
            let named = self.name(ns, name);
            self.union(node, named);
        });
        node
    }
}

/// Every name a route references, as (namespace, name): parents, backends and the backends of
/// mirror filters (on rules and on backends).
fn references<'r, R: References>(
    namespace: &'r str,
    route: &'r R,
    mut name: impl FnMut(&'r str, &'r str),
) {
    let mut link = |ns: &'r Option<String>, n: &'r str| name(ns.as_deref().unwrap_or(namespace), n);
    let mirrored = |filters: &'r [Spanned<HttpRouteFilter>]| {
        (filters.iter()).filter_map(|filter| filter.value.request_mirror.as_ref())
    };
    for parent in route.parents() {
        link(&parent.value.namespace, &parent.value.name);
    }
    for (filters, backends) in route.rules() {
        for mirror in mirrored(filters) {
            link(&mirror.backend_ref.namespace, &mirror.backend_ref.name);
        }
        for backend in backends {
            link(&backend.value.namespace, &backend.value.name);
            for mirror in mirrored(&backend.value.filters) {
                link(&mirror.backend_ref.namespace, &mirror.backend_ref.name);
            }
        }
    }
}

/// The names a route links to (see [`Revision::parts`]), in the order it gives them.
pub(super) fn route_links<R: References>(route: &Object<R>) -> Vec<(&str, &str)> {
    let mut names = Vec::new();
    references(&route.key.namespace, &route.value, |ns, name| {
        names.push((ns, name))
    });
    names
}

/// What linking reads of a route, the same for HTTPRoutes and GRPCRoutes.
pub(super) trait References {
    fn parents(&self) -> &[Spanned<ParentRef>];
    /// Each rule's filters and backends.
    fn rules(
        &self,
    ) -> impl Iterator<Item = (&[Spanned<HttpRouteFilter>], &[Spanned<HttpBackendRef>])>;
}

/// HTTPRoute and GRPCRoute spell their specs alike, with rules of different types.
macro_rules! references {
    ($route:ty) => {
        impl References for $route {
            fn parents(&self) -> &[Spanned<ParentRef>] {
                &self.spec.parent_refs
            }

            fn rules(
                &self,
            ) -> impl Iterator<Item = (&[Spanned<HttpRouteFilter>], &[Spanned<HttpBackendRef>])>
            {
                let rules = self.spec.rules.iter();
                rules.map(|r| (r.value.filters.as_slice(), r.value.backend_refs.as_slice()))
            }
        }
    };
}

references!(HttpRoute);
references!(GrpcRoute);

/// Something derived from each part of a revision, kept for the parts of the next revision
/// that hold exactly the same objects.
pub struct PartMemo<V> {
    entries: HashMap<Vec<usize>, Entry<V>>,
    /// Values made (not reused) so far.
    made: usize,
}

struct Entry<V> {
    /// Holds the part's objects alive, so no other object can take their addresses while the
    /// entry is kept.
    _part: Part,
    value: V,
    used: bool,
}

impl<V> std::fmt::Debug for PartMemo<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartMemo")
            .field("kept", &self.entries.len())
            .field("made", &self.made)
            .finish()
    }
}

impl<V> Default for PartMemo<V> {
    fn default() -> Self {
        PartMemo {
            entries: HashMap::new(),
            made: 0,
        }
    }
}

impl<V: Clone> PartMemo<V> {
    /// What `make` derived from a part holding the same objects, or `make(part)` kept for next
    /// time.
    pub fn get_or_make(&mut self, part: &Part, make: impl FnOnce(&Revision) -> V) -> V {
        let id = part.identity();
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.used = true;
            return entry.value.clone();
        }
        let value = make(&part.to_revision());
        self.made += 1;
        self.entries.insert(
            id,
            Entry {
                _part: part.clone(),
                value: value.clone(),
                used: true,
            },
        );
        value
    }

    /// Forgets every value not asked for since the previous sweep: only the latest revision's
    /// parts are kept.
    pub fn sweep(&mut self) {
        self.entries
            .retain(|_, entry| std::mem::take(&mut entry.used));
    }

    /// Values made rather than reused since the memo was created.
    pub fn made(&self) -> usize {
        self.made
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{load_files, LoadOptions, SourceFile};

    fn service(ns: &str, name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 80}}]\n---\n")
    }

    fn slice(ns: &str, name: &str, service: Option<&str>) -> String {
        let labels = service
            .map(|s| format!(", labels: {{kubernetes.io/service-name: {s}}}"))
            .unwrap_or_default();
        format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: {ns}{labels}}}\naddressType: IPv4\nendpoints: [{{addresses: [10.0.0.1]}}]\nports: [{{name: http, port: 8080}}]\n---\n")
    }

    fn route(ns: &str, name: &str, parent: &str, rule: &str) -> String {
        format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: {parent}, port: 80}}]\n  rules: [{rule}]\n---\n")
    }

    fn load(text: &str) -> Revision {
        let files = [SourceFile {
            path: "mesh.yaml".into(),
            bytes: text.as_bytes().into(),
        }];
        load_files(&files, &LoadOptions::default()).expect("loads")
    }

    /// Each part as the sorted `kind:namespace/name` of its objects.
    fn grouping(revision: &Revision) -> Vec<Vec<String>> {
        let mut parts: Vec<Vec<String>> = revision
            .parts()
            .iter()
            .map(|part| {
                let mut names: Vec<String> = part
                    .services
                    .iter()
                    .map(|o| format!("svc:{}", o.key))
                    .chain(
                        part.endpoint_slices
                            .iter()
                            .map(|o| format!("slice:{}", o.key)),
                    )
                    .chain(part.http_routes.iter().map(|r| format!("route:{}", r.key)))
                    .collect();
                names.sort();
                names
            })
            .collect();
        parts.sort();
        parts
    }

    #[test]
    fn objects_that_name_each_other_share_a_part() {
        let text = [
            service("a", "web"),
            service("a", "web-v1"),
            service("b", "db"),
            service("c", "mirror"),
            service("c", "alone"),
            service("d", "backend-mirror"),
            service("d", "shadow"),
            slice("a", "web-v1-x", Some("web-v1")),
            slice("a", "orphan", None),
            slice("b", "db-x", Some("db")),
            route(
                "a",
                "split",
                "web",
                "{backendRefs: [{name: web-v1, port: 80}, {name: db, namespace: b, port: 80}]}",
            ),
            route(
                "c",
                "mirrored",
                "mirror",
                "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web, namespace: a, port: 80}}}], backendRefs: [{name: mirror, port: 80}]}",
            ),
            route(
                "d",
                "on-backend",
                "backend-mirror",
                "{backendRefs: [{name: backend-mirror, port: 80, filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}}}]}]}",
            ),
        ]
        .concat();
        let revision = load(&text);
        assert_eq!(
            grouping(&revision),
            vec![
                vec![
                    "route:a/split",
                    "route:c/mirrored",
                    "slice:a/web-v1-x",
                    "slice:b/db-x",
                    "svc:a/web",
                    "svc:a/web-v1",
                    "svc:b/db",
                    "svc:c/mirror",
                ],
                vec!["route:d/on-backend", "svc:d/backend-mirror", "svc:d/shadow"],
                vec!["slice:a/orphan"],
                vec!["svc:c/alone"],
            ]
        );
    }

    #[test]
    fn parts_hold_every_object_once_with_routes_in_precedence_order() {
        let text = [
            service("a", "ex"),
            service("a", "why"),
            route("a", "r3", "ex", "{}"),
            route("a", "r1", "why", "{}"),
            route("a", "r2", "ex", "{}"),
        ]
        .concat();
        let revision = load(&text);
        let parts = revision.parts();
        assert_eq!(parts.len(), 2);
        assert!(
            Arc::ptr_eq(&parts, &revision.parts()),
            "split once, at load"
        );
        assert!(
            !Arc::ptr_eq(&parts, &revision.clone().parts()),
            "a clone splits afresh"
        );
        let mut merged = Revision::default();
        for part in parts.iter() {
            let part = part.to_revision();
            merged.services.extend(part.services);
            merged.endpoint_slices.extend(part.endpoint_slices);
            merged.http_routes.extend(part.http_routes);
        }
        assert_eq!(merged.services, revision.services);
        assert_eq!(merged.http_routes.len(), revision.http_routes.len());
        let x: Vec<&str> = parts[0]
            .http_routes
            .iter()
            .map(|r| r.key.name.as_str())
            .collect();
        assert_eq!(x, ["r2", "r3"], "namespace/name order within the part");
    }

    #[test]
    fn a_memo_reuses_a_part_only_while_it_holds_the_same_objects() {
        let text = [service("a", "ex"), service("a", "why")].concat();
        let first = load(&text);
        let mut memo: PartMemo<String> = PartMemo::default();
        let make = |part: &Revision| format!("{:?}", part.services.keys().collect::<Vec<_>>());
        for part in first.parts().iter() {
            memo.get_or_make(part, make);
        }
        memo.sweep();
        assert_eq!(memo.made(), 2);
        for part in first.parts().iter() {
            memo.get_or_make(part, |_| unreachable!("reused"));
        }
        memo.sweep();

        // Equal content loaded again is not the same objects: made anew.
        let second = load(&text);
        let part = &second.parts()[0];
        assert_eq!(
            memo.get_or_make(part, make),
            "[ObjectKey { namespace: \"a\", name: \"ex\" }]"
        );
        assert_eq!(memo.made(), 3);
        memo.sweep();
        assert_eq!(
            memo.entries.len(),
            1,
            "the sweep keeps only what was asked for"
        );
    }
}
