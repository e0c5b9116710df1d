//! What the unwinder needs from an ELF file: its identity, its `PT_LOAD` segments (to
//! compute where it is loaded) and the location of its unwind sections.
//!
//! The header is parsed with `object` through a [`ReadCache`], so only the headers and the
//! notes are read, never the whole file; the unwind section bytes are then read by file
//! offset (`pread`) when the module cache misses.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use object::read::ReadCache;
use object::read::elf::ElfFile64;
use object::{Object, ObjectSection, ObjectSegment, ReadRef, SectionFlags, SegmentFlags};

use crate::UnwindError;

const PF_X: u32 = 1;
const SHF_COMPRESSED: u64 = 0x800;

/// A `PT_LOAD` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoadSegment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub executable: bool,
}

/// A section's address (SVMA) range and where its bytes are in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SectionLocation {
    pub svma: Range<u64>,
    pub file_offset: u64,
}

/// Parsed headers of an ELF file (small; cached by file identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ElfInfo {
    pub build_id: Option<Vec<u8>>,
    pub loads: Vec<LoadSegment>,
    pub text_svma: Option<Range<u64>>,
    pub got_svma: Option<Range<u64>>,
    pub eh_frame: Option<SectionLocation>,
    pub eh_frame_hdr: Option<SectionLocation>,
    /// Only looked for when there is no `.eh_frame`: framehop uses `.debug_frame` only then.
    pub debug_frame: Option<SectionLocation>,
}

impl ElfInfo {
    /// Whether the file has unwind tables framehop can use.
    pub fn has_unwind_tables(&self) -> bool {
        self.eh_frame.is_some() || self.debug_frame.is_some()
    }

    /// Bytes of the unwind sections, as cached.
    pub fn unwind_bytes(&self) -> u64 {
        [&self.eh_frame, &self.eh_frame_hdr, &self.debug_frame]
            .into_iter()
            .flatten()
            .map(|s| s.svma.end - s.svma.start)
            .sum()
    }

    /// The load bias (AVMA of SVMA 0; framehop's `base_avma` since ELF's `base_svma` is 0)
    /// of a mapping of this file at `start` with file offset `offset`: the mapping shows
    /// the segment whose file range holds `offset` (the kernel maps from the page-aligned
    /// `p_offset`), so `start` is the address of SVMA `p_vaddr - p_offset + offset`.
    /// Correct for PIE, shared libraries, non-PIE executables (bias 0) and segments whose
    /// `p_offset != p_vaddr`.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        let holds = |s: &&LoadSegment| {
            (s.offset & !0xfff) <= offset && offset < s.offset.saturating_add(s.filesz.max(1))
        };
        let segment = self
            .loads
            .iter()
            .filter(|s| s.executable)
            .find(holds)
            .or_else(|| self.loads.iter().find(holds))?;
        let svma_of_start = segment
            .vaddr
            .wrapping_sub(segment.offset)
            .wrapping_add(offset);
        Some(start.wrapping_sub(svma_of_start))
    }
}

/// Parses the headers of the ELF file `data`.
pub(crate) fn parse<'data, R: ReadRef<'data>>(data: R) -> Result<ElfInfo, UnwindError> {
    let elf = ElfFile64::<object::Endianness, R>::parse(data)?;
    if elf.architecture() != object::Architecture::X86_64 {
        return Err(UnwindError::UnsupportedArchitecture);
    }
    let build_id = elf
        .build_id()
        .ok()
        .flatten()
        .filter(|id| !id.is_empty())
        .map(<[u8]>::to_vec);
    let loads = elf
        .segments()
        .map(|segment| {
            let (offset, filesz) = segment.file_range();
            LoadSegment {
                vaddr: segment.address(),
                offset,
                filesz,
                executable: matches!(segment.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0),
            }
        })
        .collect();
    let svma = |name: &str| {
        elf.section_by_name(name)
            .map(|s| s.address()..s.address() + s.size())
    };
    let located = |name: &str| {
        let section = elf.section_by_name(name)?;
        if matches!(section.flags(), SectionFlags::Elf { sh_flags } if sh_flags & SHF_COMPRESSED != 0)
        {
            // Compressed (.debug_frame in some distributions): not supported, see crate docs.
            return None;
        }
        let (file_offset, size) = section.file_range()?;
        (size > 0).then(|| SectionLocation {
            svma: section.address()..section.address() + size,
            file_offset,
        })
    };
    let eh_frame = located(".eh_frame");
    let debug_frame = if eh_frame.is_none() {
        located(".debug_frame")
    } else {
        None
    };
    Ok(ElfInfo {
        build_id,
        loads,
        text_svma: svma(".text"),
        got_svma: svma(".got"),
        eh_frame_hdr: eh_frame.as_ref().and_then(|_| located(".eh_frame_hdr")),
        eh_frame,
        debug_frame,
    })
}

/// Parses the headers of an opened file, reading only what is needed.
pub(crate) fn parse_file(file: &File) -> Result<ElfInfo, UnwindError> {
    let cache = ReadCache::new(file);
    parse(&cache)
}

/// The unwind section bytes framehop needs for one module (shared by every process that
/// maps it).
#[derive(Debug)]
pub(crate) struct UnwindSections {
    pub text_svma: Option<Range<u64>>,
    pub got_svma: Option<Range<u64>>,
    pub eh_frame_svma: Option<Range<u64>>,
    pub eh_frame: Option<Arc<[u8]>>,
    pub eh_frame_hdr_svma: Option<Range<u64>>,
    pub eh_frame_hdr: Option<Arc<[u8]>>,
    pub debug_frame: Option<Arc<[u8]>>,
    pub bytes: usize,
}

