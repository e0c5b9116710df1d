//! User-space stack unwinding from copied stack bytes and registers, the user-space half
//! of the `perf --call-graph dwarf` design: at each sample the eBPF program copies the
//! thread's user registers (ip, sp, bp) and the top of its user stack (starting at sp);
//! [`Unwinder::unwind`] turns them into a list of return addresses.
//!
//! # Design
//!
//! The unwinding itself is framehop's (DWARF CFI from `.eh_frame` indexed by
//! `.eh_frame_hdr`, or `.debug_frame` when a module has no `.eh_frame`; the frame-pointer
//! rule where an address is in no module with unwind tables). This crate feeds it:
//!
//! * **Process state** (per pid): the process's executable mappings from
//!   `/proc/PID/maps` and a framehop unwinder holding the modules loaded so far. Modules
//!   are loaded *lazily*: only when an address being unwound falls in the mapping, so a
//!   process costs the modules its stacks actually touch. At most
//!   [`UnwinderConfig::max_mappings_per_process`] mappings and
//!   [`UnwinderConfig::max_processes`] processes (least recently sampled is dropped).
//! * **Module cache** (shared by all processes, `Arc`): the unwind section bytes of each
//!   ELF file (`.eh_frame`, `.eh_frame_hdr`, or `.debug_frame`; plus the `.text` / `.got`
//!   address ranges DWARF pointer encodings refer to), keyed by GNU build id, or by
//!   `(dev, inode, size, mtime)` of the file when it has none. Bounded by
//!   [`UnwinderConfig::max_module_bytes`] with LRU eviction; an evicted module is also
//!   removed from every process's unwinder (so the bytes are really freed) and is
//!   reloaded from the file the next time an address falls in it. A module larger than
//!   the whole bound is not cached and unwinds with frame pointers.
//! * **File headers** (`PT_LOAD` segments, section locations, build id: a few hundred
//!   bytes each) are cached by `(dev, inode, size, mtime)` so a library mapped by many
//!   processes is parsed once; at most 4096 entries (the map is cleared when full).
//! * framehop's rule cache (509 slots, keyed by address and module-set generation) is
//!   shared by all processes.
//!
//! Files are opened through `/proc/PID/map_files/START-END` (the mapped file itself, even
//! if deleted or replaced) or else `/proc/PID/root/PATH` (containers). The vDSO is read
//! from `/proc/PID/mem`. A module's load bias comes from the `PT_LOAD` segment that holds
//! the mapping's file offset (PIE, shared libraries, non-PIE executables, `p_offset !=
//! p_vaddr`).
//!
//! # Staleness
//!
//! A process's mappings are re-read when an address (the ip or a return address) is in
//! no known executable mapping (a `dlopen`ed library), at most once per
//! [`UnwinderConfig::miss_rescan_interval`] (100 ms), and every
//! [`UnwinderConfig::rescan_interval`] (2 s) while the process is sampled. A rescan keeps
//! the modules of unchanged mappings and drops the others, so after `exec`, `dlclose` or
//! a remapping, wrong modules are used for at most 2 s; a new module is found within
//! 100 ms (samples in it until then end with a truncation, never a wrong frame from an
//! unknown mapping). The caller can do better where it knows more: the eBPF sampler
//! sends each thread's exec count and calls [`Unwinder::forget`] when it grows, so an
//! exec is never stale there.
//!
//! # Results
//!
//! Frames are leaf first (`frames[0]` is the ip) and raw return addresses. A return
//! address that is in no executable mapping ends the stack ([`Truncation`] says why)
//! instead of being emitted. [`Method`] says whether callers were found through unwind
//! tables or frame pointers; a frame counts as DWARF when its address is in a module
//! whose unwind tables are loaded (framehop itself falls back to frame pointers for an
//! address no FDE covers in such a module, e.g. hand-written assembly without CFI, which
//! is still counted as DWARF).
//!
//! # Not handled
//!
//! * Architectures other than x86_64: [`Unwinder::unwind`] returns the leaf only, with
//!   [`Truncation::NoUnwindInfo`].
//! * Signal frames (`__restore_rt` has CFI expressions framehop does not evaluate fully):
//!   stacks through a signal handler usually end there.
//! * Compressed `.debug_frame` sections, and separate debug files (`.gnu_debuglink`,
//!   debuginfod): a module without `.eh_frame` in the mapped file unwinds with frame
//!   pointers.
//! * Frame-pointer walks are only as good as the code's frame pointers: a walk through
//!   code built without them usually ends with [`Truncation::NoUnwindInfo`], and one that
//!   happens to find `bp == 0` ends "cleanly" early.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{FrameAddress, Unwinder as _};

