//! Memory stacks: where a request made memory resident.
//!
//! A memory stack is the stack of a thread that page-faulted, weighted by the bytes of
//! the pages the kernel allocated for the fault, and ends in a page pseudo-frame of
//! kind [`FrameKind::Page`] naming the page size (`4 KiB page`, `2 MiB huge page`), so
//! it never merges with a CPU stack and base and huge pages stay apart in every view.

use serde::{Deserialize, Serialize};

use super::{Frame, FrameKind, Profile, WeightedStack};

/// The module of every page pseudo-frame.
pub const MEMORY_MODULE: &str = "[memory]";

/// The size of a base page, in bytes; larger pages are huge pages.
const BASE_PAGE_BYTES: u64 = 4096;

/// The pseudo-frame that ends a memory stack of pages of `page_bytes`: `4 KiB page`,
/// `2 MiB huge page`.
pub fn page_frame(page_bytes: u64) -> Frame {
    let size = if page_bytes >= 1 << 30 && page_bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", page_bytes >> 30)
    } else if page_bytes >= 1 << 20 && page_bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", page_bytes >> 20)
    } else {
        format!("{} KiB", page_bytes.div_ceil(1024))
    };
    let function = if page_bytes > BASE_PAGE_BYTES {
        format!("{size} huge page")
    } else {
        format!("{size} page")
    };
    Frame {
        function,
        module: MEMORY_MODULE.to_string(),
        kind: FrameKind::Page,
    }
}

/// Bytes for people: `512 B`, `4.00 KiB`, `380 MiB`, `1.25 GiB` (three significant
/// digits, binary units like the page sizes).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let decimals = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.decimals$} {}", UNITS[unit])
}

/// Memory made resident, and how much of it in huge pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBreakdown {
    /// All memory made resident, in bytes.
    pub resident_bytes: u64,
    /// Of it, in huge pages (larger than 4 KiB).
    pub huge_page_bytes: u64,
    /// The memory records it was estimated from.
    #[serde(default)]
    pub records: u64,
}

impl MemoryBreakdown {
    /// The line every text view of a request's memory opens with:
    ///
    /// ```text
    /// made 380 MiB resident: 4 KiB pages 120 MiB, huge pages 260 MiB · 1,214 records, ~321 KiB each
    /// ```
    ///
    /// Each record stands for the bytes the sampler saw between two records, so the
    /// total is an estimate whose grain is the bytes per record.
    pub fn describe(&self) -> String {
        let base = self.resident_bytes.saturating_sub(self.huge_page_bytes);
        let mut out = format!(
            "made {} resident: 4 KiB pages {}, huge pages {} · {} record{}",
            format_bytes(self.resident_bytes),
            format_bytes(base),
            format_bytes(self.huge_page_bytes),
            group_digits(self.records),
            if self.records == 1 { "" } else { "s" }
        );
        if let Some(per_record) = self.resident_bytes.checked_div(self.records) {
            out.push_str(&format!(", ~{} each", format_bytes(per_record)));
        }
        out
    }
}

/// `1214` as `1,214`.
fn group_digits(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Profile {
    /// Adds `records` memory records of one stack (frames root → leaf) that made
    /// `bytes` resident in pages of `page_bytes`; the stack ends in [`page_frame`].
    pub fn add_memory(&mut self, stack: &[Frame], page_bytes: u64, records: u64, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.ensure_index();
        let mut ids: Vec<u32> = stack.iter().map(|f| self.intern_frame(f)).collect();
        ids.push(self.intern_frame(&page_frame(page_bytes)));
        self.add_ids(
            ids,
            WeightedStack {
                frames: Vec::new(),
                samples: records,
                cpu_ns: 0,
                off_cpu_ns: 0,
                memory_bytes: bytes,
            },
        );
    }

    /// Memory made resident, and how much in huge pages (stacks whose page frame names
    /// a huge page).
    pub fn memory_breakdown(&self) -> MemoryBreakdown {
        let mut b = MemoryBreakdown::default();
        for stack in self.stacks.iter().filter(|s| s.memory_bytes > 0) {
            b.resident_bytes = b.resident_bytes.saturating_add(stack.memory_bytes);
            b.records = b.records.saturating_add(stack.samples);
            let huge = stack.frames.last().is_some_and(|&leaf| {
                let frame = self.frame(leaf);
                frame.kind == FrameKind::Page && frame.function.ends_with("huge page")
            });
            if huge {
                b.huge_page_bytes = b.huge_page_bytes.saturating_add(stack.memory_bytes);
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_sizes() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(4096), "4.00 KiB");
        assert_eq!(format_bytes(380 << 20), "380 MiB");
        assert_eq!(format_bytes(1280 << 20), "1.25 GiB");
        assert_eq!(format_bytes(15 << 20), "15.0 MiB");
    }

    #[test]
    fn page_frames_name_their_size() {
        assert_eq!(page_frame(4096).function, "4 KiB page");
        assert_eq!(page_frame(2 << 20).function, "2 MiB huge page");
        assert_eq!(page_frame(64 << 10).function, "64 KiB huge page");
        assert_eq!(page_frame(1 << 30).function, "1 GiB huge page");
    }

    #[test]
    fn memory_stacks_stay_apart_and_sum_by_page_size() {
        let main = Frame::user("main", "app");
        let grab = Frame::user("grab_block", "app");
        let mut p = Profile::new();
        p.add(&[main.clone(), grab.clone()], 3, 100);
        p.add_memory(&[main.clone(), grab.clone()], 4096, 10, 40_960);
        p.add_memory(&[main.clone(), grab.clone()], 4096, 1, 4096);
        p.add_memory(&[main, grab], 2 << 20, 2, 4 << 20);
        assert_eq!(
            p.stacks.len(),
            3,
            "the CPU stack and each page size stay apart"
        );
        assert_eq!(
            p.memory_breakdown(),
            MemoryBreakdown {
                resident_bytes: 45_056 + (4 << 20),
                huge_page_bytes: 4 << 20,
                records: 13,
            }
        );
        assert_eq!(
            p.total(super::super::ProfileType::Memory),
            45_056 + (4 << 20)
        );
        assert_eq!(p.count(super::super::ProfileType::Memory), 13);
        assert_eq!(p.count(super::super::ProfileType::Cpu), 3);
    }

    #[test]
    fn the_opening_line_says_total_page_sizes_and_grain() {
        let b = MemoryBreakdown {
            resident_bytes: 380 << 20,
            huge_page_bytes: 260 << 20,
            records: 1214,
        };
        assert_eq!(
            b.describe(),
            "made 380 MiB resident: 4 KiB pages 120 MiB, huge pages 260 MiB · 1,214 records, \
             ~321 KiB each"
        );
        assert_eq!(
            MemoryBreakdown::default().describe(),
            "made 0 B resident: 4 KiB pages 0 B, huge pages 0 B · 0 records"
        );
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1_000_000), "1,000,000");
    }
}
