//! Schedules on the server (spec F5). Each schedule is a record of an
//! internal collection (its state and last runs as JSON text), so it is
//! logged, replayed and compacted like any record. `Server::schedules`
//! (`schedule::Due`) knows when each enabled schedule is due next, and the
//! server's one timer table holds one entry for the earliest of them
//! (`ServerTimer::Schedules`); `handle_timeout` runs what is due.
//!
//! A run calls a stored function through `run_scheduled_function`, the one
//! place that knows how; its `Outcome` goes into the run history. Policies
//! (next run, late timers, runs missed while down, DST) are in
//! `crate::schedule`.

use super::Server;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::schedule::{Outcome, Schedule, Trigger};
use crate::time::Timestamp;
use crate::value::Value;
use serde_json::{Map, Value as J};

/// The internal collection of schedules.
pub const SCHEDULES: &str = "schedules__ek0_tidepool";
/// Longest id a client may choose.
const MAX_ID: usize = 256;

fn missing(id: &str) -> Error {
    Error::not_found(format!("schedule `{id}` not found"))
}

fn load(engine: &Engine, id: &str, now: Timestamp) -> Result<Schedule> {
    engine
        .get_internal(SCHEDULES, id, now)
        .and_then(|f| match f.record.get("schedule") {
            Some(Value::String(s)) => Schedule::from_stored(s),
            _ => None,
        })
        .ok_or_else(|| missing(id))
}

fn store(engine: &mut Engine, s: &Schedule, now: Timestamp) -> Result<()> {
    let text = Value::String(s.to_stored().into());
    engine.put_internal(SCHEDULES, &s.id, vec![("schedule", text)], now)
}

impl Server {
    /// Runs the stored function a schedule names. The single plug-in point
    /// for stored functions: whatever it returns is recorded in the run
    /// history (`Outcome::Started` for a run that goes on asynchronously;
    /// end it with `finish_scheduled_run`).
    pub(crate) fn run_scheduled_function(
        &mut self,
        schedule_id: &str,
        function_label: &str,
        parameters: Option<serde_json::Value>,
        now: Timestamp,
    ) -> Outcome {
        use super::functions::{schedule_outcome, Started};
        let Some(def) = self.functions.store.resolve(&self.engine, function_label) else {
            return Outcome::Failed(format!("no stored function `{function_label}`"));
        };
        let params = match parameters {
            None | Some(J::Null) => Map::new(),
            Some(J::Object(o)) => o,
            Some(_) => {
                return Outcome::Failed("the schedule's parameters must be an object".into())
            }
        };
        // The number `record_run` gives this run once it returns.
        let number = load(&self.engine, schedule_id, now).map_or(0, |s| s.run_count + 1);
        let run = (schedule_id.to_string(), number);
        match self.start_run(&def, params, None, Some(run), now) {
            Err(e) => Outcome::Failed(e.message),
            Ok(Started::Waiting(_)) => Outcome::Started,
            Ok(Started::Done(result)) => {
                self.count_run(&result);
                schedule_outcome(&result)
            }
        }
    }

    /// A run that returned `Outcome::Started` has ended: records its outcome
    /// (the caller ends the operation, `finish_operation`). `false` if the
    /// schedule or the run is gone from the history, or it had ended.
    pub(crate) fn finish_scheduled_run(
        &mut self,
        schedule_id: &str,
        run: u64,
        outcome: Outcome,
        now: Timestamp,
    ) -> bool {
        let Ok(mut s) = load(&self.engine, schedule_id, now) else {
            return false;
        };
        s.finish_run(run, outcome, now) && store(&mut self.engine, &s, now).is_ok()
    }

    /// Every schedule, oldest first.
    pub fn schedules(&self, now: Timestamp) -> Vec<Schedule> {
        let mut all: Vec<Schedule> = self
            .engine
            .with_id_prefix(SCHEDULES, "", now)
            .filter_map(|f| match f.record.get("schedule") {
                Some(Value::String(s)) => Schedule::from_stored(s),
                _ => None,
            })
            .collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        all
    }

    pub fn schedule(&self, id: &str, now: Timestamp) -> Result<Schedule> {
        load(&self.engine, id, now)
    }

    fn keep_schedule(&mut self, s: &Schedule, now: Timestamp) -> Result<()> {
        store(&mut self.engine, s, now)?;
        self.schedules.set(&s.id, s.next_execution);
        Ok(())
    }

    /// `POST /api/schedules`: a client may choose the `id` (ids may contain
    /// `/`); a taken one is a 409.
    pub fn create_schedule(&mut self, body: &Map<String, J>, now: Timestamp) -> Result<Schedule> {
        let id = match body.get("id") {
            None | Some(J::Null) => self.engine.token(16),
            Some(J::String(id)) if !id.is_empty() && id.len() <= MAX_ID => {
                if load(&self.engine, id, now).is_ok() {
                    return Err(Error::conflict(format!("schedule `{id}` exists already")));
                }
                id.clone()
            }
            Some(_) => {
                return Err(Error::invalid(format!(
                    "`id` must be a string of 1 to {MAX_ID} bytes (or left out)"
                )))
            }
        };
        let s = Schedule::create(id, body, now)?;
        self.keep_schedule(&s, now)?;
        Ok(s)
    }

