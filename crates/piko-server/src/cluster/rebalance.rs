//! Upstream rebalancing (Piko's §6.7 rule, shedding with GoAway rather than a cut): a node with
//! many more upstream connections than the cluster's average asks a few of them, every second,
//! to connect again; through the load balancer they land on a random node, and the counts even
//! out. Only active nodes count towards the average.

use std::{sync::Arc, time::Duration};

use super::membership::{Membership, NodeStatus};
use crate::upstreams::Upstreams;

/// `upstream.rebalance.*`.
#[derive(Clone, Debug)]
pub struct RebalanceConfig {
    /// How far above the average (as a fraction of it) a node sheds; 0 disables rebalancing.
    pub threshold: f64,
    /// The most a node sheds per round, as a fraction of the average.
    pub shed_rate: f64,
    /// A node with fewer connections never sheds.
    pub min_conns: usize,
    /// How often the node checks (Piko: every second).
    pub interval: Duration,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        Self {
            threshold: 0.0,
            shed_rate: 0.005,
            min_conns: 50,
            interval: Duration::from_secs(1),
        }
    }
}

/// How many connections to shed: Piko's rule. `local` counts this node's connections, `counts`
/// every active node's (this one's included).
pub(crate) fn to_shed(config: &RebalanceConfig, local: usize, counts: &[usize]) -> Option<Shed> {
    if local == 0 || local < config.min_conns || counts.is_empty() {
        return None;
    }
    let total = counts.iter().fold(0usize, |sum, n| sum.saturating_add(*n));
    let avg = total / counts.len();
    #[allow(
        clippy::cast_precision_loss,
        reason = "connection counts are far below 2^52"
    )]
    let (local_f, avg_f) = (local as f64, avg as f64);
    let balance = if avg == 0 {
        f64::INFINITY
    } else {
        (local_f - avg_f) / avg_f
    };
    if balance < config.threshold {
        return None;
    }
    let mut shed = local_f * balance;
    if shed > avg_f * config.shed_rate {
        shed = (avg_f * config.shed_rate).ceil();
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "floor of a non-negative count no larger than local"
    )]
    let count = (shed.floor() as usize).min(local);
    (count > 0).then_some(Shed {
        count,
        balance,
        avg,
    })
}

/// A decision to shed connections.
#[derive(Debug, PartialEq)]
pub(crate) struct Shed {
    pub(crate) count: usize,
    pub(crate) balance: f64,
    pub(crate) avg: usize,
}

/// Checks the balance every interval and asks the connections to shed to go (GoAway); each one
/// stays routable until its agent has reconnected (see `upstream.rs`).
pub(crate) async fn rebalance_loop(
    config: RebalanceConfig,
    upstreams: Arc<Upstreams>,
    membership: Arc<Membership>,
    own_id: String,
) {
    loop {
        tokio::time::sleep(config.interval).await;
        let nodes = membership.nodes().await;
        if nodes.len() <= 1 {
            continue;
        }
        // Connections already asked to go are on their way out.
        let staying: Vec<_> = upstreams
            .sessions()
            .into_iter()
            .filter(|session| !session.is_local_go_away() && !session.is_remote_go_away())
            .collect();
        let local = staying.len();
        let counts: Vec<usize> = nodes
            .iter()
            .filter(|node| node.status == NodeStatus::Active)
            .map(|node| {
                if node.id == own_id {
                    local
                } else {
                    node.upstream_total()
                }
            })
            .collect();
        let Some(shed) = to_shed(&config, local, &counts) else {
            continue;
        };
        tracing::info!(
            subsystem = "upstream",
            shedding = shed.count,
            balance = format!("{:.2}", shed.balance),
            threshold = config.threshold,
            local_conns = local,
            avg_conns = shed.avg,
            "rebalance; shedding connections"
        );
        for session in staying.iter().take(shed.count) {
            session.go_away();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(threshold: f64, shed_rate: f64, min_conns: usize) -> RebalanceConfig {
        RebalanceConfig {
            threshold,
            shed_rate,
            min_conns,
            ..RebalanceConfig::default()
        }
    }

    #[test]
    fn sheds_as_piko_computes_it() {
        // 100 here, 50 on average: balance 1; capped at ceil(50 × 0.005) = 1 a round.
        let shed = to_shed(&config(0.5, 0.005, 50), 100, &[100, 25, 25]).unwrap();
        assert_eq!((shed.count, shed.avg), (1, 50));
        assert!((shed.balance - 1.0).abs() < 1e-9);
        // A higher rate sheds more, never more than the cap.
        let shed = to_shed(&config(0.5, 0.5, 1), 100, &[100, 25, 25]).unwrap();
        assert_eq!(shed.count, 25);
        // Below the threshold, below min_conns, or nothing here: nothing.
        assert_eq!(to_shed(&config(2.0, 0.5, 1), 100, &[100, 25, 25]), None);
        assert_eq!(to_shed(&config(0.5, 0.5, 200), 100, &[100, 25, 25]), None);
        assert_eq!(to_shed(&config(0.5, 0.5, 0), 0, &[0, 25, 25]), None);
        // Others with nothing: the average is what is here divided among the nodes.
        let shed = to_shed(&config(0.5, 1.0, 1), 6, &[6, 0, 0]).unwrap();
        assert_eq!((shed.count, shed.avg), (2, 2));
    }

    #[test]
    fn forged_counts_neither_overflow_nor_shed() {
        // Without cluster.secret anyone can gossip a node publishing any count.
        let forged = crate::cluster::Node {
            id: "forged".into(),
            status: NodeStatus::Active,
            proxy_addr: String::new(),
            admin_addr: String::new(),
            endpoints: [("a".to_owned(), usize::MAX), ("b".to_owned(), usize::MAX)].into(),
            forward_key: None,
            member_proof: None,
        };
        assert_eq!(forged.upstream_total(), usize::MAX);
        let counts = [100, forged.upstream_total(), usize::MAX];
        assert_eq!(to_shed(&config(0.5, 0.5, 1), 100, &counts), None);
    }
}
