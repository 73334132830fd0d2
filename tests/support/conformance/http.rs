//! The runner's HTTP/1.1 client: one request per connection to a sidecar's outbound listener,
//! written byte for byte, so that paths go out raw, header names keep the case a test gives
//! them, and redirects are never followed.
//!
//! Requests use the absolute form (`GET http://echo/path HTTP/1.1`), as an app that has its
//! sidecar as HTTP proxy sends them: the URL names where the request is addressed, which is
//! what the mesh routes on, and a `Host` header that differs from it is ignored by the proxy
//! (RFC 9112 §3.2.2). That is how "connect to Service A with Host B" is expressed outside
//! Kubernetes, where no virtual IP tells the sidecar which Service the app dialled.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A response as received.
#[derive(Clone, Debug, Default)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Sends `GET http://{authority}{path}` through the proxy at `proxy`. `headers` are written as
/// given; a `Host` among them replaces the default `Host: {authority}`.
pub async fn get(
    proxy: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<HttpReply> {
    let path = if path.is_empty() { "/" } else { path };
    let what = || format!("GET http://{authority}{path} via {proxy}");
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(proxy, authority, path, headers))
        .await
        .with_context(|| format!("{}: no answer within {REQUEST_TIMEOUT:?}", what()))?
        .with_context(what)
}

async fn exchange(
    proxy: SocketAddr,
    authority: &str,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<HttpReply> {
    let host = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("host"))
        .map_or(authority, |(_, value)| value.as_str());
    let mut request = format!("GET http://{authority}{path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        if !name.eq_ignore_ascii_case("host") {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    request.push_str("User-Agent: sluice-conformance\r\nConnection: close\r\n\r\n");
    let mut stream = TcpStream::connect(proxy).await.context("connecting")?;
    stream
        .write_all(request.as_bytes())
        .await
        .context("writing the request")?;
    // Read until the response is complete rather than until the connection closes: Envoy
    // delays closing after a reply it made itself (a 404, a redirect) by up to a second.
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if let Some(reply) = complete_response(&raw)? {
            return Ok(reply);
        }
        let n = stream
            .read(&mut buffer)
            .await
            .context("reading the response")?;
        if n == 0 {
            return parse_response(&raw);
        }
        raw.extend_from_slice(&buffer[..n]);
    }
}

/// The response in `raw` once it is complete (its length known from `content-length` or
/// chunked framing); `None` while more bytes are needed.
fn complete_response(raw: &[u8]) -> anyhow::Result<Option<HttpReply>> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    let framed = if head.contains("\r\ntransfer-encoding: chunked") {
        // Complete once the chunks parse through the last one.
        return Ok(parse_response(raw).ok());
    } else if let Some(at) = head.find("\r\ncontent-length:") {
        let value = head[at + "\r\ncontent-length:".len()..]
            .split("\r\n")
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let length: usize = value
            .parse()
            .with_context(|| format!("bad content-length {value:?}"))?;
        body.len() >= length
    } else {
        // Without framing the body ends with the connection.
        false
    };
    if framed {
        parse_response(raw).map(Some)
    } else {
        Ok(None)
    }
}

/// Parses a whole HTTP/1.1 response (the connection was closed after it).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<HttpReply> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!(
            "the connection closed before a complete response head ({} bytes)",
            raw.len()
        );
    };
    let head = std::str::from_utf8(&raw[..end]).context("the response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("bad header line {line:?}"))?;
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let rest = &raw[end + 4..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .with_context(|| format!("bad content-length {length:?}"))?;
        if rest.len() < length {
            bail!("the body has {} of {length} bytes", rest.len());
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpReply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line does not end")?;
        let size_text = std::str::from_utf8(&data[..line_end]).context("chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        if data.len() < size + 2 {
            bail!("a chunk is cut short");
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
