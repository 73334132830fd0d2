//! One echo workload: an echo server and its Envoy sidecar on one loopback address, registered
//! with Sluice under its labels.

use std::net::SocketAddr;

use super::{loopback_ip, EchoServer, Envoy, Protocol, Sidecar, Sluice};

/// The port every echo server listens on: the example Services' `targetPort`.
pub const ECHO_PORT: u16 = 8080;

/// Stops the sidecar, then the app, when dropped.
pub struct Workload {
    pub envoy: Envoy,
    pub echo: EchoServer,
}

impl Workload {
    pub async fn start(name: &str, labels: &str, sluice: &Sluice, protocol: Protocol) -> Workload {
        let ip = loopback_ip();
        let echo = EchoServer::start(name, SocketAddr::from((ip, ECHO_PORT))).await;
        let envoy = Sidecar::new(name, sluice.xds_addr(), protocol)
            .labels(labels)
            .address(ip)
            .start()
            .await;
        Workload { envoy, echo }
    }
}