    /// `PUT /api/schedules/{id}`: a partial update (`{"enabled": false}`
    /// pauses, `true` resumes).
    pub fn update_schedule(
        &mut self,
        id: &str,
        patch: &Map<String, J>,
        now: Timestamp,
    ) -> Result<Schedule> {
        let mut s = load(&self.engine, id, now)?;
        s.update(patch, now)?;
        self.keep_schedule(&s, now)?;
        Ok(s)
    }

    /// The legacy `POST …/pause` and `…/resume`: pausing a paused schedule
    /// is a 409; resuming an active one changes nothing.
    pub fn set_schedule_enabled(
        &mut self,
        id: &str,
        enabled: bool,
        now: Timestamp,
    ) -> Result<Schedule> {
        let mut s = load(&self.engine, id, now)?;
        if !enabled && !s.enabled {
            return Err(Error::conflict(format!(
                "schedule `{id}` is paused already"
            )));
        }
        if enabled && s.enabled {
            return Ok(s);
        }
        s.set_enabled(enabled, now)?;
        self.keep_schedule(&s, now)?;
        Ok(s)
    }

    pub fn delete_schedule(&mut self, id: &str, now: Timestamp) -> Result<()> {
        load(&self.engine, id, now)?;
        self.engine.purge(SCHEDULES, id);
        self.schedules.set(id, None);
        Ok(())
    }

    /// `POST /api/schedules/{id}/trigger`: runs it once now (paused or not);
    /// its cron cadence is unchanged.
    pub fn trigger_schedule(&mut self, id: &str, now: Timestamp) -> Result<Schedule> {
        self.run_schedule(id, Trigger::Manual, now)
    }

    /// Runs a schedule's function once and records the run; a run for an
    /// occurrence (not a manual one) moves the schedule to its next one.
    fn run_schedule(&mut self, id: &str, trigger: Trigger, now: Timestamp) -> Result<Schedule> {
        let s = load(&self.engine, id, now)?;
        let scheduled_for = match trigger {
            Trigger::Manual => None,
            Trigger::Cron | Trigger::Missed => s.next_execution,
        };
        let outcome = match s.function_label() {
            Some(label) => {
                let label = label.to_string();
                self.run_scheduled_function(id, &label, s.parameters(), now)
            }
            None => Outcome::Failed(
                "the schedule names no stored function to run (`function_label`)".into(),
            ),
        };
        // The function may have changed the schedule (or deleted it).
        let mut s = load(&self.engine, id, now)?;
        s.record_run(trigger, scheduled_for, outcome, now);
        if trigger != Trigger::Manual {
            s.advance(now);
        }
        self.keep_schedule(&s, now)?;
        Ok(s)
    }

    /// The schedules timer fired: run every schedule due by `now`, once
    /// each.
    pub(super) fn schedules_due(&mut self, now: Timestamp) {
        for (id, missed) in self.schedules.take_due(now) {
            let Ok(s) = load(&self.engine, &id, now) else {
                continue;
            };
            if !s.enabled {
                continue;
            }
            // The index is a cache: the stored time decides.
            if !missed && s.next_execution.is_none_or(|t| t > now) {
                self.schedules.set(&id, s.next_execution);
                continue;
            }
            let trigger = if missed {
                Trigger::Missed
            } else {
                Trigger::Cron
            };
            if let Err(e) = self.run_schedule(&id, trigger, now) {
                self.note(format!("schedule `{id}`: run not recorded: {}", e.message));
            }
        }
    }

    /// After recovery: index every enabled schedule; one whose next run
    /// passed while the server was down runs once now (trigger `missed`).
    /// A run the stop caught still going (`started`: it waited on an
    /// outbound call or a sleep) is recorded as failed: its run state lived
    /// in memory only, and whatever it wrote outside a transaction stays.
    pub(super) fn recover_schedules(&mut self, now: Timestamp) {
        let mut missed = 0;
        for mut s in self.schedules(now) {
            let interrupted: Vec<u64> = s
                .runs
                .iter()
                .filter(|r| r.outcome == Outcome::Started)
                .map(|r| r.number)
                .collect();
            for number in &interrupted {
                let why = "interrupted: the server stopped while this run was waiting".to_string();
                s.finish_run(*number, Outcome::Failed(why), now);
            }
            if !interrupted.is_empty() {
                if let Err(e) = store(&mut self.engine, &s, now) {
                    self.note(format!("schedule `{}`: {}", s.id, e.message));
                }
            }
            if s.missed_by(now) {
                missed += 1;
                self.schedules.set_missed(&s.id, now);
            } else {
                self.schedules.set(&s.id, s.next_execution);
            }
        }
        if missed > 0 {
            self.note(format!(
                "schedules: {missed} missed run(s) while the server was down; each runs once now"
            ));
        }
    }
}
