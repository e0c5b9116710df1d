//! Symbolization of sampled stacks with blazesym.
//!
//! User-space addresses are first *normalized* (blazesym's [`Normalizer`] reads
//! `/proc/PID/maps` and turns each absolute address into a file offset inside a
//! module), then looked up in a cache keyed by the module's identity — its GNU build id,
//! or `(path, size, mtime)` when it has none — and the file offset. So each distinct
//! frame of a binary is symbolized once, whatever the number of processes running it
//! and wherever they are loaded (PIE, ASLR). Only cache misses go to blazesym, batched
//! per module, as `Source::Elf` lookups by file offset (ELF symbols and DWARF,
//! demangled).
//!
//! Modules are opened through `/proc/PID/root/…`, so binaries of processes in other
//! mount namespaces (containers) are found; that needs the same privileges as reading
//! the process's maps (the agent runs as root).
//!
//! Addresses in anonymous mappings are looked up in the process's JIT perf map
//! (`/tmp/perf-PID.map`, as the process sees it); those results are cached per process,
//! never across processes, and a miss is not cached (the map grows while the runtime
//! compiles). Kernel addresses are symbolized through `/proc/kallsyms` and cached by
//! address.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use blazesym::normalize::{NormalizeOpts, Normalizer, Reason, UserMeta};
use blazesym::symbolize::source::{Elf, Kernel, Process, Source};
use blazesym::symbolize::{Input, Symbolized};
use blazesym::{MaybeDefault, Pid};
use coral_analysis::profile::{Frame, FrameKind, KERNEL_MODULE, UNKNOWN_FUNCTION, UNKNOWN_MODULE};

/// The module of frames resolved through a JIT perf map.
pub const JIT_MODULE: &str = "[jit]";
/// The module of frames in the vDSO.
pub const VDSO_MODULE: &str = "[vdso]";

/// Outermost functions of a whole user stack: thread starts and the process entry.
const THREAD_ROOTS: &[&str] = &[
    "start_thread",
    "clone3",
    "__clone3",
    "clone",
    "__clone",
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
];

/// Whether a symbolized user stack (leaf first) ends at its thread's root: its outermost
/// frame is a thread start or the process entry, or in libc (Debian's libc has no symbol
/// table: `clone3` and `start_thread` are unnamed there, or named after the nearest
/// exported symbol). Says nothing of whether the walk was cut: check that first.
pub fn ends_at_thread_root(frames: &[Frame]) -> bool {
    frames.last().is_some_and(|outermost| {
        THREAD_ROOTS.contains(&outermost.function.as_str())
            || (outermost.module.starts_with("libc.so") && frames.len() > 1)
    })
}

/// Counters of a [`Symbolizer`] since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Frames returned (user and kernel).
    pub frames: u64,
    /// Frames answered from Coral's cache.
    pub cache_hits: u64,
    /// Frames that had to be symbolized by blazesym. `frames - cache_hits -
    /// cache_misses` frames needed no lookup at all (unmapped addresses, vDSO frames,
    /// processes that exited).
    pub cache_misses: u64,
}

/// How a module is identified in the symbol cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ModuleKey {
    BuildId(Vec<u8>),
    /// A module without a build id: its path (as the process sees it), size and
    /// modification time.
    File {
        path: PathBuf,
        size: u64,
        mtime_ns: i128,
    },
}

/// The identity of an opened file, to avoid re-reading build ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