mod elf;
mod maps;

use elf::{ElfInfo, UnwindSections};
use maps::{MapEntry, MappingKind};

/// Errors inside the unwinder (loading modules and process maps). [`Unwinder::unwind`]
/// never fails: these end up as a module without unwind info or a [`Truncation`].
#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("I/O error: {0}")]
    RawIo(#[from] std::io::Error),
    #[error("invalid ELF file: {0}")]
    Elf(#[from] object::Error),
    #[error("not an x86_64 ELF file")]
    UnsupportedArchitecture,
    #[error("the module has no .eh_frame or .debug_frame")]
    NoUnwindTables,
    #[error("the mapping's file offset is in no PT_LOAD segment")]
    NoSegment,
    #[error("the module's unwind sections are larger than the module cache")]
    TooLarge,
    #[error("a section extends past the end of the image")]
    Truncated,
    #[error("the vDSO has no build id")]
    NoBuildId,
}

/// User registers at the sample (x86_64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// How a stack was unwound (the agent's metric label `coral_agent_stacks_total{unwind=…}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Every caller was found through unwind tables.
    Dwarf,
    /// Every caller was found through frame pointers (JIT code, modules without tables).
    FramePointer,
    /// Some callers each way.
    Mixed,
}

impl Method {
    /// The metric label: `dwarf`, `fp` or `mixed`.
    pub fn label(self) -> &'static str {
        match self {
            Method::Dwarf => "dwarf",
            Method::FramePointer => "fp",
            Method::Mixed => "mixed",
        }
    }
}

/// Why an unwind stopped before a thread root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Truncation {
    /// The next step needed stack memory past the end of the copied bytes (the stack is
    /// deeper than the copy).
    StackCopyEnd,
    /// [`UnwinderConfig::max_depth`] frames were produced and there were more.
    DepthLimit,
    /// A frame without unwind tables (JIT code, a module without `.eh_frame`, or one
    /// that could not be read) whose frame-pointer rule gave no valid caller: the usual
    /// end of a walk through code built without frame pointers.
    NoUnwindInfo,
    /// The unwind tables gave an invalid caller: a return address in no executable
    /// mapping, a stack pointer that does not advance, or unreadable memory below sp.
    BadFrame,
    /// The process's maps could not be read (it exited): the stack is the leaf only.
    ProcessNotFound,
}

impl Truncation {
    /// A metric label: `stack_copy_end`, `depth_limit`, `no_unwind_info`, `bad_frame`,
    /// `process_not_found`.
    pub fn label(self) -> &'static str {
        match self {
            Truncation::StackCopyEnd => "stack_copy_end",
            Truncation::DepthLimit => "depth_limit",
            Truncation::NoUnwindInfo => "no_unwind_info",
            Truncation::BadFrame => "bad_frame",
            Truncation::ProcessNotFound => "process_not_found",
        }
    }
}

/// An unwound stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unwound {
    /// Leaf first: `frames[0]` is the ip, then raw return addresses (not minus one). At
    /// most [`UnwinderConfig::max_depth`] (and at least one).
    pub frames: Vec<u64>,
    pub method: Method,
    /// `None`: the unwind reached the end of the stack as the unwind info says (a thread
    /// root whose CFI marks the return address undefined, or `bp == 0`).
    pub truncated: Option<Truncation>,
}

/// Limits and intervals of an [`Unwinder`].
#[derive(Debug, Clone)]
pub struct UnwinderConfig {
    /// Most frames in a stack (the leaf included).
    pub max_depth: usize,
    /// Bound on the unwind section bytes cached for all modules.
    pub max_module_bytes: usize,
    /// Most processes with state; the least recently sampled is dropped beyond.
    pub max_processes: usize,
    /// Most executable mappings kept per process (the lowest addresses).
    pub max_mappings_per_process: usize,
    /// Re-read a sampled process's maps this often (drops modules of `exec`ed or
    /// unmapped code).
    pub rescan_interval: Duration,
    /// Re-read a process's maps when an address is in no known mapping, at most this often.
    pub miss_rescan_interval: Duration,
    /// Never load unwind tables: walk frame pointers only (a comparison baseline and an
    /// escape hatch).
    pub frame_pointers_only: bool,
}

