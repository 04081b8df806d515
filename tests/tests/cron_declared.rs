//! A cron schedule declared in the task's own registration
//! (`TaskOptions::cron(..).tz(..)`): loaded with its origin and time zone,
//! and kept by a worker with nothing in settings, once per tick.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use di::TaskStatus;
use it::PgSchema;
use it::scope::Scope;

/// Declares its own schedule: every second, read in Tokyo's time zone.
mod pulse {
    use di::prelude::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    pub struct Args {}

    pub async fn run(_ctx: TaskContext, _args: Args) -> TaskResult<()> {
        Ok(())
    }

    register_task!(run: Args => (), TaskOptions::new().cron("* * * * * *").tz("Asia/Tokyo"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_declared_in_the_task_file_ticks_once_a_second() {
    let name = pulse::TASK.name();
    let schema = PgSchema::create().await;
    let mut scope = Scope::new();
    scope.settings.database.url = settings::SecretUrl::new(schema.url.clone());
    assert!(scope.settings.schedules.is_empty(), "nothing in settings");

    let registry = di::Registry::from_inventory().unwrap();
    let schedules = courier::schedule::cron::load(&registry, &scope.settings).unwrap();
    let declared = schedules.iter().find(|s| s.name == name).expect("the task's own schedule is loaded");
    assert_eq!((declared.task.as_str(), declared.expression.as_str()), (name, "* * * * * *"));
    assert_eq!(declared.tz.name(), "Asia/Tokyo");
    assert!(declared.origin.contains("cron_declared.rs"), "declared where the task is: {}", declared.origin);

    let worker = scope.start_worker().await;
    let started = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()).unwrap();
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    worker.stop().await.unwrap();

    // From the worker's first tick (its clock starts a moment after it is
    // ready: a tick already past is skipped), one run every second.
    let ticks = it::scope::ticks_recorded(&scope, name).await;
    let gaps: Vec<&[i64]> = ticks.windows(2).filter(|w| w[1] != w[0] + 1).collect();
    assert!(ticks.len() >= 3 && gaps.is_empty(), "one run per second from {started}: {ticks:?}");
    let producer = scope.producer().await;
    for tick in &ticks {
        let record = producer.result(&format!("cron:{name}:{tick}")).await.unwrap().unwrap();
        assert_eq!(record.status, TaskStatus::Success, "{record:?}");
    }
}
