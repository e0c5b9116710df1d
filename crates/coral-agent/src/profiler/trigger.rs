//! Trace-profile triggers on the agent: which requests a trigger collects, and the
//! random baseline of those it does not.
//!
//! The colony sends the set of active triggers (first on every command stream, then
//! whenever it changes); [`Worker::set_triggers`] starts the new ones and ends the
//! missing ones. While a trigger runs, the processes of its service are sampled into
//! the ring; each request span of the service that ends is then, for each active
//! trigger of the service that sampled it from its first moment (its process was a
//! target before it started, and the ring still holds its start), either
//!
//! * collected, if it meets every criterion of the trigger (a request that several
//!   triggers match is collected once, by the oldest), or
//! * offered to the trigger's baseline reservoir if it does not meet them (Algorithm
//!   R: the k kept are a uniform random choice among the n non-matching requests
//!   seen, with about k·(1 + ln(n/k)) profiles assembled in all), which is sent when
//!   the trigger ends.
//!
//! Overlapping triggers of one service each keep their own baseline: every reservoir
//! decides on every request on its own. A request that trigger A collected (it met
//! A's criteria, not B's) is still a valid non-matching sample for B and is offered
//! to B's baseline too. The request's profile is joined and symbolized once, sent at
//! once for what collected it, and a copy is put in each reservoir that chose it; the
//! colony stores the request once and counts it in each of those baselines.
//!
//! The colony decides what counts (exactly `max_requests`, across agents and colony
//! replicas) and ends the trigger; the agent also ends it at its expiry on its own.

use super::session::{BaselineSlot, Collected, Dest, Worker};
use coral_analysis::{RequestCriteria, RequestFacts};
use coral_client::v1;
use coral_sampler::Recording;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// `Trigger::pids` value of a process that could not be sampled.
const NEVER_SAMPLED: i64 = i64::MAX;

/// A trigger this agent runs.
#[derive(Debug)]
pub(crate) struct Trigger {
    pub(crate) id: String,
    pub(crate) service: String,
    criteria: RequestCriteria,
    pub(crate) frequency_hz: u32,
    /// Whether it records off-CPU time too.
    pub(crate) off_cpu: bool,
    /// Whether it records memory made resident too.
    pub(crate) memory: bool,
    /// The frequency the sampler actually runs at (another trigger or session may
    /// have asked for more): what CPU time is computed from.
    pub(crate) effective_hz: u32,
    pub(crate) expires_unix_nano: i64,
    /// Processes sampled for this trigger, with when their sampling began
    /// ([`NEVER_SAMPLED`] if it could not).
    pub(crate) pids: BTreeMap<u32, i64>,
    pub(crate) baseline: Reservoir,
    /// When it ended here; it stays until its baseline candidates are joined.
    pub(crate) ended: Option<Instant>,
    pub(crate) matched: u64,
}

impl Trigger {
    /// What it records besides CPU samples.
    pub(crate) fn recording(&self) -> Recording {
        Recording {
            off_cpu: self.off_cpu,
            memory: self.memory,
        }
    }
}

impl Trigger {
    pub(crate) fn from_command(command: &v1::TriggerCommand) -> Result<Self, String> {
        let ms = |ns: i64| (ns > 0).then_some((ns / 1_000_000) as u64);
        let criteria = RequestCriteria::new(
            ms(command.min_duration_ns),
            ms(command.max_duration_ns),
            Some(command.status_code_pattern.as_str()),
            Some(command.url_pattern.as_str()),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            id: command.trigger_id.clone(),
            service: command.service.clone(),
            criteria,
            frequency_hz: command.frequency_hz,
            off_cpu: command.off_cpu,
            memory: command.memory,
            effective_hz: command.frequency_hz,
            expires_unix_nano: command.expires_unix_nano,
            pids: BTreeMap::new(),
            baseline: Reservoir::new(command.baseline_requests as usize),
            ended: None,
            matched: 0,
        })
    }

    pub(crate) fn is_active(&self) -> bool {
        self.ended.is_none()
    }

    /// Whether the request meets every criterion.
    pub(crate) fn matches(&self, span: &v1::Span) -> bool {
        self.criteria.matches(&RequestFacts {
            duration_ns: span.duration_ns,
            http_status: span.http_status,
            status_code: span.status_code,
            url: span.url.as_deref(),
            route: span.route.as_deref(),
        })
    }

    /// Whether `pid` was sampled for this trigger from `start_unix_nano` on.
    pub(crate) fn sampled_since(&self, pid: u32, start_unix_nano: i64) -> bool {
        self.pids
            .get(&pid)
            .is_some_and(|&since| since <= start_unix_nano)
    }
}

/// A bounded uniform random sample of the requests offered (Algorithm R). A slot is
/// chosen when a request is offered; its profile is put there once assembled.
#[derive(Debug)]
pub(crate) struct Reservoir {
    capacity: usize,
    offered: u64,
    slots: Vec<Option<v1::TraceProfile>>,
    rng: fastrand::Rng,
}

