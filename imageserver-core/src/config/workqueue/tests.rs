use crate::config::{assert_refused, Config, ConfigError};
use crate::model::work::{WorkItem, WorkKind, WorkPriority};
use crate::workqueue::{
    EngineConfig, KindProperties, ProcessContext, Registry, RetryPolicy, StepResult,
};
use std::time::Duration;

#[test]
fn workqueue_table_defaults_and_limits() {
    let settings = Config::from_toml("").unwrap().validate().unwrap().workqueue;
    assert_eq!(settings.engine.threads, 10);
    assert_eq!(settings.engine.lease, Duration::from_secs(60));
    let config = Config::from_toml(
        "[workqueue]\nthreads = 4\nhigh_priority_threads = 1\nmemory_heavy_threads = 2\n\
         lease_secs = 30\npoll_secs = 2",
    )
    .unwrap();
    let engine = config.validate().unwrap().workqueue.engine;
    assert_eq!(
        (
            engine.threads,
            engine.high_priority_threads,
            engine.memory_heavy_threads
        ),
        (4, 1, 2)
    );
    assert_eq!(engine.poll, Duration::from_secs(2));
    assert!(
        Config::from_toml("[workqueue]\nthreads = 2\nhigh_priority_threads = 2")
            .unwrap()
            .validate()
            .is_err()
    );
    assert!(Config::from_toml("[workqueue]\nlease_secs = 0")
        .unwrap()
        .validate()
        .is_err());
    assert!(Config::from_toml("[workqueue]\nthreads = 0")
        .unwrap()
        .validate()
        .is_ok());
    assert!(Config::from_toml("[workqueue]\nthread = 3").is_err());
}

#[test]
fn an_empty_table_is_the_engines_defaults() {
    let settings = Config::from_toml("").unwrap().validate().unwrap().workqueue;
    let anonymous = |engine: EngineConfig| EngineConfig {
        processor_id: String::new(),
        ..engine
    };
    let engine = anonymous(settings.engine);
    assert_eq!(engine, anonymous(EngineConfig::default()));
    // The defaults an operator relies on, pinned here as well.
    let threads = (engine.threads, engine.high_priority_threads);
    assert_eq!((threads, engine.memory_heavy_threads), ((10, 2), 4));
    assert_eq!(engine.lease, Duration::from_secs(60));
    assert_eq!(engine.poll, Duration::from_secs(5));
    assert_eq!(engine.keep_completed, Duration::from_secs(24 * 3600));
    assert_eq!(settings.study_process_delay, Duration::from_secs(60));
    assert!(settings.kinds.is_empty());
}

/// A registry running `move_study` (High, sends' retry policy) and an
/// embedder's `notify_ris`, as `ServerBuilder::open` leaves it.
fn sample_registry() -> Registry {
    let mut registry = Registry::new();
    registry
        .register(
            WorkKind::MOVE_STUDY,
            KindProperties::new()
                .priority(WorkPriority::High)
                .retry(crate::processors::send_retry_policy()),
            |_: &WorkItem, _: &ProcessContext<'_>| StepResult::Done,
        )
        .register(
            WorkKind::new("notify_ris").unwrap(),
            KindProperties::new(),
            |_: &WorkItem, _: &ProcessContext<'_>| StepResult::Done,
        );
    registry
}