impl Default for UnwinderConfig {
    fn default() -> Self {
        UnwinderConfig {
            max_depth: 127,
            max_module_bytes: 32 << 20,
            max_processes: 4096,
            max_mappings_per_process: 4096,
            rescan_interval: Duration::from_secs(2),
            miss_rescan_interval: Duration::from_millis(100),
            frame_pointers_only: false,
        }
    }
}

/// Counters since the [`Unwinder`] was created, and current cache sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnwinderStats {
    pub stacks: u64,
    pub dwarf: u64,
    pub frame_pointer: u64,
    pub mixed: u64,
    /// Stacks that ended without truncation.
    pub complete: u64,
    pub truncated_stack_copy_end: u64,
    pub truncated_depth_limit: u64,
    pub truncated_no_unwind_info: u64,
    pub truncated_bad_frame: u64,
    pub truncated_process_not_found: u64,
    /// Modules whose unwind sections were read (module cache misses).
    pub module_loads: u64,
    /// Modules that could not be used (no tables, unreadable, too large for the cache).
    pub module_load_failures: u64,
    /// Modules evicted from the module cache.
    pub module_evictions: u64,
    /// Reads of a `/proc/PID/maps`.
    pub map_rescans: u64,
    /// Unwind section bytes in the module cache now.
    pub cached_bytes: u64,
    /// Modules in the module cache now.
    pub cached_modules: u64,
    /// Processes with state now.
    pub processes: u64,
}

impl UnwinderStats {
    /// Stacks unwound with `method`.
    pub fn by_method(&self, method: Method) -> u64 {
        match method {
            Method::Dwarf => self.dwarf,
            Method::FramePointer => self.frame_pointer,
            Method::Mixed => self.mixed,
        }
    }

    /// Stacks truncated for `reason`.
    pub fn truncated(&self, reason: Truncation) -> u64 {
        match reason {
            Truncation::StackCopyEnd => self.truncated_stack_copy_end,
            Truncation::DepthLimit => self.truncated_depth_limit,
            Truncation::NoUnwindInfo => self.truncated_no_unwind_info,
            Truncation::BadFrame => self.truncated_bad_frame,
            Truncation::ProcessNotFound => self.truncated_process_not_found,
        }
    }
}

/// How far past the copied bytes a failed read still counts as "the stack goes on"
/// ([`Truncation::StackCopyEnd`]) rather than a wild pointer.
const STACK_CONTINUES_BYTES: u64 = 8 << 20;
/// Bound of the file header cache.
const MAX_FILE_INFOS: usize = 4096;
/// framehop's module-set generation is a process-wide `u16` that wraps; a rule cached
/// under a generation could be reused after 65536 module changes. Resetting the rule
/// cache every this many changes makes that impossible.
const RULE_CACHE_RESET_CHANGES: u64 = 16384;

/// Identity of an opened file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

