//! The interpreter: a run of a stored function as an explicit stack of
//! frames, so it can stop at any stage that needs the outside world (an
//! HTTP call, a sleep) and resume when the server feeds the answer back.
//! No thread ever waits on a function.
//!
//! ```text
//! Run::poll ──▶ stage after stage on the working set (under the server lock)
//!    │  If / ForEach / TryCatch / CallFunction / Parallel push a frame
//!    ├─▶ Poll::Wait(Effect)   the server performs it (an outbound call, a
//!    │                        timer, slow CPU work on a reader thread),
//!    │                        then Run::resume
//!    └─▶ Poll::Done(result)   records + stats, or the error that stopped it
//! ```
//!
//! Budgets bound every run: stages executed, wall time, `CallFunction`
//! depth, working-set size and HTTP response size.
//!
//! With `transaction_config.enabled` a run opens an engine transaction
//! before its first stage: record reads and writes (its own and those of
//! the functions it calls) go through it, it commits when the run
//! succeeds and rolls back when the run fails for any reason (an error, a
//! budget, a conflict), so a failed run leaves no record written. The KV
//! store, locks and rate limits are not transactional.

use super::condition;
use super::data::{self, Store};
use super::definition::{Definition, Stage, Stages};
use super::password::PasswordJob;
use super::scope::{Doc, Scope};
use super::transform;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::time::Timestamp;
use serde_json::{json, Map, Value as J};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Where `CallFunction` finds other functions.
pub trait Library {
    fn function(&mut self, engine: &Engine, id_or_label: &str) -> Option<Arc<Definition>>;
}

/// What a run may touch while it steps.
pub struct World<'a> {
    pub engine: &'a mut Engine,
    pub library: &'a mut dyn Library,
    pub now: Timestamp,
    /// Unpredictable bytes (tokens, UUIDs, lock tokens).
    pub random: &'a mut dyn FnMut(&mut [u8]),
}

/// The bounds of one run (`--function-*` settings).
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub max_steps: u64,
    pub max_time: Duration,
    pub max_depth: usize,
    pub max_records: usize,
    pub max_response_bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_steps: 100_000,
            max_time: Duration::from_secs(30),
            max_depth: 16,
            max_records: 100_000,
            max_response_bytes: 4 << 20,
        }
    }
}

/// Something the run needs from outside core.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Http(HttpCall),
    Sleep(Duration),
    /// CPU work too slow for the server lock (bcrypt), run on a reader
    /// thread.
    Compute(PasswordJob),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpCall {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
    pub max_bytes: usize,
    /// An endpoint the operator configured (the embedding provider): the
    /// private-address rule for user URLs does not apply.
    pub trusted: bool,
    /// A request already built (a chat provider's), sent as is.
    pub prebuilt: Option<crate::wire::http::client::OutboundRequest>,
}

/// Where the `Embed` stage gets vectors: the built-in offline embedder, or
/// the operator's OpenAI-compatible provider (`--embed-url`).
#[derive(Clone, Debug)]
pub struct Embedder {
    pub url: String,
    pub api_key: String,
    pub model: String,
    pub dimensions: usize,
}

impl Default for Embedder {
    fn default() -> Self {
        Embedder {
            url: String::new(),
            api_key: String::new(),
            model: String::new(),
            dimensions: 384,
        }
    }
}

/// What the server brings back for an effect.
#[derive(Debug)]
pub enum Resume {
    /// The response's status and body, or why there was none.
    Http(std::result::Result<(u16, Vec<u8>), String>),
    Slept,
    /// A `Compute` effect's result.
    Computed(J),
}

pub enum Poll {
    Wait(Effect),
    Done(Result<Finished>),
}

/// What a finished run produced.
#[derive(Clone, Debug)]
pub struct Finished {
    pub records: Vec<Doc>,
    /// A `Return` stage's fields and status.
    pub returned: Option<(Map<String, J>, u16)>,
    pub stats: Stats,
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub input_count: usize,
    pub stages_executed: usize,
    pub execution_time_ms: u64,
    pub stage_stats: Vec<StageStat>,
}

#[derive(Clone, Debug)]
pub struct StageStat {
    pub stage: &'static str,
    pub input_count: usize,
    pub output_count: usize,
    pub execution_time_ms: u64,
}

/// What finishing a frame does to the frame below it.
enum Then {
    /// The run's own body: the run is over.
    Finish,
    /// The child's working set replaces the parent's (If, TryCatch's catch).
    Replace,
    /// One `ForEach` item done; more may follow.
    Each {
        rest: std::vec::IntoIter<Doc>,
        acc: Vec<Doc>,
    },
    /// One `Parallel` branch done; the next gets a copy of `input`.
    Parallel { input: Vec<Doc>, acc: Vec<Doc> },
    /// `TryCatch`'s try: on failure the catch runs on `input`.
    Try {
        catch: Stages,
        error_field: Option<String>,
        input: Vec<Doc>,
    },
    /// `Validate.on_error` ran: the call goes on with its result.
    Handled,
    /// A called function returned: back to the caller's scope.
    Call,
}

struct Frame {
    stages: Stages,
    pc: usize,
    end: usize,
    ws: Vec<Doc>,
    then: Then,
    /// The stage at `pc` started: its input size and time.
    started: Option<(usize, Timestamp)>,
}

impl Frame {
    fn new(stages: Stages, ws: Vec<Doc>, then: Then) -> Frame {
        let end = stages.len();
        Frame {
            stages,
            pc: 0,
            end,
            ws,
            then,
            started: None,
        }
    }
}

