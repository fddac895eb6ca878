//! Per-group Raft metrics on `/metrics`, read from the groups when Prometheus scrapes:
//! `shoal_raft_term`, `shoal_raft_leader` (1 on the node that leads), `shoal_raft_last_log_index`,
//! `shoal_raft_applied_index` and `shoal_raft_members`, each labelled with the group and its
//! collection (`collection=""` for the meta group, group 0).

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

use crate::cluster::Cluster;

pub struct RaftMetrics {
    cluster: Cluster,
    term: IntGaugeVec,
    leader: IntGaugeVec,
    last_log: IntGaugeVec,
    applied: IntGaugeVec,
    members: IntGaugeVec,
}

impl RaftMetrics {
    pub fn new(cluster: Cluster) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["group", "collection"])
        };
        Ok(Self {
            cluster,
            term: gauge(
                "shoal_raft_term",
                "Current Raft term of the group on this node",
            )?,
            leader: gauge(
                "shoal_raft_leader",
                "1 if this node leads the group, else 0",
            )?,
            last_log: gauge(
                "shoal_raft_last_log_index",
                "Index of the last entry in this node's log of the group",
            )?,
            applied: gauge(
                "shoal_raft_applied_index",
                "Index of the last entry this node applied for the group",
            )?,
            members: gauge(
                "shoal_raft_members",
                "Voters and learners of the group, as this node knows them",
            )?,
        })
    }

    fn gauges(&self) -> [&IntGaugeVec; 5] {
        [
            &self.term,
            &self.leader,
            &self.last_log,
            &self.applied,
            &self.members,
        ]
    }
}

impl Collector for RaftMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.gauges().into_iter().flat_map(|g| g.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        for gauge in self.gauges() {
            gauge.reset();
        }
        let layout = self.cluster.layout();
        let status = self.cluster.node_status();
        for g in &status.groups {
            let collection = layout
                .group(g.group)
                .map(|g| g.collection.spec.name.as_str())
                .unwrap_or_default();
            let group = g.group.to_string();
            let labels = [group.as_str(), collection];
            let set = |gauge: &IntGaugeVec, value: u64| {
                gauge
                    .with_label_values(&labels)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            set(&self.term, g.term);
            set(&self.leader, u64::from(g.leader == status.node_id));
            set(&self.last_log, g.last_log_index);
            set(&self.applied, g.applied_index);
            set(&self.members, (g.voters.len() + g.learners.len()) as u64);
        }
        self.gauges()
            .into_iter()
            .flat_map(|g| g.collect())
            .collect()
    }
}
