//! Endpoints contributed by connected sidecars.
//!
//! While a sidecar's stream is up, its address is an endpoint of every Service in its namespace
//! whose selector matches its labels. After it disconnects its entry stays for a grace period, so
//! that a control-plane restart or a brief network cut never drains the mesh.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// One sidecar's workload as an endpoint source: what its node says about itself (shared with
/// its stream, not copied) and the address it gave.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub node: Arc<NodeInfo>,
    /// The node's `address`, which every workload has.
    pub address: IpAddr,
}

/// Every workload that currently contributes endpoints, keyed by node id. Immutable once
/// published.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workloads {
    /// Shared with the registry and earlier sets: publishing a set copies no workload.
    pub by_node: BTreeMap<String, Arc<Workload>>,
}

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::debug;

use crate::node::NodeInfo;
use crate::xds::server::ConnectionObserver;

/// A connection change, as the protocol server reports it.
#[derive(Debug)]
enum Change {
    Connected { stream_id: u64, node: Arc<NodeInfo> },
    Disconnected { stream_id: u64 },
}

/// The registry's inbox; handed to the xDS server as its [`ConnectionObserver`].
#[derive(Clone, Debug)]
pub struct RegistryHandle {
    tx: mpsc::UnboundedSender<Change>,
}

impl ConnectionObserver for RegistryHandle {
    fn connected(&self, stream_id: u64, node: &Arc<NodeInfo>) {
        // Send fails only once the registry task has ended, at shutdown.
        let _ = self.tx.send(Change::Connected {
            stream_id,
            node: Arc::clone(node),
        });
    }

    fn disconnected(&self, stream_id: u64) {
        let _ = self.tx.send(Change::Disconnected { stream_id });
    }
}

/// The registry task: the one owner of the connected-workload set. It publishes an immutable
/// [`Workloads`] whenever the set of endpoints really changes.
#[derive(Debug)]
pub struct Registry {
    rx: mpsc::UnboundedReceiver<Change>,
    publish: watch::Sender<Arc<Workloads>>,
    grace: Duration,
    /// Open streams that contribute a workload (sidecars with an address), by id, with their
    /// node.
    streams: HashMap<u64, Arc<NodeInfo>>,
    /// Open streams with a workload, per node id, in stream id order: the newest stream's
    /// workload is the node's. Nearly always one.
    open_by_node: HashMap<String, Vec<(u64, Arc<Workload>)>>,
    /// Workloads whose last stream closed, with when their endpoints go.
    lingering: HashMap<String, (Arc<Workload>, Instant)>,
    /// The set as it stands, kept up to date node by node, so a burst costs what it touches
    /// and publishing copies the map, not the workloads.
    current: BTreeMap<String, Arc<Workload>>,
    /// `current` changed since it was last published.
    dirty: bool,
}

impl Registry {
    pub fn new(grace: Duration) -> (Registry, RegistryHandle, watch::Receiver<Arc<Workloads>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (publish, workloads) = watch::channel(Arc::new(Workloads::default()));
        let registry = Registry {
            rx,
            publish,
            grace,
            streams: HashMap::new(),
            open_by_node: HashMap::new(),
            lingering: HashMap::new(),
            current: BTreeMap::new(),
            dirty: false,
        };
        (registry, RegistryHandle { tx }, workloads)
    }

