//! Runs of stored functions, owned by the server: a run steps under the
//! server lock until it finishes or needs the outside world; an
//! `HttpRequest` becomes an outbound call (`Purpose::Function`), a `Sleep`
//! a deadline in the timer table, bcrypt a job on a reader thread, and the
//! answer resumes the run. The caller's reply waits on a ticket meanwhile;
//! no thread waits on a run.

use super::calls::{CallId, Purpose};
use super::pending::Ticket;
use super::{Server, ServerTimer};
use crate::dialect::rest::{error_response, Outcome};
use crate::error::{Error, Result};
use crate::functions::interp::{
    Budget, Effect, Embedder, Finished, HttpCall, Poll, Resume, Run, World,
};
use crate::functions::{Definition, FunctionStore};
use crate::ids::ConnId;
use crate::rng::KeyedRng;
use crate::time::Timestamp;
use crate::wire::http::{client, Response};
use serde_json::{json, Map, Value as J};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(pub u64);

/// How a run's result is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `POST /api/functions/{id_or_label}`: records and stats (G6).
    Call,
    /// `/api/route/...`: a `Return` stage's fields with its status (G8).
    Route,
}

/// Runs in progress at once, beyond which new ones are refused (503).
const MAX_RUNS: usize = 10_000;

/// bcrypt jobs queued at once (the runtime runs them on a thread of their
/// own, apart from the readers). Each takes up to seconds; past this a
/// password stage fails (503) rather than wait behind a flood of logins.
const MAX_COMPUTING: usize = 32;

#[derive(Debug)]
enum Waiting {
    Call(CallId),
    Sleep,
    Compute,
}

struct Active {
    run: Run,
    reply: Option<(Ticket, Shape)>,
    /// A schedule's run this is: its history entry is finished at the end.
    schedule: Option<ScheduleRun>,
    waiting: Waiting,
}

/// A schedule and the number of its run in the history.
pub(crate) type ScheduleRun = (String, u64);

/// What starting a run came to.
pub(crate) enum Started {
    /// It finished at once.
    Done(Result<Finished>),
    /// It waits on an effect and finishes later.
    Waiting(Option<Ticket>),
}

impl std::fmt::Debug for Active {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Run({}, {:?})", self.run.label(), self.waiting)
    }
}

/// The server's function state: definitions, runs waiting on effects, and
/// the settings every run gets.
#[derive(Debug)]
pub(crate) struct Functions {
    pub(crate) store: FunctionStore,
    active: HashMap<RunId, Active>,
    next: u64,
    random: KeyedRng,
    budget: Budget,
    env: Arc<BTreeMap<String, String>>,
    http_allow: Vec<String>,
    embedder: Arc<Embedder>,
    /// The settings `Chat` stages choose a provider from.
    chat: Arc<crate::config::Config>,
    /// bcrypt jobs on the reader threads.
    computing: usize,
    /// Runs finished (by outcome), for `/metrics`.
    pub(crate) finished_ok: u64,
    pub(crate) finished_err: u64,
}

impl Functions {
    pub(crate) fn new(config: &crate::config::Config, secret: &[u8], seed: u64) -> Functions {
        Functions {
            store: FunctionStore::default(),
            active: HashMap::new(),
            next: 1,
            random: KeyedRng::new(secret, seed),
            budget: Budget {
                max_steps: config.function_max_steps.max(1),
                max_time: Duration::from_secs(config.function_timeout_secs.max(1)),
                ..Budget::default()
            },
            env: Arc::new(config.function_env.clone()),
            http_allow: config.function_http_allow.clone(),
            chat: Arc::new(config.clone()),
            embedder: Arc::new(Embedder {
                url: config.embed_url.clone(),
                api_key: config.embed_api_key.clone(),
                model: config.embed_model.clone(),
                dimensions: config.embed_dimensions,
            }),
            computing: 0,
            finished_ok: 0,
            finished_err: 0,
        }
    }

    pub(crate) fn running(&self) -> usize {
        self.active.len()
    }
}

impl Server {
    /// The engine and the function store together (a handler needs both).
    pub fn function_parts(&mut self) -> (&mut crate::engine::Engine, &mut FunctionStore) {
        (&mut self.engine, &mut self.functions.store)
    }
}

