//! Outbound calls, owned by the server (DESIGN.md, invariant 7): each has an
//! id, many run at once (up to a bound, the rest queue), and the runtime feeds
//! their responses back incrementally; the response is parsed as it arrives and
//! its result goes to whoever the call is for, on any connection.
//!
//! ```text
//! Queued ──▶ Connecting ──(connected)──▶ Waiting ──(first byte)──▶ Streaming ──▶ End
//!   each phase has a deadline in the server's timer table; a missed deadline,
//!   a transport error or a malformed response fails the call and cancels it
//! ```
//!
//! The runtime's side: drain `CallCommand`s (start a connection, or cancel one),
//! then report `connected`, data, EOF or a transport error by call id. Reports
//! for a call that is no longer running (cancelled, timed out) are ignored.

use super::functions::RunId;
use super::pending::Ticket;
use super::ServerTimer;
use crate::chat::turn::TurnId;
use crate::dialect::rest::embed;
use crate::time::Timestamp;
use crate::timers::TimerTable;
use crate::wire::http::client::{
    ClientResponse, OutboundRequest, ResponseError, ResponseEvent, ResponseHead, ResponseParser,
    Target,
};
use crate::wire::http::Response;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::time::Duration;

/// Largest response head accepted from a provider.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call-{}", self.0)
    }
}

/// What the runtime must do about outbound calls (`Server::poll_call`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallCommand {
    /// Connect to `target` (TLS for https; give up after `connect_timeout`),
    /// write `request`, then report with `Server::handle_call_*`.
    Start {
        id: CallId,
        target: Target,
        request: Bytes,
        connect_timeout: Duration,
    },
    /// Stop the call and close its connection (it finished, failed or is no
    /// longer wanted); report nothing more about it.
    Cancel(CallId),
}

/// A transport failure the runtime reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// The host name does not resolve.
    Resolve(String),
    /// The TCP connection failed.
    Connect(String),
    /// The TLS handshake failed (certificate, protocol).
    Tls(String),
    /// Reading or writing failed mid-call.
    Io(String),
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Resolve(e) => write!(f, "cannot resolve the host: {e}"),
            TransportError::Connect(e) => write!(f, "cannot connect: {e}"),
            TransportError::Tls(e) => write!(f, "TLS failed: {e}"),
            TransportError::Io(e) => write!(f, "the connection failed: {e}"),
        }
    }
}

/// Which deadline a call missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Connect,
    FirstByte,
    Idle,
}

/// Why a call ended without a whole response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallFailure {
    Transport(TransportError),
    Timeout(Phase),
    Response(ResponseError),
    /// The body passed the purpose's limit (bytes).
    TooLarge(usize),
    /// Too many calls are running or waiting.
    Overloaded,
}

impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallFailure::Transport(e) => write!(f, "{e}"),
            CallFailure::Timeout(Phase::Connect) => write!(f, "timed out connecting"),
            CallFailure::Timeout(Phase::FirstByte) => {
                write!(f, "timed out waiting for the response")
            }
            CallFailure::Timeout(Phase::Idle) => write!(f, "timed out: the response stalled"),
            CallFailure::Response(e) => write!(f, "{e}"),
            CallFailure::TooLarge(max) => write!(f, "the response is larger than {max} bytes"),
            CallFailure::Overloaded => {
                write!(f, "too many outbound calls are in flight; try again later")
            }
        }
    }
}

/// Deadlines and bounds for outbound calls (from the config).
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    pub connect: Duration,
    pub first_byte: Duration,
    pub idle: Duration,
    /// Calls connected or connecting at once; more wait in a queue.
    pub max_in_flight: usize,
    /// Calls waiting beyond that; more are refused (`Overloaded`).
    pub max_queued: usize,
}

/// A REST reply that waits for a whole response.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplyKind {
    Embed(embed::Job),
}

