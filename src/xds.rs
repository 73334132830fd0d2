//! The xDS protocol layer: resource snapshots, the SotW and delta state machines, and the ADS
//! gRPC server. It knows nothing of manifests; the only thing it receives is a
//! [`resource::SnapshotView`].

pub mod csds;
pub mod delta;
pub mod grpc;
pub mod names;
pub mod reply;
pub mod request;
pub mod resource;
pub mod server;
pub mod sotw;
pub mod stream;
