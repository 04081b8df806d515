//! Memory per envelope: a flood of hostile envelopes just under NATS' 1 MB
//! payload limit, of every shape that decodes into far more memory than its
//! bytes, keeps a worker with default settings (32 tasks at once) under
//! 256 MiB peak RSS, and every one is dead-lettered with a reason.

use std::time::Duration;

use bytes::Bytes;
use di::TaskStatus;
use it::process::ChildProcess;
use it::scope::Scope;

/// A liveness bound, not a speed: a debug worker on a slow two-core machine
/// took up to about 2 minutes to refuse the whole flood.
const WAIT: Duration = Duration::from_secs(240);
/// Each envelope's size: under NATS' default max_payload (1 MB) with room
/// for the headers.
const SIZE: usize = 1_000_000;
/// Copies of each shape: more than a full batch of `worker.concurrency`.
const COPIES: usize = 40;
const BUDGET_KIB: u64 = 256 * 1024;

fn str8(out: &mut Vec<u8>, s: &str) {
    out.push(0xd9);
    out.push(u8::try_from(s.len()).unwrap());
    out.extend_from_slice(s.as_bytes());
}

/// `{task_id, task_name, <field>: <body>}` where `body` writes the value;
/// `body` gets the bytes still free to fill.
fn envelope(task_id: &str, task_name: &str, field: &str, body: impl FnOnce(&mut Vec<u8>, usize)) -> Vec<u8> {
    let mut out = vec![0x83];
    str8(&mut out, "task_id");
    str8(&mut out, task_id);
    str8(&mut out, "task_name");
    str8(&mut out, task_name);
    str8(&mut out, field);
    let room = SIZE - out.len() - 8;
    body(&mut out, room);
    assert!(out.len() <= SIZE, "{task_id}: {} bytes", out.len());
    out
}

fn array32(out: &mut Vec<u8>, n: usize) {
    out.push(0xdd);
    out.extend_from_slice(&u32::try_from(n).unwrap().to_be_bytes());
}

fn map32(out: &mut Vec<u8>, n: usize) {
    out.push(0xdf);
    out.extend_from_slice(&u32::try_from(n).unwrap().to_be_bytes());
}

/// Every hostile shape: (name, task name, field, writer of the value).
#[allow(clippy::type_complexity)]
fn shapes() -> Vec<(&'static str, &'static str, &'static str, fn(&mut Vec<u8>, usize))> {
    vec![
        ("nils", "test_di_task", "args", |out, room| {
            array32(out, room);
            out.extend(std::iter::repeat_n(0xc0, room));
        }),
        ("deep", "test_di_task", "args", |out, room| {
            out.extend(std::iter::repeat_n(0x91, room - 1));
            out.push(0xc0);
        }),
        ("map", "test_di_task", "args", |out, room| {
            // One array holding one map of nil => nil pairs.
            out.push(0x91);
            map32(out, (room - 6) / 2);
            out.extend(std::iter::repeat_n(0xc0, (room - 6) / 2 * 2));
        }),
        ("labels", "test_di_task", "labels", |out, room| {
            // The labels map (a BTreeMap when decoded): "k<n>" => nil.
            let entries = room / 9;
            map32(out, entries);
            for n in 0..entries {
                let key = format!("k{n:06}");
                out.push(0xa0 | u8::try_from(key.len()).unwrap());
                out.extend_from_slice(key.as_bytes());
                out.push(0xc0);
            }
        }),
        ("strings", "test_di_task", "args", |out, room| {
            array32(out, room / 2);
            out.extend(std::iter::repeat_n([0xa1, b's'], room / 2).flatten());
        }),
        ("huge string", "test_di_task", "kwargs", |out, room| {
            // chat_id as a string of almost 1 MB: decodes, then does not fit.
            out.push(0x81);
            str8(out, "chat_id");
            let len = room - 16;
            out.push(0xdb);
            out.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
            out.extend(std::iter::repeat_n(b'x', len));
        }),
        ("ints", "test_di_task", "args", |out, room| {
            array32(out, room);
            out.extend((0..room).map(|n| (n % 128) as u8));
        }),
        ("mixed", "no_such_task", "args", |out, room| {
            // nil, "ab", 7, [nil, nil], {nil: nil}, 2.5 (as f32) again and again.
            let unit: &[u8] =
                &[0xc0, 0xa2, b'a', b'b', 0x07, 0x92, 0xc0, 0xc0, 0x81, 0xc0, 0xc0, 0xca, 0x40, 0x20, 0, 0];
            let units = room / unit.len();
            array32(out, units * 6);
            out.extend(std::iter::repeat_n(unit, units).flatten());
        }),
    ]
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_hostile_envelopes_stays_within_256_mib() {
    let mut scope = Scope::new();
    // The default concurrency (the scope lowers it for ordinary tests).
    scope.settings.worker.concurrency = 32;
    let producer = scope.producer().await;
    let subject = scope.settings.nats.subject.clone();
    let mut expected = Vec::new();
    // All queued before the worker starts, so it takes full batches.
    for (shape, task_name, field, body) in shapes() {
        for n in 0..COPIES {
            let task_id = format!("mem-{}-{n}", shape.replace(' ', "-"));
            let bytes = envelope(&task_id, task_name, field, body);
            let sent = producer.publisher().send(subject.clone(), &task_id, Default::default(), Bytes::from(bytes));
            sent.await.unwrap_or_else(|e| panic!("publishing {task_id}: {e}"));
            expected.push(task_id);
        }
    }
    let worker = tokio::task::spawn_blocking({
        let env = scope.env();
        move || ChildProcess::start(&env)
    })
    .await
    .unwrap();

    scope.eventually(WAIT, "an empty queue", || async { (scope.backlog().await == (0, 0, 0)).then_some(()) }).await;
    let peak = peak_rss_kib(worker.id());
    eprintln!("the worker's peak RSS: {} MiB", peak / 1024);
    for task_id in &expected {
        let record = producer.result(task_id).await.unwrap().unwrap_or_else(|| panic!("no record for {task_id}"));
        assert_eq!(record.status, TaskStatus::Failed, "{task_id}");
        let kind = record.error.map(|e| e.exc_type).unwrap_or_default();
        let want = if task_id.starts_with("mem-huge-string") { "BadArguments" } else { "BadEnvelope" };
        assert_eq!(kind, want, "{task_id}");
    }
    let js = scope.jetstream().await;
    let mut dead = js.get_stream(courier::broker::dead_letter_stream(&scope.settings.nats)).await.unwrap();
    assert_eq!(dead.info().await.unwrap().state.messages, expected.len() as u64, "one dead letter each");
    for seq in [1, expected.len() as u64 / 2, expected.len() as u64] {
        let letter = dead.get_raw_message(seq).await.unwrap();
        let reason =
            letter.headers.get(courier::broker::publish::REASON_HEADER).map(|v| v.to_string()).unwrap_or_default();
        assert!(reason.starts_with("Bad"), "dead letter {seq} gives its reason: {reason:?}");
    }
    assert!(peak < BUDGET_KIB, "the worker's peak RSS was {} MiB (budget 256 MiB)", peak / 1024);
    let mut worker = worker;
    let exit = tokio::task::spawn_blocking(move || worker.terminate(WAIT)).await.unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[test]
fn the_compiled_in_limits_are_decode_limits_default() {
    let settings = it::test_settings();
    assert_eq!(di::DecodeLimits::from_settings(&settings), di::DecodeLimits::DEFAULT);
}