/// What a call is for: where its result goes.
#[derive(Debug)]
pub enum Purpose {
    /// A connection's pending reply, built from the whole response.
    Reply {
        ticket: Ticket,
        kind: ReplyKind,
        max_body: usize,
    },
    /// A chat turn's provider call: its response is handed on piece by piece
    /// as it arrives (`TurnInput`).
    Turn(TurnId),
    /// A stored function's `HttpRequest`: the whole response resumes the run.
    Function { run: RunId, max_body: usize },
    /// The embedding of a chat turn's question, for vector retrieval before
    /// the turn asks its provider.
    Retrieval(TurnId),
}

/// The most a question's embedding response may hold.
const MAX_RETRIEVAL_BODY: usize = 1 << 20;

/// A piece of a turn's provider response, in order: the head, body bytes
/// (de-chunked), then the end or a failure.
#[derive(Debug)]
pub enum TurnInput {
    Head(ResponseHead),
    Data(Bytes),
    End,
    Failed(CallFailure),
}

#[derive(Debug)]
struct Call {
    purpose: Purpose,
    parser: ResponseParser,
    phase: Phase,
    head: Option<ResponseHead>,
    body: Vec<u8>,
    /// Held until a slot is free.
    queued: Option<OutboundRequest>,
}

/// The table of outbound calls.
#[derive(Debug)]
pub(crate) struct Calls {
    next: u64,
    limits: CallLimits,
    calls: HashMap<CallId, Call>,
    in_flight: usize,
    queue: VecDeque<CallId>,
    commands: VecDeque<CallCommand>,
    /// Replies built from finished calls, for the server to hand on.
    pub(super) done: Vec<(Ticket, Response)>,
    /// Pieces of turns' responses, for the server to hand on.
    pub(super) turn_inputs: Vec<(TurnId, CallId, TurnInput)>,
    /// Responses for function runs, for the server to resume them with.
    pub(super) function_results: Vec<(RunId, Result<ClientResponse, CallFailure>)>,
    /// Question embeddings for turns, for the server to retrieve with.
    pub(super) retrieval_results: Vec<(TurnId, Result<ClientResponse, CallFailure>)>,
}

impl Calls {
    pub(crate) fn new(limits: CallLimits) -> Self {
        Calls {
            next: 1,
            limits,
            calls: HashMap::new(),
            in_flight: 0,
            queue: VecDeque::new(),
            commands: VecDeque::new(),
            done: Vec::new(),
            turn_inputs: Vec::new(),
            function_results: Vec::new(),
            retrieval_results: Vec::new(),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Registers a call; it starts now or when a slot frees up.
    pub(crate) fn start(
        &mut self,
        request: OutboundRequest,
        purpose: Purpose,
        now: Timestamp,
        timers: &mut TimerTable<ServerTimer>,
    ) -> Result<CallId, CallFailure> {
        if self.in_flight >= self.limits.max_in_flight && self.queue.len() >= self.limits.max_queued
        {
            return Err(CallFailure::Overloaded);
        }
        let id = CallId(self.next);
        self.next += 1;
        self.calls.insert(
            id,
            Call {
                purpose,
                parser: ResponseParser::new(MAX_RESPONSE_HEAD),
                phase: Phase::Connect,
                head: None,
                body: Vec::new(),
                queued: Some(request),
            },
        );
        self.queue.push_back(id);
        self.admit(now, timers);
        Ok(id)
    }

    /// Starts queued calls while slots are free.
    fn admit(&mut self, now: Timestamp, timers: &mut TimerTable<ServerTimer>) {
        while self.in_flight < self.limits.max_in_flight {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let Some(request) = self.calls.get_mut(&id).and_then(|c| c.queued.take()) else {
                continue;
            };
            self.in_flight += 1;
            timers.set(
                ServerTimer::Call(id),
                Some(now.saturating_add(self.limits.connect)),
            );
            self.commands.push_back(CallCommand::Start {
                id,
                target: request.target,
                request: request.bytes,
                connect_timeout: self.limits.connect,
            });
        }
    }

    pub(crate) fn poll_command(&mut self) -> Option<CallCommand> {
        self.commands.pop_front()
    }

    /// The call is connected and its request written: the response is due.
    pub(crate) fn connected(
        &mut self,
        id: CallId,
        now: Timestamp,
        timers: &mut TimerTable<ServerTimer>,
    ) {
        if let Some(call) = self.calls.get_mut(&id) {
            if call.phase == Phase::Connect && call.queued.is_none() {
                call.phase = Phase::FirstByte;
                timers.set(
                    ServerTimer::Call(id),
                    Some(now.saturating_add(self.limits.first_byte)),
                );
            }
        }
    }

    /// Bytes of the response.
    pub(crate) fn data(
        &mut self,
        id: CallId,
        data: &[u8],
        now: Timestamp,
        timers: &mut TimerTable<ServerTimer>,
    ) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.queued.is_some() {
            return;
        }
        call.phase = Phase::Idle;
        timers.set(
            ServerTimer::Call(id),
            Some(now.saturating_add(self.limits.idle)),
        );
        let mut events = Vec::new();
        let parsed = call.parser.feed(data, &mut events);
        let outcome = consume(id, call, events, &mut self.turn_inputs)
            .and(parsed.map_err(CallFailure::Response));
        self.settle(id, outcome, now, timers);
    }

    /// The peer closed the connection.
    pub(crate) fn eof(&mut self, id: CallId, now: Timestamp, timers: &mut TimerTable<ServerTimer>) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let mut events = Vec::new();
        let parsed = call.parser.finish(&mut events);
        let outcome = consume(id, call, events, &mut self.turn_inputs)
            .and(parsed.map_err(CallFailure::Response));
        let done = self.calls.get(&id).is_some_and(|c| c.parser.is_done());
        match outcome {
            Ok(()) if !done => self.fail(
                id,
                CallFailure::Response(ResponseError::Truncated),
                now,
                timers,
            ),
            other => self.settle(id, other, now, timers),
        }
    }

