//! Replies that are not ready when their request runs (an outbound call, a
//! chat answer): the request gets a `Ticket`, the connection waits, and
//! whatever finishes the work fulfils the ticket and wakes the connection.

use crate::ids::{ConnId, Lsn};
use crate::wire::http::Response;
use std::collections::HashMap;

/// A reply to come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(pub u64);

#[derive(Debug, Default)]
pub(crate) struct Pending {
    next: u64,
    /// Who waits for each ticket.
    waiting: HashMap<Ticket, ConnId>,
    /// Replies ready (with the LSN that must be durable before they are
    /// sent), until their connection takes them.
    ready: HashMap<Ticket, (Response, Lsn)>,
    /// Connections to wake.
    pub(crate) woken: Vec<ConnId>,
}

impl Pending {
    /// A ticket for a reply `conn` will wait for.
    pub(crate) fn ticket(&mut self, conn: ConnId) -> Ticket {
        self.next += 1;
        let t = Ticket(self.next);
        self.waiting.insert(t, conn);
        t
    }

    /// The reply is ready: keep it and wake its connection. A ticket nobody
    /// waits for any more (the connection went) is dropped.
    pub(crate) fn fulfil(&mut self, ticket: Ticket, response: Response, wait_for: Lsn) {
        if let Some(conn) = self.waiting.remove(&ticket) {
            self.ready.insert(ticket, (response, wait_for));
            self.woken.push(conn);
        }
    }

    /// The work behind a ticket never started: nobody waits for it.
    pub(crate) fn cancel(&mut self, ticket: Ticket) {
        self.waiting.remove(&ticket);
        self.ready.remove(&ticket);
    }

    /// The status of a reply that is ready and not yet taken.
    pub(crate) fn ready_status(&self, ticket: Ticket) -> Option<u16> {
        self.ready.get(&ticket).map(|(r, _)| r.status)
    }

    /// Replies waited for and not ready yet.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub(crate) fn take(&mut self, ticket: Ticket) -> Option<(Response, Lsn)> {
        self.ready.remove(&ticket)
    }

    /// The connection is gone: its tickets are abandoned (returned, so the
    /// work behind them can stop).
    pub(crate) fn forget(&mut self, conn: ConnId) -> Vec<Ticket> {
        let gone: Vec<Ticket> = self
            .waiting
            .iter()
            .filter(|(_, c)| **c == conn)
            .map(|(t, _)| *t)
            .collect();
        for t in &gone {
            self.waiting.remove(t);
        }
        self.ready.retain(|t, _| !gone.contains(t));
        self.woken.retain(|c| *c != conn);
        gone
    }
}
