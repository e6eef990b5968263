//! Resuming a subscription from the log: a subscriber that names its last event
//! id gets every later event of its collection from the log (read by the runtime
//! in chunks, once durable), then continues live. Live events wait in the
//! outbox meanwhile, so the stream stays in order without duplicates.

use super::{Connection, Effect, Mode, SseMode};
use crate::dialect::{encode_event, encode_notice, EventCodec, Notice};
use crate::engine::mutation;
use crate::ids::Lsn;
use crate::realtime::events::{self, Change, EventPos, Filter};
use crate::server::Server;
use bytes::Bytes;
use std::collections::VecDeque;
use std::fmt;

/// How much log a resuming subscriber reads per step.
pub const HISTORY_CHUNK_BYTES: usize = 1 << 20;

/// The answer to `Effect::ReadHistory`.
#[derive(Debug)]
pub enum History {
    Batches {
        batches: Vec<(Lsn, Vec<u8>)>,
        more: bool,
    },
    /// The position is older than the retained log.
    Truncated,
    Failed(HistoryError),
}

/// Why the log could not be read for a resuming subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryError {
    /// The store failed to read (its description: file, offset, cause).
    Unreadable(String),
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::Unreadable(why) => write!(f, "{why}"),
        }
    }
}

#[derive(Debug)]
pub(super) struct Replay {
    collection: String,
    filter: Option<Filter>,
    codec: EventCodec,
    from: EventPos,
    upto: Lsn,
    /// Events that are not log changes, each after its batch (a Lanonasis
    /// stream's missed searches), sent in order between the batches.
    extras: VecDeque<(Lsn, Bytes)>,
}

impl Connection {
    pub(super) fn start_replay(
        &mut self,
        server: &Server,
        collection: String,
        filter: Option<Filter>,
        from: EventPos,
    ) {
        self.start_replay_with(server, collection, filter, from, Vec::new());
    }

    /// A replay that also sends `extras`, each after the batch it names.
    pub(super) fn start_replay_with(
        &mut self,
        server: &Server,
        collection: String,
        filter: Option<Filter>,
        from: EventPos,
        extras: Vec<(Lsn, Bytes)>,
    ) {
        let Some(codec) = self.codec() else {
            return;
        };
        // Live events after this LSN reach the hub queue (the subscription is
        // already registered); history covers everything up to it.
        let upto = server.last_lsn();
        if from.lsn > upto {
            let notice = Notice::Reset {
                collection: &collection,
                upto,
                reason: "the resume position is ahead of this server's log",
            };
            self.push_message(Lsn::ZERO, encode_notice(&notice, codec));
            return;
        }
        if self.replays.is_empty() {
            self.history_due = Some((Lsn(from.lsn.0.saturating_sub(1)), upto));
        }
        self.replays.push_back(Replay {
            collection,
            filter,
            codec,
            from,
            upto,
            extras: extras.into(),
        });
    }

    /// Log batches read for the running replay.
    pub fn handle_history(&mut self, server: &mut Server, result: History) {
        let Some(replay) = self.replays.front_mut() else {
            return;
        };
        let codec = replay.codec;
        let mut out: Vec<Bytes> = Vec::new();
        let reset = |reason: &str, replay: &Replay| {
            let notice = Notice::Reset {
                collection: &replay.collection,
                upto: replay.upto,
                reason,
            };
            encode_notice(&notice, codec)
        };
        // The last batch this step went through (a Lanonasis heartbeat
        // after it says so).
        let mut through = None;
        let done = match result {
            History::Truncated => {
                out.push(reset(
                    "the resume position is older than the retained log",
                    replay,
                ));
                true
            }
            History::Failed(why) => {
                out.push(reset(&format!("the log could not be read: {why}"), replay));
                true
            }
            History::Batches { batches, more } => {
                let mut done = false;
                let mut last = None;
                for (lsn, payload) in &batches {
                    if *lsn > replay.upto {
                        done = true;
                        break;
                    }
                    last = Some(*lsn);
                    while let Some((_, bytes)) = replay.extras.pop_front_if(|(at, _)| *at < *lsn) {
                        out.push(bytes);
                    }
                    let Ok(batch) = mutation::decode(payload) else {
                        continue;
                    };
                    let events = events::events(*lsn, &batch, |c| server.engine().pk_name(c));
                    for event in &events {
                        if event.pos <= replay.from
                            || event.change.collection() != replay.collection
                            || matches!(event.change, Change::SchemaChanged { implicit: true, .. })
                        {
                            continue;
                        }
                        let bytes = match &replay.filter {
                            None => encode_event(event, codec),
                            Some(f) => event.filtered(f).and_then(|e| encode_event(&e, codec)),
                        };
                        out.extend(bytes);
                    }
                }
                through = last;
                match last {
                    Some(lsn) if more && !done => {
                        replay.from = EventPos { lsn, idx: u32::MAX };
                        self.effects.push_back(Effect::ReadHistory {
                            after: lsn,
                            upto: replay.upto,
                        });
                        false
                    }
                    _ => true,
                }
            }
        };
        if done {
            out.extend(replay.extras.drain(..).map(|(_, b)| b));
        }
        for bytes in out {
            self.push_message(Lsn::ZERO, bytes);
        }
        if let (Some(lsn), Mode::Sse(SseMode { feed: Some(f), .. })) = (through, &mut self.mode) {
            f.seen(lsn);
        }
        if done {
            self.replays.pop_front();
            if let Some(next) = self.replays.front() {
                self.history_due = Some((Lsn(next.from.lsn.0.saturating_sub(1)), next.upto));
            } else {
                self.pull_events();
            }
        }
    }
}