/// How a suspended stage finishes when its effect is done.
enum Waiting {
    Http {
        output_field: String,
        /// `SWR`: cache the body under this key for this long.
        cache: Option<(String, Option<Timestamp>, Option<String>)>,
        url: String,
    },
    Sleep,
    /// `BcryptHash`/`BcryptVerify`: the result goes to `output_field`.
    Computed {
        output_field: String,
    },
    /// `Embed`: the provider's vectors go to `output_field` of each record.
    Embed {
        output_field: String,
    },
    /// `EmailSend`: the provider's answer becomes the result envelope.
    Email {
        output_field: String,
        provider: &'static str,
    },
    /// `Chat`: the provider's streamed answer, read whole.
    Chat {
        api: crate::providers::Api,
        model: String,
    },
}

/// What one stage did.
enum Flow {
    /// Its result is the new working set.
    Ws(Vec<Doc>),
    /// It runs nested stages first.
    Push(Frame),
    /// It needs the outside world.
    Wait(Effect, Waiting),
    /// `Return`: the run stops here.
    Return(Map<String, J>, u16),
    /// `CallFunction`: the callee's body, in its own scope.
    Call(Frame, Scope),
}

/// One execution of a stored function.
pub struct Run {
    frames: Vec<Frame>,
    scopes: Vec<Scope>,
    budget: Budget,
    started: Timestamp,
    steps: u64,
    stats: Stats,
    waiting: Option<Waiting>,
    returned: Option<(Map<String, J>, u16)>,
    label: String,
    tx: Txn,
    embedder: Arc<Embedder>,
    /// The settings `Chat` chooses its provider from (offline without).
    chat: Option<Arc<crate::config::Config>>,
}

/// The run's engine transaction.
enum Txn {
    None,
    /// `transaction_config.enabled`, not opened yet (with its isolation).
    Wanted(Option<String>),
    Open(String),
}

/// A call's parameters with the definition's defaults applied; a missing
/// required one is refused.
pub fn bind_parameters(def: &Definition, given: Map<String, J>) -> Result<Map<String, J>> {
    let mut params = given;
    for (name, p) in &def.parameters {
        let absent = params.get(name).is_none_or(J::is_null);
        if absent {
            match &p.default {
                Some(d) => {
                    params.insert(name.clone(), d.clone());
                }
                None if p.required => {
                    return Err(Error::invalid(format!(
                        "missing required parameter '{name}'"
                    )))
                }
                None => {}
            }
        }
    }
    // Typed values (`{"type": "Vector", "value": [...]}`) count as their
    // value, as everywhere in a function.
    for v in params.values_mut() {
        let inner = super::scope::plain(v).clone();
        *v = inner;
    }
    Ok(params)
}

impl Run {
    pub fn new(
        def: &Definition,
        params: Map<String, J>,
        env: Arc<BTreeMap<String, String>>,
        budget: Budget,
        now: Timestamp,
    ) -> Result<Run> {
        let params = bind_parameters(def, params)?;
        Ok(Run {
            frames: vec![Frame::new(def.functions.clone(), Vec::new(), Then::Finish)],
            scopes: vec![Scope {
                params,
                outputs: Map::new(),
                env,
            }],
            budget,
            started: now,
            steps: 0,
            stats: Stats::default(),
            waiting: None,
            returned: None,
            label: def.label.clone(),
            embedder: Arc::default(),
            chat: None,
            tx: match &def.transaction_config {
                Some(c) if c.enabled => Txn::Wanted(c.isolation_level.clone()),
                _ => Txn::None,
            },
        })
    }

    /// The embedding source `Embed` stages use (offline by default).
    pub fn with_embedder(mut self, embedder: Arc<Embedder>) -> Run {
        self.embedder = embedder;
        self
    }

