//! Adding a work item type without forking: a product registers its own
//! [`Processor`] under its own [`WorkKind`] through the builder, and
//! enqueues items through the server's work queue. The engine claims them
//! under a lease, retries them with the kind's backoff, and keeps the ones
//! that fail for a person (`imageserver workqueue list --status failed`).
//!
//! ```text
//! cargo run --example custom_processor
//! ```
//!
//! The archive lives in a temporary directory (SQLite index) and listens
//! on a free loopback port; the example enqueues three "notify the RIS"
//! items, waits for them and stops.

use std::error::Error;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use imageserver_core::config::Config;
use imageserver_core::server::{Server, ServerBuilder};
use imageserver_core::workqueue::{
    KindProperties, NewWorkItem, ProcessContext, Processor, RetryPolicy, StepResult, StudyLock,
    WorkItem, WorkKind, WorkPriority, WorkStatus,
};

/// A product's own work: tell the RIS that an accession is available, by
/// dropping a message into an outbox folder another system picks up.
///
/// Idempotent, as every processor must be (an item runs again after a
/// crash or a lost lease): the message file is named after the item and
/// written whole under a temporary name, so a second run replaces it.
struct NotifyRis {
    outbox: PathBuf,
}

impl Processor for NotifyRis {
    fn process(&self, item: &WorkItem, ctx: &ProcessContext<'_>) -> StepResult {
        let final_path = self.outbox.join(format!("item-{}.json", item.id));
        let temporary = self.outbox.join(format!(".item-{}.tmp", item.id));
        let message = format!(
            "{{\"item\":{},\"attempt\":{},\"request\":{}}}\n",
            item.id,
            ctx.attempt(),
            item.payload
        );
        match std::fs::write(&temporary, message)
            .and_then(|()| std::fs::rename(&temporary, &final_path))
        {
            Ok(()) => StepResult::Done,
            // A full or unmounted outbox is worth another try later.
            Err(e) => StepResult::RetryAfter(Duration::from_secs(10), format!("outbox: {e}")),
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let outbox = dir.path().join("outbox");
    std::fs::create_dir_all(&outbox)?;

    let mut config = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    config.workqueue.threads = 2;
    config.workqueue.high_priority_threads = 0;

    // The one line an embedding product adds: its kind, its properties,
    // its processor.
    let notify_ris = WorkKind::new("notify_ris")?;
    let archive = ServerBuilder::new(config.validate()?)
        .processor(
            notify_ris.clone(),
            KindProperties::new()
                .priority(WorkPriority::High)
                .study_lock(StudyLock::Read)
                .retry(RetryPolicy {
                    max_failures: 3,
                    ..RetryPolicy::default()
                }),
            NotifyRis {
                outbox: outbox.clone(),
            },
        )
        .open()?;
    let partition = archive.default_partition().partition.id;
    let server = Server::start_on(archive, vec![TcpListener::bind("127.0.0.1:0")?])?;

    let queue = server.work_queue();
    let mut ids = Vec::new();
    for accession in ["A1001", "A1002", "A1003"] {
        let item = NewWorkItem::new(notify_ris.clone(), partition)
            .payload(format!("{{\"accession\":\"{accession}\"}}"));
        ids.push(queue.enqueue(item)?);
    }

    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        loop {
            let item = queue.get(*id)?.ok_or("the item vanished")?;
            if item.status == WorkStatus::Completed {
                println!(
                    "item {id} ({}) completed on attempt {} by {}",
                    item.kind,
                    item.attempt,
                    item.processor_id.as_deref().unwrap_or("?")
                );
                break;
            }
            if item.status == WorkStatus::Failed || Instant::now() > deadline {
                return Err(format!("item {id} did not complete: {item:?}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    server.shutdown(Duration::from_secs(5));

    let mut messages: Vec<_> = std::fs::read_dir(&outbox)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    messages.sort();
    println!("outbox: {messages:?}");
    Ok(())
}
