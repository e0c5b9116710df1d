//! Trace-profile triggers to rows and back, independent of the database: the part of
//! trigger storage that every backend shares.
//!
//! A trigger's `trace_ids` are stored as text, 32 lowercase hex digits each
//! ([`TraceId`]'s `Display`): a `TEXT[]` in PostgreSQL, a JSON array in SQLite. Its
//! criteria and counts are `u32` in the model and INTEGER (32 bits in PostgreSQL) in
//! the databases. Its `profile_types` is one text, as
//! [`crate::profile_rows::profile_types_text`] writes it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::profile_rows::{parse_profile_types, to_u32};
use crate::{
    Claim, InsertedProfiles, ProfileSource, SpanId, StoreError, TraceId, TraceProfileRecord,
    TraceProfileTrigger,
};

/// The error of a trigger asked for a service that never sent a span.
pub fn unknown_service(name: &str) -> StoreError {
    StoreError::NotFound(format!("service {name:?} (it has not sent any spans)"))
}

/// A `u32` for an INTEGER column; an error beyond `i32::MAX`, which PostgreSQL's
/// INTEGER cannot hold (SQLite's could: both backends check, to behave alike).
pub fn to_i32(n: u32, what: &str) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| {
        StoreError::Backend(
            format!("{what} {n} is too large to store (at most {})", i32::MAX).into(),
        )
    })
}

/// Trace ids as a trigger's `trace_ids` stores them.
pub fn trace_id_texts(ids: &[TraceId]) -> Vec<String> {
    ids.iter().map(TraceId::to_string).collect()
}

/// A trigger's columns as a backend reads them, before checking.
#[derive(Debug)]
pub struct TriggerRow {
    pub trigger_id: uuid::Uuid,
    pub service: String,
    pub created_unix_nano: i64,
    pub expires_unix_nano: i64,
    pub ended_unix_nano: Option<i64>,
    pub status: String,
    pub min_duration_ms: Option<i64>,
    pub max_duration_ms: Option<i64>,
    pub status_code_pattern: Option<String>,
    pub url_pattern: Option<String>,
    pub frequency_hz: i64,
    pub max_requests: i64,
    /// Nullable in RFD 080's table; always written.
    pub collected_requests: Option<i64>,
    pub trace_ids: Vec<String>,
    pub baseline_requests: i64,
    pub baseline_collected: i64,
    pub profile_types: String,
}

impl TriggerRow {
    /// The trigger; `Corrupt` if a value is out of range or unreadable.
    pub fn into_trigger(self) -> Result<TraceProfileTrigger, StoreError> {
        let column = |name: &str| format!("trace_profile_triggers.{name}");
        let opt_u32 = |n: Option<i64>, name: &str| n.map(|n| to_u32(n, &column(name))).transpose();
        Ok(TraceProfileTrigger {
            trigger_id: self.trigger_id,
            service: self.service,
            created_unix_nano: self.created_unix_nano,
            expires_unix_nano: self.expires_unix_nano,
            ended_unix_nano: self.ended_unix_nano,
            status: self
                .status
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", column("status"))))?,
            min_duration_ms: opt_u32(self.min_duration_ms, "min_duration_ms")?,
            max_duration_ms: opt_u32(self.max_duration_ms, "max_duration_ms")?,
            status_code_pattern: self.status_code_pattern,
            url_pattern: self.url_pattern,
            frequency_hz: to_u32(self.frequency_hz, &column("frequency_hz"))?,
            max_requests: to_u32(self.max_requests, &column("max_requests"))?,
            collected_requests: to_u32(
                self.collected_requests.unwrap_or(0),
                &column("collected_requests"),
            )?,
            trace_ids: self
                .trace_ids
                .iter()
                .map(|t| {
                    t.parse()
                        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", column("trace_ids"))))
                })
                .collect::<Result<_, _>>()?,
            baseline_requests: to_u32(self.baseline_requests, &column("baseline_requests"))?,
            baseline_collected: to_u32(self.baseline_collected, &column("baseline_collected"))?,
            profile_types: parse_profile_types(&self.profile_types, &column("profile_types"))?,
        })
    }
}

