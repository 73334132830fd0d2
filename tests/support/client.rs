//! Requests through a sidecar's outbound listener, the way an app in the mesh sends them: plain
//! HTTP/1.1 to the local Envoy, with the Service named in the `Host` header.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::HOST;

/// An HTTP client bound to one sidecar's outbound listener. It keeps a few connections alive,
/// as an app would; Envoy balances each request on its own anyway.
#[derive(Clone)]
pub struct MeshClient {
    outbound: SocketAddr,
    http: reqwest::Client,
}

impl MeshClient {
    pub fn new(outbound: SocketAddr) -> MeshClient {
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(4)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        MeshClient { outbound, http }
    }

    /// `GET path` with `Host: host`. Returns the status and the answering pod (the `x-pod`
    /// header; empty when Envoy answered itself, e.g. a 503 without upstream). An error means
    /// the request failed below HTTP (connection refused or reset, timeout).
    pub async fn send(&self, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
        self.send_with(host, path, &[]).await
    }

    /// [`MeshClient::send`] with extra request headers.
    pub async fn send_with(
        &self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        let url = format!("http://{}{}", self.outbound, path);
        let mut request = self.http.get(&url).header(HOST, host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("GET {url} (Host: {host})"))?;
        let status = response.status().as_u16();
        let pod = response
            .headers()
            .get("x-pod")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        // Read the body so the connection can be reused.
        response
            .bytes()
            .await
            .with_context(|| format!("GET {url} (Host: {host}): reading the body"))?;
        Ok((status, pod))
    }
}

/// One request through the sidecar at `outbound` with `Host: host`; see [`MeshClient::send`].
/// For many requests, keep a [`MeshClient`] so connections are reused.
pub async fn send(outbound: SocketAddr, host: &str, path: &str) -> anyhow::Result<(u16, String)> {
    MeshClient::new(outbound).send(host, path).await
}