/// Key of the module cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ModuleKey {
    BuildId(Box<[u8]>),
    File(FileId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ModuleState {
    /// Not looked at yet, or evicted from the module cache.
    NotLoaded,
    /// In the process's framehop unwinder, with the bytes of module cache slot `slot`.
    Loaded { slot: usize },
    /// Frame pointers only (anonymous, no tables, unreadable, too large).
    NoUnwindInfo,
}

struct Mapping {
    entry: MapEntry,
    state: ModuleState,
}

struct Process {
    /// Executable mappings, sorted by start.
    mappings: Vec<Mapping>,
    unwinder: UnwinderX86_64<Arc<[u8]>>,
    scanned_at: Instant,
    miss_scanned_at: Instant,
    found: bool,
    last_used: u64,
}

struct CachedModule {
    key: ModuleKey,
    sections: Arc<UnwindSections>,
    last_used: u64,
}

/// The LRU cache of unwind sections, in slots so processes refer to entries by index.
/// Hand-written (no LRU crate): an eviction must also remove the module from every
/// process's framehop unwinder, so the cache reports evicted slots, and a cache holding
/// a few hundred modules needs no more than a linear scan on eviction.
#[derive(Default)]
struct ModuleCache {
    slots: Vec<Option<CachedModule>>,
    free: Vec<usize>,
    by_key: HashMap<ModuleKey, usize>,
    bytes: usize,
}

impl ModuleCache {
    fn touch(&mut self, slot: usize, tick: u64) {
        if let Some(Some(entry)) = self.slots.get_mut(slot) {
            entry.last_used = tick;
        }
    }

    fn get(&mut self, key: &ModuleKey, tick: u64) -> Option<(usize, Arc<UnwindSections>)> {
        let slot = *self.by_key.get(key)?;
        let entry = self.slots[slot].as_mut()?;
        entry.last_used = tick;
        Some((slot, entry.sections.clone()))
    }

    /// Inserts, first evicting least recently used entries until it fits; returns the
    /// slot and the evicted slots. The caller checked that `sections` fits in `max_bytes`.
    fn insert(
        &mut self,
        key: ModuleKey,
        sections: Arc<UnwindSections>,
        tick: u64,
        max_bytes: usize,
    ) -> (usize, Vec<usize>) {
        let mut evicted = Vec::new();
        while self.bytes + sections.bytes > max_bytes {
            let Some(lru) = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, e)| e.as_ref().map(|e| (i, e.last_used)))
                .min_by_key(|&(_, used)| used)
                .map(|(i, _)| i)
            else {
                break;
            };
            if let Some(old) = self.slots[lru].take() {
                self.bytes -= old.sections.bytes;
                self.by_key.remove(&old.key);
                self.free.push(lru);
                evicted.push(lru);
            }
        }
        self.bytes += sections.bytes;
        let entry = CachedModule {
            key: key.clone(),
            sections,
            last_used: tick,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                self.slots.len() - 1
            }
        };
        self.by_key.insert(key, slot);
        (slot, evicted)
    }
}

/// The user-space unwinder for all profiled processes. `Send` (it lives on the
/// sampler's reader thread); not `Sync`.
pub struct Unwinder {
    config: UnwinderConfig,
    processes: HashMap<u32, Process>,
    modules: ModuleCache,
    files: HashMap<FileId, Arc<ElfInfo>>,
    rules: CacheX86_64,
    module_changes: u64,
    tick: u64,
    stats: UnwinderStats,
}

impl std::fmt::Debug for Unwinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unwinder")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Unwinder>();
};

/// Reads a little-endian word of the copied stack (`stack` starts at `sp`).
fn read_stack_word(stack: &[u8], sp: u64, addr: u64) -> Result<u64, ()> {
    let start = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
    let bytes = stack
        .get(start..start.checked_add(8).ok_or(())?)
        .ok_or(())?;
    Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
}

impl Unwinder {
    pub fn new(config: UnwinderConfig) -> Self {
        Unwinder {
            config,
            processes: HashMap::new(),
            modules: ModuleCache::default(),
            files: HashMap::new(),
            rules: CacheX86_64::new(),
            module_changes: 0,
            tick: 0,
            stats: UnwinderStats::default(),
        }
    }

    /// Counters since creation and current cache sizes.
    pub fn stats(&self) -> UnwinderStats {
        UnwinderStats {
            cached_bytes: self.modules.bytes as u64,
            cached_modules: self.modules.by_key.len() as u64,
            processes: self.processes.len() as u64,
            ..self.stats
        }
    }

    /// The process exited: drop its module list (shared module data stays cached).
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Unwinds the stack of a thread of process `pid` from its registers and the bytes of
    /// user memory starting at `regs.sp` (`stack`). Never fails: see [`Unwound`].
    pub fn unwind(&mut self, pid: u32, regs: UserRegs, stack: &[u8]) -> Unwound {
        let unwound = if cfg!(target_arch = "x86_64") {
            self.tick += 1;
            let now = Instant::now();
            let mut process = match self.processes.remove(&pid) {
                Some(process) => process,
                None => self.new_process(pid, now),
            };
            if now.duration_since(process.scanned_at) >= self.config.rescan_interval {
                self.rescan(&mut process, pid, now);
            }
            let unwound = self.walk(&mut process, pid, regs, stack, now);
            process.last_used = self.tick;
            self.processes.insert(pid, process);
            self.enforce_process_limit(pid);
            unwound
        } else {
            Unwound {
                frames: vec![regs.ip],
                method: Method::FramePointer,
                truncated: Some(Truncation::NoUnwindInfo),
            }
        };
        self.count(&unwound);
        unwound
    }

