//! The host kernel's TCP counters, read around each measurement.
//!
//! Ten thousand sidecars on one host share one kernel. When a push parks more data in loopback
//! socket buffers than `net.ipv4.tcp_mem` allows, the kernel enters memory pressure, prunes
//! receive queues and drops segments, and loopback connections stall on retransmission
//! timeouts. Real sidecars each have a host of their own, so the report says when a figure
//! includes such stalls.

use anyhow::{anyhow, Context};
use serde::Serialize;

/// Counters from `/proc/net/snmp` (`Tcp:`) and `/proc/net/netstat` (`TcpExt:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpCounters {
    /// Segments retransmitted (`Tcp: RetransSegs`); on loopback only after a drop.
    pub retransmitted_segments: u64,
    /// Times TCP entered memory pressure (`TcpExt: TCPMemoryPressures`).
    pub memory_pressures: u64,
    /// Receive queues pruned for lack of memory (`TcpExt: PruneCalled`).
    pub prunes: u64,
    /// Connections dropped because a listener's accept queue was full (`TcpExt: ListenDrops`).
    pub listen_drops: u64,
}

impl TcpCounters {
    pub fn read() -> anyhow::Result<TcpCounters> {
        let snmp = std::fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
        let netstat =
            std::fs::read_to_string("/proc/net/netstat").context("reading /proc/net/netstat")?;
        Ok(TcpCounters {
            retransmitted_segments: counter(&snmp, "Tcp:", "RetransSegs")?,
            memory_pressures: counter(&netstat, "TcpExt:", "TCPMemoryPressures")?,
            prunes: counter(&netstat, "TcpExt:", "PruneCalled")?,
            listen_drops: counter(&netstat, "TcpExt:", "ListenDrops")?,
        })
    }

    /// Whether the kernel dropped data: the figures then include retransmission stalls.
    pub fn troubled(&self) -> bool {
        self.memory_pressures > 0 || self.prunes > 0
    }
}

impl std::ops::Sub for TcpCounters {
    type Output = TcpCounters;
    fn sub(self, earlier: TcpCounters) -> TcpCounters {
        TcpCounters {
            retransmitted_segments: self
                .retransmitted_segments
                .saturating_sub(earlier.retransmitted_segments),
            memory_pressures: self
                .memory_pressures
                .saturating_sub(earlier.memory_pressures),
            prunes: self.prunes.saturating_sub(earlier.prunes),
            listen_drops: self.listen_drops.saturating_sub(earlier.listen_drops),
        }
    }
}

/// `net.ipv4.tcp_mem`'s upper bound, in bytes (it is given in pages).
pub fn tcp_memory_limit_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok()?;
    let pages: u64 = text.split_whitespace().nth(2)?.parse().ok()?;
    Some(pages * 4096)
}

/// A value of a `/proc/net/{snmp,netstat}` table: a header line of names and a line of values,
/// both starting with `prefix`.
fn counter(text: &str, prefix: &str, name: &str) -> anyhow::Result<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if let Some(i) = names.split_whitespace().position(|n| n == name) {
            return values
                .split_whitespace()
                .nth(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("no value for {prefix} {name}"));
        }
    }
    Err(anyhow!("no {prefix} {name} counter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name() {
        let text = "Tcp: RtoMin RetransSegs\nTcp: 200 17\nUdp: InDatagrams\nUdp: 3\n";
        assert_eq!(counter(text, "Tcp:", "RetransSegs").expect("found"), 17);
        assert!(counter(text, "Tcp:", "Missing").is_err());
    }

    #[test]
    fn this_host_has_them() {
        TcpCounters::read().expect("readable on Linux");
    }
}
