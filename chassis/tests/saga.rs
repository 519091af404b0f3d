//! Sagas: steps in order, compensation in reverse, timeouts and retries on tokio's paused clock,
//! and instances resumed after their runner died, in memory and in PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chassis::saga::{
    MemorySagaStore, PostgresSagaStore, Saga, SagaError, SagaOutcome, SagaRecord, SagaStatus, SagaStore, Step,
    StepContext,
};

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Data {
    done: Vec<String>,
}

type Log = Arc<Mutex<Vec<String>>>;

/// A step that records `name` in the log and in the data, failing with `fail` if given.
fn step(log: &Log, name: &'static str, fail: Option<&'static str>) -> Step<Data> {
    let (action_log, undo_log) = (log.clone(), log.clone());
    Step::new(name, move |_cx: StepContext, mut data: Data| {
        let log = action_log.clone();
        async move {
            log.lock().unwrap().push(name.to_owned());
            match fail {
                Some(error) => Err(error.to_owned()),
                None => {
                    data.done.push(name.to_owned());
                    Ok(data)
                }
            }
        }
    })
    .compensate(move |_cx, data: Data| {
        let log = undo_log.clone();
        async move {
            log.lock().unwrap().push(format!("undo {name} after {:?}", data.done));
            Ok::<_, String>(())
        }
    })
}