    fn count(&mut self, unwound: &Unwound) {
        let stats = &mut self.stats;
        stats.stacks += 1;
        match unwound.method {
            Method::Dwarf => stats.dwarf += 1,
            Method::FramePointer => stats.frame_pointer += 1,
            Method::Mixed => stats.mixed += 1,
        }
        match unwound.truncated {
            None => stats.complete += 1,
            Some(Truncation::StackCopyEnd) => stats.truncated_stack_copy_end += 1,
            Some(Truncation::DepthLimit) => stats.truncated_depth_limit += 1,
            Some(Truncation::NoUnwindInfo) => stats.truncated_no_unwind_info += 1,
            Some(Truncation::BadFrame) => stats.truncated_bad_frame += 1,
            Some(Truncation::ProcessNotFound) => stats.truncated_process_not_found += 1,
        }
    }

    fn walk(
        &mut self,
        process: &mut Process,
        pid: u32,
        regs: UserRegs,
        stack: &[u8],
        now: Instant,
    ) -> Unwound {
        let mut frames = vec![regs.ip];
        if !process.found {
            if now.duration_since(process.miss_scanned_at) >= self.config.miss_rescan_interval {
                process.miss_scanned_at = now;
                self.rescan(process, pid, now);
            }
            if !process.found {
                return Unwound {
                    frames,
                    method: Method::FramePointer,
                    truncated: Some(Truncation::ProcessNotFound),
                };
            }
        }
        let stack_end = regs.sp.saturating_add(stack.len() as u64);
        let mut read = |addr: u64| read_stack_word(stack, regs.sp, addr);
        let mut unwind_regs = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
        let mut address = FrameAddress::from_instruction_pointer(regs.ip);
        let (mut dwarf_steps, mut fp_steps) = (0usize, 0usize);
        let mut leaf_has_tables = None;
        // The mapping of the frame being unwound (each frame's is looked up once: when
        // its return address is checked).
        let mut mapping = self.find_mapping(process, pid, address.address_for_lookup(), now);
        let truncated = loop {
            let has_tables = match mapping {
                Some(index) => self.prepare_module(process, pid, index),
                None => false,
            };
            leaf_has_tables.get_or_insert(has_tables);
            let step = process.unwinder.unwind_frame(
                address,
                &mut unwind_regs,
                &mut self.rules,
                &mut read,
            );
            let no_caller = if has_tables {
                Truncation::BadFrame
            } else {
                Truncation::NoUnwindInfo
            };
            match step {
                Ok(None) => break None,
                Ok(Some(return_address)) => {
                    let Some(next) = FrameAddress::from_return_address(return_address) else {
                        break None;
                    };
                    mapping = self.find_mapping(process, pid, next.address_for_lookup(), now);
                    if mapping.is_none() {
                        break Some(no_caller);
                    }
                    if frames.len() >= self.config.max_depth {
                        break Some(Truncation::DepthLimit);
                    }
                    frames.push(return_address);
                    if has_tables {
                        dwarf_steps += 1;
                    } else {
                        fp_steps += 1;
                    }
                    address = next;
                }
                Err(framehop::Error::CouldNotReadStack(addr))
                    if addr >= stack_end && addr - stack_end < STACK_CONTINUES_BYTES =>
                {
                    break Some(Truncation::StackCopyEnd);
                }
                Err(_) => break Some(no_caller),
            }
        };
        let method = match (dwarf_steps, fp_steps) {
            (0, 0) if leaf_has_tables == Some(true) => Method::Dwarf,
            (0, 0) => Method::FramePointer,
            (_, 0) => Method::Dwarf,
            (0, _) => Method::FramePointer,
            _ => Method::Mixed,
        };
        Unwound {
            frames,
            method,
            truncated,
        }
    }

    fn new_process(&mut self, pid: u32, now: Instant) -> Process {
        let mut process = Process {
            mappings: Vec::new(),
            unwinder: UnwinderX86_64::new(),
            scanned_at: now,
            miss_scanned_at: now,
            found: false,
            last_used: self.tick,
        };
        self.note_module_change();
        self.rescan(&mut process, pid, now);
        process
    }