/// A trigger-slot claim of a batch of profiles: `profile.source` names the trigger.
#[derive(Debug, Clone, Copy)]
pub struct SlotClaim<'a> {
    pub profile: &'a TraceProfileRecord,
    /// The claim of a profile row this batch stored (its `source`): refused, the row
    /// goes unless a baseline claim of the same request keeps it. Otherwise a baseline
    /// claim on a request stored either way.
    pub stores: bool,
}

impl SlotClaim<'_> {
    pub fn key(&self) -> (TraceId, SpanId) {
        (self.profile.trace_id, self.profile.span_id)
    }
}

/// The trigger slots a batch claims, in the order it claims them: by trigger, so that
/// concurrent writers lock trigger rows in the same order and cannot deadlock, then by
/// request start, so that a trigger collects a batch's earliest requests.
///
/// `stored` are the profile rows the batch stored (new ones, one per request): each
/// trigger or baseline profile among them claims a slot of its trigger. Every other
/// baseline profile of the `batch` (its request already stored, or stored by this
/// batch for another source) claims a baseline slot too, once per trigger and request.
pub fn slot_claims<'a>(
    batch: &'a [TraceProfileRecord],
    stored: &[&'a TraceProfileRecord],
) -> Vec<SlotClaim<'a>> {
    // Each (request, source) claims once: the stored rows first.
    let mut claimed: HashSet<(TraceId, SpanId, ProfileSource)> = stored
        .iter()
        .map(|p| (p.trace_id, p.span_id, p.source))
        .collect();
    let mut claims: Vec<SlotClaim<'a>> = stored
        .iter()
        .filter(|p| !matches!(p.source, ProfileSource::Session(_)))
        .map(|&profile| SlotClaim {
            profile,
            stores: true,
        })
        .collect();
    claims.extend(
        batch
            .iter()
            .filter(|p| matches!(p.source, ProfileSource::Baseline(_)))
            .filter(|p| claimed.insert((p.trace_id, p.span_id, p.source)))
            .map(|profile| SlotClaim {
                profile,
                stores: false,
            }),
    );
    claims.sort_by_key(|c| {
        let p = c.profile;
        (p.source.id(), p.start_unix_nano, p.trace_id, p.span_id)
    });
    claims
}

/// What the claims of a batch decided, as a backend records them one by one.
#[derive(Debug, Default)]
pub struct ClaimTally {
    /// Stored rows whose own claim was refused.
    refused_rows: BTreeSet<(TraceId, SpanId)>,
    /// A baseline that counted each request (the first), for a refused row to take.
    baselines_kept: BTreeMap<(TraceId, SpanId), ProfileSource>,
    refused_baselines: u64,
    completed_triggers: u64,
}

/// What a batch's rows become once every claim is in.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClaimOutcome {
    /// Stored rows that no claim kept: to delete.
    pub delete: Vec<(TraceId, SpanId)>,
    /// Stored rows whose own claim was refused but which a baseline of another
    /// trigger counted: kept, with that baseline as their source.
    pub relabel: Vec<((TraceId, SpanId), ProfileSource)>,
    /// Claims refused (rows deleted, or kept for another baseline; baselines not
    /// counted).
    pub over_limit: u64,
    pub completed_triggers: u64,
}

impl ClaimTally {
    pub fn record(&mut self, claim: &SlotClaim<'_>, result: Claim) {
        match result {
            Claim::Refused if claim.stores => {
                self.refused_rows.insert(claim.key());
            }
            Claim::Refused => self.refused_baselines += 1,
            Claim::Kept | Claim::Completed => {
                self.completed_triggers += u64::from(result == Claim::Completed);
                if matches!(claim.profile.source, ProfileSource::Baseline(_)) {
                    self.baselines_kept
                        .entry(claim.key())
                        .or_insert(claim.profile.source);
                }
            }
        }
    }