/// Symbolizes user-space and kernel addresses into [`Frame`]s, with caches.
///
/// Not `Send` (blazesym's symbolizer uses `Rc` internally): keep one per thread, e.g.
/// on the agent's symbolization task thread.
pub struct Symbolizer {
    normalizer: Normalizer,
    blaze: blazesym::symbolize::Symbolizer,
    modules: Modules,
    /// (module id, file offset) → function name.
    user_cache: HashMap<(u32, u64), Box<str>>,
    /// (pid, address) → function name, for JIT frames.
    jit_cache: HashMap<(u32, u64), Box<str>>,
    /// Address → function name.
    kernel_cache: HashMap<u64, Box<str>>,
    /// Paths handed to blazesym per process, to evict them in [`Symbolizer::forget_process`].
    opened: HashMap<u32, Vec<PathBuf>>,
    /// Whether /proc/kallsyms shows real addresses (None: not checked yet).
    kallsyms_usable: Option<bool>,
    stats: SymbolizerStats,
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Symbolizer")
            .field("modules", &self.modules.ids.len())
            .field("user_cache", &self.user_cache.len())
            .field("jit_cache", &self.jit_cache.len())
            .field("kernel_cache", &self.kernel_cache.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

/// A module as found by normalization in one call.
struct CallModule {
    /// File name for display (`libc.so.6`).
    name: String,
    /// Path blazesym opens: `/proc/PID/root/<path>`.
    open_path: PathBuf,
    /// Module id in the cache, when the file could be identified.
    id: Option<u32>,
}

enum Slot {
    /// Fully resolved.
    Done(Frame),
    /// Waiting for a user-cache miss of module `call_module` at file offset.
    Elf { call_module: usize, offset: u64 },
    /// Waiting for a perf map lookup of this absolute address.
    Jit { addr: u64 },
}

impl Symbolizer {
    /// A symbolizer with empty caches. Demangles names and reads DWARF when present.
    pub fn new() -> Self {
        let normalizer = Normalizer::builder()
            .enable_build_ids(false)
            .enable_vma_caching(false)
            .build();
        let blaze = blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(false)
            .enable_inlined_fns(false)
            .enable_demangling(true)
            .build();
        Symbolizer {
            normalizer,
            blaze,
            modules: Modules::default(),
            user_cache: HashMap::new(),
            jit_cache: HashMap::new(),
            kernel_cache: HashMap::new(),
            opened: HashMap::new(),
            kallsyms_usable: None,
            stats: SymbolizerStats::default(),
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> SymbolizerStats {
        self.stats
    }

    /// Symbolizes user-space addresses of process `pid` (absolute, as a stack walk gives
    /// them): one [`Frame`] per address, in the same order. An address that cannot be
    /// symbolized gets function `[unknown]` and the module's file name when it falls in
    /// a file mapping, else module `[unknown]`. Never panics and never fails: a process
    /// that exited (or pid 0) gives all-unknown frames.
    pub fn symbolize_user(&mut self, pid: u32, addrs: &[u64]) -> Vec<Frame> {
        self.stats.frames += addrs.len() as u64;
        if addrs.is_empty() {
            return Vec::new();
        }
        let unknown = || Frame::unknown(FrameKind::User);
        if pid == 0 {
            // blazesym reads 0 as "this process".
            return addrs.iter().map(|_| unknown()).collect();
        }
        let opts = NormalizeOpts {
            sorted_addrs: false,
            map_files: false,
            ..Default::default()
        };
        let normalized =
            match self
                .normalizer
                .normalize_user_addrs_opts(Pid::from(pid), addrs, &opts)
            {
                Ok(n) => n,
                Err(_) => return addrs.iter().map(|_| unknown()).collect(),
            };

        // Identify each module of this call once.
        let mut call_modules: Vec<CallModule> = Vec::new();
        let mut meta_to_call_module: Vec<Option<usize>> = vec![None; normalized.meta.len()];
        for (mi, meta) in normalized.meta.iter().enumerate() {
            if let UserMeta::Elf(elf) = meta {
                meta_to_call_module[mi] = Some(call_modules.len());
                let open_path = proc_root_path(pid, &elf.path);
                let id = self.modules.id(&elf.path, &open_path);
                call_modules.push(CallModule {
                    name: file_name(&elf.path),
                    open_path,
                    id,
                });
            }
        }

        let mut slots: Vec<Slot> = Vec::with_capacity(addrs.len());
        for (&(output, mi), &addr) in normalized.outputs.iter().zip(addrs) {
            let slot = match normalized.meta.get(mi) {
                Some(UserMeta::Elf(_)) => {
                    let cm = meta_to_call_module[mi].unwrap_or(usize::MAX);
                    match call_modules.get(cm) {
                        Some(m) => match m.id {
                            Some(id) => match self.user_cache.get(&(id, output)) {
                                Some(name) => {
                                    self.stats.cache_hits += 1;
                                    Slot::Done(Frame::user(&**name, &m.name))
                                }
                                None => Slot::Elf {
                                    call_module: cm,
                                    offset: output,
                                },
                            },
                            // The file could not be opened: name the module anyway.
                            None => Slot::Done(Frame::user(UNKNOWN_FUNCTION, &m.name)),
                        },
                        None => Slot::Done(unknown()),
                    }
                }
                Some(UserMeta::Sym(sym)) => Slot::Done(Frame::user(&*sym.name, VDSO_MODULE)),
                Some(UserMeta::Unknown(u)) if u.reason == Reason::MissingComponent => {
                    // Anonymous memory: perhaps JIT code listed in a perf map.
                    match self.jit_cache.get(&(pid, addr)) {
                        Some(name) => {
                            self.stats.cache_hits += 1;
                            Slot::Done(Frame::user(&**name, JIT_MODULE))
                        }
                        None => Slot::Jit { addr },
                    }
                }
                _ => Slot::Done(unknown()),
            };
            slots.push(slot);
        }

        self.resolve_elf_misses(pid, &call_modules, &slots);
        self.resolve_jit_misses(pid, &slots);

        slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Done(frame) => frame,
                Slot::Elf {
                    call_module,
                    offset,
                } => {
                    let m = &call_modules[call_module];
                    let name =
                        m.id.and_then(|id| self.user_cache.get(&(id, offset)))
                            .map_or(UNKNOWN_FUNCTION, |n| &**n);
                    Frame::user(name, &m.name)
                }
                Slot::Jit { addr } => match self.jit_cache.get(&(pid, addr)) {
                    Some(name) => Frame::user(&**name, JIT_MODULE),
                    None => unknown(),
                },
            })
            .collect()
    }

    /// Symbolizes several stacks of process `pid` at once, like
    /// [`Symbolizer::symbolize_user`] on each, but reading the process's memory map once
    /// for the whole batch (the dominant cost on a warm cache).
    pub fn symbolize_user_stacks(&mut self, pid: u32, stacks: &[&[u64]]) -> Vec<Vec<Frame>> {
        let flat: Vec<u64> = stacks.iter().flat_map(|s| s.iter().copied()).collect();
        let mut frames = self.symbolize_user(pid, &flat).into_iter();
        stacks
            .iter()
            .map(|s| frames.by_ref().take(s.len()).collect())
            .collect()
    }

    /// Symbolizes kernel addresses through `/proc/kallsyms`: one [`Frame`] per address,
    /// kind [`FrameKind::Kernel`], module `[kernel]`; `[unknown]` when kallsyms hides
    /// addresses (not root) or the address is not a kernel symbol.
    pub fn symbolize_kernel(&mut self, addrs: &[u64]) -> Vec<Frame> {
        self.stats.frames += addrs.len() as u64;
        if addrs.is_empty() {
            return Vec::new();
        }
        if !self.kallsyms_usable() {
            return addrs
                .iter()
                .map(|_| Frame::unknown(FrameKind::Kernel))
                .collect();
        }
        let mut misses: Vec<u64> = Vec::new();
        let mut seen: HashSet<u64> = HashSet::new();
        for &addr in addrs {
            if self.kernel_cache.contains_key(&addr) {
                self.stats.cache_hits += 1;
            } else {
                self.stats.cache_misses += 1;
                if seen.insert(addr) {
                    misses.push(addr);
                }
            }
        }
        if !misses.is_empty() {
            let src = Source::Kernel(Kernel {
                kallsyms: MaybeDefault::Default,
                vmlinux: MaybeDefault::None,
                kaslr_offset: None,
                debug_syms: false,
                ..Default::default()
            });
            if let Ok(syms) = self.blaze.symbolize(&src, Input::AbsAddr(&misses)) {
                for (addr, sym) in misses.iter().zip(syms) {
                    let name: Box<str> = match sym {
                        Symbolized::Sym(sym) => sym.name.into(),
                        Symbolized::Unknown(_) => UNKNOWN_FUNCTION.into(),
                    };
                    self.kernel_cache.insert(*addr, name);
                }
            }
        }
        addrs
            .iter()
            .map(|addr| match self.kernel_cache.get(addr) {
                Some(name) => Frame {
                    function: name.to_string(),
                    module: KERNEL_MODULE.to_string(),
                    kind: FrameKind::Kernel,
                },
                None => Frame::unknown(FrameKind::Kernel),
            })
            .collect()
    }

    /// Drops what is kept for process `pid` (its JIT symbols and the file handles
    /// opened through its `/proc/PID/root`); call it when the process exits. Symbols of
    /// its modules stay cached by build id.
    pub fn forget_process(&mut self, pid: u32) {
        self.jit_cache.retain(|&(p, _), _| p != pid);
        if let Some(paths) = self.opened.remove(&pid) {
            for path in paths {
                let _ = self
                    .blaze
                    .evict(&blazesym::symbolize::evict::Elf::new(path).into());
            }
        }
        if pid != 0 {
            let _ = self.blaze.evict(
                &blazesym::symbolize::evict::Process {
                    pid: Pid::from(pid),
                    _non_exhaustive: (),
                }
                .into(),
            );
        }
    }

    /// Empties every cache (the counters are kept).
    pub fn clear_caches(&mut self) {
        let pids: Vec<u32> = self.opened.keys().copied().collect();
        for pid in pids {
            self.forget_process(pid);
        }
        self.modules = Modules::default();
        self.user_cache.clear();
        self.jit_cache.clear();
        self.kernel_cache.clear();
        self.kallsyms_usable = None;
    }

    /// Number of cached (module, offset), JIT and kernel symbols.
    pub fn cached_symbols(&self) -> usize {
        self.user_cache.len() + self.jit_cache.len() + self.kernel_cache.len()
    }

    fn resolve_elf_misses(&mut self, pid: u32, call_modules: &[CallModule], slots: &[Slot]) {
        // Distinct misses per call module.
        let mut per_module: Vec<Vec<u64>> = vec![Vec::new(); call_modules.len()];
        let mut seen: HashSet<(usize, u64)> = HashSet::new();
        for slot in slots {
            if let Slot::Elf {
                call_module,
                offset,
            } = *slot
            {
                // Every address counts, including repeats within the call.
                self.stats.cache_misses += 1;
                if seen.insert((call_module, offset)) {
                    per_module[call_module].push(offset);
                }
            }
        }
        for (cm, offsets) in per_module.iter().enumerate() {
            if offsets.is_empty() {
                continue;
            }
            let m = &call_modules[cm];
            let Some(id) = m.id else { continue };
            let src = Source::Elf(Elf::new(&m.open_path));
            let Ok(syms) = self.blaze.symbolize(&src, Input::FileOffset(offsets)) else {
                // The file vanished between identification and opening: leave these
                // frames unknown and uncached.
                continue;
            };
            let opened = self.opened.entry(pid).or_default();
            if !opened.contains(&m.open_path) {
                opened.push(m.open_path.clone());
            }
            for (&offset, sym) in offsets.iter().zip(syms) {
                let name: Box<str> = match sym {
                    Symbolized::Sym(sym) => sym.name.into(),
                    Symbolized::Unknown(_) => UNKNOWN_FUNCTION.into(),
                };
                self.user_cache.insert((id, offset), name);
            }
        }
    }

    fn resolve_jit_misses(&mut self, pid: u32, slots: &[Slot]) {
        let mut addrs: Vec<u64> = Vec::new();
        let mut seen: HashSet<u64> = HashSet::new();
        for slot in slots {
            if let Slot::Jit { addr } = *slot {
                self.stats.cache_misses += 1;
                if seen.insert(addr) {
                    addrs.push(addr);
                }
            }
        }
        if addrs.is_empty() {
            return;
        }
        let src = Source::Process(Process {
            pid: Pid::from(pid),
            debug_syms: false,
            perf_map: true,
            map_files: false,
            vdso: false,
            ..Process::new(Pid::from(pid))
        });
        let Ok(syms) = self.blaze.symbolize(&src, Input::AbsAddr(&addrs)) else {
            return;
        };
        for (&addr, sym) in addrs.iter().zip(syms) {
            if let Symbolized::Sym(sym) = sym {
                self.jit_cache.insert((pid, addr), sym.name.into());
            }
        }
    }

    fn kallsyms_usable(&mut self) -> bool {
        *self.kallsyms_usable.get_or_insert_with(|| {
            // Without privileges every address in kallsyms reads as zero, and every
            // kernel address would resolve to the last symbol.
            let Ok(file) = std::fs::File::open("/proc/kallsyms") else {
                return false;
            };
            BufReader::new(file)
                .lines()
                .take(1000)
                .map_while(Result::ok)
                .any(|line| {
                    line.split_whitespace()
                        .next()
                        .and_then(|a| u64::from_str_radix(a, 16).ok())
                        .is_some_and(|a| a != 0)
                })
        })
    }
}

/// Module identities: which file is which module.
#[derive(Default)]
struct Modules {
    /// File identity → module id.
    files: HashMap<FileId, u32>,
    /// Module key → module id.
    ids: HashMap<ModuleKey, u32>,
}

impl Modules {
    /// The module id of a file, reading its build id the first time it is seen.
    fn id(&mut self, path: &Path, open_path: &Path) -> Option<u32> {
        let meta = std::fs::metadata(open_path).ok()?;
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        let file_id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns,
        };
        if let Some(&id) = self.files.get(&file_id) {
            return Some(id);
        }
        let key = match blazesym::helper::read_elf_build_id(open_path) {
            Ok(Some(build_id)) if !build_id.is_empty() => ModuleKey::BuildId(build_id.to_vec()),
            _ => ModuleKey::File {
                path: path.to_path_buf(),
                size: meta.size(),
                mtime_ns,
            },
        };
        let next = self.ids.len() as u32;
        let id = *self.ids.entry(key).or_insert(next);
        self.files.insert(file_id, id);
        Some(id)
    }
}

/// `/proc/PID/root/<path>`: the file as the process sees it, whatever its mount
/// namespace.
fn proc_root_path(pid: u32, path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    Path::new("/proc")
        .join(pid.to_string())
        .join("root")
        .join(relative)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| UNKNOWN_MODULE.to_string())
}

#[cfg(test)]
mod tests;