    /// Drops the least recently sampled process beyond the limit (never `keep`).
    fn enforce_process_limit(&mut self, keep: u32) {
        while self.processes.len() > self.config.max_processes.max(1) {
            let Some(oldest) = self
                .processes
                .iter()
                .filter(|&(&pid, _)| pid != keep)
                .min_by_key(|(_, p)| p.last_used)
                .map(|(&pid, _)| pid)
            else {
                break;
            };
            self.processes.remove(&oldest);
        }
    }

    /// Re-reads the process's maps, keeping the modules of unchanged mappings.
    fn rescan(&mut self, process: &mut Process, pid: u32, now: Instant) {
        self.stats.map_rescans += 1;
        process.scanned_at = now;
        let entries = match maps::read_exec_mappings(pid, self.config.max_mappings_per_process) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::debug!(pid, %error, "cannot read process maps");
                process.found = false;
                if !process.mappings.is_empty() {
                    process.mappings.clear();
                    process.unwinder = UnwinderX86_64::new();
                    self.note_module_change();
                }
                return;
            }
        };
        process.found = true;
        let mut old: HashMap<u64, Mapping> = process
            .mappings
            .drain(..)
            .map(|m| (m.entry.start, m))
            .collect();
        let mappings: Vec<Mapping> = entries
            .into_iter()
            .map(|entry| {
                let state = match old.remove(&entry.start) {
                    Some(kept) if kept.entry == entry => kept.state,
                    Some(changed) => {
                        if matches!(changed.state, ModuleState::Loaded { .. }) {
                            process.unwinder.remove_module(changed.entry.start);
                            self.note_module_change();
                        }
                        Self::initial_state(&entry)
                    }
                    None => Self::initial_state(&entry),
                };
                Mapping { entry, state }
            })
            .collect();
        for gone in old.into_values() {
            if matches!(gone.state, ModuleState::Loaded { .. }) {
                process.unwinder.remove_module(gone.entry.start);
                self.note_module_change();
            }
        }
        process.mappings = mappings;
    }

    fn initial_state(entry: &MapEntry) -> ModuleState {
        match entry.kind {
            MappingKind::Anonymous => ModuleState::NoUnwindInfo,
            _ => ModuleState::NotLoaded,
        }
    }

    fn note_module_change(&mut self) {
        self.module_changes += 1;
        if self.module_changes.is_multiple_of(RULE_CACHE_RESET_CHANGES) {
            self.rules = CacheX86_64::new();
        }
    }

    /// The executable mapping holding `addr`; on a miss, rescans the maps (rate-limited).
    fn find_mapping(
        &mut self,
        process: &mut Process,
        pid: u32,
        addr: u64,
        now: Instant,
    ) -> Option<usize> {
        let lookup = |mappings: &[Mapping]| {
            let after = mappings.partition_point(|m| m.entry.start <= addr);
            let index = after.checked_sub(1)?;
            (addr < mappings[index].entry.end).then_some(index)
        };
        if let Some(index) = lookup(&process.mappings) {
            return Some(index);
        }
        if now.duration_since(process.miss_scanned_at) < self.config.miss_rescan_interval {
            return None;
        }
        process.miss_scanned_at = now;
        self.rescan(process, pid, now);
        lookup(&process.mappings)
    }

    /// Makes sure the module of mapping `index` is loaded if it has unwind tables;
    /// returns whether it has.
    fn prepare_module(&mut self, process: &mut Process, pid: u32, index: usize) -> bool {
        if self.config.frame_pointers_only {
            return false;
        }
        match process.mappings[index].state {
            ModuleState::Loaded { slot } => {
                self.modules.touch(slot, self.tick);
                true
            }
            ModuleState::NoUnwindInfo => false,
            ModuleState::NotLoaded => {
                let entry = process.mappings[index].entry.clone();
                match self.load_module(process, pid, &entry) {
                    Ok(slot) => {
                        process.mappings[index].state = ModuleState::Loaded { slot };
                        true
                    }
                    Err(error) => {
                        tracing::debug!(pid, start = entry.start, %error, "module without usable unwind tables");
                        self.stats.module_load_failures += 1;
                        process.mappings[index].state = ModuleState::NoUnwindInfo;
                        false
                    }
                }
            }
        }
    }

    /// Finds (or reads) the module's unwind sections and adds the module to the process's
    /// framehop unwinder; returns its module cache slot.
    fn load_module(
        &mut self,
        process: &mut Process,
        pid: u32,
        entry: &MapEntry,
    ) -> Result<usize, UnwindError> {
        enum Source {
            File(File),
            Image(Vec<u8>),
        }
        let (info, key, source) = match &entry.kind {
            MappingKind::Anonymous => return Err(UnwindError::NoUnwindTables),
            MappingKind::File { path, .. } => {
                let file = open_mapped_file(pid, entry, path)?;
                let meta = file.metadata()?;
                let id = FileId {
                    dev: meta.dev(),
                    ino: meta.ino(),
                    size: meta.size(),
                    mtime_ns: i128::from(meta.mtime()) * 1_000_000_000
                        + i128::from(meta.mtime_nsec()),
                };
                let info = match self.files.get(&id) {
                    Some(info) => info.clone(),
                    None => {
                        let info = Arc::new(elf::parse_file(&file)?);
                        if self.files.len() >= MAX_FILE_INFOS {
                            self.files.clear();
                        }
                        self.files.insert(id, info.clone());
                        info
                    }
                };
                let key = match &info.build_id {
                    Some(build_id) => ModuleKey::BuildId(build_id.as_slice().into()),
                    None => ModuleKey::File(id),
                };
                (info, key, Source::File(file))
            }
            MappingKind::Vdso => {
                let path = PathBuf::from(format!("/proc/{pid}/mem"));
                let len =
                    usize::try_from(entry.end - entry.start).map_err(|_| UnwindError::TooLarge)?;
                let mut image = vec![0; len];
                File::open(&path)
                    .and_then(|mem| mem.read_exact_at(&mut image, entry.start))
                    .map_err(|source| UnwindError::Io { path, source })?;
                let info = Arc::new(elf::parse(image.as_slice())?);
                let key = ModuleKey::BuildId(
                    info.build_id
                        .as_deref()
                        .ok_or(UnwindError::NoBuildId)?
                        .into(),
                );
                (info, key, Source::Image(image))
            }
        };
        if !info.has_unwind_tables() {
            return Err(UnwindError::NoUnwindTables);
        }
        let bias = info
            .bias(entry.start, entry.offset)
            .ok_or(UnwindError::NoSegment)?;
        let (slot, sections) = match self.modules.get(&key, self.tick) {
            Some(hit) => hit,
            None => {
                if info.unwind_bytes() > self.config.max_module_bytes as u64 {
                    return Err(UnwindError::TooLarge);
                }
                let sections = Arc::new(match &source {
                    Source::File(file) => UnwindSections::read_file(&info, file)?,
                    Source::Image(image) => UnwindSections::read_image(&info, image)?,
                });
                self.stats.module_loads += 1;
                let (slot, evicted) = self.modules.insert(
                    key,
                    sections.clone(),
                    self.tick,
                    self.config.max_module_bytes,
                );
                for evicted_slot in evicted {
                    self.unload_everywhere(evicted_slot, process);
                }
                (slot, sections)
            }
        };
        let name = match &entry.kind {
            MappingKind::File { path, .. } => path.to_string(),
            _ => "[vdso]".to_string(),
        };
        process.unwinder.add_module(framehop::Module::new(
            name,
            entry.start..entry.end,
            bias,
            sections.section_info(),
        ));
        self.note_module_change();
        Ok(slot)
    }

    /// Removes the module of an evicted cache slot from every process (`current` is the
    /// one being unwound, outside the map).
    fn unload_everywhere(&mut self, slot: usize, current: &mut Process) {
        self.stats.module_evictions += 1;
        let mut changes = 0;
        for process in self.processes.values_mut().chain(std::iter::once(current)) {
            for mapping in &mut process.mappings {
                if mapping.state == (ModuleState::Loaded { slot }) {
                    process.unwinder.remove_module(mapping.entry.start);
                    mapping.state = ModuleState::NotLoaded;
                    changes += 1;
                }
            }
        }
        for _ in 0..changes {
            self.note_module_change();
        }
    }
}

