//! Why the file log could not open: each message names the file and says what to do.

use std::io;
use std::path::PathBuf;

/// The file log could not be opened (or recovered).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The `[store]` settings are invalid.
    #[error("invalid [store] configuration: {0}")]
    Config(String),
    /// Another process holds the data directory's lock.
    #[error(
        "another tidings server holds {}{}; stop it first, or give this server another data directory (store.dir)",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The pid written in it, if readable.
        pid: Option<u32>,
    },
    /// A file or the directory could not be read, written or created.
    #[error(
        "cannot {what} {}: {source}; check that the disk is mounted and writable and that this user may read and write the data directory",
        path.display()
    )]
    Io {
        /// What was being done ("create the data directory", "read", ...).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A sealed segment is damaged.
    #[error(
        "segment {} is corrupt at byte {offset} ({reason}); start with --skip-corrupt (store.skip_corrupt = true) to skip it (clients resuming into it get a gap notice) or restore it from a backup",
        path.display()
    )]
    CorruptSegment {
        /// The segment file.
        path: PathBuf,
        /// Where its valid records end.
        offset: usize,
        /// What is wrong there.
        reason: String,
    },
    /// The `meta` file is damaged or from another version.
    #[error(
        "{} is unreadable ({reason}); restore it from a backup, or move the data directory away to start a new log (clients' cursors then get a gap notice)",
        path.display()
    )]
    CorruptMeta {
        /// The meta file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Segments without the `meta` file that numbers them.
    #[error(
        "{} holds log segments but no meta file ({}); restore the meta file from a backup, or move the data directory away to start a new log",
        dir.display(),
        meta.display()
    )]
    MissingMeta {
        /// The data directory.
        dir: PathBuf,
        /// The missing file.
        meta: PathBuf,
    },
}

impl StoreError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
