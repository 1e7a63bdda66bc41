//! keepalived's `track_file`: what a value written to it does to the instance, and writing and
//! reading it the way keepalived expects (atomically, by rename into place).

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use super::quoted;

/// What a tracked file's value does to a VRRP instance, as keepalived 2.2.7 computes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrackEffect {
    /// The instance goes to FAULT: it sends a priority-0 advert and releases its addresses.
    Fault,
    /// This much is added to the instance's configured priority (the result is kept within
    /// 1..=254); 0 means no effect.
    Priority(i32),
}

/// Models keepalived 2.2.7's use of a `track_file` value for a VRRP instance
/// (`process_update_vrrp_track_file_status` in trackers/track_file.c; keepalived.conf(5),
/// "Track files"):
///
/// * `weight 0`: the value only means ok (`0`) or fault (anything else); `reverse` swaps them.
/// * otherwise `value × weight` (negated with `reverse`) is clamped to `-254..=253`; `-254`
///   (so anything at or below it) is FAULT, the rest is added to the priority.
///
/// So with any positive weight, [`TrackFile::FAULT`] (-254) faults the instance and
/// [`TrackFile::OK`] (0) leaves it alone, and the same two values work with `weight 0`.
pub fn track_effect(value: i32, weight: i32, reverse: bool) -> TrackEffect {
    if weight == 0 {
        // keepalived: `!!new_status == (weight_multiplier == 1) ? INT_MIN : 0`.
        return if (value != 0) != reverse {
            TrackEffect::Fault
        } else {
            TrackEffect::Priority(0)
        };
    }
    let sign = if reverse { -1 } else { 1 };
    let status = (i64::from(value) * i64::from(weight) * sign).clamp(-254, 253);
    if status == -254 {
        TrackEffect::Fault
    } else {
        TrackEffect::Priority(status as i32)
    }
}

/// How many bytes of a track file keepalived reads (`char buf[128]`, read `sizeof(buf) - 1`).
const TRACK_READ_MAX: usize = 127;

/// The value keepalived takes from a track file's content, or `None` if keepalived would log
/// "Invalid number" and keep its previous value.
///
/// keepalived reads up to 127 bytes and applies `strtol(buf, NULL, 0)`: leading whitespace, an
/// optional sign, then `0x` hex, `0` octal or decimal, stopping at the first other character.
/// No digits at all (or an empty file) reads as 0; a number beyond `long` or `int` is ignored.
pub fn keepalived_track_value(content: &[u8]) -> Option<i32> {
    let text = &content[..content.len().min(TRACK_READ_MAX)];
    let mut i = 0;
    // C isspace() in the "C" locale.
    while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r') {
        i += 1;
    }
    let mut negative = false;
    if i < text.len() && (text[i] == b'+' || text[i] == b'-') {
        negative = text[i] == b'-';
        i += 1;
    }
    let radix: u32 = if text.get(i) == Some(&b'0')
        && matches!(text.get(i + 1), Some(b'x' | b'X'))
        && text.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        i += 2;
        16
    } else if text.get(i) == Some(&b'0') {
        8
    } else {
        10
    };
    // Accumulate the magnitude in i128 so an overflow of C's 64-bit long is detectable.
    let mut magnitude: i128 = 0;
    let mut overflow = false;
    while let Some(d) = text.get(i).and_then(|&b| (b as char).to_digit(radix)) {
        magnitude = magnitude * i128::from(radix) + i128::from(d);
        if magnitude > i128::from(i64::MAX) + 1 {
            overflow = true;
            magnitude = i128::from(i64::MAX) + 1;
        }
        i += 1;
    }
    let value = if negative { -magnitude } else { magnitude };
    // strtol sets ERANGE beyond long's range (keepalived then ignores the value); keepalived also
    // ignores values beyond int.
    if overflow || value > i128::from(i64::MAX) || value < i128::from(i64::MIN) {
        return None;
    }
    i32::try_from(value).ok()
}

