//! Schedules (spec F5), the pure part: cron expressions in a time zone and
//! their next occurrence (`cron`), a schedule's state and run history
//! (`state`), and the index of when each enabled schedule is due next
//! (`due`). Nothing here reads a clock or touches storage: the server
//! (`server/schedules.rs`) passes `now`, stores schedules as records of an
//! internal collection, and fires them from its one timer table.
//!
//! Policies, in one place:
//!
//! - **Next run.** After a schedule is created, enabled, changed or run, its
//!   next execution is the first occurrence strictly after that moment.
//! - **Late timers.** A timer that fires late (the machine slept) runs a
//!   schedule once, then moves on to the next occurrence after now: no burst
//!   of catch-up runs.
//! - **Missed while down.** At startup, an enabled schedule whose stored next
//!   execution has passed runs once, with trigger `missed`, then resumes its
//!   cadence from the first occurrence after that run.
//! - **Daylight saving time** follows croner (Vixie cron's rules): in a
//!   spring-forward gap a fixed-time job (`30 2 * * *`) runs once, at the
//!   first instant after the gap (03:00); in a fall-back overlap a
//!   fixed-time job runs once, at the first of the two wall-clock matches;
//!   interval and wildcard jobs (`*/15 * * * *`) skip times inside a gap and
//!   run at each matching instant of a repeated hour.
//! - **History.** The last `MAX_RUNS` runs of each schedule are kept.

pub mod cron;
pub mod due;
pub mod state;

pub use cron::Cron;
pub use due::Due;
pub use state::{Outcome, Run, Schedule, Trigger, MAX_RUNS};
