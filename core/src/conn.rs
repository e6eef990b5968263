//! One client connection as a state machine.
//!
//! ```text
//!  bytes ──handle_input──▶ parse ──▶ [requests] ──execute(server)──▶ [replies]
//!                                                                      │
//!  socket ◀──poll_transmit(durable LSN)── released in order once durable
//! ```
//!
//! Driving rule: after every input (bytes, EOF, a durability report, a timer),
//! call `execute` if `wants_server()`, then drain `poll_transmit` until `None`,
//! then re-arm the timer from `poll_timeout`. Close the socket once `is_closed()`.

use crate::http::{HttpError, Limits, Method, Request, RequestParser, Response};
use crate::ids::Lsn;
use crate::server::Server;
use crate::time::Timestamp;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::Duration;

/// Pipelined requests accepted ahead of their responses.
const MAX_PIPELINE: usize = 64;

#[derive(Debug)]
enum Work {
    Request(Request),
    Fail(HttpError),
}

/// ```text
/// Open ──(Connection: close | protocol error | EOF)──▶ Closing ──(flushed)──▶ Closed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// No more requests are read; queued replies still go out.
    Closing,
    Closed,
}

#[derive(Debug)]
pub struct Connection {
    state: State,
    parser: RequestParser,
    inbuf: BytesMut,
    work: VecDeque<Work>,
    replies: VecDeque<(Lsn, Bytes)>,
    last_activity: Timestamp,
    idle_timeout: Duration,
    eof: bool,
}

impl Connection {
    pub fn new(limits: Limits, idle_timeout: Duration, now: Timestamp) -> Self {
        Connection {
            state: State::Open,
            parser: RequestParser::new(limits),
            inbuf: BytesMut::new(),
            work: VecDeque::new(),
            replies: VecDeque::new(),
            last_activity: now,
            idle_timeout,
            eof: false,
        }
    }

    /// Bytes read from the socket.
    pub fn handle_input(&mut self, data: &[u8], now: Timestamp) {
        if self.state != State::Open {
            return;
        }
        self.last_activity = now;
        self.inbuf.extend_from_slice(data);
        self.parse();
    }

    /// The peer closed its side: finish what was asked, then close.
    pub fn handle_eof(&mut self) {
        self.eof = true;
        if self.state == State::Open {
            self.state = State::Closing;
        }
    }

    fn parse(&mut self) {
        while self.state == State::Open && self.work.len() + self.replies.len() < MAX_PIPELINE {
            match self.parser.parse(&mut self.inbuf) {
                Ok(Some(req)) => self.work.push_back(Work::Request(req)),
                Ok(None) => {
                    if self.parser.take_continue() {
                        self.replies.push_back((
                            Lsn::ZERO,
                            Bytes::from_static(b"HTTP/1.1 100 Continue\r\n\r\n"),
                        ));
                    }
                    break;
                }
                Err(e) => {
                    self.work.push_back(Work::Fail(e));
                    self.state = State::Closing;
                    self.inbuf.clear();
                }
            }
        }
    }

    /// Whether parsed requests are waiting for `execute`.
    pub fn wants_server(&self) -> bool {
        !self.work.is_empty()
    }

    /// Whether the runtime should keep reading (bounded pipelining: stop reading
    /// while many replies are queued).
    pub fn wants_read(&self) -> bool {
        self.state == State::Open
            && !self.eof
            && self.work.len() + self.replies.len() < MAX_PIPELINE
    }

    /// Runs every parsed request against the server.
    pub fn execute(&mut self, server: &mut Server, now: Timestamp) {
        while let Some(work) = self.work.pop_front() {
            match work {
                Work::Request(req) => {
                    let reply = server.handle_request(&req, now);
                    let keep_alive = req.keep_alive() && self.state == State::Open;
                    if !keep_alive {
                        self.state = State::Closing;
                    }
                    let head_only = req.method == Method::Head;
                    self.replies
                        .push_back((reply.wait_for, reply.response.encode(keep_alive, head_only)));
                    if !keep_alive {
                        self.work.clear();
                        break;
                    }
                }
                Work::Fail(e) => {
                    let r = Response::error(e.status(), &e.message());
                    self.replies.push_back((Lsn::ZERO, r.encode(false, false)));
                    self.work.clear();
                    break;
                }
            }
        }
        self.parse();
    }

    /// The next bytes to write, once what they answer is durable.
    pub fn poll_transmit(&mut self, durable: Lsn) -> Option<Bytes> {
        match self.replies.front() {
            Some((lsn, _)) if *lsn <= durable => self.replies.pop_front().map(|(_, b)| b),
            _ => {
                if self.state == State::Closing && self.replies.is_empty() && self.work.is_empty() {
                    self.state = State::Closed;
                }
                None
            }
        }
    }

    /// Storage failed: replies waiting for batches beyond `durable` will never be
    /// released, so they become 503s (the write may or may not survive a restart).
    pub fn handle_storage_failure(&mut self, durable: Lsn, message: &str) {
        for (lsn, bytes) in self.replies.iter_mut() {
            if *lsn > durable {
                *lsn = Lsn::ZERO;
                *bytes = Response::error(
                    503,
                    &format!("the write could not be made durable: {message}"),
                )
                .with_header("Retry-After", "1")
                .encode(false, false);
            }
        }
        self.state = State::Closing;
    }

    /// Whether replies are waiting for durability.
    pub fn awaiting_durability(&self, durable: Lsn) -> bool {
        self.replies.front().is_some_and(|(lsn, _)| *lsn > durable)
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// When the idle timer fires.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        (self.state == State::Open).then(|| self.last_activity.saturating_add(self.idle_timeout))
    }

    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.state != State::Open || now < self.last_activity.saturating_add(self.idle_timeout) {
            return;
        }
        if self.parser.in_progress(&self.inbuf) {
            let r = Response::error(408, "timed out waiting for the rest of the request");
            self.replies.push_back((Lsn::ZERO, r.encode(false, false)));
        }
        self.state = State::Closing;
        self.work.clear();
    }
}
