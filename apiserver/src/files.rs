//! Writing a small file whole: readers see the old contents or the new,
//! never half, and a secret is never readable by others, not even for a
//! moment in its temporary file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `text` to `path` through `{path}.tmp` (synced, then renamed),
/// created anew with `mode`: a temporary file left over by a crash, with a
/// wider mode, is removed rather than reused.
pub fn write_atomically(path: &Path, text: &[u8], mode: u32) -> std::io::Result<()> {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = PathBuf::from(name);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(text)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}