impl Reservoir {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            offered: 0,
            slots: Vec::new(),
            rng: fastrand::Rng::new(),
        }
    }

    /// Offers one more request: the slot its profile goes to, or `None` to skip it.
    pub(crate) fn offer(&mut self) -> Option<usize> {
        if self.capacity == 0 {
            return None;
        }
        self.offered += 1;
        if self.slots.len() < self.capacity {
            self.slots.push(None);
            return Some(self.slots.len() - 1);
        }
        let j = self.rng.u64(..self.offered);
        (j < self.capacity as u64).then_some(j as usize)
    }

    pub(crate) fn put(&mut self, slot: usize, profile: v1::TraceProfile) {
        if let Some(s) = self.slots.get_mut(slot) {
            *s = Some(profile);
        }
    }

    /// The profiles kept (empties the reservoir).
    pub(crate) fn take(&mut self) -> Vec<v1::TraceProfile> {
        std::mem::take(&mut self.slots)
            .into_iter()
            .flatten()
            .collect()
    }

    pub(crate) fn offered(&self) -> u64 {
        self.offered
    }
}

impl Worker {
    /// Reconciles with the colony's set of active triggers.
    pub(crate) fn set_triggers(&mut self, commands: Vec<v1::TriggerCommand>, now: i64) {
        let wanted: HashSet<&str> = commands.iter().map(|c| c.trigger_id.as_str()).collect();
        let gone: Vec<String> = self
            .triggers
            .iter()
            .filter(|t| t.is_active() && !wanted.contains(t.id.as_str()))
            .map(|t| t.id.clone())
            .collect();
        for id in gone {
            self.end_trigger(&id, "ended by the colony");
        }
        for command in commands {
            if self.triggers.iter().any(|t| t.id == command.trigger_id)
                || self.ended_triggers.contains_key(&command.trigger_id)
                || command.expires_unix_nano <= now
            {
                continue;
            }
            if let Some(allowed) = &self.config.allow_services
                && !allowed.contains(&command.service)
            {
                tracing::warn!(
                    trigger = %command.trigger_id,
                    service = %command.service,
                    "not profiling for this trigger: the service is not in --profile-allow"
                );
                self.ended_triggers.insert(command.trigger_id, now);
                continue;
            }
            match Trigger::from_command(&command) {
                Ok(trigger) => {
                    tracing::info!(
                        trigger = %trigger.id,
                        service = %trigger.service,
                        criteria = %trigger.criteria,
                        frequency_hz = trigger.frequency_hz,
                        off_cpu = trigger.off_cpu,
                        memory = trigger.memory,
                        "trace-profile trigger started"
                    );
                    self.triggers.push(trigger);
                    let pids = self.shared.pids_of(&command.service);
                    let i = self.triggers.len() - 1;
                    for pid in pids {
                        self.sample_for_trigger(i, pid, now);
                    }
                }
                Err(e) => {
                    tracing::warn!(trigger = %command.trigger_id, "invalid trigger: {e}");
                    self.ended_triggers.insert(command.trigger_id, now);
                }
            }
        }
        self.update_watched();
    }

    /// Starts sampling `pid` for trigger `i`. A process that cannot be sampled (gone,
    /// or the sampler failed) is remembered as never sampled, so that its next spans
    /// do not try again (and log again) at every request.
    pub(crate) fn sample_for_trigger(&mut self, i: usize, pid: u32, now: i64) {
        let trigger = &self.triggers[i];
        let (frequency_hz, recording) = (trigger.frequency_hz, trigger.recording());
        let attached = self.policy.check(pid).and_then(|()| {
            self.sampler().and_then(|sampler| {
                sampler
                    .add_targets(&[pid], frequency_hz, recording)
                    .map(|()| sampler)
                    .map_err(|e| e.to_string())
            })
        });
        let trigger = &mut self.triggers[i];
        match attached {
            Ok(sampler) => {
                trigger.effective_hz = trigger.effective_hz.max(sampler.stats().frequency_hz);
                trigger.pids.insert(pid, now);
                tracing::debug!(trigger = %trigger.id, pid, "sampling a process for the trigger");
            }
            Err(e) => {
                trigger.pids.insert(pid, NEVER_SAMPLED);
                tracing::warn!(trigger = %trigger.id, pid, "cannot sample: {e}");
            }
        }
    }

