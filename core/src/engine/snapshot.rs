//! Fuzzy snapshots for compaction: the live state written as ordinary batches of
//! full-state mutations, a chunk at a time, so the runtime can release the engine
//! between chunks. Writes that land between chunks are in the log after the
//! snapshot's start LSN, and replaying them over the snapshot converges.

use super::mutation::{Journal, LoggedRecord, Mutation};
use super::Engine;
use std::borrow::Cow;

/// Where the next chunk starts.
#[derive(Debug, Default, Clone)]
pub struct SnapshotCursor {
    stage: Stage,
}

#[derive(Debug, Default, Clone)]
enum Stage {
    #[default]
    Start,
    Schema(Box<str>),
    Records(Box<str>, Option<Box<str>>),
    Trash(Box<str>, Option<Box<str>>),
    Kv(Option<Box<str>>),
    Links(Option<Box<str>>),
    Done,
}

pub(super) fn chunk(engine: &Engine, cursor: &mut SnapshotCursor, max: usize) -> Option<Vec<u8>> {
    use crate::time::Timestamp;
    let mut journal = Journal::default();
    let mut budget = max.max(1);
    while budget > 0 {
        let next = match &cursor.stage {
            Stage::Done => break,
            Stage::Start => match engine.collections.keys().next() {
                Some(name) => Stage::Schema(name.clone()),
                None => Stage::Kv(None),
            },
            Stage::Schema(name) => match engine.collections.get(name) {
                Some(c) => {
                    journal.record(&Mutation::SetSchema {
                        collection: Cow::Borrowed(name),
                        schema: Cow::Borrowed(&c.schema),
                    });
                    budget -= 1;
                    Stage::Records(name.clone(), None)
                }
                None => next_collection(engine, name),
            },
            Stage::Records(name, after) => match engine.collections.get(name) {
                Some(c) => {
                    let mut last = None;
                    for (id, record) in c.range_after(after.as_deref()).take(budget) {
                        journal.record(&Mutation::Put {
                            collection: Cow::Borrowed(name),
                            id: Cow::Borrowed(id),
                            record: LoggedRecord::Ref(record),
                            insert: true,
                        });
                        budget -= 1;
                        last = Some(id);
                    }
                    match last {
                        Some(id) => Stage::Records(name.clone(), Some(id.into())),
                        None => Stage::Trash(name.clone(), None),
                    }
                }
                None => next_collection(engine, name),
            },
            Stage::Trash(name, after) => match engine.collections.get(name) {
                Some(c) => {
                    let mut last = None;
                    for (id, (record, at)) in c.trash_range_after(after.as_deref()).take(budget) {
                        journal.record(&Mutation::Remove {
                            collection: Cow::Borrowed(name),
                            id: Cow::Borrowed(id),
                            trash: Some((LoggedRecord::Ref(record), *at)),
                        });
                        budget -= 1;
                        last = Some(id);
                    }
                    match last {
                        Some(id) => Stage::Trash(name.clone(), Some(id.into())),
                        None => next_collection(engine, name),
                    }
                }
                None => next_collection(engine, name),
            },
            Stage::Kv(after) => {
                let mut last = None;
                for (key, entry) in range_after(&engine.kv, after.as_deref()).take(budget) {
                    journal.record(&Mutation::KvPut {
                        key: Cow::Borrowed(key),
                        entry: Cow::Borrowed(entry),
                    });
                    budget -= 1;
                    last = Some(key);
                }
                match last {
                    Some(k) => Stage::Kv(Some(k.into())),
                    None => Stage::Links(None),
                }
            }
            Stage::Links(after) => {
                let mut last = None;
                for (key, links) in range_after(&engine.links, after.as_deref()).take(budget) {
                    journal.record(&Mutation::KvLinks {
                        key: Cow::Borrowed(key),
                        links: Cow::Borrowed(links),
                    });
                    budget -= 1;
                    last = Some(key);
                }
                match last {
                    Some(k) => Stage::Links(Some(k.into())),
                    None => Stage::Done,
                }
            }
        };
        cursor.stage = next;
    }
    journal.take(Timestamp::EPOCH)
}

fn next_collection(engine: &Engine, after: &str) -> Stage {
    use std::ops::Bound;
    match engine
        .collections
        .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
        .next()
    {
        Some((name, _)) => Stage::Schema(name.clone()),
        None => Stage::Kv(None),
    }
}

fn range_after<'a, V>(
    map: &'a std::collections::BTreeMap<Box<str>, V>,
    after: Option<&str>,
) -> impl Iterator<Item = (&'a str, &'a V)> {
    use std::ops::Bound;
    let lower = match after {
        Some(a) => Bound::Excluded(a),
        None => Bound::Unbounded,
    };
    map.range::<str, _>((lower, Bound::Unbounded))
        .map(|(k, v)| (k.as_ref(), v))
}