/// Why a host may not be called from a function: loopback, private,
/// link-local and other non-public addresses are refused unless the
/// operator allowed the host (`--function-http-allow`). Names are checked
/// as written; `localhost` counts as loopback.
pub fn refused_host(host: &str, allow: &[String]) -> Option<String> {
    // The in-process models are the server's own providers, never a
    // function's HTTP target, whatever the allow list says.
    if host.eq_ignore_ascii_case(crate::providers::IN_PROCESS_HOST) {
        return Some(format!("`{host}` is the server's in-process model endpoint, which functions reach through the Embed and Chat stages only"));
    }
    if allow
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(host))
    {
        return None;
    }
    let lower = host.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Some(format!(
            "`{host}` is a loopback address, which functions may not call unless --function-http-allow names it"
        ));
    }
    let ip: IpAddr = host.parse().ok()?;
    let private = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| refused_host(&v4.to_string(), allow).is_some())
        }
    };
    private.then(|| {
        format!(
            "`{host}` is a private or loopback address, which functions may not call unless --function-http-allow names it"
        )
    })
}

impl Server {
    /// Starts a run of `def`. A run that finishes at once is answered now;
    /// one waiting on an effect answers `conn` later through a ticket.
    pub fn run_function(
        &mut self,
        def: &Definition,
        params: Map<String, J>,
        shape: Shape,
        conn: Option<ConnId>,
        now: Timestamp,
    ) -> Result<Outcome> {
        match self.start_run(def, params, conn.map(|c| (c, shape)), None, now)? {
            Started::Done(result) => Ok(Outcome::Reply(self.run_reply(result, shape))),
            Started::Waiting(Some(t)) => Ok(Outcome::Pending(t)),
            Started::Waiting(None) => Ok(Outcome::Reply(Response::json(
                202,
                json!({"status": "running"}).to_string(),
            ))),
        }
    }

    /// Starts a run; one that waits answers `reply` (and finishes its
    /// schedule's history entry) when it ends.
    pub(crate) fn start_run(
        &mut self,
        def: &Definition,
        params: Map<String, J>,
        reply: Option<(ConnId, Shape)>,
        schedule: Option<ScheduleRun>,
        now: Timestamp,
    ) -> Result<Started> {
        if self.functions.active.len() >= MAX_RUNS {
            return Err(Error::new(
                crate::error::ErrorKind::Unavailable,
                "too many function runs are waiting; try again later",
            ));
        }
        let mut run = Run::new(
            def,
            params,
            self.functions.env.clone(),
            self.functions.budget,
            now,
        )?
        .with_embedder(self.functions.embedder.clone())
        .with_chat(self.functions.chat.clone());
        let poll = self.poll_run(&mut run, None, now);
        match poll {
            Poll::Done(result) => Ok(Started::Done(result)),
            Poll::Wait(effect) => {
                let reply = reply.map(|(c, shape)| (self.pending.ticket(c), shape));
                let id = RunId(self.functions.next);
                self.functions.next += 1;
                self.wait_on(
                    id,
                    Parked {
                        run,
                        reply,
                        schedule,
                    },
                    effect,
                    now,
                );
                Ok(Started::Waiting(reply.map(|(t, _)| t)))
            }
        }
    }

    /// Steps a run (first, or with an effect's answer) with the engine.
    fn poll_run(&mut self, run: &mut Run, answer: Option<Resume>, now: Timestamp) -> Poll {
        let f = &mut self.functions;
        let mut random = |out: &mut [u8]| f.random.fill(out);
        let mut world = World {
            engine: &mut self.engine,
            library: &mut f.store,
            now,
            random: &mut random,
        };
        match answer {
            None => run.poll(&mut world),
            Some(a) => run.resume(a, &mut world),
        }
    }