    /// The transport failed.
    pub(crate) fn error(
        &mut self,
        id: CallId,
        error: TransportError,
        now: Timestamp,
        timers: &mut TimerTable<ServerTimer>,
    ) {
        if self.calls.contains_key(&id) {
            self.fail(id, CallFailure::Transport(error), now, timers);
        }
    }

    /// A call's deadline passed.
    pub(crate) fn timeout(
        &mut self,
        id: CallId,
        now: Timestamp,
        timers: &mut TimerTable<ServerTimer>,
    ) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let phase = call.phase;
        self.commands.push_back(CallCommand::Cancel(id));
        self.fail(id, CallFailure::Timeout(phase), now, timers);
    }

    /// Stops one call (its turn was cancelled); nothing more is reported
    /// about it.
    pub(crate) fn cancel(
        &mut self,
        id: CallId,
        now: Timestamp,
        timers: &mut TimerTable<ServerTimer>,
    ) {
        if let Some(call) = self.remove(id, now, timers) {
            if call.queued.is_none() {
                self.commands.push_back(CallCommand::Cancel(id));
            }
        }
    }

    /// Nobody wants these replies any more (their connection closed): stop
    /// the calls behind them.
    pub(crate) fn cancel_for(
        &mut self,
        tickets: &[Ticket],
        now: Timestamp,
        timers: &mut TimerTable<ServerTimer>,
    ) {
        if tickets.is_empty() {
            return;
        }
        let ids: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| {
                matches!(c.purpose, Purpose::Reply { ticket, .. } if tickets.contains(&ticket))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(call) = self.calls.remove(&id) {
                timers.cancel(ServerTimer::Call(id));
                if call.queued.is_none() {
                    self.in_flight -= 1;
                    self.commands.push_back(CallCommand::Cancel(id));
                }
            }
        }
        self.queue.retain(|id| self.calls.contains_key(id));
        self.admit(now, timers);
    }

    /// After progress: finishes the call if its response is complete, or fails
    /// it (and cancels its connection) on an error.
    fn settle(
        &mut self,
        id: CallId,
        outcome: Result<(), CallFailure>,
        now: Timestamp,
        timers: &mut TimerTable<ServerTimer>,
    ) {
        match outcome {
            Err(failure) => {
                self.commands.push_back(CallCommand::Cancel(id));
                self.fail(id, failure, now, timers);
            }
            Ok(()) => {
                if !self.calls.get(&id).is_some_and(|c| c.parser.is_done()) {
                    return;
                }
                let Some(call) = self.remove(id, now, timers) else {
                    return;
                };
                // The response is whole: whatever the peer does next is moot.
                self.commands.push_back(CallCommand::Cancel(id));
                let response = ClientResponse {
                    head: call.head.unwrap_or(ResponseHead {
                        status: 0,
                        headers: Vec::new(),
                    }),
                    body: call.body,
                };
                self.deliver(id, call.purpose, Ok(response));
            }
        }
    }

    fn fail(
        &mut self,
        id: CallId,
        failure: CallFailure,
        now: Timestamp,
        timers: &mut TimerTable<ServerTimer>,
    ) {
        if let Some(call) = self.remove(id, now, timers) {
            self.deliver(id, call.purpose, Err(failure));
        }
    }

    /// Takes a call out of the table, freeing its slot for the next.
    fn remove(
        &mut self,
        id: CallId,
        now: Timestamp,
        timers: &mut TimerTable<ServerTimer>,
    ) -> Option<Call> {
        let call = self.calls.remove(&id)?;
        timers.cancel(ServerTimer::Call(id));
        if call.queued.is_none() {
            self.in_flight -= 1;
        }
        self.admit(now, timers);
        Some(call)
    }

    fn deliver(
        &mut self,
        id: CallId,
        purpose: Purpose,
        result: Result<ClientResponse, CallFailure>,
    ) {
        match purpose {
            Purpose::Reply { ticket, kind, .. } => {
                let response = match kind {
                    ReplyKind::Embed(job) => embed::finish(&job, result),
                };
                self.done.push((ticket, response));
            }
            Purpose::Turn(turn) => {
                let input = match result {
                    Ok(_) => TurnInput::End,
                    Err(failure) => TurnInput::Failed(failure),
                };
                self.turn_inputs.push((turn, id, input));
            }
            Purpose::Function { run, .. } => self.function_results.push((run, result)),
            Purpose::Retrieval(turn) => self.retrieval_results.push((turn, result)),
        }
    }
}

