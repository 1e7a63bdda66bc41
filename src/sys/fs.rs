//! Writing a file so that a reader sees either the old content or the new, never a part: to a
//! hidden temporary file in the same directory (never through a symlink), fsynced, renamed over
//! the target, and the directory fsynced so the rename survives a crash. Used for the journals,
//! the record of the last drain, and keepalived's track file (which keepalived re-reads when a
//! file is renamed into place).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// `path`'s directory (`.` for a bare name) and file name; an error for a path that names no
/// file (`/`, `..`).
pub fn dir_and_name(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    Ok((dir, name))
}

/// How many temporary names are tried before giving up (each is random, so a clash means
/// someone is creating files in the directory on purpose).
const TMP_TRIES: usize = 8;

/// Replaces `path`'s content with `bytes` atomically; the file gets `mode` if it is created.
///
/// The temporary file has a random name and is created with `O_EXCL` (`create_new`): a name
/// known in advance (it was `.NAME.PID.tmp`) lets whoever can write the directory plant a file
/// or symlink there first, and a file that already exists is never written through.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let (dir, name) = dir_and_name(path)?;
    let (tmp, mut f) = create_temporary(dir, name, mode)?;
    let result = (|| -> io::Result<()> {
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename is durable only once the directory is synced.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates a new file `.NAME.RANDOM.tmp` in `dir`, never opening one that exists.
fn create_temporary(dir: &Path, name: &OsStr, mode: u32) -> io::Result<(PathBuf, File)> {
    let mut last = None;
    for _ in 0..TMP_TRIES {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{:016x}.tmp", random_u64()?));
        let tmp = dir.join(tmp_name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

/// Whether `name` is one [`create_temporary`] makes: `.NAME.` then 16 hex digits then `.tmp`.
fn is_temporary_name(name: &str) -> bool {
    let Some(stem) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) else {
        return false;
    };
    match stem.rsplit_once('.') {
        Some((base, hex)) => {
            !base.is_empty() && hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// Removes the temporary files [`write_atomic`] left in `dir` when its process was killed
/// between creating one and renaming it (SIGKILL, power loss), if they are older than `age`: a
/// write in progress takes milliseconds, so an older one has no writer any more. Only regular
/// files with the temporary name pattern go; symlinks and other names are left. Returns how
/// many were removed.
pub fn remove_stale_temporaries(dir: &Path, age: std::time::Duration) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_temporary_name) {
            continue;
        }
        let meta = entry.metadata()?;
        let old = meta
            .modified()?
            .elapsed()
            .is_ok_and(|elapsed| elapsed >= age);
        if meta.file_type().is_file() && old {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(removed)
}

fn random_u64() -> io::Result<u64> {
    let mut b = [0u8; 8];
    // getrandom(2) cannot fail once the pool is initialised, which it is long before a
    // service starts; a short read is reported rather than used.
    // SAFETY: the pointer and length describe `b`, which outlives the call.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_atomic(&dir.path().join("missing/f"), b"x", 0o600).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_planted_at_the_old_temporary_name_is_neither_followed_nor_in_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drain-journal.json");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        // The name write_atomic used to use, predictable from the pid.
        let planted = dir
            .path()
            .join(format!(".drain-journal.json.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_atomic(&path, b"[]", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"[]");
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
        assert!(fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn stale_temporaries_are_removed_and_nothing_else() {
        use std::time::{Duration, SystemTime};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let old = SystemTime::now() - Duration::from_secs(3600);
        let age = |name: &str| {
            let f = File::options().write(true).open(d.join(name)).unwrap();
            f.set_modified(old).unwrap();
        };
        // What a SIGKILL between create and rename leaves, an hour ago.
        let (stale, _) = create_temporary(d, OsStr::new("drain-journal.json"), 0o600).unwrap();
        let stale_name = stale.file_name().unwrap().to_str().unwrap().to_string();
        age(&stale_name);
        // A write in progress now, and files that only look alike.
        let (fresh, _) = create_temporary(d, OsStr::new("drain-journal.json"), 0o600).unwrap();
        for other in [
            "drain-journal.json",
            ".drain-journal.json.1234.tmp",
            ".drain-journal.json.0123456789abcdeg.tmp",
            "x.0123456789abcdef.tmp",
        ] {
            fs::write(d.join(other), b"keep").unwrap();
            age(other);
        }
        std::os::unix::fs::symlink("/etc/passwd", d.join(".f.0123456789abcdef.tmp")).unwrap();

        assert_eq!(
            remove_stale_temporaries(d, Duration::from_secs(60)).unwrap(),
            1
        );
        assert!(!stale.exists());
        assert!(fresh.exists());
        assert_eq!(fs::read_dir(d).unwrap().count(), 6);
        assert_eq!(
            remove_stale_temporaries(d, Duration::from_secs(60)).unwrap(),
            0
        );
    }

    #[test]
    fn temporary_names_are_not_predictable() {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = create_temporary(dir.path(), OsStr::new("f"), 0o600).unwrap();
        let (b, _) = create_temporary(dir.path(), OsStr::new("f"), 0o600).unwrap();
        assert_ne!(a, b);
    }
}
