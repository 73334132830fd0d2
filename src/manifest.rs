//! Manifests: the YAML kinds Sluice reads, loaded with positions and validated.
//!
//! A revision is loaded whole or not at all: [`load_dir`] returns either a [`Revision`] in which
//! every reference resolves, or every problem it found, each with file, line and column.
//!
//! # Layout
//! - [`yaml`]: bytes to a positioned YAML tree, with hard limits (size, depth) and refusals
//!   (anchors and aliases, tags, duplicate keys, encodings other than UTF-8).
//! - [`de`]: a strict `serde` deserializer over that tree: typed scalars, field paths, positions
//!   and suggestions in every error, [`Spanned`] values.
//! - [`model`]: the Kubernetes and Gateway API kinds as typed Rust.
//! - `load`: folders and in-memory files to a [`Revision`] ([`read_dir`], [`load_files`],
//!   [`load_dir`]), with [`LoadOptions`].
//! - [`validate`]: semantic checks (names, references, Gateway API rules), and `re2`, which
//!   checks regexes against Envoy's RE2 limits.

pub mod de;
mod load;
pub mod model;
mod parts;
pub mod re2;
pub mod span;
pub mod validate;
pub mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

pub use load::{
    is_manifest_name, list_dir, load_dir, load_files, load_files_cached, read_dir, read_dir_cached,
    read_listed, Listing, LoadOptions, ParseCache, ReadCache, SourceFile, EMPTY_REVISION,
};
pub use parts::{Part, PartMemo};
pub use span::{Pos, Spanned};

/// `namespace/name` of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a revision, printed as `FILE:LINE:COL: error: MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub pos: Pos,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    pub fn error(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            pos,
            severity: Severity::Error,
            message: message.into(),
        }
    }

    pub fn warning(pos: Pos, message: impl Into<String>) -> Self {
        Diagnostic {
            pos,
            severity: Severity::Warning,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{}: {}: {}", self.pos, severity, self.message)
    }
}

/// One object of a revision with the position of its document.
#[derive(Clone, Debug, PartialEq)]
pub struct Object<T> {
    /// Namespace (defaulted to `default`) and name.
    pub key: ObjectKey,
    pub pos: Pos,
    pub value: T,
}

/// Every object of one revision, validated: references resolve, names are unique.
///
/// Objects are shared: a revision loaded after a change holds the very objects of the previous
/// one for every file that did not change, so cloning a revision copies no object, and whoever
/// derives something from an object can tell it is unchanged by its address.
#[derive(Debug, Default)]
pub struct Revision {
    pub services: BTreeMap<ObjectKey, Arc<Object<model::Service>>>,
    pub endpoint_slices: BTreeMap<ObjectKey, Arc<Object<model::EndpointSlice>>>,
    /// In Gateway API precedence order (oldest `creationTimestamp` first, then `namespace/name`).
    pub http_routes: Vec<Arc<Object<model::HttpRoute>>>,
    /// In the same precedence order as `http_routes`.
    pub grpc_routes: Vec<Arc<Object<model::GrpcRoute>>>,
    /// Findings that do not refuse the revision (a weight-0 backend to a missing Service, ...).
    pub warnings: Vec<Diagnostic>,
    /// The revision split into parts, when the loader already did it (see [`Revision::parts`]).
    /// Not part of the revision's value: `==` ignores it and a clone does not carry it, so a
    /// changed clone is split afresh. A loaded revision is not to be changed in place.
    parts: Option<Arc<[Part]>>,
}

impl Clone for Revision {
    fn clone(&self) -> Self {
        Revision {
            services: self.services.clone(),
            endpoint_slices: self.endpoint_slices.clone(),
            http_routes: self.http_routes.clone(),
            grpc_routes: self.grpc_routes.clone(),
            warnings: self.warnings.clone(),
            parts: None,
        }
    }
}

impl PartialEq for Revision {
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services
            && self.endpoint_slices == other.endpoint_slices
            && self.http_routes == other.http_routes
            && self.grpc_routes == other.grpc_routes
            && self.warnings == other.warnings
    }
}