    /// Parks a run on its effect.
    fn wait_on(&mut self, id: RunId, parked: Parked, effect: Effect, now: Timestamp) {
        let Parked {
            run,
            reply,
            schedule,
        } = parked;
        let deadline = run.deadline();
        let waiting = match effect {
            Effect::Sleep(d) => {
                self.timers.set(
                    ServerTimer::Function(id),
                    Some(now.saturating_add(d).min(deadline)),
                );
                Waiting::Sleep
            }
            Effect::Compute(job) => {
                if self.functions.computing >= MAX_COMPUTING {
                    let busy = Error::new(
                        crate::error::ErrorKind::Unavailable,
                        format!(
                            "{MAX_COMPUTING} password hashes are already running: try again shortly"
                        ),
                    );
                    let parked = Parked {
                        run,
                        reply,
                        schedule,
                    };
                    self.abort_run(id, parked, busy, now);
                    return;
                }
                self.functions.computing += 1;
                self.timers
                    .set(ServerTimer::Function(id), Some(deadline.max(now)));
                let max_time = deadline.since(now);
                self.defer_compute(id, max_time, move || job.run());
                Waiting::Compute
            }
            Effect::Http(call) => match self.start_http(id, &call, now) {
                Ok(cid) => {
                    self.timers.set(
                        ServerTimer::Function(id),
                        Some(now.saturating_add(call.timeout).min(deadline)),
                    );
                    Waiting::Call(cid)
                }
                Err(why) => {
                    // Refused before it started: the run learns at once.
                    self.functions.active.insert(
                        id,
                        Active {
                            run,
                            reply,
                            schedule,
                            waiting: Waiting::Sleep,
                        },
                    );
                    self.resume_run(id, Resume::Http(Err(why)), now);
                    return;
                }
            },
        };
        self.functions.active.insert(
            id,
            Active {
                run,
                reply,
                schedule,
                waiting,
            },
        );
    }

    fn start_http(&mut self, id: RunId, call: &HttpCall, now: Timestamp) -> Result<CallId, String> {
        let request = match &call.prebuilt {
            Some(r) => r.clone(),
            None => client::request(&call.method, &call.url, &call.headers, call.body.as_deref())
                .map_err(|e| e.to_string())?,
        };
        if !call.trusted {
            if let Some(why) = refused_host(&request.target.host, &self.functions.http_allow) {
                return Err(why);
            }
        }
        let purpose = Purpose::Function {
            run: id,
            max_body: call.max_bytes,
        };
        self.calls
            .start(request, purpose, now, &mut self.timers)
            .map_err(|f| f.to_string())
    }

    /// A bcrypt job finished: its run goes on (unless its time ran out
    /// meanwhile and it was stopped).
    pub(super) fn computed(&mut self, id: RunId, value: J, now: Timestamp) {
        self.functions.computing = self.functions.computing.saturating_sub(1);
        self.resume_run(id, Resume::Computed(value), now);
    }

    /// Stops a parked run with `why`, rolling back its transaction.
    fn abort_run(&mut self, id: RunId, parked: Parked, why: Error, now: Timestamp) {
        let Parked {
            mut run,
            reply,
            schedule,
        } = parked;
        self.timers.cancel(ServerTimer::Function(id));
        let result = match run.abort(why, &mut self.engine) {
            Poll::Done(r) => r,
            Poll::Wait(_) => Err(Error::internal("an aborted run waits")),
        };
        self.run_done(reply, schedule, result, now);
    }

    /// Resumes a parked run with its effect's answer.
    fn resume_run(&mut self, id: RunId, answer: Resume, now: Timestamp) {
        let Some(mut active) = self.functions.active.remove(&id) else {
            return;
        };
        self.timers.cancel(ServerTimer::Function(id));
        let poll = self.poll_run(&mut active.run, Some(answer), now);
        let parked = Parked {
            run: active.run,
            reply: active.reply,
            schedule: active.schedule,
        };
        match poll {
            Poll::Wait(effect) => self.wait_on(id, parked, effect, now),
            Poll::Done(result) => self.run_done(parked.reply, parked.schedule, result, now),
        }
    }

    /// A finished run: its writes are committed and its reply handed on.
    fn run_done(
        &mut self,
        reply: Option<(Ticket, Shape)>,
        schedule: Option<ScheduleRun>,
        result: Result<Finished>,
        now: Timestamp,
    ) {
        if let Some((id, number)) = schedule {
            let outcome = schedule_outcome(&result);
            self.finish_scheduled_run(&id, number, outcome, now);
        }
        let wait_for = self.finish_operation(now);
        if let Some((ticket, shape)) = reply {
            let response = self.run_reply(result, shape);
            self.complete(ticket, response, wait_for);
        } else {
            self.count_run(&result);
            if let Err(e) = &result {
                self.note_at(
                    crate::config::LogLevel::Warn,
                    format!("a function run failed: {}", e.message),
                );
            }
        }
    }

