//! The relay: publishes the outbox in commit order, one replica at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgListener, PgPool};
use sqlx::{Connection as _, PgConnection, Row};
use tokio_util::sync::CancellationToken;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{CHANNEL, LAG_SECONDS, OutboxConfig, PENDING, PUBLISH_FAILURES_TOTAL, PUBLISHED_TOTAL};
use crate::messaging::{Envelope, Kind, Outgoing, RawMessage, Transport};

/// The `application_name` of the relay's leader session in `pg_stat_activity`, followed by a
/// space and the relay's origin (truncated to PostgreSQL's 63 bytes).
///
/// Needs the cargo feature `postgres`.
pub const RELAY_APPLICATION_NAME: &str = "chassis_outbox_relay";

/// Publishes the rows of `chassis_outbox` in sequence order, with the broker's confirmation,
/// and marks them sent.
///
/// Every replica runs one; the one holding the leader lock (a session-level advisory lock on a
/// connection of its own) publishes, the others wait to take over. A relay that loses its
/// session (a crash, a network cut, `pg_terminate_backend`) loses the lock with it; what it had
/// published but not yet marked is published again by the next leader, and the consumers'
/// inbox drops the repeat.
///
/// Needs the cargo feature `postgres`.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    transport: Arc<dyn Transport>,
    config: Arc<OutboxConfig>,
    origin: Arc<str>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("transport", &self.transport.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A row to publish.
struct Unsent {
    seq: i64,
    outgoing: Outgoing,
}

impl Relay {
    /// A relay of the rows `service` wrote for the messaging namespace `namespace` in `pool`'s
    /// database, onto `transport`.
    pub fn new(
        pool: PgPool,
        transport: Arc<dyn Transport>,
        config: OutboxConfig,
        namespace: &str,
        service: &str,
    ) -> Self {
        Self {
            pool,
            transport,
            config: Arc::new(config),
            origin: super::origin(namespace, service).into(),
        }
    }

    /// Runs until `shutdown`: waits for the leader lock, then publishes until it loses it.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0;
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, "the outbox relay lost its connection to PostgreSQL; starting over");
                }
            }
            let wait = self.backoff(failures).max(self.config.poll_interval);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Takes the leader lock if it is free and publishes while it holds it. Returns `Ok` when
    /// another replica leads or at shutdown.
    async fn lead(&self, shutdown: &CancellationToken) -> Result<(), sqlx::Error> {
        let name = format!("{RELAY_APPLICATION_NAME} {}", self.origin);
        let options = self.pool.connect_options().as_ref().clone().application_name(&name);
        let mut session = PgConnection::connect_with(&options).await?;
        // One leader per origin, for as long as this connection to PostgreSQL stays open.
        let leader: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('chassis_outbox_relay'), hashtext($1))")
                .bind(&*self.origin)
                .fetch_one(&mut session)
                .await?;
        if !leader {
            let _ = session.close().await;
            return Ok(());
        }
        tracing::info!("this replica now publishes the outbox");
        // Marking rows sent need not wait for the disk: a mark lost in a database crash only
        // means the row is published again, and every envelope's stable id makes the repeat
        // harmless (NATS drops it, the inbox drops it).
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut session)
            .await?;
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let mut failures = 0u32;
        let mut measured = Instant::now() - Duration::from_secs(60);
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if measured.elapsed() >= Duration::from_secs(1) {
                self.measure().await;
                measured = Instant::now();
            }
            // Read on the leader session: a lost session (and with it the lock) ends the lead.
            let rows = self.unsent(&mut session).await?;
            if rows.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    notified = tokio::time::timeout(self.config.poll_interval, listener.recv()) => {
                        if let Ok(Err(error)) = notified {
                            tracing::debug!(%error, "the outbox listener reconnects");
                        }
                    }
                }
                continue;
            }
            match self.publish(&mut session, rows).await? {
                None => failures = 0,
                Some(error) => {
                    failures += 1;
                    let wait = self.backoff(failures);
                    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "publishing the outbox failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// The next rows to publish, in sequence order.
    async fn unsent(&self, session: &mut PgConnection) -> Result<Vec<Unsent>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT seq, kind, message_type, headers, body FROM chassis_outbox
             WHERE origin = $1 AND sent_at IS NULL ORDER BY seq LIMIT $2",
        )
        .bind(&*self.origin)
        .bind(i64::from(self.config.batch_size))
        .fetch_all(session)
        .await?;
        let mut unsent = Vec::with_capacity(rows.len());
        for row in rows {
            let kind: String = row.try_get("kind")?;
            let headers: String = row.try_get("headers")?;
            let body: Vec<u8> = row.try_get("body")?;
            unsent.push(Unsent {
                seq: row.try_get("seq")?,
                outgoing: Outgoing {
                    kind: Kind::parse(&kind).unwrap_or(Kind::Event),
                    message_type: row.try_get("message_type")?,
                    message: RawMessage {
                        headers: serde_json::from_str(&headers).unwrap_or_default(),
                        body: body.into(),
                    },
                },
            });
        }
        Ok(unsent)
    }

    /// Publishes `rows` in chunks of `max_in_flight`, marking each confirmed chunk sent while
    /// the next one is on its way to the broker; stops at the first failure, which it records
    /// on its row and returns.
    async fn publish(&self, session: &mut PgConnection, rows: Vec<Unsent>) -> Result<Option<String>, sqlx::Error> {
        let mut confirmed_seqs: Vec<i64> = Vec::new();
        for chunk in rows.chunks(self.config.max_in_flight as usize) {
            let outgoing: Vec<Outgoing> = chunk.iter().map(|row| row.outgoing.clone()).collect();
            let spans: Vec<Span> = outgoing.iter().map(|outgoing| self.span(outgoing)).collect();
            let (published, marked) = tokio::join!(
                self.transport.publish_batch(&outgoing),
                mark_sent(&mut *session, std::mem::take(&mut confirmed_seqs)),
            );
            marked?;
            let (confirmed, failure) = published;
            if failure.is_some() {
                // The failed message and those after it in the chunk: none of them went out.
                spans[confirmed.min(spans.len())..]
                    .iter()
                    .for_each(crate::messaging::publish_failed);
            }
            drop(spans);
            confirmed_seqs = chunk[..confirmed].iter().map(|row| row.seq).collect();
            if let Some(error) = failure {
                mark_sent(&mut *session, confirmed_seqs).await?;
                let error = error.to_string();
                if let Some(failed) = chunk.get(confirmed) {
                    sqlx::query("UPDATE chassis_outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = $1")
                        .bind(failed.seq)
                        .bind(&error)
                        .execute(&mut *session)
                        .await?;
                }
                metrics::counter!(PUBLISH_FAILURES_TOTAL).increment(1);
                return Ok(Some(error));
            }
        }
        mark_sent(session, confirmed_seqs).await?;
        Ok(None)
    }

    /// The PRODUCER span of relaying `outgoing`, in the trace of the request that added it.
    fn span(&self, outgoing: &Outgoing) -> Span {
        let span = crate::messaging::publish_span(&*self.transport, outgoing.kind, &outgoing.message_type);
        if let Some(envelope) = Envelope::from_headers(&outgoing.message.headers) {
            span.record("messaging.message.id", envelope.id.as_str());
            let _ = span.set_parent(crate::telemetry::extract_context(&envelope.trace_headers()));
        }
        span
    }

    /// Records the pending rows and the age of the oldest as gauges.
    async fn measure(&self) {
        if let Ok((pending, lag)) = backlog(&self.pool, &self.origin).await {
            metrics::gauge!(PENDING).set(pending as f64);
            metrics::gauge!(LAG_SECONDS).set(lag.as_secs_f64());
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        self.config
            .retry_base_delay
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)))
            .min(self.config.retry_max_delay)
    }
}

/// Marks the rows `seqs` sent (nothing to do for none).
async fn mark_sent(session: &mut PgConnection, seqs: Vec<i64>) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE chassis_outbox SET sent_at = now() WHERE seq = ANY($1)")
        .bind(&seqs)
        .execute(session)
        .await?;
    metrics::counter!(PUBLISHED_TOTAL).increment(seqs.len() as u64);
    Ok(())
}

/// The rows of `origin` not published yet and the age of the oldest of them.
pub(crate) async fn backlog(pool: &PgPool, origin: &str) -> Result<(i64, Duration), sqlx::Error> {
    let row = sqlx::query(
        "SELECT count(*) AS pending,
                COALESCE(EXTRACT(EPOCH FROM (now() - min(created_at))), 0)::DOUBLE PRECISION AS lag
         FROM chassis_outbox WHERE origin = $1 AND sent_at IS NULL",
    )
    .bind(origin)
    .fetch_one(pool)
    .await?;
    let pending: i64 = row.try_get("pending")?;
    let lag: f64 = row.try_get("lag")?;
    Ok((pending, Duration::from_secs_f64(lag.max(0.0))))
}
