//! File helpers of the file log: names, the `meta` file, directory syncs, the lock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;
use tidings_core::log::record::{self, Meta};

use crate::store::StoreError;

/// The `meta` file's name in the data directory.
pub(crate) const META: &str = "meta";
const META_TMP: &str = "meta.tmp";
/// The lock file's name in the data directory.
pub(crate) const LOCK: &str = "lock";

/// A segment's file name: its base position, zero-padded so names sort like positions.
pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// The base position a segment file name says, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Syncs a directory, so that files created, renamed or removed in it stay so after a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces the `meta` file atomically: a temporary file, synced, renamed over it, the
/// directory synced.
pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    let tmp = dir.join(META_TMP);
    {
        let mut file = File::create(&tmp)?;
        file.write_all(&record::encode_meta(meta))?;
        file.sync_all()?;
    }
    fs::rename(&tmp, dir.join(META))?;
    sync_dir(dir)
}

/// Removes a temporary `meta` left by a crash.
pub(crate) fn remove_meta_tmp(dir: &Path) {
    let _ = fs::remove_file(dir.join(META_TMP));
}

/// The data directory's lock: an advisory lock (`flock`) on `lock`, which holds the owner's pid.
/// Released when dropped (the file is closed), also when the process dies.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    pub(crate) fn acquire(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io("open the lock file", &path, e))?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(StoreError::Locked {
                    path,
                    pid: text.trim().parse().ok(),
                });
            }
            Err(e) => return Err(StoreError::io("lock", &path, e.into())),
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
            .map_err(|e| StoreError::io("write the lock file", &path, e))?;
        Ok(Self { _file: file })
    }
}
