//! pprof's `profile.proto` (github.com/google/pprof/proto/profile.proto), gzipped.
//!
//! The message structs are written by hand with prost's derive (no protoc, no build
//! script); field numbers and types follow the spec. Only the fields Coral fills are
//! declared; unknown fields are skipped by any decoder.

use std::collections::HashMap;
use std::io;

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::{KERNEL_MODULE, Profile, ProfileType, UNKNOWN_MODULE, is_of_type};

/// `perftools.profiles.Profile`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct PprofProfile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

/// `perftools.profiles.ValueType`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// `perftools.profiles.Sample`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// `perftools.profiles.Label`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// `perftools.profiles.Mapping`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// `perftools.profiles.Location`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// `perftools.profiles.Line`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

/// `perftools.profiles.Function`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.intern("");
        s
    }

    fn intern(&mut self, v: &str) -> i64 {
        if let Some(&i) = self.index.get(v) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(v.to_string());
        self.index.insert(v.to_string(), i);
        i
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The pprof sample types of a profile type: a count and a time (or for `memory` the
/// bytes, pprof's `space` as in its heap profiles), the second the default.
fn sample_types(ty: ProfileType) -> [(&'static str, &'static str); 2] {
    match ty {
        ProfileType::Cpu => [("samples", "count"), ("cpu", "nanoseconds")],
        ProfileType::Offcpu => [("waits", "count"), ("off_cpu", "nanoseconds")],
        ProfileType::Wall => [("samples", "count"), ("wall", "nanoseconds")],
        ProfileType::Memory => [("faults", "count"), ("space", "bytes")],
    }
}

/// Builds the pprof message of the stacks of type `ty`.
///
/// Sample types are a count and a time (the default), per type: `cpu`:
/// `[samples/count, cpu/nanoseconds]`; `offcpu`: `[waits/count, off_cpu/nanoseconds]`;
/// `wall`: `[samples/count, wall/nanoseconds]` (the count is CPU samples plus waits);
/// `memory`: `[faults/count, space/bytes]` (memory records, bytes made resident).
/// There is one Function and one Location per frame (their ids are the frame index + 1;
/// an unknown function in a known module is named `[module]`, a wait frame
/// `[off-cpu: CAUSE]`, a page frame `[memory: PAGE]`), one Mapping per module (with `has_functions` set, so pprof does
/// not try to symbolize), and one Sample per stack of the type with its locations leaf
/// first, as pprof requires. The period is the average value per count, its type the
/// value's.
pub(crate) fn to_pprof(profile: &Profile, ty: ProfileType) -> PprofProfile {
    let mut strings = Strings::new();
    let [(count_t, count_u), (time_t, time_u)] = sample_types(ty);
    let count_t = strings.intern(count_t);
    let count_u = strings.intern(count_u);
    let time_t = strings.intern(time_t);
    let time_u = strings.intern(time_u);

    // Mappings: one per module, in order of first appearance in the frame dictionary.
    let mut mappings: Vec<Mapping> = Vec::new();
    let mut mapping_of_module: HashMap<&str, u64> = HashMap::new();
    let mut functions = Vec::with_capacity(profile.frames.len());
    let mut locations = Vec::with_capacity(profile.frames.len());
    for (i, frame) in profile.frames.iter().enumerate() {
        let id = i as u64 + 1;
        let module = if frame.module.is_empty() {
            UNKNOWN_MODULE
        } else {
            frame.module.as_str()
        };
        let mapping_id = match mapping_of_module.get(module) {
            Some(&m) => m,
            None => {
                let m = mappings.len() as u64 + 1;
                mappings.push(Mapping {
                    id: m,
                    filename: strings.intern(module),
                    has_functions: true,
                    ..Default::default()
                });
                mapping_of_module.insert(module, m);
                m
            }
        };
        // An unknown function is named after its module, as in folded stacks, so that
        // `pprof -top` still says where the time went.
        let name = if frame.is_unknown() && module != UNKNOWN_MODULE && module != KERNEL_MODULE {
            strings.intern(&format!("[{module}]"))
        } else {
            strings.intern(&super::function_name(frame))
        };
        functions.push(Function {
            id,
            name,
            system_name: name,
            filename: 0,
            start_line: 0,
        });
        locations.push(Location {
            id,
            mapping_id,
            address: 0,
            line: vec![Line {
                function_id: id,
                line: 0,
            }],
            is_folded: false,
        });
    }

    // Out-of-range frame indices (only possible with hand-made parts) get one shared
    // unknown location.
    let mut unknown_location: Option<u64> = None;
    let mut samples = Vec::with_capacity(profile.stacks.len());
    for stack in &profile.stacks {
        if !is_of_type(ty, stack) {
            continue;
        }
        let location_id = stack
            .frames
            .iter()
            .rev()
            .map(|&fi| {
                if (fi as usize) < profile.frames.len() {
                    u64::from(fi) + 1
                } else {
                    *unknown_location.get_or_insert_with(|| {
                        let id = locations.len() as u64 + 1;
                        let name = strings.intern(super::UNKNOWN_FUNCTION);
                        functions.push(Function {
                            id,
                            name,
                            system_name: name,
                            filename: 0,
                            start_line: 0,
                        });
                        locations.push(Location {
                            id,
                            mapping_id: 0,
                            address: 0,
                            line: vec![Line {
                                function_id: id,
                                line: 0,
                            }],
                            is_folded: false,
                        });
                        id
                    })
                }
            })
            .collect();
        samples.push(Sample {
            location_id,
            value: vec![clamp(stack.samples), clamp(ty.value(stack))],
            label: Vec::new(),
        });
    }

    let period = clamp(
        profile
            .total(ty)
            .checked_div(profile.count(ty))
            .unwrap_or(0),
    );
    let comment = vec![strings.intern("generated by Coral")];
    PprofProfile {
        sample_type: vec![
            ValueType {
                r#type: count_t,
                unit: count_u,
            },
            ValueType {
                r#type: time_t,
                unit: time_u,
            },
        ],
        sample: samples,
        mapping: mappings,
        location: locations,
        function: functions,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: 0,
        duration_nanos: 0,
        period_type: Some(ValueType {
            r#type: time_t,
            unit: time_u,
        }),
        period,
        comment,
        default_sample_type: time_t,
        string_table: strings.table,
    }
}

/// Writes the stacks of type `ty` as a gzipped pprof `profile.proto` (opens in
/// `go tool pprof`, Speedscope, Pyroscope): sample types a count and a time per type
/// (`samples/count` and `cpu/nanoseconds` for `cpu`, `waits/count` and
/// `off_cpu/nanoseconds` for `offcpu`, `samples/count` and `wall/nanoseconds` for
/// `wall`, `faults/count` and `space/bytes` for `memory`), one Location and Function per frame, one Mapping per module, locations leaf
/// first. Output is deterministic (gzip header without a timestamp).
pub fn write_pprof(profile: &Profile, ty: ProfileType, w: impl io::Write) -> io::Result<()> {
    let bytes = to_pprof(profile, ty).encode_to_vec();
    let mut gz = GzEncoder::new(w, Compression::default());
    io::Write::write_all(&mut gz, &bytes)?;
    gz.finish()?;
    Ok(())
}
