//! Coral's pure core: everything that decides or computes without I/O.
//!
//! Durations as people write them, HTTP status-code patterns; later issues add stacks,
//! flame graphs, cohort filters, statistics and trigger matching here, each tested
//! exhaustively without a database, a network or root.

pub mod duration;
pub mod join;
pub mod profile;
pub mod status;

pub use duration::{DurationError, format_duration_ns, parse_duration};
pub use profile::{Frame, FrameKind, Hotspot, Profile, WeightedStack};
pub use status::{StatusPattern, StatusPatternError};
