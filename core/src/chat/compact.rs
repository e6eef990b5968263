//! Folding old messages into a summary: the folded messages stay listed but
//! are marked forgotten, and one summary message (the session's summary
//! version goes up) stands in for them in every later prompt. Folding works
//! on whole messages, so nothing is ever cut in the middle. Used by
//! `POST /api/chat/{id}/compact` and, past a threshold, before a message.

use super::offline;
use super::session::Session;
use super::store::{self, Message, Role, Status};
use crate::engine::Engine;
use crate::error::Result;
use crate::providers::estimate_tokens;
use crate::time::Timestamp;

/// What a fold did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Folded {
    pub folded: usize,
    pub kept: usize,
    pub summary_chars: usize,
    pub summary_id: Option<String>,
}

/// The messages that still count for the context (not forgotten, not a
/// summary, a finished answer or a question).
pub fn live(messages: &[Message]) -> Vec<&Message> {
    messages
        .iter()
        .filter(|m| !m.forgotten && !m.summary && m.status == Status::Complete)
        .collect()
}

/// Folds all but the newest `keep` live messages into a summary.
pub fn fold(
    engine: &mut Engine,
    session: &mut Session,
    keep: usize,
    now: Timestamp,
) -> Result<Folded> {
    let all = store::messages(engine, &session.chat_id, now);
    let live = live(&all);
    let n = live.len().saturating_sub(keep);
    if n == 0 {
        return Ok(Folded {
            folded: 0,
            kept: live.len(),
            summary_chars: 0,
            summary_id: None,
        });
    }
    let pairs: Vec<(Role, String)> = live[..n]
        .iter()
        .map(|m| (m.role, m.content.clone()))
        .collect();
    let summary = offline::summarize(&pairs);
    for m in &live[..n] {
        let mut m = (*m).clone();
        m.forgotten = true;
        store::save_message(engine, &m, now)?;
    }
    let kept = live.len() - n;
    let mut note = Message::new(
        &session.chat_id,
        session.next_seq,
        Role::System,
        summary,
        now,
    );
    note.summary = true;
    session.next_seq += 1;
    session.summary_version += 1;
    session.updated_at = now;
    store::save_message(engine, &note, now)?;
    store::save_session(engine, session, now)?;
    Ok(Folded {
        folded: n,
        kept,
        summary_chars: note.content.chars().count(),
        summary_id: Some(note.id),
    })
}

/// Whether a chat's history has grown past what is kept verbatim: more live
/// messages than `threshold`, or more estimated tokens than `budget`. Then
/// the newest messages that fit half of both are kept.
pub fn keep_when_over(messages: &[Message], threshold: usize, budget: u64) -> Option<usize> {
    let live = live(messages);
    let tokens: u64 = live.iter().map(|m| estimate_tokens(&m.content) + 4).sum();
    if live.len() <= threshold && tokens <= budget {
        return None;
    }
    let mut keep = 0;
    let mut used = 0;
    for m in live.iter().rev() {
        let cost = estimate_tokens(&m.content) + 4;
        if keep >= threshold / 2 || used + cost > budget / 2 {
            break;
        }
        keep += 1;
        used += cost;
    }
    Some(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(n: usize, len: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                let role = if i % 2 == 0 {
                    Role::User
                } else {
                    Role::Assistant
                };
                Message::new("c", i as u64, role, "x".repeat(len), Timestamp::EPOCH)
            })
            .collect()
    }

    #[test]
    fn folds_past_the_threshold_or_the_budget() {
        assert_eq!(keep_when_over(&msgs(10, 8), 40, 10_000), None);
        assert_eq!(keep_when_over(&msgs(41, 8), 40, 10_000), Some(20));
        // Few messages, but long ones: keep what fits half the budget.
        assert_eq!(keep_when_over(&msgs(6, 4000), 40, 3000), Some(1));
        let mut m = msgs(50, 8);
        for x in m.iter_mut().take(30) {
            x.forgotten = true;
        }
        assert_eq!(
            keep_when_over(&m, 40, 10_000),
            None,
            "forgotten ones do not count"
        );
    }
}
