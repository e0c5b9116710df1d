//! `/proc/PID/maps`: the executable mappings of a process. Parsed by hand (a few lines;
//! the `procfs` crate would pull in far more than this format needs).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use crate::UnwindError;

/// What is mapped at an executable mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MappingKind {
    /// A file mapping (`path` as the process sees it; may end with ` (deleted)`).
    File {
        path: Box<str>,
        dev: u64,
        inode: u64,
    },
    /// The vDSO: an ELF image provided by the kernel, read from the process's memory.
    Vdso,
    /// Anonymous (JIT code, `[vsyscall]`, memfd without a usable file): frame pointers only.
    Anonymous,
}

/// One executable mapping, as listed in `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MapEntry {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub kind: MappingKind,
}

/// Reads the executable mappings of `pid`, sorted by start address, at most `limit` of them.
pub(crate) fn read_exec_mappings(pid: u32, limit: usize) -> Result<Vec<MapEntry>, UnwindError> {
    let path = PathBuf::from(format!("/proc/{pid}/maps"));
    let file = std::fs::File::open(&path).map_err(|source| UnwindError::Io {
        path: path.clone(),
        source,
    })?;
    let mut entries = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|source| UnwindError::Io {
            path: path.clone(),
            source,
        })?;
        if let Some(entry) = parse_maps_line(&line) {
            if entries.len() == limit {
                break;
            }
            entries.push(entry);
        }
    }
    // The kernel lists mappings in address order; sort anyway, lookups binary-search.
    entries.sort_by_key(|e| e.start);
    Ok(entries)
}

/// Parses one line of `/proc/PID/maps`; `None` for non-executable or malformed lines.
pub(crate) fn parse_maps_line(line: &str) -> Option<MapEntry> {
    // start-end perms offset dev inode [path]; the path may contain spaces.
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (head, tail) = trimmed.split_at(end);
        rest = tail;
        head
    };
    let range = field();
    let perms = field();
    let offset = field();
    let dev = field();
    let inode = field();
    let path = rest.trim();
    if perms.as_bytes().get(2) != Some(&b'x') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let offset = u64::from_str_radix(offset, 16).ok()?;
    let (major, minor) = dev.split_once(':')?;
    let dev = (u64::from_str_radix(major, 16).ok()? << 32) | u64::from_str_radix(minor, 16).ok()?;
    let inode: u64 = inode.parse().ok()?;
    if start >= end {
        return None;
    }
    let kind = if path == "[vdso]" {
        MappingKind::Vdso
    } else if inode == 0 || path.is_empty() || path.starts_with('[') {
        MappingKind::Anonymous
    } else {
        MappingKind::File {
            path: path.into(),
            dev,
            inode,
        }
    };
    Some(MapEntry {
        start,
        end,
        offset,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_file_anonymous_and_vdso_lines() {
        let libc = parse_maps_line(
            "7f1c2a428000-7f1c2a57d000 r-xp 00028000 fd:01 1311013                    /usr/lib/x86_64-linux-gnu/libc.so.6",
        )
        .unwrap();
        assert_eq!(libc.start, 0x7f1c2a428000);
        assert_eq!(libc.end, 0x7f1c2a57d000);
        assert_eq!(libc.offset, 0x28000);
        assert_eq!(
            libc.kind,
            MappingKind::File {
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                dev: (0xfd << 32) | 1,
                inode: 1311013
            }
        );
        let spaced =
            parse_maps_line("1000-2000 r-xp 00000000 08:02 42   /opt/my app/bin (deleted)")
                .unwrap();
        assert!(
            matches!(spaced.kind, MappingKind::File { ref path, .. } if &**path == "/opt/my app/bin (deleted)")
        );
        let jit = parse_maps_line("3e1c00000000-3e1c00040000 rwxp 00000000 00:00 0").unwrap();
        assert_eq!(jit.kind, MappingKind::Anonymous);
        let vdso = parse_maps_line(
            "7ffd1b9f2000-7ffd1b9f4000 r-xp 00000000 00:00 0                          [vdso]",
        )
        .unwrap();
        assert_eq!(vdso.kind, MappingKind::Vdso);
        assert!(
            parse_maps_line(
                "7f1c2a400000-7f1c2a428000 r--p 00000000 fd:01 1311013 /usr/lib/libc.so.6"
            )
            .is_none()
        );
        assert!(parse_maps_line("garbage").is_none());
    }
}
