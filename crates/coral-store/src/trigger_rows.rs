//! Trace-profile triggers to rows and back, independent of the database: the part of
//! trigger storage that every backend shares.
//!
//! A trigger's `trace_ids` are stored as text, 32 lowercase hex digits each
//! ([`TraceId`]'s `Display`): a `TEXT[]` in PostgreSQL, a JSON array in SQLite. Its
//! criteria and counts are `u32` in the model and INTEGER (32 bits in PostgreSQL) in
//! the databases.

use crate::profile_rows::to_u32;
use crate::{ProfileSource, StoreError, TraceId, TraceProfileRecord, TraceProfileTrigger};

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
        })
    }
}

/// The profiles of a batch that must claim a trigger's slot (trigger and baseline
/// profiles), in the order they claim them: by trigger, so that concurrent writers
/// lock trigger rows in the same order and cannot deadlock, then by request start, so
/// that a trigger collects a batch's earliest requests.
pub fn claim_order<'a>(profiles: &[&'a TraceProfileRecord]) -> Vec<&'a TraceProfileRecord> {
    let mut claiming: Vec<&TraceProfileRecord> = profiles
        .iter()
        .copied()
        .filter(|p| !matches!(p.source, ProfileSource::Session(_)))
        .collect();
    claiming.sort_by_key(|p| (p.source.id(), p.start_unix_nano, p.trace_id, p.span_id));
    claiming
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
        }
    }

    #[test]
    fn rows_are_checked() {
        let trigger = row().into_trigger().unwrap();
        assert_eq!(trigger.status, TriggerStatus::Active);
        assert_eq!(trigger.collected_requests, 0);
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
        ] {
            assert!(matches!(bad.into_trigger(), Err(StoreError::Corrupt(_))));
        }
        assert!(to_i32(u32::MAX, "max_requests").is_err());
        assert_eq!(to_i32(7, "max_requests").unwrap(), 7);
    }
}
