//! Stable 64-bit hashes of frames and stacks: the keys under which the backends store
//! them once, shared by every profile that has them.
//!
//! The hashes are stored, so they must never change: FNV-1a 64 over a fixed byte
//! encoding, independent of Rust's `Hash` (whose output is not stable across
//! versions). The `u64` result is reinterpreted as `i64` (the databases' BIGINT).

use coral_analysis::{Frame, FrameKind};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
/// Between a frame's fields. 0xFF never occurs in UTF-8, so the encoding of
/// (function, module, kind) is unambiguous.
const SEPARATOR: u8 = 0xff;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The key of a frame: FNV-1a 64 of `function 0xFF module 0xFF kind` (kind `user` or
/// `kernel`).
pub fn frame_hash(frame: &Frame) -> i64 {
    let kind: &[u8] = match frame.kind {
        FrameKind::User => b"user",
        FrameKind::Kernel => b"kernel",
        FrameKind::Wait => b"wait",
        FrameKind::Page => b"page",
    };
    let mut h = fnv1a(FNV_OFFSET_BASIS, frame.function.as_bytes());
    h = fnv1a(h, &[SEPARATOR]);
    h = fnv1a(h, frame.module.as_bytes());
    h = fnv1a(h, &[SEPARATOR]);
    h = fnv1a(h, kind);
    h as i64
}

/// The key of a stack given its frames' [`frame_hash`]es, root first: FNV-1a 64 of
/// their little-endian bytes (8 per frame, so no separator is needed).
pub fn stack_hash(frame_hashes: &[i64]) -> i64 {
    frame_hashes
        .iter()
        .fold(FNV_OFFSET_BASIS, |h, f| fnv1a(h, &f.to_le_bytes())) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET_BASIS, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn hashes_are_stable() {
        // Stored keys: these values must never change.
        // Values from an independent implementation (Python).
        assert_eq!(
            frame_hash(&Frame::user("main", "app")),
            0x394c_26e8_6bac_7be6
        );
        assert_eq!(
            frame_hash(&Frame::kernel("do_syscall_64")),
            0x6af8_f783_359d_36d7
        );
        assert_eq!(stack_hash(&[]), FNV_OFFSET_BASIS as i64);
        assert_eq!(stack_hash(&[1, 2]), 0x7717_9803_63c8_e066);
    }

    #[test]
    fn fields_do_not_run_together() {
        let a = frame_hash(&Frame::user("ab", "c"));
        let b = frame_hash(&Frame::user("a", "bc"));
        assert_ne!(a, b);
        let user = frame_hash(&Frame::user("f", "[kernel]"));
        let kernel = frame_hash(&Frame::kernel("f"));
        assert_ne!(user, kernel);
        assert_ne!(stack_hash(&[1, 2]), stack_hash(&[2, 1]));
        assert_ne!(stack_hash(&[1]), stack_hash(&[1, 1]));
    }
}