/// Opens the file of a mapping: through `map_files` (the mapped file itself, also when
/// deleted or replaced on disk), else by path in the process's root (containers).
fn open_mapped_file(pid: u32, entry: &MapEntry, path: &str) -> Result<File, UnwindError> {
    let map_file = format!("/proc/{pid}/map_files/{:x}-{:x}", entry.start, entry.end);
    if let Ok(file) = File::open(&map_file) {
        return Ok(file);
    }
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    let rooted = PathBuf::from(format!("/proc/{pid}/root{path}"));
    File::open(&rooted).map_err(|source| UnwindError::Io {
        path: rooted,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_words_only_inside_the_copied_stack() {
        let stack: Vec<u8> = (0u8..32).collect();
        let sp = 0x1000;
        assert_eq!(
            read_stack_word(&stack, sp, 0x1000),
            Ok(u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]))
        );
        assert_eq!(
            read_stack_word(&stack, sp, 0x1018),
            Ok(u64::from_le_bytes([24, 25, 26, 27, 28, 29, 30, 31]))
        );
        assert_eq!(read_stack_word(&stack, sp, 0x1019), Err(()));
        assert_eq!(read_stack_word(&stack, sp, 0xff8), Err(()));
        assert_eq!(read_stack_word(&stack, sp, u64::MAX), Err(()));
    }

    #[test]
    fn a_process_that_does_not_exist_gives_the_leaf_only() {
        let mut unwinder = Unwinder::new(UnwinderConfig::default());
        // Above the kernel's PID_MAX_LIMIT (4 Mi): never a process.
        let pid = 0x7fff_fff0;
        let regs = UserRegs {
            ip: 0x401000,
            sp: 0x7ffc_0000_0000,
            bp: 0,
        };
        let unwound = unwinder.unwind(pid, regs, &[0; 64]);
        assert_eq!(unwound.frames, vec![0x401000]);
        assert_eq!(unwound.truncated, Some(Truncation::ProcessNotFound));
        assert_eq!(unwinder.stats().truncated_process_not_found, 1);
        unwinder.forget(pid);
        assert_eq!(unwinder.stats().processes, 0);
    }

    #[test]
    fn reads_the_vdso_unwind_tables_from_process_memory() {
        let pid = std::process::id();
        let vdso = maps::read_exec_mappings(pid, 4096)
            .unwrap()
            .into_iter()
            .find(|m| m.kind == MappingKind::Vdso)
            .expect("a vDSO mapping");
        let mut unwinder = Unwinder::new(UnwinderConfig::default());
        let mut process = unwinder.new_process(pid, Instant::now());
        let slot = unwinder.load_module(&mut process, pid, &vdso).unwrap();
        let (_, sections) = unwinder.modules.slots[slot]
            .as_ref()
            .map(|m| (m.key.clone(), m.sections.clone()))
            .unwrap();
        assert!(sections.eh_frame.is_some() && sections.eh_frame_hdr.is_some());
        assert_eq!(unwinder.stats().module_loads, 1);
    }

    #[test]
    fn labels() {
        assert_eq!(Method::Dwarf.label(), "dwarf");
        assert_eq!(Method::FramePointer.label(), "fp");
        assert_eq!(Method::Mixed.label(), "mixed");
        assert_eq!(Truncation::DepthLimit.label(), "depth_limit");
    }

    #[test]
    fn module_cache_evicts_least_recently_used_first() {
        let sections = |bytes| {
            Arc::new(UnwindSections {
                text_svma: None,
                got_svma: None,
                eh_frame_svma: None,
                eh_frame: None,
                eh_frame_hdr_svma: None,
                eh_frame_hdr: None,
                debug_frame: None,
                bytes,
            })
        };
        let key = |n: u8| ModuleKey::BuildId(vec![n].into());
        let mut cache = ModuleCache::default();
        let (a, evicted) = cache.insert(key(1), sections(40), 1, 100);
        assert!(evicted.is_empty());
        let (b, _) = cache.insert(key(2), sections(40), 2, 100);
        cache.touch(a, 3);
        // 40 + 40 + 30 > 100: b is the least recently used.
        let (c, evicted) = cache.insert(key(3), sections(30), 4, 100);
        assert_eq!(evicted, vec![b]);
        assert_eq!(c, b, "the freed slot is reused");
        assert!(cache.get(&key(2), 5).is_none());
        assert!(cache.get(&key(1), 5).is_some());
        assert_eq!(cache.bytes, 70);
    }
}