#[test]
fn per_kind_overrides_parse_and_apply_to_registered_kinds_only() {
    let settings = Config::from_toml(
        r#"
        [workqueue.kinds.move_study]
        failure_delay_secs = 2
        max_failures = 5
        backoff = 2
        max_delay_secs = 600
        priority = "STAT"

        [workqueue.kinds.notify_ris]
        max_failures = 1
        "#,
    )
    .unwrap()
    .validate()
    .unwrap()
    .workqueue;
    assert_eq!(settings.kinds.len(), 2);
    let mut registry = sample_registry();
    settings.apply_kind_overrides(&mut registry).unwrap();
    let moves = registry.properties(&WorkKind::MOVE_STUDY).unwrap();
    assert_eq!(moves.priority, WorkPriority::Stat);
    assert_eq!(
        moves.retry,
        RetryPolicy {
            max_failures: 5,
            failure_delay: Duration::from_secs(2),
            backoff: 2.0,
            max_delay: Duration::from_secs(600),
        }
    );
    assert_eq!(moves.study_lock, KindProperties::new().study_lock);
    let notify = registry
        .properties(&WorkKind::new("notify_ris").unwrap())
        .unwrap();
    assert_eq!(notify.retry.max_failures, 1);
    assert_eq!(
        notify.retry.failure_delay,
        RetryPolicy::default().failure_delay
    );
    assert_eq!(notify.priority, WorkPriority::Medium);

    // A kind this archive does not run: refused, naming what it runs.
    let unknown = Config::from_toml("[workqueue.kinds.auto_rout]\nmax_failures = 2")
        .unwrap()
        .validate()
        .unwrap()
        .workqueue;
    match unknown.apply_kind_overrides(&mut sample_registry()) {
        Err(ConfigError::Invalid { setting, reason }) => {
            assert_eq!(setting, "workqueue.kinds.auto_rout");
            assert!(reason.contains("move_study, notify_ris"), "{reason}");
        }
        other => panic!("expected an unknown kind, got {other:?}"),
    }
    // A first delay beyond the kind's registered longest (30 min).
    let beyond = Config::from_toml("[workqueue.kinds.move_study]\nfailure_delay_secs = 3600")
        .unwrap()
        .validate()
        .unwrap()
        .workqueue;
    assert!(beyond.apply_kind_overrides(&mut sample_registry()).is_err());
    // No overrides: the registry is left as it was.
    let mut untouched = sample_registry();
    Config::from_toml("")
        .unwrap()
        .validate()
        .unwrap()
        .workqueue
        .apply_kind_overrides(&mut untouched)
        .unwrap();
    assert_eq!(
        format!("{untouched:?}"),
        format!("{:?}", sample_registry()),
        "no overrides, no change"
    );
}

#[test]
fn per_kind_overrides_are_validated_strictly() {
    let unknown_key =
        Config::from_toml("[workqueue.kinds.move_study]\nfailure_delay = 2").unwrap_err();
    let text = crate::model::error_chain(&unknown_key);
    assert!(
        text.contains("unknown field `failure_delay`") && text.contains("failure_delay_secs"),
        "{text}"
    );
    assert!(Config::from_toml("[workqueue.kinds.move_study]\nmax_failures = \"3\"").is_err());
    assert!(Config::from_toml("[workqueue.kinds.move_study]\nmax_failures = -1").is_err());
    let cases = [
        (
            "[workqueue.kinds.Move-Study]\nmax_failures = 2",
            "workqueue.kinds.Move-Study",
            "invalid work item type",
        ),
        (
            "[workqueue.kinds.move_study]\npriority = \"urgent\"",
            "workqueue.kinds.move_study.priority",
            "expected low, medium, high or stat",
        ),
        (
            "[workqueue.kinds.move_study]\nmax_failures = 0",
            "workqueue.kinds.move_study.max_failures",
            "at least 1",
        ),
        (
            "[workqueue.kinds.move_study]\nbackoff = 0.5",
            "workqueue.kinds.move_study.backoff",
            "at least 1.0",
        ),
        (
            "[workqueue.kinds.move_study]\nbackoff = nan",
            "workqueue.kinds.move_study.backoff",
            "at least 1.0",
        ),
        (
            "[workqueue.kinds.move_study]\nfailure_delay_secs = 0",
            "workqueue.kinds.move_study.failure_delay_secs",
            "at least 1 second",
        ),
        (
            "[workqueue.kinds.move_study]\nmax_delay_secs = 0",
            "workqueue.kinds.move_study.max_delay_secs",
            "at least 1 second",
        ),
        (
            "[workqueue.kinds.move_study]\nfailure_delay_secs = 60\nmax_delay_secs = 30",
            "workqueue.kinds.move_study",
            "longer than max_delay_secs",
        ),
    ];
    for (text, setting, reason) in cases {
        assert_refused(text, setting, reason);
    }
    // Every key is optional; an empty table changes nothing.
    assert!(Config::from_toml("[workqueue.kinds.move_study]")
        .unwrap()
        .validate()
        .is_ok());
}
