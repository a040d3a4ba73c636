//! The state directory and the lock files in it: one writer at a time.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Result, StateError};

/// Creates the state directory with mode 0700 (DICOM folder names and logs can
/// carry personal data), and tightens it if it already exists with wider bits.
pub fn ensure_state_dir(dir: &Path) -> Result<()> {
    let err = |source| StateError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let meta = fs::metadata(dir).map_err(err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// An exclusive advisory lock on a file in the state directory, held until dropped.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    pub path: PathBuf,
}

/// Tries to take the lock `name` in `dir`; `Ok(None)` when someone holds it.
pub fn try_lock(dir: &Path, name: &str) -> Result<Option<LockGuard>> {
    ensure_state_dir(dir)?;
    let path = dir.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StateError::Lock {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(LockGuard { _file: file, path })),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(source)) => Err(StateError::Lock { path, source }),
    }
}

/// Waits up to `timeout` for the lock `name` in `dir`.
pub fn lock_with_timeout(dir: &Path, name: &str, timeout: Duration) -> Result<Option<LockGuard>> {
    let start = std::time::Instant::now();
    loop {
        if let Some(guard) = try_lock(dir, name)? {
            return Ok(Some(guard));
        }
        if start.elapsed() >= timeout {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
