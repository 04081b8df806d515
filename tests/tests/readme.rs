//! The README's "Testing a task with mocks" example, verbatim, and its taskiq
//! example checked against `examples/taskiq_producer.py`, so the
//! README cannot drift from the code.

use di::testing::TestRuntime;
use di::{Outcome, TaskStatus};
use tasks as _;

#[tokio::test]
async fn tells_the_user() {
    let rt = TestRuntime::new().await.unwrap();
    tasks::MIGRATOR.run(di::Db::pool(&rt.mocks.db)).await.unwrap(); // if the task needs tables
    let exec = rt.run(tasks::test_di_task::TASK, &tasks::test_di_task::Args { chat_id: 42 }).await;
    let Outcome::Success(value) = exec.outcome else { panic!("{:?}", exec.outcome) };
    let output = tasks::test_di_task::TASK.decode_output(value).unwrap();
    assert_eq!(output.select_one, 1);
    assert_eq!(rt.mocks.bot.sent()[0].chat_id, 42); // the recording bot
    let record = &rt.mocks.store.records()[exec.task_id.as_deref().unwrap()];
    assert_eq!(record.status, TaskStatus::Success); // the result record
}

/// The README shows `examples/taskiq_producer.py` (which `taskiq_interop`
/// runs) as it is, whole.
#[test]
fn readme_shows_the_taskiq_producer_example_as_it_is() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../../examples/taskiq_producer.py");
    assert!(
        readme.contains(&format!("```python\n{example}```\n")),
        "README.md's Python example differs from examples/taskiq_producer.py: copy the file into the ```python block"
    );
}