    /// Counts an ended run for `/metrics`.
    pub(crate) fn count_run(&mut self, result: &Result<Finished>) {
        match result {
            Ok(_) => self.functions.finished_ok += 1,
            Err(_) => self.functions.finished_err += 1,
        }
    }

    /// The HTTP answer for a run's result.
    fn run_reply(&mut self, result: Result<Finished>, shape: Shape) -> Response {
        self.count_run(&result);
        match result {
            Err(e) => error_response(&e),
            Ok(done) => {
                if shape == Shape::Route {
                    if let Some((fields, status)) = &done.returned {
                        return Response::json(*status, J::Object(fields.clone()).to_string());
                    }
                }
                Response::json(200, result_json(&done).to_string())
            }
        }
    }

    /// Hands finished `HttpRequest` calls to their runs.
    pub(super) fn pump_functions(&mut self, now: Timestamp) {
        while !self.calls.function_results.is_empty() {
            for (id, result) in std::mem::take(&mut self.calls.function_results) {
                let answer = match result {
                    Ok(r) => Ok((r.head.status, r.body)),
                    Err(f) => Err(f.to_string()),
                };
                self.resume_run(id, Resume::Http(answer), now);
            }
        }
    }

    /// A run's timer: its sleep is over, or its call took too long.
    pub(super) fn function_timeout(&mut self, id: RunId, now: Timestamp) {
        let Some(active) = self.functions.active.get(&id) else {
            return;
        };
        let over = now >= active.run.deadline();
        match active.waiting {
            Waiting::Sleep if !over => self.resume_run(id, Resume::Slept, now),
            Waiting::Call(cid) => {
                self.calls.cancel(cid, now, &mut self.timers);
                self.resume_run(id, Resume::Http(Err("the request timed out".into())), now)
            }
            Waiting::Sleep | Waiting::Compute => {
                if let Some(a) = self.functions.active.remove(&id) {
                    let parked = Parked {
                        run: a.run,
                        reply: a.reply,
                        schedule: a.schedule,
                    };
                    let why = Error::invalid("the function ran out of time (budget)");
                    self.abort_run(id, parked, why, now);
                }
            }
        }
    }

    /// The connection behind these tickets went away: their runs go on
    /// (their writes are the caller's intent) but answer nobody.
    pub(super) fn forget_run_replies(&mut self, tickets: &[Ticket]) {
        for a in self.functions.active.values_mut() {
            if a.reply.is_some_and(|(t, _)| tickets.contains(&t)) {
                a.reply = None;
            }
        }
    }
}

/// A run parked on an effect, and who hears of its end.
struct Parked {
    run: Run,
    reply: Option<(Ticket, Shape)>,
    schedule: Option<ScheduleRun>,
}

/// A schedule's history entry for a run's result.
pub(crate) fn schedule_outcome(result: &Result<Finished>) -> crate::schedule::Outcome {
    use crate::schedule::Outcome;
    match result {
        Ok(done) => Outcome::Succeeded(json!({
            "output_count": done.records.len(),
            "stages_executed": done.stats.stages_executed,
            "execution_time_ms": done.stats.execution_time_ms,
        })),
        Err(e) => Outcome::Failed(e.message.clone()),
    }
}

/// `{"records": [...], "stats": {...}}` (G6): every key the strict clients
/// require, integers as integers.
pub fn result_json(done: &Finished) -> J {
    let s = &done.stats;
    json!({
        "records": done.records,
        "stats": {
            "input_count": s.input_count,
            "output_count": done.records.len(),
            "execution_time_ms": s.execution_time_ms,
            "stages_executed": s.stages_executed,
            "stage_stats": s.stage_stats.iter().map(|st| json!({
                "stage": st.stage,
                "input_count": st.input_count,
                "output_count": st.output_count,
                "execution_time_ms": st.execution_time_ms,
            })).collect::<Vec<_>>(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::refused_host;

    #[test]
    fn the_in_process_models_are_never_a_function_target() {
        let host = crate::providers::IN_PROCESS_HOST;
        assert!(refused_host(host, &[]).is_some());
        assert!(refused_host(host, &["*".to_string()]).is_some());
        assert!(refused_host(&host.to_uppercase(), &[host.to_string()]).is_some());
        assert!(refused_host("example.com", &[]).is_none());
    }
}
