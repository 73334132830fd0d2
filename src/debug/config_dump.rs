//! Envoy admin `/config_dump`-shaped JSON for what Sluice serves one sidecar.