    /// Runs until every handle is dropped.
    pub async fn run(mut self) {
        loop {
            let next_expiry = self.lingering.values().map(|(_, at)| *at).min();
            tokio::select! {
                change = self.rx.recv() => match change {
                    Some(change) => {
                        self.apply(change);
                        // A burst (a reconnect storm) is applied whole and published once; a
                        // lone change is published at once.
                        while let Ok(change) = self.rx.try_recv() {
                            self.apply(change);
                        }
                    }
                    None => return,
                },
                _ = sleep_until_opt(next_expiry) => self.expire(Instant::now()),
            }
            self.publish_if_changed();
        }
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Connected { stream_id, node } => {
                let Some(address) = node.address else {
                    return;
                };
                let workload = Arc::new(Workload {
                    node: Arc::clone(&node),
                    address,
                });
                self.lingering.remove(&node.id);
                let open = self.open_by_node.entry(node.id.clone()).or_default();
                // Streams of one node may report out of order; the list stays sorted.
                let at = open.partition_point(|(id, _)| *id < stream_id);
                open.insert(at, (stream_id, workload));
                self.refresh(&node.id);
                self.streams.insert(stream_id, node);
            }
            Change::Disconnected { stream_id } => {
                let Some(node) = self.streams.remove(&stream_id) else {
                    return;
                };
                let node_id = &node.id;
                let Some(open) = self.open_by_node.get_mut(node_id) else {
                    return;
                };
                let closed = open
                    .iter()
                    .position(|(id, _)| *id == stream_id)
                    .map(|at| open.remove(at).1);
                if open.is_empty() {
                    self.open_by_node.remove(node_id);
                    if let Some(workload) = closed {
                        debug!(node = %node_id, grace = ?self.grace, "keeping endpoints of a disconnected sidecar for the grace period");
                        let until = Instant::now() + self.grace;
                        self.lingering.insert(node_id.clone(), (workload, until));
                    }
                }
                self.refresh(node_id);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        let mut expired = Vec::new();
        self.lingering.retain(|node_id, (_, until)| {
            let keep = *until > now;
            if !keep {
                debug!(node = %node_id, "grace period over: endpoints removed");
                expired.push(node_id.clone());
            }
            keep
        });
        for node_id in expired {
            self.refresh(&node_id);
        }
    }

    /// Brings `current` up to date for one node: the workload of its newest open stream, else
    /// the lingering one, else none.
    fn refresh(&mut self, node_id: &str) {
        let workload = self
            .open_by_node
            .get(node_id)
            .and_then(|open| open.last())
            .map(|(_, workload)| workload)
            .or_else(|| self.lingering.get(node_id).map(|(workload, _)| workload));
        let changed = match workload {
            Some(workload) => {
                if self.current.get(node_id) == Some(workload) {
                    false
                } else {
                    self.current
                        .insert(node_id.to_string(), Arc::clone(workload));
                    true
                }
            }
            None => self.current.remove(node_id).is_some(),
        };
        self.dirty |= changed;
    }

    fn publish_if_changed(&mut self) {
        if !std::mem::take(&mut self.dirty) {
            return;
        }
        let current = &self.current;
        self.publish.send_if_modified(|published| {
            // A burst may have undone its own changes (a reconnect within the grace period).
            if published.by_node == *current {
                false
            } else {
                *published = Arc::new(Workloads {
                    by_node: current.clone(),
                });
                true
            }
        });
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, ip: [u8; 4]) -> Arc<NodeInfo> {
        let mut node = NodeInfo::new(id);
        node.address = Some(std::net::IpAddr::from(ip));
        node.labels.insert("app".into(), "echo".into());
        Arc::new(node)
    }

    /// A sidecar's node (labels and all) is kept once: its workload points at the node its
    /// stream was given, so the registry holds no copy of its own.
    #[tokio::test]
    async fn a_workload_shares_the_node_its_stream_reported() {
        let (registry, handle, mut workloads) = Registry::new(Duration::from_secs(10));
        tokio::spawn(registry.run());
        let a = node("a", [127, 0, 10, 1]);
        handle.connected(1, &a);
        workloads.changed().await.expect("registry publishes");
        let published = workloads.borrow_and_update().by_node["a"].clone();
        assert!(Arc::ptr_eq(&published.node, &a));
        assert_eq!(published.address, std::net::IpAddr::from([127, 0, 10, 1]));
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_stay_for_the_grace_period_after_a_disconnect() {
        let (registry, handle, mut workloads) = Registry::new(Duration::from_secs(10));
        tokio::spawn(registry.run());

        handle.connected(1, &node("a", [127, 0, 10, 1]));
        workloads.changed().await.expect("registry publishes");
        assert!(workloads.borrow_and_update().by_node.contains_key("a"));

        handle.disconnected(1);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(
            workloads.borrow().by_node.contains_key("a"),
            "gone before the grace period ended"
        );

        tokio::time::sleep(Duration::from_secs(2)).await;
        workloads
            .changed()
            .await
            .expect("registry publishes the removal");
        assert!(workloads.borrow().by_node.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_within_the_grace_period_changes_nothing() {
        let (registry, handle, mut workloads) = Registry::new(Duration::from_secs(10));
        tokio::spawn(registry.run());
        handle.connected(1, &node("a", [127, 0, 10, 1]));
        workloads.changed().await.expect("registry publishes");
        workloads.borrow_and_update();

        handle.disconnected(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle.connected(2, &node("a", [127, 0, 10, 1]));
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            !workloads.has_changed().expect("registry alive"),
            "a no-op was published"
        );
        assert!(workloads.borrow().by_node.contains_key("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_with_two_streams_keeps_its_endpoint_until_both_close() {
        let (registry, handle, workloads) = Registry::new(Duration::from_secs(10));
        tokio::spawn(registry.run());
        handle.connected(1, &node("a", [127, 0, 10, 1]));
        handle.connected(2, &node("a", [127, 0, 10, 1]));
        handle.disconnected(1);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(
            workloads.borrow().by_node.contains_key("a"),
            "a node with an open stream lost its endpoint"
        );
        handle.disconnected(2);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(workloads.borrow().by_node.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_published_once_and_untouched_workloads_are_shared() {
        let (registry, handle, mut workloads) = Registry::new(Duration::from_secs(10));
        handle.connected(1, &node("a", [127, 0, 10, 1]));
        handle.connected(2, &node("b", [127, 0, 10, 2]));
        tokio::spawn(registry.run());
        workloads.changed().await.expect("registry publishes");
        let first = workloads.borrow_and_update().clone();
        assert_eq!(first.by_node.len(), 2, "the burst is published whole");

        handle.connected(3, &node("c", [127, 0, 10, 3]));
        workloads.changed().await.expect("registry publishes");
        let second = workloads.borrow_and_update().clone();
        assert_eq!(second.by_node.len(), 3);
        assert!(Arc::ptr_eq(&first.by_node["a"], &second.by_node["a"]));
        assert!(Arc::ptr_eq(&first.by_node["b"], &second.by_node["b"]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_newest_stream_of_a_node_gives_its_endpoint() {
        let (registry, handle, mut workloads) = Registry::new(Duration::from_secs(10));
        tokio::spawn(registry.run());
        let address = |w: &watch::Receiver<Arc<Workloads>>| w.borrow().by_node["a"].address;
        handle.connected(1, &node("a", [127, 0, 10, 1]));
        workloads.changed().await.expect("registry publishes");
        handle.connected(2, &node("a", [127, 0, 10, 2]));
        workloads.changed().await.expect("registry publishes");
        assert_eq!(address(&workloads), IpAddr::from([127, 0, 10, 2]));

        handle.disconnected(2);
        workloads.changed().await.expect("registry publishes");
        assert_eq!(address(&workloads), IpAddr::from([127, 0, 10, 1]));

        // The last stream closes: its workload lingers, unchanged, so nothing is published.
        workloads.borrow_and_update();
        handle.disconnected(1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!workloads.has_changed().expect("registry alive"));
        assert_eq!(address(&workloads), IpAddr::from([127, 0, 10, 1]));
    }

    #[tokio::test(start_paused = true)]
    async fn sidecars_without_an_address_contribute_no_endpoint() {
        let (registry, handle, workloads) = Registry::new(Duration::from_secs(10));
        tokio::spawn(registry.run());
        handle.connected(1, &Arc::new(NodeInfo::new("client")));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(workloads.borrow().by_node.is_empty());
    }
}
