//! Brendan Gregg's folded stacks: `root;mid;leaf 12`.

use std::io;

use super::{Profile, ProfileType, folded_lines, is_of_type};

/// Writes the stacks of type `ty` as folded stacks, one line per distinct stack text:
/// frames root → leaf separated by `;`, then a space and the value. For `cpu` the value
/// is the sample count (as perf and inferno expect); for `offcpu` and `wall` it is the
/// time in microseconds, rounded up per stack so that no wait becomes 0 (CPU samples
/// and waits are not commensurable as counts); for `memory` it is the bytes made
/// resident. Kernel frames are suffixed `_[k]`, wait frames are `[off-cpu: CAUSE]`,
/// page frames `[memory: PAGE]`, and a frame with an unknown function but a known
/// module is written `[module]` (the conventions of perf and inferno); stacks that
/// render to the same text are summed; lines are sorted, so equal profiles give
/// identical output.
pub fn write_folded(profile: &Profile, ty: ProfileType, mut w: impl io::Write) -> io::Result<()> {
    for (line, value) in folded_lines(profile, |s| folded_value(ty, s)) {
        writeln!(w, "{line} {value}")?;
    }
    Ok(())
}

/// The folded value of one stack for `ty`: see [`write_folded`].
fn folded_value(ty: ProfileType, stack: &super::WeightedStack) -> u64 {
    match ty {
        ProfileType::Cpu if is_of_type(ty, stack) => stack.samples,
        ProfileType::Cpu => 0,
        ProfileType::Offcpu | ProfileType::Wall => ty.value(stack).div_ceil(1_000),
        ProfileType::Memory => stack.memory_bytes,
    }
}
