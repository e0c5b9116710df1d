//! Seeded mutations of text for the tests that check, on stable, what the fuzz
//! targets in `fuzz/` check.

/// One to three random edits of `input`: delete, insert a piece, copy a run.
pub(crate) fn mutate(rng: &mut fastrand::Rng, input: &str, pieces: &[&str]) -> String {
    let mut chars: Vec<char> = input.chars().collect();
    for _ in 0..rng.usize(1..4) {
        let at = rng.usize(0..=chars.len());
        match rng.u8(0..3) {
            0 if !chars.is_empty() => {
                let end = (at + rng.usize(1..3)).min(chars.len());
                chars.drain(at.min(end)..end);
            }
            1 if !chars.is_empty() => {
                let from = rng.usize(0..chars.len());
                let end = (from + rng.usize(1..6)).min(chars.len());
                let copy: Vec<char> = chars[from..end].to_vec();
                chars.splice(at..at, copy);
            }
            _ => {
                let piece = pieces[rng.usize(0..pieces.len())];
                chars.splice(at..at, piece.chars());
            }
        }
    }
    chars.into_iter().collect()
}
