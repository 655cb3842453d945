//! Reading procfs and sysfs files, with their handles kept open between
//! collections.

use std::path::Path;

/// Open procfs/sysfs files kept across collections; past this many the cache
/// starts over (a node with thousands of interfaces still works, just slower).
#[cfg(target_os = "linux")]
const MAX_OPEN_FILES: usize = 2048;

/// Reads a whole file. Files on procfs and sysfs stay open between calls and
/// are re-read from offset 0 (`seq_file` and kernfs regenerate their contents
/// on a read at 0), which saves the path walk, open and close that otherwise
/// make up about a third of a collection's CPU. Anything else is read plainly.
pub fn read_cached(path: &Path) -> std::io::Result<String> {
    #[cfg(target_os = "linux")]
    {
        use std::collections::HashMap;
        use std::sync::{Mutex, OnceLock};
        static OPEN: OnceLock<Mutex<HashMap<std::path::PathBuf, std::fs::File>>> = OnceLock::new();
        let open = OPEN.get_or_init(|| Mutex::new(HashMap::new()));
        let mut files = open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = files.get(path) {
            match read_at_zero(f) {
                Ok(s) => return Ok(s),
                // The object went away (an interface was removed): forget it and open anew.
                Err(_) => {
                    files.remove(path);
                }
            }
        }
        let f = std::fs::File::open(path)?;
        let text = read_at_zero(&f)?;
        if is_pseudo_fs(&f) {
            if files.len() >= MAX_OPEN_FILES {
                files.clear();
            }
            files.insert(path.to_path_buf(), f);
        }
        Ok(text)
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::fs::read_to_string(path)
    }
}

#[cfg(target_os = "linux")]
fn read_at_zero(f: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let n = f.read_at(&mut chunk, buf.len() as u64)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Whether the file lives on procfs or sysfs, whose contents are generated on read.
#[cfg(target_os = "linux")]
fn is_pseudo_fs(f: &std::fs::File) -> bool {
    // From linux/magic.h.
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    nix::sys::statfs::fstatfs(f).is_ok_and(|s| {
        #[allow(
            clippy::unnecessary_cast,
            reason = "the field's type differs between libc targets"
        )]
        let t = s.filesystem_type().0 as i64;
        t == PROC_SUPER_MAGIC || t == SYSFS_MAGIC
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn cached_reads_see_new_contents() {
        // /proc/self/stat changes between reads (utime, state); a cached
        // handle must re-generate it rather than return the old text.
        let stat = Path::new("/proc/self/stat");
        let pid = format!("{} ", std::process::id());
        assert!(read_cached(stat).unwrap().starts_with(&pid));
        assert!(
            read_cached(stat).unwrap().starts_with(&pid),
            "a cached handle reads again"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x");
        std::fs::write(&file, "one").unwrap();
        assert_eq!(read_cached(&file).unwrap(), "one");
        std::fs::write(&file, "two").unwrap();
        assert_eq!(
            read_cached(&file).unwrap(),
            "two",
            "regular files are not cached"
        );
        assert!(read_cached(&dir.path().join("missing")).is_err());
    }
}