    /// Ends a trigger here: stops sampling what nothing else needs. Its baseline is
    /// sent once the candidates still held are joined.
    pub(crate) fn end_trigger(&mut self, id: &str, why: &str) {
        let Some(i) = self
            .triggers
            .iter()
            .position(|t| t.id == id && t.is_active())
        else {
            return;
        };
        self.triggers[i].ended = Some(Instant::now());
        let pids: Vec<u32> = self.triggers[i].pids.keys().copied().collect();
        self.release(&pids);
        let t = &self.triggers[i];
        tracing::info!(
            trigger = %t.id,
            service = %t.service,
            matched = t.matched,
            baseline_offered = t.baseline.offered(),
            "trace-profile trigger {why}"
        );
        self.ended_triggers
            .insert(t.id.clone(), super::session::now_unix_nano());
        self.update_watched();
    }

    /// Ends the triggers past their expiry, and sends the baseline of ended triggers
    /// whose candidates have all been joined.
    pub(crate) fn tick_triggers(&mut self, now: i64, finishing: bool) {
        let expired: Vec<String> = self
            .triggers
            .iter()
            .filter(|t| t.is_active() && (finishing || t.expires_unix_nano <= now))
            .map(|t| t.id.clone())
            .collect();
        for id in expired {
            let why = if finishing {
                "stopped (agent shutting down)"
            } else {
                "expired"
            };
            self.end_trigger(&id, why);
        }
        let done: Vec<usize> = (0..self.triggers.len())
            .filter(|&i| {
                let t = &self.triggers[i];
                t.ended.is_some() && !self.held.iter().any(|h| h.dest.has_baseline_of(&t.id))
            })
            .rev()
            .collect();
        for i in done {
            let mut trigger = self.triggers.remove(i);
            let baseline = trigger.baseline.take();
            if !baseline.is_empty() {
                tracing::info!(
                    trigger = %trigger.id,
                    profiles = baseline.len(),
                    "sending the trigger's baseline"
                );
                self.send_profiles(baseline);
            }
        }
    }

    /// Where the profile of a request span goes for the triggers: collected by the
    /// oldest trigger it matches, and into the baseline reservoir of each trigger it
    /// does not match that chose it (see the module's documentation).
    pub(crate) fn trigger_dest(&mut self, span: &v1::Span, pid: u32, start: i64) -> Dest {
        let complete_since = self.ring.complete_since();
        let mut dest = Dest::default();
        for i in 0..self.triggers.len() {
            let t = &self.triggers[i];
            if !t.is_active() || t.service != span.service {
                continue;
            }
            if !t.pids.contains_key(&pid) {
                // A process of the service this trigger does not sample yet: from now on.
                self.sample_for_trigger(i, pid, super::session::now_unix_nano());
                continue;
            }
            let t = &mut self.triggers[i];
            if !t.sampled_since(pid, start) || start < complete_since {
                continue; // sampled only in part: neither collected nor baseline
            }
            if !t.matches(span) {
                if let Some(slot) = t.baseline.offer() {
                    dest.baselines.push(BaselineSlot {
                        trigger: t.id.clone(),
                        slot,
                    });
                }
            } else if dest.collected.is_none() {
                t.matched += 1;
                dest.collected = Some(Collected::Trigger(t.id.clone()));
            }
        }
        dest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservoir_keeps_a_bounded_uniform_sample() {
        let mut counts = vec![0u32; 100];
        for _ in 0..2000 {
            let mut r = Reservoir::new(10);
            let mut kept: Vec<Option<usize>> = vec![None; 10];
            for request in 0..100 {
                if let Some(slot) = r.offer() {
                    kept[slot] = Some(request);
                }
            }
            assert_eq!(r.offered(), 100);
            for request in kept.into_iter().flatten() {
                counts[request] += 1;
            }
        }
        // Each request is kept with probability 10/100: 200 of 2000 runs expected.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 130 && *max < 270, "min {min} max {max}");
    }

    #[test]
    fn an_empty_reservoir_takes_nothing() {
        let mut r = Reservoir::new(0);
        assert_eq!(r.offer(), None);
        let mut r = Reservoir::new(2);
        assert_eq!(r.offer(), Some(0));
        assert_eq!(r.offer(), Some(1));
        r.put(1, v1::TraceProfile::default());
        assert_eq!(r.take().len(), 1, "an unfilled slot sends nothing");
    }

    #[test]
    fn triggers_match_their_criteria() {
        let command = v1::TriggerCommand {
            trigger_id: "t".into(),
            service: "svc".into(),
            min_duration_ns: 1_000_000_000,
            status_code_pattern: "5xx".into(),
            ..Default::default()
        };
        let t = Trigger::from_command(&command).unwrap();
        let span = |ms: i64, status: i32| v1::Span {
            duration_ns: ms * 1_000_000,
            http_status: Some(status),
            ..Default::default()
        };
        assert!(t.matches(&span(1500, 503)));
        assert!(!t.matches(&span(900, 503)));
        assert!(!t.matches(&span(1500, 200)));
        let bad = v1::TriggerCommand {
            url_pattern: "/a b".into(),
            ..command
        };
        assert!(Trigger::from_command(&bad).is_err());
    }
}
