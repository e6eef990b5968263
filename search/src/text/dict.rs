//! A string-to-id table whose keys live in the items it indexes.
//!
//! A term dictionary as `HashMap<Box<str>, u32>` stores every term twice (once
//! in the map, once in the term) and pays a heap allocation per key. Here the
//! table holds only the 4-byte ids; lookups compare against the item's own key
//! (a [`Key`] into the index's [`Keys`]).

use std::hash::BuildHasher;

use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;

use super::keys::{Key, Keys};

/// Something with a string key.
pub(crate) trait Keyed {
    fn key(&self) -> Key;
}

/// Ids of items in a slice, found by key.
#[derive(Default)]
pub(crate) struct Dict(HashTable<u32>);

fn hash(key: &str) -> u64 {
    FxBuildHasher.hash_one(key)
}

fn key_hash<T: Keyed>(items: &[T], keys: &Keys, id: u32) -> u64 {
    items
        .get(id as usize)
        .map_or(0, |item| hash(keys.get(item.key())))
}

impl Dict {
    /// The id of the item of `items` whose key is `key`.
    pub fn get<T: Keyed>(&self, items: &[T], keys: &Keys, key: &str) -> Option<u32> {
        self.0
            .find(hash(key), |&id| {
                items
                    .get(id as usize)
                    .is_some_and(|i| keys.bytes(i.key()) == key.as_bytes())
            })
            .copied()
    }

    /// Records `items[id]`, whose key must not be in the table yet.
    pub fn insert<T: Keyed>(&mut self, items: &[T], keys: &Keys, id: u32) {
        self.0
            .insert_unique(key_hash(items, keys, id), id, |&i| key_hash(items, keys, i));
    }

    /// Forgets `items[id]` (still holding its key); returns whether it was here.
    pub fn remove<T: Keyed>(&mut self, items: &[T], keys: &Keys, id: u32) -> bool {
        match self.0.find_entry(key_hash(items, keys, id), |&i| i == id) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// The ids recorded, in no order.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }

    /// Heap bytes held (a 4-byte slot and a control byte per bucket).
    pub fn memory_bytes(&self) -> usize {
        // hashbrown keeps at most 7/8 of its buckets full.
        self.0.capacity() * 8 / 7 * 5
    }
}
