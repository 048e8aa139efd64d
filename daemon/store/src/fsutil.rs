//! Durable file primitives: record framing with checksums, atomic replace, directory fsync.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Bytes before each record's payload: length (u32 LE) then CRC-32 of the payload (u32 LE).
pub(crate) const FRAME_HEADER: usize = 8;

/// Largest payload a record may have. A bigger length field means the frame is damaged.
pub(crate) const MAX_RECORD: usize = 256 << 20;

/// Append one framed record holding `payload` to `out`.
///
/// A payload larger than [`MAX_RECORD`] is refused: it could not be read back.
pub(crate) fn frame_into(payload: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    if payload.len() > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "raft log record of {} bytes exceeds the {MAX_RECORD}-byte limit",
                payload.len()
            ),
        ));
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Fewer bytes remain than the frame needs.
    Short { need: usize, have: usize },
    /// The length field is zero or larger than [`MAX_RECORD`].
    BadLength(u32),
    /// The payload does not match its checksum.
    Checksum { stored: u32, actual: u32 },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Short { need, have } => {
                write!(f, "record needs {need} bytes but only {have} remain")
            }
            FrameError::BadLength(len) => write!(f, "record length {len} is out of range"),
            FrameError::Checksum { stored, actual } => write!(
                f,
                "record checksum mismatch (stored {stored:08x}, computed {actual:08x})"
            ),
        }
    }
}

/// Decode the frame starting at `offset`: its payload and the offset of the next frame.
pub(crate) fn read_frame(buf: &[u8], offset: usize) -> Result<(&[u8], usize), FrameError> {
    let rest = &buf[offset.min(buf.len())..];
    if rest.len() < FRAME_HEADER {
        return Err(FrameError::Short {
            need: FRAME_HEADER,
            have: rest.len(),
        });
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let stored = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    // A zero length is never written (payloads are JSON) and guards against zero-filled tails,
    // whose checksum field would otherwise match the CRC of an empty payload.
    if len == 0 || len as usize > MAX_RECORD {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if rest.len() < FRAME_HEADER + len {
        return Err(FrameError::Short {
            need: FRAME_HEADER + len,
            have: rest.len(),
        });
    }
    let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
    let actual = crc32fast::hash(payload);
    if actual != stored {
        return Err(FrameError::Checksum { stored, actual });
    }
    Ok((payload, offset + FRAME_HEADER + len))
}

/// fsync a directory so that a rename or a new file in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` with `bytes` atomically: write `<path>.tmp`, fsync it, rename it over `path`,
/// fsync the directory. A crash leaves either the old or the new content, never a mix.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let tmp = tmp_path(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// The temporary name [`atomic_write`] uses for `path`.
pub(crate) fn tmp_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Attach the path to an IO error so that it reaches the raft log with context.
pub(crate) fn with_path(action: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("failed to {action} {}: {e}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_detect_damage() {
        let mut buf = Vec::new();
        frame_into(b"{\"a\":1}", &mut buf).unwrap();
        frame_into(b"[2]", &mut buf).unwrap();
        let (p1, next) = read_frame(&buf, 0).unwrap();
        assert_eq!(p1, b"{\"a\":1}");
        let (p2, end) = read_frame(&buf, next).unwrap();
        assert_eq!(p2, b"[2]");
        assert_eq!(end, buf.len());
        assert!(matches!(
            read_frame(&buf, end),
            Err(FrameError::Short { have: 0, .. })
        ));

        // A flipped payload byte fails the checksum.
        let mut bad = buf.clone();
        bad[FRAME_HEADER + 2] ^= 0x40;
        assert!(matches!(
            read_frame(&bad, 0),
            Err(FrameError::Checksum { .. })
        ));

        // A cut payload is short.
        assert!(matches!(
            read_frame(&buf[..next - 1], 0),
            Err(FrameError::Short { .. })
        ));

        // Zero-filled bytes are not a valid (empty) record.
        assert_eq!(read_frame(&[0u8; 32], 0), Err(FrameError::BadLength(0)));
    }

    #[test]
    fn atomic_write_replaces_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!tmp_path(&path).exists());
    }
}
