//! Coral's pure core: everything that decides or computes without I/O.
//!
//! Durations as people write them, HTTP status-code patterns, trigger criteria,
//! profiles and flame graphs, the request/sample join, cohort filters; later issues add
//! statistics here, each tested without a database, a network or root.

pub mod compare;
pub mod criteria;
pub mod duration;
pub mod filter;
pub mod join;
pub mod profile;
pub mod status;

#[cfg(test)]
mod mutation;

pub use criteria::{CriteriaError, RequestCriteria, RequestFacts, UrlPattern};
pub use duration::{DurationError, format_duration_ns, parse_duration};
pub use filter::{Filter, FilterError};
pub use profile::{
    Breakdown, Frame, FrameKind, Hotspot, Profile, ProfileType, WaitCause, WeightedStack,
};
pub use status::{StatusPattern, StatusPatternError};
