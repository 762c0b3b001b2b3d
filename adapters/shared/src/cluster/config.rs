//! The `[cluster]` section of the server configuration: the NATS JetStream stream that is the
//! log of every node (see `docs/CLUSTER.md`).

use std::time::Duration;

use serde::Deserialize;
use tidings_core::units;

/// The `[cluster]` section. Cluster mode is on when [`ClusterConfig::nats`] is set: events are
/// then stored in (and numbered by) the stream, and `[store]`'s files are not used.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS server(s) to connect to, comma-separated (`nats://host:4222,nats://other:4222`).
    pub nats: Option<String>,
    /// The JetStream stream that holds the events (created if missing); its subjects are
    /// `<stream>.ev.<topic>`, and `<stream>.epoch` once it lost its tail (epoch markers). Nodes
    /// of one hub name the same stream.
    pub stream: String,
    /// Replicas of the stream when this node creates it (1, 3 or 5; 3 in production: a stream
    /// with one replica can lose acknowledged events when its NATS server loses power).
    pub replicas: usize,
    /// This node's name, in NATS connection names and logs (default: `tidings-<pid>`).
    pub node: Option<String>,
    /// How long a publish waits for the stream to store it, retries included; then it is
    /// answered `unavailable`.
    #[serde(with = "units::duration")]
    pub publish_timeout: Duration,
    /// How long start-up waits for NATS before giving up.
    #[serde(with = "units::duration")]
    pub connect_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            nats: None,
            stream: "tidings".to_owned(),
            replicas: 1,
            node: None,
            publish_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl ClusterConfig {
    /// Checks what the types cannot.
    ///
    /// # Errors
    /// A message naming the key and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if self.stream.is_empty() || self.stream.len() > 64 || !self.stream.chars().all(name_ok) {
            return Err(format!(
                "cluster.stream is {:?}; it must be 1 to 64 characters among A-Z, a-z, 0-9, _ and -",
                self.stream
            ));
        }
        if ![1, 3, 5].contains(&self.replicas) {
            return Err(format!(
                "cluster.replicas is {}; it must be 1, 3 or 5",
                self.replicas
            ));
        }
        if let Some(nats) = &self.nats
            && nats.trim().is_empty()
        {
            return Err("cluster.nats must name a NATS server (nats://host:4222)".to_owned());
        }
        if self.publish_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(
                "cluster.publish_timeout and cluster.connect_timeout must not be 0".to_owned(),
            );
        }
        Ok(())
    }

    /// The subject prefix of the stream's events: `<stream>.ev`.
    pub(crate) fn prefix(&self) -> String {
        format!("{}.ev", self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_refuses_bad_values() {
        let c: ClusterConfig = toml::from_str(
            "nats = \"nats://127.0.0.1:4222\"\nreplicas = 3\npublish_timeout = \"2s\"",
        )
        .unwrap();
        assert_eq!(c.nats.as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!((c.replicas, c.stream.as_str()), (3, "tidings"));
        assert_eq!(c.publish_timeout, Duration::from_secs(2));
        assert!(c.validate().is_ok());
        assert!(toml::from_str::<ClusterConfig>("typo = 1").is_err());
        let bad = |c: ClusterConfig| c.validate().unwrap_err();
        assert!(
            bad(ClusterConfig {
                replicas: 2,
                ..c.clone()
            })
            .contains("replicas")
        );
        assert!(
            bad(ClusterConfig {
                stream: "a.b".into(),
                ..c.clone()
            })
            .contains("cluster.stream")
        );
        assert!(
            bad(ClusterConfig {
                nats: Some(" ".into()),
                ..c
            })
            .contains("cluster.nats")
        );
    }
}