fn memory() -> Arc<dyn SagaStore> {
    Arc::new(MemorySagaStore::default())
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn steps_run_in_order_and_pass_their_data_along() {
    let log = Log::default();
    let saga = Saga::builder("order", memory())
        .step(step(&log, "a", None))
        .step(step(&log, "b", None))
        .step(step(&log, "c", None))
        .build()
        .unwrap();
    let outcome = saga.start("1", Data::default()).await.unwrap();
    assert_eq!(
        outcome,
        SagaOutcome::Completed(Data {
            done: vec!["a".into(), "b".into(), "c".into()]
        })
    );
    assert_eq!(entries(&log), ["a", "b", "c"]);
    let record = saga.status("1").await.unwrap().unwrap();
    assert_eq!(record.status, SagaStatus::Completed);
    assert_eq!(record.step, 3);
    assert_eq!(record.data["done"][2], "c");
}

#[tokio::test]
async fn a_failed_step_compensates_the_completed_ones_in_reverse_order() {
    let log = Log::default();
    let saga = Saga::builder("order", memory())
        .step(step(&log, "reserve", None))
        .step(step(&log, "charge", None))
        .step(step(&log, "ship", Some("no courier")))
        .build()
        .unwrap();
    let outcome = saga.start("1", Data::default()).await.unwrap();
    let SagaOutcome::Compensated {
        failed_step,
        error,
        data,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert_eq!((failed_step.as_str(), error.as_str()), ("ship", "no courier"));
    assert_eq!(data.done, ["reserve", "charge"]);
    // The failed step reported an error, so it did nothing: only the others are undone,
    // each seeing the data as of the last completed step.
    assert_eq!(
        entries(&log),
        [
            "reserve",
            "charge",
            "ship",
            r#"undo charge after ["reserve", "charge"]"#,
            r#"undo reserve after ["reserve", "charge"]"#,
        ]
    );
    let record = saga.status("1").await.unwrap().unwrap();
    assert_eq!(record.status, SagaStatus::Compensated);
    assert_eq!(record.failed_step.as_deref(), Some("ship"));
}

#[tokio::test(start_paused = true)]
async fn a_step_that_times_out_is_compensated_too() {
    let log = Log::default();
    let hung = log.clone();
    let undone = log.clone();
    let saga = Saga::builder("order", memory())
        .step(step(&log, "reserve", None))
        .step(
            Step::new("charge", move |_cx, data: Data| {
                let log = hung.clone();
                async move {
                    log.lock().unwrap().push("charge".into());
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, String>(data)
                }
            })
            .timeout(Duration::from_secs(2))
            .compensate(move |_cx, _data: Data| {
                let log = undone.clone();
                async move {
                    log.lock().unwrap().push("refund".into());
                    Ok::<_, String>(())
                }
            }),
        )
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let outcome = saga.start("1", Data::default()).await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "the step's timeout, not the hour"
    );
    let SagaOutcome::Compensated { failed_step, error, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(failed_step, "charge");
    assert!(error.contains("timed out after 2s"), "{error}");
    // The charge may have gone through: it is refunded, then the reservation released.
    assert_eq!(
        entries(&log),
        ["reserve", "charge", "refund", r#"undo reserve after ["reserve"]"#]
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_is_retried_with_a_stable_idempotency_key() {
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    let saga = Saga::builder("order", memory())
        .step(
            Step::new("charge", move |cx: StepContext, data: Data| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push((cx.attempt(), cx.idempotency_key()));
                    if cx.attempt() < 3 {
                        Err("gateway timeout")
                    } else {
                        Ok(data)
                    }
                }
            })
            .attempts(3)
            .retry_delay(Duration::from_millis(100)),
        )
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(matches!(
        saga.start("7", Data::default()).await.unwrap(),
        SagaOutcome::Completed(_)
    ));
    assert_eq!(started.elapsed(), Duration::from_millis(300), "100 ms, then 200 ms");
    let keys = keys.lock().unwrap().clone();
    assert_eq!(
        keys,
        [
            (1, "order:7:charge".to_owned()),
            (2, "order:7:charge".to_owned()),
            (3, "order:7:charge".to_owned())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_compensation_that_keeps_failing_leaves_the_saga_failed_for_an_operator() {
    let log = Log::default();
    let attempts = Arc::new(Mutex::new(0));
    let counted = attempts.clone();
    let saga = Saga::builder("order", memory())
        .compensation_attempts(3)
        .step(
            Step::new("reserve", |_cx, data: Data| async { Ok::<_, String>(data) }).compensate(
                move |_cx, _data: Data| {
                    let counted = counted.clone();
                    async move {
                        *counted.lock().unwrap() += 1;
                        Err::<(), _>("inventory down")
                    }
                },
            ),
        )
        .step(step(&log, "charge", Some("declined")))
        .build()
        .unwrap();
    let outcome = saga.start("1", Data::default()).await.unwrap();
    let SagaOutcome::Failed { failed_step, error, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(failed_step, "charge");
    assert!(
        error.contains("declined") && error.contains("inventory down"),
        "{error}"
    );
    assert_eq!(*attempts.lock().unwrap(), 3);
    let record = saga.status("1").await.unwrap().unwrap();
    assert_eq!((record.status, record.step), (SagaStatus::Failed, 1));
    // Failed is final: resuming does not pick it up.
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert!(saga.resume_stalled(Duration::from_secs(60)).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_id_starts_only_once() {
    let log = Log::default();
    let saga = Saga::builder("order", memory())
        .step(step(&log, "a", None))
        .build()
        .unwrap();
    saga.start("1", Data::default()).await.unwrap();
    let error = saga.start("1", Data::default()).await.unwrap_err();
    assert!(
        matches!(
            error,
            SagaError::AlreadyStarted {
                status: SagaStatus::Completed,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(entries(&log), ["a"], "the second start ran nothing");
}

#[test]
fn a_definition_with_two_steps_of_one_name_or_none_is_refused() {
    let log = Log::default();
    let error = Saga::builder("order", memory())
        .step(step(&log, "a", None))
        .step(step(&log, "a", None))
        .build()
        .unwrap_err();
    assert!(matches!(error, SagaError::InvalidDefinition { .. }), "{error}");
    assert!(error.to_string().contains("two steps named \"a\""), "{error}");
    let error = Saga::<Data>::builder("order", memory()).build().unwrap_err();
    assert!(error.to_string().contains("no steps"), "{error}");
}

/// Runs `saga` until its second step hangs, then drops the run as a crash would.
async fn crash_during_second_step(store: Arc<dyn SagaStore>, name: &str, id: &str, log: &Log) {
    let hang = Step::new("charge", |_cx, data: Data| async move {
        std::future::pending::<()>().await;
        Ok::<_, String>(data)
    });
    let saga = Saga::builder(name, store.clone())
        .step(step(log, "reserve", None))
        .step(hang)
        .build()
        .unwrap();
    let run = tokio::spawn({
        let id = id.to_owned();
        async move { saga.start(&id, Data::default()).await }
    });
    chassis::testing::eventually("the first step to complete", async || {
        let record = store.load(name, id).await.unwrap();
        record.is_some_and(|r| r.step == 1).then_some(())
    })
    .await;
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
}

/// The same saga after a restart: its second step now works.
fn restarted(store: Arc<dyn SagaStore>, name: &str, log: &Log) -> Saga<Data> {
    Saga::builder(name, store)
        .step(step(log, "reserve", None))
        .step(step(log, "charge", None))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_saga_whose_runner_died_is_resumed_from_its_last_step() {
    let store = memory();
    let log = Log::default();
    crash_during_second_step(store.clone(), "order", "1", &log).await;
    assert_eq!(entries(&log), ["reserve"]);

    let saga = restarted(store.clone(), "order", &log);
    assert!(
        saga.resume_stalled(Duration::from_secs(60)).await.unwrap().is_empty(),
        "not stalled yet: its runner may still be working"
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    let resumed = saga.resume_stalled(Duration::from_secs(60)).await.unwrap();
    assert_eq!(resumed.len(), 1);
    let (id, outcome) = &resumed[0];
    assert_eq!(id, "1");
    assert_eq!(
        *outcome.as_ref().unwrap(),
        SagaOutcome::Completed(Data {
            done: vec!["reserve".into(), "charge".into()]
        })
    );
    assert_eq!(entries(&log), ["reserve", "charge"], "reserve was not run again");
}

/// A memory store whose `stalled` answers only when two callers have asked: both resumers see
/// the same stalled instance, the race the version check must settle.
struct BothSeeIt {
    inner: MemorySagaStore,
    barrier: tokio::sync::Barrier,
}

impl SagaStore for BothSeeIt {
    fn create<'a>(&'a self, record: &'a SagaRecord) -> BoxFuture<'a, Result<bool, SagaError>> {
        self.inner.create(record)
    }
    fn update<'a>(&'a self, record: &'a SagaRecord) -> BoxFuture<'a, Result<bool, SagaError>> {
        self.inner.update(record)
    }
    fn load<'a>(&'a self, saga: &'a str, id: &'a str) -> BoxFuture<'a, Result<Option<SagaRecord>, SagaError>> {
        self.inner.load(saga, id)
    }
    fn stalled<'a>(&'a self, saga: &'a str, idle: Duration) -> BoxFuture<'a, Result<Vec<SagaRecord>, SagaError>> {
        Box::pin(async move {
            let found = self.inner.stalled(saga, idle).await;
            self.barrier.wait().await;
            found
        })
    }
}

#[tokio::test(start_paused = true)]
async fn two_resumers_never_drive_one_saga_both() {
    let store: Arc<dyn SagaStore> = Arc::new(BothSeeIt {
        inner: MemorySagaStore::default(),
        barrier: tokio::sync::Barrier::new(2),
    });
    let log = Log::default();
    crash_during_second_step(store.clone(), "order", "1", &log).await;
    tokio::time::advance(Duration::from_secs(61)).await;
    let (first, second) = (
        restarted(store.clone(), "order", &log),
        restarted(store.clone(), "order", &log),
    );
    let (a, b) = tokio::join!(
        first.resume_stalled(Duration::from_secs(60)),
        second.resume_stalled(Duration::from_secs(60))
    );
    let outcomes: Vec<_> = a
        .unwrap()
        .into_iter()
        .chain(b.unwrap())
        .map(|(_, outcome)| outcome)
        .collect();
    assert_eq!(outcomes.len(), 2, "both saw the stalled saga");
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    assert!(
        outcomes.iter().any(|o| matches!(o, Err(SagaError::TakenOver { .. }))),
        "{outcomes:?}"
    );
    assert_eq!(entries(&log), ["reserve", "charge"], "charge ran once");
}

#[tokio::test(start_paused = true)]
async fn a_stored_saga_that_no_longer_fits_its_definition_is_reported() {
    let store = memory();
    let log = Log::default();
    crash_during_second_step(store.clone(), "order", "1", &log).await;
    tokio::time::advance(Duration::from_secs(61)).await;
    let changed: Saga<Vec<u32>> = Saga::builder("order", store.clone())
        .step(Step::new("count", |_cx, data: Vec<u32>| async move {
            Ok::<_, String>(data)
        }))
        .build()
        .unwrap();
    let resumed = changed.resume_stalled(Duration::from_secs(60)).await.unwrap();
    let error = resumed[0].1.as_ref().unwrap_err();
    assert!(error.to_string().contains("the stored data does not decode"), "{error}");
}

async fn postgres() -> Option<Arc<dyn SagaStore>> {
    let url = chassis::testing::backend_url("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test");
    let store = chassis::testing::backend("PostgreSQL", PostgresSagaStore::connect(&url)).await?;
    store.migrate().await.unwrap();
    Some(Arc::new(store))
}

#[tokio::test]
async fn postgres_keeps_saga_state_across_a_restart() {
    let Some(store) = postgres().await else { return };
    // A fresh saga name per run, so earlier runs' rows do not interfere.
    let name = format!("checkout-{}", uuid::Uuid::new_v4());
    let log = Log::default();
    crash_during_second_step(store.clone(), &name, "1", &log).await;
    let record = store.load(&name, "1").await.unwrap().unwrap();
    assert_eq!((record.status, record.step), (SagaStatus::Running, 1));
    assert_eq!(record.data["done"][0], "reserve");

    let saga = restarted(store.clone(), &name, &log);
    assert!(saga.resume_stalled(Duration::from_secs(60)).await.unwrap().is_empty());
    // The database's clock judges "stalled"; an idle of zero takes everything unfinished.
    let resumed = saga.resume_stalled(Duration::ZERO).await.unwrap();
    assert_eq!(resumed.len(), 1);
    assert!(matches!(resumed[0].1, Ok(SagaOutcome::Completed(_))), "{resumed:?}");
    assert_eq!(entries(&log), ["reserve", "charge"]);
    let record = saga.status("1").await.unwrap().unwrap();
    assert_eq!(record.status, SagaStatus::Completed);

    // Compare-and-set: a writer holding an old version loses.
    let mut stale = record.clone();
    stale.version -= 1;
    assert!(!store.update(&stale).await.unwrap());
    assert!(!store.create(&record).await.unwrap(), "the id exists");
}