    pub fn finish(self) -> ClaimOutcome {
        let mut outcome = ClaimOutcome {
            over_limit: self.refused_baselines,
            completed_triggers: self.completed_triggers,
            ..ClaimOutcome::default()
        };
        for key in self.refused_rows {
            outcome.over_limit += 1;
            match self.baselines_kept.get(&key) {
                Some(&source) => outcome.relabel.push((key, source)),
                None => outcome.delete.push(key),
            }
        }
        outcome
    }
}

impl ClaimOutcome {
    /// What the batch inserted: `stored` (the rows it stored) loses the rows to
    /// delete, and keeps those whose samples go in.
    pub fn inserted(&self, stored: &mut Vec<&TraceProfileRecord>) -> InsertedProfiles {
        let deleted: HashSet<&(TraceId, SpanId)> = self.delete.iter().collect();
        stored.retain(|p| !deleted.contains(&(p.trace_id, p.span_id)));
        InsertedProfiles {
            new: stored.len() as u64,
            over_limit: self.over_limit,
            completed_triggers: self.completed_triggers,
        }
    }
}

/// The fewest hex digits of a trigger id prefix: 16 bits, so that a prefix
/// seldom matches more than one of the triggers a colony keeps.
pub const MIN_TRIGGER_ID_PREFIX: usize = 4;

