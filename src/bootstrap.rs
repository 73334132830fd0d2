//! `sluice bootstrap`: a complete Envoy v3 bootstrap for one sidecar.