/// The reply for a call that could not even start.
pub fn refused(kind: &ReplyKind, failure: CallFailure) -> Response {
    match kind {
        ReplyKind::Embed(job) => embed::finish(job, Err(failure)),
    }
}

/// Applies parsed events to a call: keeps the head, collects the body within
/// the purpose's limit, or hands a turn's pieces on.
fn consume(
    id: CallId,
    call: &mut Call,
    events: Vec<ResponseEvent>,
    turn_inputs: &mut Vec<(TurnId, CallId, TurnInput)>,
) -> Result<(), CallFailure> {
    let max = match &call.purpose {
        Purpose::Reply { max_body, .. } | Purpose::Function { max_body, .. } => *max_body,
        Purpose::Retrieval(_) => MAX_RETRIEVAL_BODY,
        Purpose::Turn(turn) => {
            for event in events {
                match event {
                    ResponseEvent::Head(head) => {
                        call.head = Some(head.clone());
                        turn_inputs.push((*turn, id, TurnInput::Head(head)));
                    }
                    ResponseEvent::Data(bytes) => {
                        turn_inputs.push((*turn, id, TurnInput::Data(bytes)))
                    }
                    ResponseEvent::End => {}
                }
            }
            return Ok(());
        }
    };
    for event in events {
        match event {
            ResponseEvent::Head(head) => call.head = Some(head),
            ResponseEvent::Data(bytes) => {
                if call.body.len() + bytes.len() > max {
                    return Err(CallFailure::TooLarge(max));
                }
                call.body.extend_from_slice(&bytes);
            }
            ResponseEvent::End => {}
        }
    }
    Ok(())
}
