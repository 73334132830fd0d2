//! The compiler: pure functions from a validated revision, the sidecar workloads and one node's
//! configuration key to the Envoy resources that node receives.
