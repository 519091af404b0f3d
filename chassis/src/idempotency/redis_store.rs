use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::store::{Begin, IdempotencyStore, StoreError, StoredResponse, new_token};
use crate::storage::span::Database;
use futures_util::future::BoxFuture;

// One hash per key: state (in_flight | done), fp, token, status, headers, body. The key's own
// expiry is the lease while in flight and the TTL once done.
const BEGIN: &str = r#"
local found = redis.call('HMGET', KEYS[1], 'state', 'fp', 'status', 'headers', 'body')
if found[1] then
  if found[2] ~= ARGV[1] then return {'mismatch'} end
  if found[1] == 'done' then return {'done', found[3], found[4], found[5]} end
  return {'in_flight', tostring(redis.call('PTTL', KEYS[1]))}
end
redis.call('HSET', KEYS[1], 'state', 'in_flight', 'fp', ARGV[1], 'token', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'claimed'}
"#;

const COMPLETE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] and redis.call('HGET', KEYS[1], 'state') == 'in_flight' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[2], 'headers', ARGV[3], 'body', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  return 1
end
return 0
"#;

const RELEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] and redis.call('HGET', KEYS[1], 'state') == 'in_flight' then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Keys in Redis, shared by every instance of the service. Claims are atomic Lua scripts; the
/// lease and the TTL are Redis expiries, so a crashed claimer's key frees itself. The connection
/// reconnects on its own; while Redis is down every call fails with a [`StoreError`] (and the
/// layer answers 503) rather than running a request unguarded.
///
/// ```no_run
/// # async fn demo() -> Result<(), chassis::idempotency::StoreError> {
/// let store = chassis::idempotency::RedisStore::connect("redis://127.0.0.1:6379", "orders").await?;
/// # let _ = store; Ok(()) }
/// ```
///
/// Needs the cargo feature `redis`.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    database: Database,
    prefix: String,
    begin: Script,
    complete: Script,
    release: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn error(e: impl std::fmt::Display) -> StoreError {
    StoreError::new("redis", e)
}

impl RedisStore {
    /// A readiness check of Redis behind the store, `redis:ping`: register it with the
    /// service's health registry.
    pub fn health_check(&self) -> crate::health::Check {
        crate::storage::redis::health_check(self.connection.clone())
    }

    /// Connects to `url`; keys are stored as `{namespace}:idempotency:{key}`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| error(format!("invalid URL {url:?}: {e}")))?;
        let database = Database::redis(Some(client.get_connection_info()));
        let connection = ConnectionManager::new(client)
            .await
            .map_err(|e| error(format!("cannot connect to {url}: {e}")))?;
        Ok(Self {
            database,
            ..Self::from_connection(connection, namespace)
        })
    }

    /// Uses an existing connection (the service's own, `Context::redis`); keys are stored as
    /// `{namespace}:idempotency:{key}`. Its spans carry no `server.address`: the connection
    /// does not tell it.
    pub fn from_connection(connection: ConnectionManager, namespace: &str) -> Self {
        Self {
            connection,
            database: Database::redis(None),
            prefix: format!("{namespace}:idempotency:"),
            begin: Script::new(BEGIN),
            complete: Script::new(COMPLETE),
            release: Script::new(RELEASE),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// The command the store's calls are: its scripts run by digest (loaded first when Redis does
/// not know them yet).
const SCRIPT: &str = "EVALSHA";

fn millis(duration: Duration) -> u64 {
    (duration.as_millis() as u64).max(1)
}

impl IdempotencyStore for RedisStore {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        fingerprint: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        Box::pin(async move {
            let token = new_token();
            let mut connection = self.connection.clone();
            let mut script = self.begin.key(self.key(key));
            script.arg(fingerprint).arg(&token).arg(millis(lease));
            let reply: Vec<Vec<u8>> = self
                .database
                .call(SCRIPT, None, script.invoke_async(&mut connection))
                .await
                .map_err(error)?;
            let text = |i: usize| {
                reply
                    .get(i)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            match text(0).as_str() {
                "claimed" => Ok(Begin::Claimed { token }),
                "mismatch" => Ok(Begin::Mismatch),
                "in_flight" => Ok(Begin::InFlight {
                    lease_left: Duration::from_millis(text(1).parse::<i64>().unwrap_or(0).max(0) as u64),
                }),
                "done" => Ok(Begin::Completed(StoredResponse {
                    status: text(1).parse().map_err(|_| error("stored status is not a number"))?,
                    headers: StoredResponse::decode_headers(&text(2)),
                    body: reply.get(3).cloned().unwrap_or_default(),
                })),
                other => Err(error(format!("unexpected reply {other:?}"))),
            }
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
            let mut connection = self.connection.clone();
            let mut script = self.complete.key(self.key(key));
            script
                .arg(token)
                .arg(response.status)
                .arg(response.encode_headers())
                .arg(response.body.as_slice())
                .arg(millis(ttl));
            let _: i64 = self
                .database
                .call(SCRIPT, None, script.invoke_async(&mut connection))
                .await
                .map_err(error)?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut connection = self.connection.clone();
            let mut script = self.release.key(self.key(key));
            script.arg(token);
            let _: i64 = self
                .database
                .call(SCRIPT, None, script.invoke_async(&mut connection))
                .await
                .map_err(error)?;
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
