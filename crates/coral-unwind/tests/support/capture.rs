//! Sampling a live thread the way Coral's eBPF program does, with ptrace: its user
//! registers and up to 32 KiB of stack from sp. Shared by coral-unwind's tests and
//! coral-bench's unwinding benchmark (which includes this file by path).

use std::io::IoSliceMut;

use coral_unwind::UserRegs;
use nix::sys::ptrace;
use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// The stack bytes the eBPF program copies at most.
pub const STACK_COPY_BYTES: usize = 32 * 1024;

/// One sample of one thread.
#[derive(Debug, Clone)]
pub struct Sample {
    pub tid: u32,
    pub regs: UserRegs,
    pub stack: Vec<u8>,
}

/// The thread ids of `pid`.
pub fn threads(pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    tids
}

/// Stops thread `tid` of process `pid` (PTRACE_SEIZE + PTRACE_INTERRUPT), reads its
/// registers and up to 32 KiB of stack from sp, and lets it run again.
pub fn sample_thread(pid: u32, tid: u32) -> Option<Sample> {
    let thread = Pid::from_raw(tid as i32);
    ptrace::seize(thread, ptrace::Options::empty()).ok()?;
    let sample = (|| {
        ptrace::interrupt(thread).ok()?;
        waitpid(thread, Some(WaitPidFlag::__WALL)).ok()?;
        let regs = ptrace::getregs(thread).ok()?;
        let regs = UserRegs {
            ip: regs.rip,
            sp: regs.rsp,
            bp: regs.rbp,
        };
        let stack = read_stack(pid, regs.sp);
        Some(Sample { tid, regs, stack })
    })();
    let _ = ptrace::detach(thread, None);
    sample
}

/// Samples every thread of `pid` once.
pub fn sample_all_threads(pid: u32) -> Vec<Sample> {
    threads(pid)
        .into_iter()
        .filter_map(|tid| sample_thread(pid, tid))
        .collect()
}

/// Reads up to 32 KiB from `sp`; shorter when the stack mapping ends earlier. One remote
/// iovec per page, since process_vm_readv stops at the first iovec that faults.
fn read_stack(pid: u32, sp: u64) -> Vec<u8> {
    let mut remote = Vec::new();
    let mut addr = sp as usize;
    let end = addr + STACK_COPY_BYTES;
    while addr < end {
        let page_end = ((addr / 4096) + 1) * 4096;
        let len = page_end.min(end) - addr;
        remote.push(RemoteIoVec { base: addr, len });
        addr += len;
    }
    let mut buf = vec![0u8; STACK_COPY_BYTES];
    let mut locals = Vec::new();
    let mut rest = buf.as_mut_slice();
    for r in &remote {
        let (head, tail) = rest.split_at_mut(r.len);
        locals.push(IoSliceMut::new(head));
        rest = tail;
    }
    let read = process_vm_readv(Pid::from_raw(pid as i32), &mut locals, &remote).unwrap_or(0);
    drop(locals);
    buf.truncate(read);
    buf
}