/// Errors of the track file; each names the file.
#[derive(Debug, Error)]
pub enum TrackFileError {
    /// The path is a symbolic link. keepalived resolves the link once at start and watches the
    /// target's directory, so replacing the link by rename would go unnoticed.
    #[error("track file {path} is a symbolic link: configure keepalived and the agent with the real path")]
    Symlink {
        /// The track file.
        path: PathBuf,
    },
    /// The path has no parent directory or file name.
    #[error("track file {path}: not a file path")]
    BadPath {
        /// The track file.
        path: PathBuf,
    },
    /// Writing (temporary file, fsync, rename) failed.
    #[error("cannot write track file {path}: {source}")]
    Write {
        /// The track file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Reading failed.
    #[error("cannot read track file {path}: {source}")]
    Read {
        /// The track file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The content is a number keepalived ignores (beyond the range of `int`).
    #[error(
        "track file {path} holds {content}, which keepalived ignores (not a number within int)"
    )]
    Unusable {
        /// The track file.
        path: PathBuf,
        /// The start of the content, quoted.
        content: String,
    },
    /// After writing, the file does not read back as the value written.
    #[error("track file {path}: wrote {wrote} but keepalived would read {read:?}")]
    ReadBack {
        /// The track file.
        path: PathBuf,
        /// The value written.
        wrote: i32,
        /// What reading it back gave (`None`: the file is gone).
        read: Option<i32>,
    },
}

/// The file a keepalived `track_file` block watches, written by the agent as a failover trigger
/// that leaves the interfaces alone.
///
/// Writes go to a temporary file in the same directory, are fsynced and renamed over the track
/// file: keepalived watches the directory for `IN_MOVED_TO`, so it reads the new value exactly
/// once and never a half-written one (a plain rewrite could be read between truncate and write,
/// as 0). The temporary file's own events carry another name, which keepalived ignores.
///
/// The directory must exist when keepalived starts, or keepalived drops the `track_file` ("Track
/// file directory ... does not exist - removing"); the file itself may be absent, which reads
/// as 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackFile {
    path: PathBuf,
}

impl TrackFile {
    /// The value that means "no effect" whatever the weight.
    pub const OK: i32 = 0;
    /// The value that puts the instance in FAULT with any positive weight and with `weight 0`
    /// (see [`track_effect`]).
    pub const FAULT: i32 = -254;

