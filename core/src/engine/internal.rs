//! Records the server keeps for itself in internal collections (chat sessions
//! and messages): written like any record, so they are logged, replayed,
//! snapshotted and visible to the data API, plus the few operations the
//! data API does not need: a scan by id prefix, and removal without trash.

use super::mutation::Mutation;
use super::{Engine, Found};
use crate::time::Timestamp;
use std::borrow::Cow;

impl Engine {
    /// Live records whose id starts with `prefix`, in id order.
    pub fn with_id_prefix<'a>(
        &'a self,
        collection: &str,
        prefix: &'a str,
        now: Timestamp,
    ) -> impl Iterator<Item = Found<'a>> + 'a {
        let c = self.collections.get(collection);
        let pk = c.map_or("id", |c| c.schema.primary_key_alias.as_str());
        c.into_iter()
            .flat_map(move |c| c.range_from(prefix))
            .take_while(move |(id, _)| id.starts_with(prefix))
            .filter(move |(_, r)| !r.is_expired(now))
            .map(move |(id, record)| Found { pk, id, record })
    }

    /// Removes a record for good (no trash); `false` if it was not there.
    pub fn purge(&mut self, collection: &str, id: &str) -> bool {
        let present = self
            .collections
            .get(collection)
            .is_some_and(|c| c.raw(id).is_some());
        if present {
            self.log(Mutation::Remove {
                collection: Cow::Borrowed(collection),
                id: Cow::Borrowed(id),
                trash: None,
            });
        }
        present
    }
}
