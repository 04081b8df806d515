//! A task that sends several messages to one chat: once it has sent one,
//! its next sends wait for their slot inside the task instead of handing
//! the task back (a redelivery would send the first messages again).

use std::time::Duration;

use it::fake_telegram::FakeTelegram;
use it::scope::Scope;
use tasks as _;

const WAIT: Duration = Duration::from_secs(60);

/// Sends `count` numbered messages to one chat.
mod announce {
    use di::prelude::*;

    #[derive(Debug, Serialize, Deserialize)]
    pub struct Args {
        pub chat_id: i64,
        pub count: u32,
    }

    pub async fn run(ctx: TaskContext, args: Args) -> TaskResult<u32> {
        for i in 0..args.count {
            ctx.bot().send_message(args.chat_id, &format!("part {i}")).await?;
        }
        Ok(args.count)
    }

    register_task!(run: Args => u32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_sends_three_messages_to_a_group_sends_each_once() {
    let mut limits = it::test_settings().telegram.limits;
    // A group: one message, then one every 3 s.
    limits.group_per_minute = 20.0;
    limits.group_burst = 1;
    limits.wait_threshold = Duration::from_millis(250);
    let fake = FakeTelegram::start_with_limits(limits.clone()).await;
    let mut scope = Scope::new();
    scope.settings.telegram.token = Some(settings::Secret::new("123456:TEST-TOKEN"));
    scope.settings.telegram.api_url = fake.url.clone();
    scope.settings.telegram.limits = limits;
    let worker = scope.start_worker().await;
    let producer = scope.producer().await;
    let handle = producer.enqueue(announce::TASK, &announce::Args { chat_id: -1_001, count: 3 }).await.unwrap();
    let record = handle.wait(WAIT).await.unwrap();
    assert_eq!(record.status, di::TaskStatus::Success, "{record:?}");
    let texts: Vec<String> =
        fake.accepted().iter().map(|(_, text, _)| text.as_str().unwrap_or_default().to_owned()).collect();
    assert_eq!(texts, ["part 0", "part 1", "part 2"], "each part once, in order");
    assert_eq!(fake.too_many(), 0);
    worker.stop().await.unwrap();
}
