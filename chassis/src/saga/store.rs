use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::SagaError;
use futures_util::future::BoxFuture;

/// Where a saga instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Steps are running; `step` is the next one to run.
    Running,
    /// A step failed; `step` steps are still to be compensated, last first.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed and every completed step was compensated.
    Compensated,
    /// A compensation kept failing: the saga needs an operator.
    Failed,
}

impl SagaStatus {
    /// The name stored and shown: `running`, `compensating`, `completed`, `compensated`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::Failed => "failed",
        }
    }

    /// Parses [`SagaStatus::as_str`].
    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Running,
            Self::Compensating,
            Self::Completed,
            Self::Compensated,
            Self::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }

    /// Running or compensating: an instance still has work to do.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Compensating)
    }
}

/// The persisted state of one saga instance, written after every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaRecord {
    /// The saga's name ([`Saga::builder`](super::Saga::builder)).
    pub saga: String,
    /// The instance id given to [`Saga::start`](super::Saga::start).
    pub id: String,
    /// Where it stands.
    pub status: SagaStatus,
    /// Running: the index of the next step. Compensating: how many steps are left to
    /// compensate. Completed: the number of steps. Failed: the steps left uncompensated.
    pub step: u32,
    /// The saga's data as of the last completed step, as JSON.
    pub data: serde_json::Value,
    /// The step whose failure started compensation.
    pub failed_step: Option<String>,
    /// Why it failed (and, for `failed`, why compensation gave up).
    pub error: Option<String>,
    /// Bumped by every write; a write expecting another version loses (optimistic
    /// concurrency, so two instances never drive one saga).
    pub version: i64,
}

/// Persistence for saga state. Implementations must make [`SagaStore::update`] a
/// compare-and-set on `version`.
pub trait SagaStore: Send + Sync + 'static {
    /// Stores a new record; `false` when `(saga, id)` already exists.
    fn create<'a>(&'a self, record: &'a SagaRecord) -> BoxFuture<'a, Result<bool, SagaError>>;

    /// Replaces the stored record if its version is `record.version - 1`; `false` otherwise
    /// (someone else wrote it). Also records the time of the write.
    fn update<'a>(&'a self, record: &'a SagaRecord) -> BoxFuture<'a, Result<bool, SagaError>>;

    /// The record of `(saga, id)`.
    fn load<'a>(&'a self, saga: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<SagaRecord>, SagaError>>;

    /// Running or compensating instances of `saga` not written for at least `idle`: their
    /// runner has most likely died.
    fn stalled<'a>(&'a self, saga: &'a str, idle: Duration) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaError>>;
}

/// Saga state in this process's memory: for tests and single-process demos (state is lost on
/// restart). Uses tokio's clock, so tests with paused time see instances stall.
///
/// ```
/// let store = std::sync::Arc::new(chassis::saga::MemorySagaStore::default());
/// # let _: std::sync::Arc<dyn chassis::saga::SagaStore> = store;
/// ```
#[derive(Debug, Default)]
pub struct MemorySagaStore {
    records: Mutex<HashMap<(String, String), (SagaRecord, Instant)>>,
}

impl SagaStore for MemorySagaStore {
    fn create<'a>(&'a self, record: &'a SagaRecord) -> BoxFuture<'a, Result<bool, SagaError>> {
        let mut records = self.records.lock().unwrap();
        let key = (record.saga.clone(), record.id.clone());
        let created = !records.contains_key(&key);
        if created {
            records.insert(key, (record.clone(), Instant::now()));
        }
        Box::pin(std::future::ready(Ok(created)))
    }

    fn update<'a>(&'a self, record: &'a SagaRecord) -> BoxFuture<'a, Result<bool, SagaError>> {
        let mut records = self.records.lock().unwrap();
        let updated = match records.get_mut(&(record.saga.clone(), record.id.clone())) {
            Some((stored, written)) if stored.version + 1 == record.version => {
                *stored = record.clone();
                *written = Instant::now();
                true
            }
            _ => false,
        };
        Box::pin(std::future::ready(Ok(updated)))
    }

    fn load<'a>(&'a self, saga: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<SagaRecord>, SagaError>> {
        let records = self.records.lock().unwrap();
        let found = records.get(&(saga.to_owned(), id.to_owned())).map(|(r, _)| r.clone());
        Box::pin(std::future::ready(Ok(found)))
    }

    fn stalled<'a>(&'a self, saga: &'a str, idle: Duration) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaError>> {
        let records = self.records.lock().unwrap();
        let mut stalled: Vec<SagaRecord> = records
            .values()
            .filter(|(r, written)| r.saga == saga && r.status.is_active() && written.elapsed() >= idle)
            .map(|(r, _)| r.clone())
            .collect();
        stalled.sort_by(|a, b| a.id.cmp(&b.id));
        Box::pin(std::future::ready(Ok(stalled)))
    }
}