    /// The settings `Chat` stages choose their provider from.
    pub fn with_chat(mut self, config: Arc<crate::config::Config>) -> Run {
        self.chat = Some(config);
        self
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// When the run's wall-time budget ends.
    pub fn deadline(&self) -> Timestamp {
        self.started.saturating_add(self.budget.max_time)
    }

    /// The effect's answer: finishes the stage that waited for it.
    pub fn resume(&mut self, answer: Resume, w: &mut World<'_>) -> Poll {
        let Some(waiting) = self.waiting.take() else {
            return self.poll(w);
        };
        let result = self.finish_wait(waiting, answer, w);
        match result {
            Ok(ws) => self.advance(ws, w.now),
            Err(e) => {
                if let Some(e) = self.unwind(e, w.now) {
                    return self.settle(Poll::Done(Err(e)), w);
                }
            }
        }
        self.poll(w)
    }

    /// The run stopped from outside (its wall time ran out while waiting):
    /// its transaction, if any, is rolled back.
    pub fn abort(&mut self, why: Error, engine: &mut Engine) -> Poll {
        self.frames.clear();
        if let Txn::Open(tx) = std::mem::replace(&mut self.tx, Txn::None) {
            let _ = engine.tx_rollback(&tx);
        }
        Poll::Done(Err(why))
    }

    /// Steps until the run finishes or needs an effect.
    pub fn poll(&mut self, w: &mut World<'_>) -> Poll {
        if let Txn::Wanted(isolation) = &self.tx {
            let owner = crate::engine::txn::Owner {
                key: format!("function {}", self.label),
                address: None,
            };
            match w.engine.tx_begin(isolation.as_deref(), owner, w.now) {
                Ok((id, _)) => self.tx = Txn::Open(id),
                Err(e) => {
                    self.frames.clear();
                    self.tx = Txn::None;
                    return Poll::Done(Err(e));
                }
            }
        }
        let p = self.step(w);
        self.settle(p, w)
    }

    /// A finished run's transaction commits (its result stands only if the
    /// commit does) or, after a failure, rolls back.
    fn settle(&mut self, p: Poll, w: &mut World<'_>) -> Poll {
        let Poll::Done(result) = p else { return p };
        let Txn::Open(tx) = std::mem::replace(&mut self.tx, Txn::None) else {
            return Poll::Done(result);
        };
        Poll::Done(match result {
            Ok(done) => w.engine.tx_commit(&tx, w.now).map(|_| done),
            Err(e) => {
                let _ = w.engine.tx_rollback(&tx);
                Err(e)
            }
        })
    }

    /// An outbound call's own timeout, at most the run's wall-time budget
    /// (the server also stops waiting at the run's deadline).
    fn call_timeout(&self, wanted: Duration) -> Duration {
        wanted.min(self.budget.max_time.max(Duration::from_secs(1)))
    }

    fn tx_id(&self) -> Option<String> {
        match &self.tx {
            Txn::Open(id) => Some(id.clone()),
            _ => None,
        }
    }

    /// Steps until the run finishes or needs an effect.
    fn step(&mut self, w: &mut World<'_>) -> Poll {
        loop {
            if self.waiting.is_some() {
                return Poll::Done(Err(Error::internal("a run was polled while waiting")));
            }
            if let Some(r) = self.returned.take() {
                return Poll::Done(Ok(self.finished(Vec::new(), Some(r), w.now)));
            }
            let Some(frame) = self.frames.last_mut() else {
                return Poll::Done(Err(Error::internal("a run has no frames")));
            };
            if frame.pc >= frame.end {
                let frame = self.frames.pop().expect("checked above");
                if let Some(done) = self.frame_done(frame, w.now) {
                    return Poll::Done(done);
                }
                continue;
            }
            let stages = frame.stages.clone();
            let stage = &stages[frame.pc];
            if frame.started.is_none() {
                frame.started = Some((frame.ws.len(), w.now));
                self.steps += 1;
                self.stats.stages_executed += 1;
                if let Err(e) = self.check_budget(w.now) {
                    self.frames.clear();
                    return Poll::Done(Err(e));
                }
            }
            let outcome = self.exec(stage, w).map_err(|e| blame(stage.kind(), e));
            match outcome {
                Ok(Flow::Ws(ws)) => {
                    if ws.len() > self.budget.max_records {
                        let e = Error::invalid(format!(
                            "{}: the working set passed {} records (budget)",
                            stage.kind(),
                            self.budget.max_records
                        ));
                        if let Some(e) = self.unwind(e, w.now) {
                            return Poll::Done(Err(e));
                        }
                        continue;
                    }
                    self.advance(ws, w.now)
                }
                Ok(Flow::Push(child)) => {
                    if self.frames.len() > 4 * self.budget.max_depth + 64 {
                        self.frames.clear();
                        return Poll::Done(Err(Error::invalid(
                            "the function nests too deeply (budget)",
                        )));
                    }
                    self.frames.push(child)
                }
                Ok(Flow::Wait(effect, waiting)) => {
                    self.waiting = Some(waiting);
                    return Poll::Wait(effect);
                }
                Ok(Flow::Return(fields, status)) => {
                    self.returned = Some((fields, status));
                }
                Ok(Flow::Call(..)) => unreachable!("exec turns a call into a push"),
                Err(e) => {
                    if let Some(e) = self.unwind(e, w.now) {
                        return Poll::Done(Err(e));
                    }
                }
            }
        }
    }

    fn check_budget(&self, now: Timestamp) -> Result<()> {
        if self.steps > self.budget.max_steps {
            return Err(Error::invalid(format!(
                "the function ran more than {} stages and was stopped (budget)",
                self.budget.max_steps
            )));
        }
        if now > self.deadline() {
            return Err(Error::invalid(format!(
                "the function ran longer than {} ms and was stopped (budget)",
                self.budget.max_time.as_millis()
            )));
        }
        Ok(())
    }

    /// The stage at the top frame's `pc` is done with `ws`.
    fn advance(&mut self, ws: Vec<Doc>, now: Timestamp) {
        let top_level = self.frames.len() == 1;
        let Some(frame) = self.frames.last_mut() else {
            return;
        };
        if let Some((input, at)) = frame.started.take() {
            if top_level {
                self.stats.stage_stats.push(StageStat {
                    stage: frame.stages[frame.pc].kind(),
                    input_count: input,
                    output_count: ws.len(),
                    execution_time_ms: now.since(at).as_millis() as u64,
                });
            }
        }
        frame.ws = ws;
        frame.pc += 1;
    }

    /// A frame ran to its end; returns the run's result if it was the last.
    fn frame_done(&mut self, frame: Frame, now: Timestamp) -> Option<Result<Finished>> {
        let ws = frame.ws;
        match frame.then {
            Then::Finish => {
                return Some(Ok(self.finished(ws, None, now)));
            }
            Then::Replace | Then::Handled | Then::Try { .. } => self.advance(ws, now),
            Then::Call => {
                self.scopes.pop();
                self.advance(ws, now)
            }
            Then::Each { mut rest, mut acc } => {
                acc.extend(ws);
                match rest.next() {
                    Some(item) => {
                        let mut next =
                            Frame::new(frame.stages, vec![item], Then::Each { rest, acc });
                        next.end = frame.end;
                        self.frames.push(next);
                    }
                    None => self.advance(acc, now),
                }
            }
            Then::Parallel { input, mut acc } => {
                acc.extend(ws);
                if frame.end < frame.stages.len() {
                    let mut next =
                        Frame::new(frame.stages, input.clone(), Then::Parallel { input, acc });
                    next.pc = frame.end;
                    next.end = frame.end + 1;
                    self.frames.push(next);
                } else {
                    self.advance(acc, now)
                }
            }
        }
        None
    }

    /// An error: the nearest `TryCatch` takes it, or the run ends with it.
    fn unwind(&mut self, e: Error, now: Timestamp) -> Option<Error> {
        // A budget or an internal error is not the function's to catch.
        let catchable = !e.message.contains("(budget)") && e.kind != ErrorKind::Internal;
        while let Some(frame) = self.frames.pop() {
            match frame.then {
                Then::Try {
                    catch,
                    error_field,
                    input,
                } if catchable => {
                    let mut ws = input;
                    if let Some(field) = error_field {
                        let text = J::String(e.message.clone());
                        set_output(&mut ws, self.scopes.last_mut(), &field, text);
                    }
                    self.frames.push(Frame::new(catch, ws, Then::Replace));
                    return None;
                }
                Then::Call => {
                    self.scopes.pop();
                }
                Then::Finish => {
                    let _ = now;
                    return Some(e);
                }
                _ => {}
            }
        }
        Some(e)
    }

    fn finished(
        &mut self,
        records: Vec<Doc>,
        returned: Option<(Map<String, J>, u16)>,
        now: Timestamp,
    ) -> Finished {
        self.frames.clear();
        let mut stats = std::mem::take(&mut self.stats);
        stats.execution_time_ms = now.since(self.started).as_millis() as u64;
        let records = match &returned {
            Some((fields, _)) => vec![fields.clone()],
            None => records,
        };
        Finished {
            records,
            returned,
            stats,
        }
    }

    fn exec(&mut self, stage: &Stage, w: &mut World<'_>) -> Result<Flow> {
        let frame = self.frames.last_mut().expect("exec runs on a frame");
        let ws = std::mem::take(&mut frame.ws);
        let mut scope = self.scopes.pop().expect("a run always has a scope");
        let flow = self.stage(stage, ws, &mut scope, w);
        self.scopes.push(scope);
        match flow? {
            Flow::Call(frame, callee) => {
                self.scopes.push(callee);
                Ok(Flow::Push(frame))
            }
            other => Ok(other),
        }
    }

    /// Runs one stage on `ws` with the current scope (taken off the stack
    /// while the stage runs, so it is read and written without copies).
    fn stage(
        &mut self,
        stage: &Stage,
        mut ws: Vec<Doc>,
        scope: &mut Scope,
        w: &mut World<'_>,
    ) -> Result<Flow> {
        let tx = self.tx_id();
        let mut store = Store {
            engine: w.engine,
            now: w.now,
            tx: tx.as_deref(),
        };
        if let Some(out) = data::run(stage, &ws, scope, &mut store, w.random) {
            return Ok(match out? {
                data::Out::Ws(out) => Flow::Ws(out),
                data::Out::Output(field, value) => {
                    set_output(&mut ws, Some(scope), &field, value);
                    Flow::Ws(ws)
                }
                data::Out::Same | data::Out::NotMine => Flow::Ws(ws),
            });
        }
        Ok(match stage {
            Stage::Project { fields, exclude } => {
                transform::project(&mut ws, fields, *exclude);
                Flow::Ws(ws)
            }
            Stage::Group {
                by_fields,
                functions,
            } => Flow::Ws(transform::group(&ws, by_fields, functions)?),
            Stage::Count { output_field } => {
                let n = ws.len();
                let value = json!(n);
                scope.outputs.insert(output_field.clone(), value.clone());
                let mut one = Map::new();
                one.insert(output_field.clone(), value);
                Flow::Ws(vec![one])
            }
            Stage::SetField { field, value } => {
                let value = scope.resolve(value, &ws)?;
                let field = scope.string(field, &ws)?.into_owned();
                set_output(&mut ws, Some(&mut *scope), &field, value);
                Flow::Ws(ws)
            }
            Stage::AddFields { fields } => {
                let snapshot = ws.clone();
                transform::add_fields(&mut ws, fields, &|v| scope.resolve(v, &snapshot))?;
                Flow::Ws(ws)
            }
            Stage::CurrentDatetime { output_field } => {
                let value = J::String(w.now.to_rfc3339_z());
                set_output(&mut ws, Some(&mut *scope), output_field, value);
                Flow::Ws(ws)
            }
            Stage::If {
                condition,
                then_functions,
                else_functions,
            } => {
                let branch = if condition::holds(condition, &ws, scope)? {
                    Some(then_functions.clone())
                } else {
                    else_functions.clone()
                };
                match branch {
                    Some(stages) => Flow::Push(Frame::new(stages, ws, Then::Replace)),
                    None => Flow::Ws(ws),
                }
            }
            Stage::ForEach { functions } => {
                let mut items = ws.into_iter();
                match items.next() {
                    None => Flow::Ws(Vec::new()),
                    Some(first) => Flow::Push(Frame::new(
                        functions.clone(),
                        vec![first],
                        Then::Each {
                            rest: items,
                            acc: Vec::new(),
                        },
                    )),
                }
            }
            Stage::Parallel { functions, .. } => {
                if functions.is_empty() {
                    return Ok(Flow::Ws(ws));
                }
                let mut f = Frame::new(
                    functions.clone(),
                    ws.clone(),
                    Then::Parallel {
                        input: ws,
                        acc: Vec::new(),
                    },
                );
                f.end = 1;
                Flow::Push(f)
            }
            Stage::TryCatch {
                try_functions,
                catch_functions,
                output_error_field,
            } => Flow::Push(Frame::new(
                try_functions.clone(),
                ws.clone(),
                Then::Try {
                    catch: catch_functions.clone(),
                    error_field: output_error_field.clone(),
                    input: ws,
                },
            )),
            Stage::CallFunction {
                function_label,
                params,
            } => {
                let label = scope.string(function_label, &ws)?.into_owned();
                if self.scopes.len() + 1 > self.budget.max_depth {
                    return Err(Error::invalid(format!(
                        "calls nest more than {} deep (budget): is `{label}` recursive?",
                        self.budget.max_depth
                    )));
                }
                let callee = w
                    .library
                    .function(w.engine, &label)
                    .ok_or_else(|| Error::not_found(format!("no function `{label}`")))?;
                let given = match params {
                    None => scope.params.clone(),
                    Some(p) => {
                        let mut m = Map::new();
                        for (k, v) in p {
                            m.insert(k.clone(), scope.resolve(v, &ws)?);
                        }
                        m
                    }
                };
                let params = bind_parameters(&callee, given)?;
                let callee_scope = Scope {
                    params,
                    outputs: Map::new(),
                    env: scope.env.clone(),
                };
                Flow::Call(
                    Frame::new(callee.functions.clone(), Vec::new(), Then::Call),
                    callee_scope,
                )
            }
            Stage::Sleep { duration_ms } => {
                let ms = scope.resolve(duration_ms, &ws)?.as_u64().ok_or_else(|| {
                    Error::invalid("`duration_ms` must be a non-negative integer")
                })?;
                let d = Duration::from_millis(ms);
                if w.now.saturating_add(d) > self.deadline() {
                    return Err(Error::invalid(format!(
                        "sleeping {ms} ms would pass the function's {} ms (budget)",
                        self.budget.max_time.as_millis()
                    )));
                }
                self.put(ws);
                Flow::Wait(Effect::Sleep(d), Waiting::Sleep)
            }
            Stage::Return {
                fields,
                status_code,
            } => {
                let mut out = Map::new();
                for (k, v) in fields {
                    out.insert(k.clone(), scope.resolve(v, &ws)?);
                }
                let status = status_code.unwrap_or(200);
                if !(100..=599).contains(&status) {
                    return Err(Error::invalid(
                        "`status_code` must be an HTTP status (100-599)",
                    ));
                }
                Flow::Return(out, status)
            }
            Stage::Validate {
                schema,
                data_field,
                on_error,
            } => {
                let value = match data_field.trim() {
                    f if f.starts_with("{{") => scope.resolve(&J::String(f.into()), &ws)?,
                    f => scope.lookup(f, &ws)?.unwrap_or(J::Null),
                };
                match super::validate::check(schema, &value) {
                    Ok(()) => Flow::Ws(ws),
                    Err(why) => match on_error {
                        Some(stages) => {
                            let mut ws = ws;
                            set_output(
                                &mut ws,
                                Some(&mut *scope),
                                "validation_error",
                                J::String(why),
                            );
                            Flow::Push(Frame::new(stages.clone(), ws, Then::Handled))
                        }
                        None => return Err(Error::invalid(format!("`{data_field}` {why}"))),
                    },
                }
            }
            Stage::HttpRequest {
                url,
                method,
                headers,
                body,
                timeout_seconds,
                output_field,
            } => {
                let call = self.http_call(
                    scope,
                    &ws,
                    url,
                    method,
                    headers.as_ref(),
                    body.as_ref(),
                    *timeout_seconds,
                )?;
                let url = call.url.clone();
                self.put(ws);
                Flow::Wait(
                    Effect::Http(call),
                    Waiting::Http {
                        output_field: output_field
                            .clone()
                            .unwrap_or_else(|| "http_response".into()),
                        cache: None,
                        url,
                    },
                )
            }
            Stage::SWR {
                cache_key,
                ttl,
                url,
                method,
                headers,
                body,
                timeout_seconds,
                output_field,
                collection,
            } => {
                let key = scope.string(cache_key, &ws)?.into_owned();
                let field = output_field
                    .clone()
                    .unwrap_or_else(|| "swr_response".into());
                let collection = match collection {
                    Some(c) => Some(scope.string(c, &ws)?.into_owned()),
                    None => None,
                };
                let hit = w.engine.kv_get(&key, w.now).map(|e| e.value.to_serde());
                if let Some(value) = hit {
                    if let Some(c) = &collection {
                        data::audit_swr(w.engine, c, &key, url, true, w.now)?;
                    }
                    set_output(&mut ws, Some(&mut *scope), &field, value);
                    return Ok(Flow::Ws(ws));
                }
                let ttl = scope.resolve(ttl, &ws)?;
                let expires = crate::engine::parse_ttl(&ttl, w.now)?;
                let call = self.http_call(
                    scope,
                    &ws,
                    url,
                    method,
                    headers.as_ref(),
                    body.as_ref(),
                    *timeout_seconds,
                )?;
                let url = call.url.clone();
                self.put(ws);
                Flow::Wait(
                    Effect::Http(call),
                    Waiting::Http {
                        output_field: field,
                        cache: Some((key, expires, collection)),
                        url,
                    },
                )
            }
            Stage::EmailSend {
                to,
                subject,
                body,
                from,
                reply_to,
                api_key,
                provider,
                html,
                output_field,
            } => {
                let text = |v: &str| scope.string(v, &ws).map(|c| c.into_owned());
                let provider = match provider {
                    Some(p) => text(p)?,
                    None => "sendgrid".into(),
                };
                if !provider.eq_ignore_ascii_case("sendgrid") {
                    return Err(Error::invalid(format!(
                        "unsupported email provider `{provider}` (sendgrid)"
                    )));
                }
                let mut message = json!({
                    "personalizations": [{"to": [{"email": text(to)?}]}],
                    "from": {"email": text(from)?},
                    "subject": text(subject)?,
                    "content": [{
                        "type": if html.unwrap_or(false) { "text/html" } else { "text/plain" },
                        "value": text(body)?,
                    }],
                });
                if let Some(r) = reply_to {
                    message["reply_to"] = json!({"email": text(r)?});
                }
                let call = HttpCall {
                    method: "POST".into(),
                    url: "https://api.sendgrid.com/v3/mail/send".into(),
                    headers: vec![
                        ("Authorization".into(), format!("Bearer {}", text(api_key)?)),
                        ("Content-Type".into(), "application/json".into()),
                    ],
                    body: Some(message.to_string().into_bytes()),
                    timeout: self.call_timeout(Duration::from_secs(30)),
                    max_bytes: 64 << 10,
                    trusted: false,
                    prebuilt: None,
                };
                let output_field = match output_field {
                    Some(f) => text(f)?,
                    None => "email_send".into(),
                };
                self.put(ws);
                Flow::Wait(
                    Effect::Http(call),
                    Waiting::Email {
                        output_field,
                        provider: "sendgrid",
                    },
                )
            }
            Stage::Chat {
                messages,
                model,
                temperature,
                max_tokens,
            } => {
                return self.chat(
                    scope,
                    ws,
                    messages,
                    model.as_deref(),
                    *temperature,
                    *max_tokens,
                );
            }
            Stage::Embed {
                input_field,
                output_field,
                model,
            } => {
                let input = scope.string(input_field, &ws)?.into_owned();
                let output = scope.string(output_field, &ws)?.into_owned();
                let model = match model {
                    Some(m) => Some(scope.string(m, &ws)?.into_owned()),
                    None => None,
                };
                return self.embed(scope, ws, &input, &output, model.as_deref());
            }
            Stage::CreateSavepoint { name }
            | Stage::RollbackToSavepoint { name }
            | Stage::ReleaseSavepoint { name } => {
                let Some(tx) = tx else {
                    return Err(Error::invalid(
                        "savepoints need the function's transaction (transaction_config.enabled)",
                    ));
                };
                let name = scope.string(name, &ws)?;
                match stage {
                    Stage::CreateSavepoint { .. } => w.engine.tx_savepoint(&tx, &name)?,
                    Stage::RollbackToSavepoint { .. } => w.engine.tx_rollback_to(&tx, &name)?,
                    _ => w.engine.tx_release(&tx, &name)?,
                }
                Flow::Ws(ws)
            }
            Stage::BcryptHash {
                plain,
                cost,
                output_field,
            } => {
                let plain = scope.string(plain, &ws)?.into_owned();
                let output_field = scope.string(output_field, &ws)?.into_owned();
                let mut salt = [0u8; 16];
                (w.random)(&mut salt);
                let job = PasswordJob::hash(plain, *cost, salt)?;
                self.put(ws);
                Flow::Wait(Effect::Compute(job), Waiting::Computed { output_field })
            }
            Stage::BcryptVerify {
                plain,
                hash_field,
                output_field,
            } => {
                let plain = scope.string(plain, &ws)?.into_owned();
                let output_field = scope.string(output_field, &ws)?.into_owned();
                // From the first record only, never a parameter: a caller
                // must not be able to supply the hash it is checked against.
                let hash = ws
                    .first()
                    .and_then(|r| r.get(hash_field.trim()))
                    .map(|v| super::scope::text(v).into_owned())
                    .unwrap_or_default();
                let job = PasswordJob::Verify { plain, hash };
                self.put(ws);
                Flow::Wait(Effect::Compute(job), Waiting::Computed { output_field })
            }
            other => {
                return Err(Error::not_implemented(&format!(
                    "the `{}` stage",
                    other.kind()
                )))
            }
        })
    }

    /// Keeps the working set on the frame while the stage waits.
    fn put(&mut self, ws: Vec<Doc>) {
        if let Some(f) = self.frames.last_mut() {
            f.ws = ws;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn http_call(
        &self,
        scope: &Scope,
        ws: &[Doc],
        url: &str,
        method: &str,
        headers: Option<&BTreeMap<String, String>>,
        body: Option<&J>,
        timeout_seconds: Option<u64>,
    ) -> Result<HttpCall> {
        let url = scope.string(url, ws)?.into_owned();
        let method = scope.string(method, ws)?.to_ascii_uppercase();
        let mut out_headers = Vec::new();
        for (k, v) in headers.into_iter().flatten() {
            out_headers.push((
                scope.string(k, ws)?.into_owned(),
                scope.string(v, ws)?.into_owned(),
            ));
        }
        let body = match body {
            None | Some(J::Null) => None,
            Some(b) => {
                let b = scope.resolve(b, ws)?;
                Some(match b {
                    J::String(s) => s.into_bytes(),
                    other => {
                        if !out_headers
                            .iter()
                            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                        {
                            out_headers.push(("Content-Type".into(), "application/json".into()));
                        }
                        other.to_string().into_bytes()
                    }
                })
            }
        };
        let timeout = self.call_timeout(
            timeout_seconds
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(30)),
        );
        Ok(HttpCall {
            method,
            url,
            headers: out_headers,
            body,
            timeout,
            max_bytes: self.budget.max_response_bytes,
            trusted: false,
            prebuilt: None,
        })
    }

    /// `Chat`: one completion from the configured provider (as a chat
    /// session would choose it), or the offline provider's answer.
    fn chat(
        &mut self,
        scope: &Scope,
        ws: Vec<Doc>,
        messages: &[super::definition::ChatMessage],
        model: Option<&str>,
        temperature: Option<f32>,
        max_tokens: Option<i32>,
    ) -> Result<Flow> {
        use crate::providers::{self, Api, Prompt, PromptMessage};
        if messages.is_empty() {
            return Err(Error::invalid("`messages` must not be empty"));
        }
        let mut prompt = Prompt {
            max_tokens: max_tokens
                .and_then(|t| u32::try_from(t).ok())
                .filter(|t| *t > 0),
            temperature: temperature.map(f64::from),
            ..Prompt::default()
        };
        let mut system = Vec::new();
        let mut question = String::new();
        for m in messages {
            let content = scope.string(&m.content, &ws)?.into_owned();
            match m.role.to_ascii_lowercase().as_str() {
                "system" => system.push(content),
                "assistant" => prompt.messages.push(PromptMessage::Assistant {
                    text: content,
                    tool_calls: Vec::new(),
                }),
                "user" => {
                    question = content.clone();
                    prompt.messages.push(PromptMessage::User(content));
                }
                other => {
                    return Err(Error::invalid(format!(
                        "unknown message role `{other}` (system, user or assistant)"
                    )))
                }
            }
        }
        prompt.system = (!system.is_empty()).then(|| system.join("\n\n"));
        let model = match model {
            Some(m) => scope.string(m, &ws)?.into_owned(),
            None => String::new(),
        };
        let choice = match &self.chat {
            Some(config) => providers::choose(config, "", &model).map_err(|f| f.to_error())?,
            None => providers::Choice {
                provider: providers::Provider::offline(),
                model: providers::OFFLINE_MODEL.into(),
                fallback: None,
            },
        };
        if choice.provider.api == Api::Offline {
            let text = crate::chat::offline::answer(&question, &[], false);
            return Ok(Flow::Ws(vec![chat_record(text, &choice.model)]));
        }
        prompt.model = choice.model.clone();
        let request = providers::request(&choice.provider, &prompt)
            .map_err(|e| Error::invalid(format!("chat provider: {e}")))?;
        let call = HttpCall {
            method: "POST".into(),
            url: request.target.to_string(),
            headers: Vec::new(),
            body: None,
            timeout: self.call_timeout(Duration::from_secs(120)),
            max_bytes: 16 << 20,
            trusted: true,
            prebuilt: Some(request),
        };
        self.put(ws);
        Ok(Flow::Wait(
            Effect::Http(call),
            Waiting::Chat {
                api: choice.provider.api,
                model: choice.model,
            },
        ))
    }

    /// `Embed`: the text at `input_field` of every record (one record of
    /// the parameters when there are none) becomes a vector, here with the
    /// offline embedder or through the provider as an effect.
    fn embed(
        &mut self,
        scope: &mut Scope,
        mut ws: Vec<Doc>,
        input_field: &str,
        output_field: &str,
        model: Option<&str>,
    ) -> Result<Flow> {
        if ws.is_empty() {
            ws.push(scope.params.clone());
        }
        let texts = ws
            .iter()
            .map(|d| {
                let one = std::slice::from_ref(d);
                Ok(match scope.lookup(input_field, one)? {
                    Some(J::String(t)) => t,
                    Some(J::Null) | None => {
                        return Err(Error::invalid(format!(
                            "a record has no text at `{input_field}`"
                        )))
                    }
                    Some(other) => other.to_string(),
                })
            })
            .collect::<Result<Vec<String>>>()?;
        let e = self.embedder.clone();
        let model = model.filter(|m| !m.is_empty());
        let offline_name = |m: &str| m.starts_with("tidepool") || matches!(m, "offline" | "local");
        if e.url.is_empty() || model.is_some_and(offline_name) {
            let dim = e.dimensions.clamp(8, 4096);
            for (d, t) in ws.iter_mut().zip(&texts) {
                let v = tidepool_search::embed(t, dim);
                d.insert(output_field.to_string(), json!(v));
            }
            return Ok(Flow::Ws(ws));
        }
        let model = model.map_or_else(|| e.model.clone(), str::to_string);
        let body = json!({"model": model, "input": texts})
            .to_string()
            .into_bytes();
        let mut headers = vec![("Content-Type".to_string(), "application/json".to_string())];
        if !e.api_key.is_empty() {
            headers.push(("Authorization".into(), format!("Bearer {}", e.api_key)));
        }
        let call = HttpCall {
            method: "POST".into(),
            url: format!("{}/embeddings", e.url.trim_end_matches('/')),
            headers,
            body: Some(body),
            timeout: self.call_timeout(Duration::from_secs(30)),
            max_bytes: 64 << 20,
            trusted: true,
            prebuilt: None,
        };
        self.put(ws);
        Ok(Flow::Wait(
            Effect::Http(call),
            Waiting::Embed {
                output_field: output_field.to_string(),
            },
        ))
    }

    fn finish_wait(
        &mut self,
        waiting: Waiting,
        answer: Resume,
        w: &mut World<'_>,
    ) -> Result<Vec<Doc>> {
        let mut ws = self
            .frames
            .last_mut()
            .map(|f| std::mem::take(&mut f.ws))
            .unwrap_or_default();
        match (waiting, answer) {
            (Waiting::Sleep, _) => Ok(ws),
            (Waiting::Computed { output_field }, Resume::Computed(value)) => {
                set_output(&mut ws, self.scopes.last_mut(), &output_field, value);
                Ok(ws)
            }
            (Waiting::Computed { .. }, _) => Err(Error::internal(
                "a password stage was resumed without its result",
            )),
            (Waiting::Embed { output_field }, Resume::Http(result)) => {
                let (status, body) = result
                    .map_err(|e| Error::invalid(format!("embedding provider unreachable: {e}")))?;
                let detail = || {
                    String::from_utf8_lossy(&body)
                        .chars()
                        .take(200)
                        .collect::<String>()
                };
                if status != 200 {
                    return Err(Error::new(
                        ErrorKind::BadGateway,
                        format!("the embedding provider answered {status}: {}", detail()),
                    ));
                }
                let parsed: J = serde_json::from_slice(&body).unwrap_or(J::Null);
                let vectors: Vec<&J> = parsed
                    .get("data")
                    .and_then(J::as_array)
                    .map(|items| items.iter().filter_map(|i| i.get("embedding")).collect())
                    .unwrap_or_default();
                if vectors.len() != ws.len() || !vectors.iter().all(|v| v.is_array()) {
                    return Err(Error::new(
                        ErrorKind::BadGateway,
                        format!(
                            "the embedding provider sent {} vectors for {} texts: {}",
                            vectors.len(),
                            ws.len(),
                            detail()
                        ),
                    ));
                }
                for (d, v) in ws.iter_mut().zip(vectors) {
                    d.insert(output_field.clone(), v.clone());
                }
                Ok(ws)
            }
            (Waiting::Embed { .. }, _) => Err(Error::internal(
                "an Embed stage was resumed without its answer",
            )),
            (Waiting::Chat { api, model }, Resume::Http(result)) => {
                let (status, body) = result.map_err(|e| {
                    Error::new(
                        ErrorKind::BadGateway,
                        format!("chat provider unreachable: {e}"),
                    )
                })?;
                if status != 200 {
                    let detail: String = String::from_utf8_lossy(&body).chars().take(200).collect();
                    return Err(Error::new(
                        ErrorKind::BadGateway,
                        format!("the chat provider answered {status}: {detail}"),
                    ));
                }
                let mut parser = crate::providers::StreamParser::new(api)
                    .ok_or_else(|| Error::internal("no stream parser for this provider"))?;
                let bad = |e: crate::providers::StreamError| {
                    Error::new(ErrorKind::BadGateway, format!("chat provider: {e}"))
                };
                let mut events = parser.feed(&body).map_err(bad)?;
                events.extend(parser.finish().map_err(bad)?);
                let text: String = events
                    .into_iter()
                    .filter_map(|e| match e {
                        crate::providers::ProviderEvent::Text(t) => Some(t),
                        _ => None,
                    })
                    .collect();
                Ok(vec![chat_record(text, &model)])
            }
            (
                Waiting::Email {
                    output_field,
                    provider,
                },
                Resume::Http(result),
            ) => {
                let (status, body) = result.map_err(|e| {
                    Error::invalid(format!("EmailSend: the provider is unreachable: {e}"))
                })?;
                // SendGrid answers 202 with no body, or errors as
                // `{"errors": [{"message": ...}]}`.
                let parsed: J = serde_json::from_slice(&body).unwrap_or(J::Null);
                let message = parsed
                    .pointer("/errors/0/message")
                    .and_then(J::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(500).collect());
                let envelope = json!({
                    "provider_status": status,
                    "provider_message": message,
                    "provider": provider,
                });
                set_output(&mut ws, self.scopes.last_mut(), &output_field, envelope);
                Ok(ws)
            }
            (Waiting::Email { .. }, _) => Err(Error::internal(
                "an EmailSend stage was resumed without its answer",
            )),
            (Waiting::Chat { .. }, _) => Err(Error::internal(
                "a Chat stage was resumed without its answer",
            )),
            (
                Waiting::Http {
                    output_field,
                    cache,
                    url,
                },
                Resume::Http(result),
            ) => {
                let kind = if cache.is_some() {
                    "SWR"
                } else {
                    "HttpRequest"
                };
                let (status, body) = result
                    .map_err(|e| Error::invalid(format!("{kind}: HTTP request failed: {e}")))?;
                let value = match serde_json::from_slice::<J>(&body) {
                    Ok(v) => v,
                    Err(_) => J::String(String::from_utf8_lossy(&body).into_owned()),
                };
                if let Some((key, expires, collection)) = cache {
                    if (200..300).contains(&status) {
                        w.engine
                            .kv_set(&key, crate::value::Json::from(value.clone()), expires)?;
                    }
                    if let Some(c) = collection {
                        data::audit_swr(w.engine, &c, &key, &url, false, w.now)?;
                    }
                }
                set_output(&mut ws, self.scopes.last_mut(), &output_field, value);
                Ok(ws)
            }
            (Waiting::Http { .. }, _) => Err(Error::internal(
                "an HTTP stage was resumed without its answer",
            )),
        }
    }
}

/// Writes `value` to `field` on every record (one empty record first when
/// there is none) and into the scope for later placeholders.
pub fn set_output(ws: &mut Vec<Doc>, scope: Option<&mut Scope>, field: &str, value: J) {
    if ws.is_empty() {
        ws.push(Map::new());
    }
    for r in ws.iter_mut() {
        r.insert(field.to_string(), value.clone());
    }
    if let Some(s) = scope {
        s.outputs.insert(field.to_string(), value);
    }
}

/// Prefixes an error with the stage that failed (`"Query: ..."`), keeping
/// its kind.
fn blame(kind: &str, mut e: Error) -> Error {
    if !e.message.starts_with(kind) {
        e.message = format!("{kind}: {}", e.message);
    }
    e
}

/// `Chat`'s working set: `{"response": text, "model": who answered}`.
fn chat_record(text: String, model: &str) -> Doc {
    let mut d = Map::new();
    d.insert("response".into(), J::String(text));
    d.insert("model".into(), J::String(model.to_string()));
    d
}