    /// The track file at `path` (use the same path as keepalived's `file` keyword, unresolved
    /// symlinks excluded).
    pub fn new(path: impl Into<PathBuf>) -> TrackFile {
        TrackFile { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Atomically replaces the file's content with `value` (as `"<value>\n"`, the format of
    /// keepalived's own `init_file`), then reads it back the way keepalived will.
    pub fn write(&self, value: i32) -> Result<(), TrackFileError> {
        let path = &self.path;
        if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(TrackFileError::Symlink { path: path.clone() });
        }
        if path.file_name().is_none() {
            return Err(TrackFileError::BadPath { path: path.clone() });
        }
        crate::sys::fs::write_atomic(path, format!("{value}\n").as_bytes(), 0o644).map_err(
            |source| TrackFileError::Write {
                path: path.clone(),
                source,
            },
        )?;
        match self.read() {
            Ok(Some(read)) if read == value => Ok(()),
            Ok(read) => Err(TrackFileError::ReadBack {
                path: path.clone(),
                wrote: value,
                read,
            }),
            Err(e) => Err(e),
        }
    }

    /// The value keepalived would read from the file now; `None` if the file does not exist
    /// (which keepalived treats as 0).
    pub fn read(&self) -> Result<Option<i32>, TrackFileError> {
        // Non-blocking like keepalived's own open, so a FIFO at this path cannot hang the agent.
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TrackFileError::Read {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut content = Vec::with_capacity(TRACK_READ_MAX);
        file.take(TRACK_READ_MAX as u64)
            .read_to_end(&mut content)
            .map_err(|source| TrackFileError::Read {
                path: self.path.clone(),
                source,
            })?;
        keepalived_track_value(&content)
            .map(Some)
            .ok_or_else(|| TrackFileError::Unusable {
                path: self.path.clone(),
                content: quoted(&String::from_utf8_lossy(&content)),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_effect_matches_keepalived() {
        use TrackEffect::*;
        // weight 0: any non-zero value is a fault; reverse swaps.
        assert_eq!(track_effect(0, 0, false), Priority(0));
        assert_eq!(track_effect(1, 0, false), Fault);
        assert_eq!(track_effect(TrackFile::FAULT, 0, false), Fault);
        assert_eq!(track_effect(0, 0, true), Fault);
        assert_eq!(track_effect(7, 0, true), Priority(0));
        // weighted: value × weight, clamped to -254..=253; -254 is FAULT.
        assert_eq!(track_effect(TrackFile::FAULT, 1, false), Fault);
        assert_eq!(track_effect(TrackFile::FAULT, 254, false), Fault);
        assert_eq!(track_effect(-253, 1, false), Priority(-253));
        assert_eq!(track_effect(-50, 2, false), Priority(-100));
        assert_eq!(track_effect(-127, 2, false), Fault);
        assert_eq!(track_effect(50, 2, true), Priority(-100));
        assert_eq!(track_effect(1000, 1, false), Priority(253));
        assert_eq!(track_effect(i32::MIN, 254, false), Fault);
        assert_eq!(track_effect(TrackFile::OK, 1, false), Priority(0));
        // A negative weight turns the fault value into a priority boost: not a trigger.
        assert_eq!(track_effect(TrackFile::FAULT, -1, false), Priority(253));
    }

    #[test]
    fn track_values_are_read_like_strtol_base_0() {
        let cases: &[(&[u8], Option<i32>)] = &[
            (b"-254\n", Some(-254)),
            (b"0\n", Some(0)),
            (b"", Some(0)),
            (b"garbage", Some(0)),
            (b"  \t+12abc", Some(12)),
            (b"0x1F", Some(31)),
            (b"0X", Some(0)),
            (b"0xg", Some(0)),
            (b"010", Some(8)),
            (b"08", Some(0)),
            (b"-0x10", Some(-16)),
            (b"2147483647", Some(i32::MAX)),
            (b"-2147483648", Some(i32::MIN)),
            (b"2147483648", None),
            (b"99999999999999999999999", None),
            (b"-9223372036854775808", None),
        ];
        for (content, expected) in cases {
            assert_eq!(
                keepalived_track_value(content),
                *expected,
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
        // Only the first 127 bytes count.
        let mut long = vec![b' '; 127];
        long.extend_from_slice(b"5");
        assert_eq!(keepalived_track_value(&long), Some(0));
    }

    #[test]
    fn track_file_writes_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let t = TrackFile::new(dir.path().join("keepalived.track"));
        assert_eq!(t.read().unwrap(), None);
        t.write(TrackFile::FAULT).unwrap();
        assert_eq!(fs::read_to_string(t.path()).unwrap(), "-254\n");
        assert_eq!(t.read().unwrap(), Some(-254));
        t.write(TrackFile::OK).unwrap();
        assert_eq!(t.read().unwrap(), Some(0));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("keepalived.track")]);
    }

    #[test]
    fn track_file_refuses_symlinks_and_missing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::write(&real, "0\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = TrackFile::new(&link).write(TrackFile::FAULT).unwrap_err();
        assert!(matches!(e, TrackFileError::Symlink { .. }), "{e}");
        assert_eq!(fs::read_to_string(&real).unwrap(), "0\n");

        let missing = TrackFile::new(dir.path().join("no-such-dir/track"));
        let e = missing.write(TrackFile::FAULT).unwrap_err();
        assert!(matches!(e, TrackFileError::Write { .. }), "{e}");
        assert!(e.to_string().contains("no-such-dir/track"), "{e}");
    }

    #[test]
    fn unusable_track_content_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let t = TrackFile::new(dir.path().join("t"));
        fs::write(t.path(), "99999999999\n").unwrap();
        assert!(matches!(
            t.read().unwrap_err(),
            TrackFileError::Unusable { .. }
        ));
    }
}
