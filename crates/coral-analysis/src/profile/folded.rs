//! Brendan Gregg's folded stacks: `root;mid;leaf 12`.

use std::io;

use super::{Profile, folded_lines};

/// Writes the profile as folded stacks, one line per distinct stack text: frames root
/// → leaf separated by `;`, then a space and the sample count. Kernel frames are
/// suffixed `_[k]` and a frame with an unknown function but a known module is written
/// `[module]` (the conventions of perf and inferno); stacks that render to the same
/// text are summed; lines are sorted, so equal profiles give identical output.
pub fn write_folded(profile: &Profile, mut w: impl io::Write) -> io::Result<()> {
    for (line, samples) in folded_lines(profile, |s| s.samples) {
        writeln!(w, "{line} {samples}")?;
    }
    Ok(())
}