impl UnwindSections {
    /// Reads the sections with `read(file_offset, len)`.
    pub fn read(
        info: &ElfInfo,
        mut read: impl FnMut(u64, usize) -> Result<Vec<u8>, UnwindError>,
    ) -> Result<Self, UnwindError> {
        let mut bytes = 0;
        let mut load = |loc: &Option<SectionLocation>| -> Result<Option<Arc<[u8]>>, UnwindError> {
            let Some(loc) = loc else { return Ok(None) };
            let len = usize::try_from(loc.svma.end - loc.svma.start)
                .map_err(|_| UnwindError::TooLarge)?;
            bytes += len;
            Ok(Some(Arc::from(read(loc.file_offset, len)?)))
        };
        let eh_frame = load(&info.eh_frame)?;
        let eh_frame_hdr = load(&info.eh_frame_hdr)?;
        let debug_frame = load(&info.debug_frame)?;
        Ok(UnwindSections {
            text_svma: info.text_svma.clone(),
            got_svma: info.got_svma.clone(),
            eh_frame_svma: info.eh_frame.as_ref().map(|l| l.svma.clone()),
            eh_frame,
            eh_frame_hdr_svma: info.eh_frame_hdr.as_ref().map(|l| l.svma.clone()),
            eh_frame_hdr,
            debug_frame,
            bytes,
        })
    }

    /// Reads the sections from an opened file.
    pub fn read_file(info: &ElfInfo, file: &File) -> Result<Self, UnwindError> {
        Self::read(info, |offset, len| {
            let mut buf = vec![0; len];
            file.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        })
    }

    /// Reads the sections from an ELF image held in memory (the vDSO).
    pub fn read_image(info: &ElfInfo, image: &[u8]) -> Result<Self, UnwindError> {
        Self::read(info, |offset, len| {
            usize::try_from(offset)
                .ok()
                .and_then(|start| image.get(start..start.checked_add(len)?))
                .map(<[u8]>::to_vec)
                .ok_or(UnwindError::Truncated)
        })
    }

    /// framehop's view of these sections.
    pub fn section_info(&self) -> framehop::ExplicitModuleSectionInfo<Arc<[u8]>> {
        framehop::ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text_svma.clone(),
            got_svma: self.got_svma.clone(),
            eh_frame_svma: self.eh_frame_svma.clone(),
            eh_frame: self.eh_frame.clone(),
            eh_frame_hdr_svma: self.eh_frame_hdr_svma.clone(),
            eh_frame_hdr: self.eh_frame_hdr.clone(),
            debug_frame: self.debug_frame.clone(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(loads: Vec<LoadSegment>) -> ElfInfo {
        ElfInfo {
            build_id: None,
            loads,
            text_svma: None,
            got_svma: None,
            eh_frame: None,
            eh_frame_hdr: None,
            debug_frame: None,
        }
    }

    #[test]
    fn bias_of_pie_shared_library_and_non_pie_executable() {
        // A shared library / PIE: text at file offset 0x28000, vaddr 0x28000.
        let lib = info(vec![
            LoadSegment {
                vaddr: 0,
                offset: 0,
                filesz: 0x28000,
                executable: false,
            },
            LoadSegment {
                vaddr: 0x28000,
                offset: 0x28000,
                filesz: 0x155000,
                executable: true,
            },
        ]);
        assert_eq!(lib.bias(0x7f00_0002_8000, 0x28000), Some(0x7f00_0000_0000));
        // Non-PIE: text segment at vaddr 0x401000, file offset 0x1000: bias 0.
        let exe = info(vec![
            LoadSegment {
                vaddr: 0x400000,
                offset: 0,
                filesz: 0x1000,
                executable: false,
            },
            LoadSegment {
                vaddr: 0x401000,
                offset: 0x1000,
                filesz: 0x2000,
                executable: true,
            },
        ]);
        assert_eq!(exe.bias(0x401000, 0x1000), Some(0));
        // p_vaddr != p_offset (lld-style layout): text at offset 0x1040, vaddr 0x2040, mapped
        // from the page-aligned offset 0x1000 at 0x5555_5555_6000.
        let lld = info(vec![
            LoadSegment {
                vaddr: 0,
                offset: 0,
                filesz: 0x1040,
                executable: false,
            },
            LoadSegment {
                vaddr: 0x2040,
                offset: 0x1040,
                filesz: 0x500,
                executable: true,
            },
        ]);
        let bias = lld.bias(0x5555_5555_6000, 0x1000).unwrap();
        assert_eq!(bias, 0x5555_5555_6000 - 0x2000);
        // An address of the text segment maps back to its SVMA.
        assert_eq!(0x5555_5555_6040 - bias, 0x2040);
        // An offset in no segment.
        assert_eq!(lld.bias(0x1000, 0x9000), None);
    }

    #[test]
    fn parses_this_test_binary() {
        let exe = std::fs::File::open("/proc/self/exe").unwrap();
        let info = parse_file(&exe).unwrap();
        assert!(info.has_unwind_tables(), "{info:?}");
        assert!(info.eh_frame_hdr.is_some());
        assert!(info.loads.iter().any(|s| s.executable));
        let sections = UnwindSections::read_file(&info, &exe).unwrap();
        let eh = sections.eh_frame.as_deref().unwrap();
        // The first CIE of .eh_frame: length, then CIE id 0.
        assert_eq!(&eh[4..8], &[0, 0, 0, 0]);
        assert_eq!(sections.bytes as u64, info.unwind_bytes());
    }
}
