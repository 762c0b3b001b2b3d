//! The `[store]` section of the server configuration: where and how events are stored.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tidings_core::units;

/// Where events are kept. The default of an embedding application's [`crate::ServerConfig`] is
/// `Memory` (nothing written where it did not ask); `tidings serve` stores in files unless told
/// `--memory` (see `docs/STORAGE.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// In segment files under [`StoreConfig::dir`] ([`crate::store::FileLog`]): events and the
    /// epoch survive restarts.
    File,
    /// Only in memory: a restart starts a new epoch and forgets every event.
    #[default]
    Memory,
}

/// When written events are forced to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// An append is answered once its bytes are in the operating system (a killed server loses
    /// nothing; a power loss may lose the last [`StoreConfig::fsync_interval`]); the files are
    /// synced every `fsync_interval`.
    #[default]
    Os,
    /// An append is answered only after its bytes are synced to the disk (one sync per batch of
    /// appends: group commit). Nothing acknowledged is lost, even on power loss.
    Strict,
    /// Never synced except when a segment is sealed and at close: the fastest, and a power loss
    /// may lose what the operating system had not written yet.
    None,
}

/// The largest segment size accepted: a record's offset in a segment must fit in 32 bits.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

/// The `[store]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Where events are kept.
    pub kind: StoreKind,
    /// The data directory of the file log (created if missing).
    pub dir: PathBuf,
    /// When written events are forced to the disk.
    pub durability: Durability,
    /// How often the file log syncs under `durability = "os"`.
    #[serde(with = "units::duration")]
    pub fsync_interval: Duration,
    /// A segment file is sealed and a new one started once it is this large (bytes; at most
    /// 1 GiB).
    pub segment_bytes: u64,
    /// Events the broker keeps in memory (its hot cache), at most; also how many of the newest
    /// events recovery reads back.
    pub hot_events: usize,
    /// Bytes of events the broker keeps in memory, at most.
    pub hot_bytes: usize,
    /// Start even if a sealed segment is corrupt: skip it (clients resuming into it get a gap
    /// notice). Off by default: the server refuses to start and says which file is damaged.
    pub skip_corrupt: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Memory,
            dir: PathBuf::from("./tidings-data"),
            durability: Durability::Os,
            fsync_interval: Duration::from_secs(1),
            segment_bytes: 64 << 20,
            hot_events: 100_000,
            hot_bytes: 64 << 20,
            skip_corrupt: false,
        }
    }
}

impl StoreConfig {
    /// Checks what the types cannot.
    ///
    /// # Errors
    /// A message naming the key and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < 4096 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(format!(
                "store.segment_bytes is {}; it must be between 4096 and {MAX_SEGMENT_BYTES} (1 GiB)",
                self.segment_bytes
            ));
        }
        if self.durability == Durability::Os && self.fsync_interval.is_zero() {
            return Err(
                "store.fsync_interval must not be 0 with durability = \"os\" (use durability = \"strict\" to sync every append)"
                    .to_owned(),
            );
        }
        if self.dir.as_os_str().is_empty() {
            return Err("store.dir must not be empty".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_units() {
        let c: StoreConfig = toml::from_str(
            "kind = \"file\"\ndir = \"/var/lib/tidings\"\ndurability = \"strict\"\nfsync_interval = \"200ms\"\nskip_corrupt = true",
        )
        .unwrap();
        assert_eq!(c.dir, PathBuf::from("/var/lib/tidings"));
        assert_eq!(c.durability, Durability::Strict);
        assert_eq!(c.fsync_interval, Duration::from_millis(200));
        assert!(c.skip_corrupt);
        assert_eq!(c.segment_bytes, 64 << 20);
        let c: StoreConfig = toml::from_str("kind = \"memory\"\ndurability = \"none\"").unwrap();
        assert_eq!(
            (c.kind, c.durability),
            (StoreKind::Memory, Durability::None)
        );
        assert!(toml::from_str::<StoreConfig>("typo = 1").is_err());
        assert!(StoreConfig::default().validate().is_ok());
        let bad = StoreConfig {
            segment_bytes: 1,
            ..StoreConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("segment_bytes"));
    }
}
