use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::store::{Begin, IdempotencyStore, StoreError, StoredResponse, new_token};
use futures_util::future::BoxFuture;

#[derive(Debug)]
enum Slot {
    InFlight { token: String },
    Done(StoredResponse),
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    slot: Slot,
    expires: Instant,
}

/// The in-process store: the default, for a single instance or for tests. Bounded: when
/// `max_entries` is reached, expired entries are dropped, then the completed ones closest to
/// expiry. Keys are not shared between instances; use Redis or PostgreSQL for that.
///
/// ```
/// use chassis::idempotency::MemoryStore;
///
/// let store = MemoryStore::new(100_000);
/// # let _ = store;
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    entries: Mutex<HashMap<String, Entry>>,
    max_entries: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl MemoryStore {
    /// A store holding at most `max_entries` keys.
    pub fn new(max_entries: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max_entries: max_entries.max(1),
        }
    }

    fn make_room(entries: &mut HashMap<String, Entry>, max: usize, now: Instant) {
        if entries.len() < max {
            return;
        }
        entries.retain(|_, e| e.expires > now);
        while entries.len() >= max {
            // In-flight claims are never evicted: dropping one could run a request twice.
            let victim = entries
                .iter()
                .filter(|(_, e)| matches!(e.slot, Slot::Done(_)))
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone());
            match victim {
                Some(key) => {
                    entries.remove(&key);
                }
                None => break,
            }
        }
    }
}

impl IdempotencyStore for MemoryStore {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        fingerprint: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = entries.get(key).filter(|e| e.expires > now) {
                if entry.fingerprint != fingerprint {
                    return Ok(Begin::Mismatch);
                }
                return Ok(match &entry.slot {
                    Slot::Done(response) => Begin::Completed(response.clone()),
                    Slot::InFlight { .. } => Begin::InFlight {
                        lease_left: entry.expires - now,
                    },
                });
            }
            Self::make_room(&mut entries, self.max_entries, now);
            if entries.len() >= self.max_entries && !entries.contains_key(key) {
                return Err(StoreError::new(
                    "memory",
                    format!("full: {} requests in flight; raise max_entries", entries.len()),
                ));
            }
            let token = new_token();
            entries.insert(
                key.to_owned(),
                Entry {
                    fingerprint: fingerprint.to_owned(),
                    slot: Slot::InFlight { token: token.clone() },
                    expires: now + lease,
                },
            );
            Ok(Begin::Claimed { token })
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let now = Instant::now();
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = entries.get_mut(key)
                && matches!(&entry.slot, Slot::InFlight { token: t } if t == token)
                && entry.expires > now
            {
                entry.slot = Slot::Done(response.clone());
                entry.expires = now + ttl;
            }
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if entries
                .get(key)
                .is_some_and(|e| matches!(&e.slot, Slot::InFlight { token: t } if t == token))
            {
                entries.remove(key);
            }
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