/// The lowercase hex digits of a trigger id or id prefix as people type it
/// (surrounding space, any case, hyphens anywhere); `InvalidArgument` unless it has
/// [`MIN_TRIGGER_ID_PREFIX`] to 32 hex digits and nothing else.
pub fn trigger_id_prefix(text: &str) -> Result<String, StoreError> {
    let digits: String = text
        .trim()
        .chars()
        .filter(|&c| c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if (MIN_TRIGGER_ID_PREFIX..=32).contains(&digits.len())
        && digits.chars().all(|c| c.is_ascii_hexdigit())
    {
        Ok(digits)
    } else {
        Err(StoreError::InvalidArgument(format!(
            "invalid trigger id {text:?}: expected a UUID or at least {MIN_TRIGGER_ID_PREFIX} of \
             its first hex digits"
        )))
    }
}

/// The trigger a prefix names, from how many triggers have it and the first of them.
pub fn resolved_trigger_id(
    prefix: &str,
    matching: u64,
    first: Option<uuid::Uuid>,
) -> Result<uuid::Uuid, StoreError> {
    match (matching, first) {
        (1, Some(id)) => Ok(id),
        (0, _) | (_, None) => Err(StoreError::NotFound(match uuid::Uuid::parse_str(prefix) {
            Ok(whole) => format!("trigger {whole}"),
            Err(_) => format!("trigger with an id starting with {prefix:?}"),
        })),
        (n, _) => Err(StoreError::InvalidArgument(format!(
            "trigger id prefix {prefix:?} is ambiguous: {n} triggers have it; give more of \
             the id"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TriggerStatus;

    fn row() -> TriggerRow {
        TriggerRow {
            trigger_id: uuid::Uuid::from_bytes([1; 16]),
            service: "svc".into(),
            created_unix_nano: 1,
            expires_unix_nano: 2,
            ended_unix_nano: None,
            status: "active".into(),
            min_duration_ms: Some(5),
            max_duration_ms: None,
            status_code_pattern: None,
            url_pattern: None,
            frequency_hz: 99,
            max_requests: 10,
            collected_requests: None,
            trace_ids: vec!["0af7651916cd43dd8448eb211c80319c".into()],
            baseline_requests: 50,
            baseline_collected: 0,
            profile_types: "cpu,offcpu".into(),
        }
    }

    #[test]
    fn trigger_id_prefixes_are_hex_digits_without_hyphens() {
        assert_eq!(trigger_id_prefix(" 0AF7-65 ").unwrap(), "0af765");
        let whole = "0af76519-16cd-43dd-8448-eb211c80319c";
        assert_eq!(trigger_id_prefix(whole).unwrap(), whole.replace('-', ""));
        for bad in ["0af", "0af7x", "", "0af7%", &format!("{whole}0")] {
            assert!(
                matches!(trigger_id_prefix(bad), Err(StoreError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let id = uuid::Uuid::from_bytes([1; 16]);
        assert_eq!(resolved_trigger_id("0101", 1, Some(id)).unwrap(), id);
        assert!(matches!(
            resolved_trigger_id("0101", 0, None),
            Err(StoreError::NotFound(_))
        ));
        let ambiguous = resolved_trigger_id("0101", 3, Some(id)).unwrap_err();
        assert!(ambiguous.to_string().contains("3 triggers"), "{ambiguous}");
    }

    fn profile(trace: u8, start: i64, source: ProfileSource) -> TraceProfileRecord {
        TraceProfileRecord {
            trace_id: TraceId([trace; 16]),
            span_id: SpanId([1; 8]),
            service: "svc".into(),
            span_name: "GET /".into(),
            start_unix_nano: start,
            duration_ns: 1,
            node: "n".into(),
            pid: None,
            thread_id: None,
            precision: crate::Precision::Process,
            frequency_hz: 99,
            concurrent_requests: 0,
            truncated_samples: 0,
            lost_samples: 0,
            source,
            profile_types: vec![crate::ProfileType::Cpu],
            profile: Default::default(),
        }
    }

    #[test]
    fn every_baseline_of_a_batch_claims_once_in_trigger_order() {
        let (a, b) = (
            uuid::Uuid::from_bytes([1; 16]),
            uuid::Uuid::from_bytes([2; 16]),
        );
        let batch = [
            profile(1, 10, ProfileSource::Baseline(b)),
            profile(1, 10, ProfileSource::Baseline(a)),
            profile(1, 10, ProfileSource::Baseline(a)), // sent twice
            profile(2, 5, ProfileSource::Trigger(a)),
            profile(3, 1, ProfileSource::Session(a)),
            profile(4, 0, ProfileSource::Baseline(b)), // stored before
        ];
        // The backend stored the first of each request, but request 4 was there.
        let stored = [&batch[0], &batch[3], &batch[4]];
        let claims = slot_claims(&batch, &stored);
        let summary: Vec<(u8, ProfileSource, bool)> = claims
            .iter()
            .map(|c| (c.profile.trace_id.0[0], c.profile.source, c.stores))
            .collect();
        assert_eq!(
            summary,
            [
                (2, ProfileSource::Trigger(a), true),
                (1, ProfileSource::Baseline(a), false),
                (4, ProfileSource::Baseline(b), false),
                (1, ProfileSource::Baseline(b), true),
            ]
        );

        // B is full: request 1 stays, as A's baseline; request 4 is not counted.
        let mut tally = ClaimTally::default();
        for (claim, result) in claims.iter().zip([
            Claim::Completed,
            Claim::Kept,
            Claim::Refused,
            Claim::Refused,
        ]) {
            tally.record(claim, result);
        }
        let key = (TraceId([1; 16]), SpanId([1; 8]));
        assert_eq!(
            tally.finish(),
            ClaimOutcome {
                delete: vec![],
                relabel: vec![(key, ProfileSource::Baseline(a))],
                over_limit: 2,
                completed_triggers: 1,
            }
        );
    }

    #[test]
    fn rows_are_checked() {
        let trigger = row().into_trigger().unwrap();
        assert_eq!(trigger.status, TriggerStatus::Active);
        assert_eq!(trigger.collected_requests, 0);
        assert_eq!(
            trigger.profile_types,
            [crate::ProfileType::Cpu, crate::ProfileType::Offcpu]
        );
        assert_eq!(trace_id_texts(&trigger.trace_ids), row().trace_ids);
        for bad in [
            TriggerRow {
                status: "paused".into(),
                ..row()
            },
            TriggerRow {
                trace_ids: vec!["0af7".into()],
                ..row()
            },
            TriggerRow {
                min_duration_ms: Some(-1),
                ..row()
            },
            TriggerRow {
                profile_types: "cpu,wall".into(),
                ..row()
            },
        ] {
            assert!(matches!(bad.into_trigger(), Err(StoreError::Corrupt(_))));
        }
        assert!(to_i32(u32::MAX, "max_requests").is_err());
        assert_eq!(to_i32(7, "max_requests").unwrap(), 7);
    }
}
