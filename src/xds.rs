//! The xDS protocol layer: resource snapshots, the SotW and delta state machines, and the ADS
//! gRPC server. It knows nothing of manifests; the only thing it receives is a
//! [`resource::SnapshotView`].

pub mod resource;
pub mod delta;
pub mod sotw;
pub mod stream;
