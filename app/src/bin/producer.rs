//! `producer`: enqueue a task from the command line and read results.

use std::process::ExitCode;
use std::time::Duration;

use courier::{Producer, ProducerError, telemetry};
use di::{Envelope, Registry, ResultRecord, TaskStatus};
use settings::Settings;
// Links the task plug-ins, to check names and arguments before publishing.
use tasks as _;

const USAGE: &str = "usage:
  producer send <task> [--kwargs '<json object>'] [--id <task_id>] [--wait <seconds>]
  producer result <task_id>
  producer dead-letters [--limit 100]
  producer replay <task_id>
  producer bench [--n 10000] [--round-trips 1000] [--runs 1] [--in-flight 64]
                 [--ceiling] [--worker-pid <pid>] [--json]

send     prints the task id once the broker confirmed it; with --wait, then
         prints the result record as JSON.
result   prints the task's result record as JSON.
dead-letters  prints the newest dead letters, oldest first, one JSON object
         per line (sequence, time, task_id, reason, attempt, subject, bytes).
replay   puts a task's dead letter back in the queue (its record reset to
         queued) and removes it from the dead letters.
bench    measures enqueue rate, end-to-end throughput (noop and a DI SELECT 1),
         and round-trip latency against a running worker; --ceiling also
         measures the bare primitives and a raw pipeline on the same services.

Exit codes: 0 success (or queued, without --wait); 1 the task failed;
2 --wait timed out; 3 no record for that task id; 4 NATS or Redis failed;
64 bad usage, unknown task or arguments that do not fit it.";

const EXIT_FAILED: u8 = 1;
const EXIT_TIMEOUT: u8 = 2;
const EXIT_NO_RECORD: u8 = 3;
const EXIT_UNAVAILABLE: u8 = 4;
const EXIT_USAGE: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_quiet();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("send") => send(&args[1..]).await,
        Some("result") => result(&args[1..]).await,
        Some("bench") => bench(&args[1..]).await,
        Some("dead-letters") => dead_letters(&args[1..]).await,
        Some("replay") => replay(&args[1..]).await,
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => usage("expected a command"),
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("producer: {problem}\n\n{USAGE}");
    ExitCode::from(EXIT_USAGE)
}

fn settings() -> Result<Settings, ExitCode> {
    Settings::load().map_err(|err| {
        eprintln!("producer: {err}");
        ExitCode::from(EXIT_USAGE)
    })
}

async fn connect(settings: &Settings) -> Result<Producer, ExitCode> {
    Producer::connect(settings).await.map_err(|err| {
        eprintln!("producer: {err}");
        ExitCode::from(EXIT_UNAVAILABLE)
    })
}

async fn send(args: &[String]) -> ExitCode {
    let Some(task) = args.first() else { return usage("send needs a task name") };
    let (mut kwargs, mut task_id, mut wait) = ("{}".to_owned(), di::new_task_id(), None);
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let Some(value) = rest.next() else { return usage(&format!("{flag} needs a value")) };
        match flag.as_str() {
            "--kwargs" => kwargs.clone_from(value),
            "--id" => task_id.clone_from(value),
            "--wait" => match value.parse::<f64>() {
                Ok(secs) if secs > 0.0 && secs.is_finite() => wait = Some(Duration::from_secs_f64(secs)),
                _ => return usage(&format!("--wait {value:?} is not a positive number of seconds")),
            },
            other => return usage(&format!("unknown option {other:?}")),
        }
    }
    let registry = match Registry::from_inventory() {
        Ok(registry) => registry,
        Err(err) => return usage(&err.to_string()),
    };
    let Some(def) = registry.get(task) else {
        return usage(&format!("no task is registered as {task:?}; known tasks: {}", registry.names().join(", ")));
    };
    let envelope = match envelope_from_json(task_id, task, &kwargs) {
        Ok(envelope) => envelope,
        Err(problem) => return usage(&problem),
    };
    if let Err(err) = def.check_args(&envelope) {
        return usage(&format!("--kwargs do not fit {task}: {err}"));
    }
    let Ok(settings) = settings() else { return ExitCode::from(EXIT_USAGE) };
    let producer = match connect(&settings).await {
        Ok(producer) => producer,
        Err(code) => return code,
    };
    if let Err(err) = producer.enqueue_envelope(&envelope, def.options.queue).await {
        eprintln!("producer: {err}");
        return ExitCode::from(EXIT_UNAVAILABLE);
    }
    println!("{}", envelope.task_id);
    let Some(timeout) = wait else { return ExitCode::SUCCESS };
    match producer.wait(&envelope.task_id, timeout).await {
        Ok(record) => print_record(&record),
        Err(ProducerError::Timeout { .. }) => {
            eprintln!("producer: no final result within {timeout:?}");
            ExitCode::from(EXIT_TIMEOUT)
        }
        Err(err) => {
            eprintln!("producer: {err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn envelope_from_json(task_id: String, task: &str, kwargs: &str) -> Result<Envelope, String> {
    let json: serde_json::Value = serde_json::from_str(kwargs).map_err(|e| format!("--kwargs is not JSON: {e}"))?;
    let serde_json::Value::Object(map) = json else { return Err("--kwargs must be a JSON object".to_owned()) };
    let mut envelope = Envelope::new(task_id, task, &()).map_err(|e| e.to_string())?;
    for (key, value) in map {
        let value = rmpv::ext::to_value(&value).map_err(|e| format!("--kwargs {key}: {e}"))?;
        envelope.kwargs.insert(key, value);
    }
    Ok(envelope)
}

async fn result(args: &[String]) -> ExitCode {
    let [task_id] = args else { return usage("result needs exactly one task id") };
    let Ok(settings) = settings() else { return ExitCode::from(EXIT_USAGE) };
    let producer = match connect(&settings).await {
        Ok(producer) => producer,
        Err(code) => return code,
    };
    match producer.result(task_id).await {
        Ok(Some(record)) => print_record(&record),
        Ok(None) => {
            eprintln!("producer: no record for task {task_id} (never sent, or expired after redis.result_ttl)");
            ExitCode::from(EXIT_NO_RECORD)
        }
        Err(err) => {
            eprintln!("producer: {err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn print_record(record: &ResultRecord) -> ExitCode {
    match serde_json::to_string_pretty(record) {
        Ok(json) => println!("{json}"),
        Err(err) => println!("{{\"error\": \"cannot render the record: {err}\"}}"),
    }
    match record.status {
        TaskStatus::Failed => ExitCode::from(EXIT_FAILED),
        _ => ExitCode::SUCCESS,
    }
}

async fn bench(args: &[String]) -> ExitCode {
    let mut options = courier::bench::BenchOptions {
        n: 10_000,
        round_trips: 1_000,
        in_flight: 64,
        runs: 1,
        ceiling: false,
        worker_pid: None,
        json: false,
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        match flag.as_str() {
            "--ceiling" => options.ceiling = true,
            "--json" => options.json = true,
            "--n" | "--round-trips" | "--runs" | "--in-flight" | "--worker-pid" => {
                let Some(Ok(value)) = rest.next().map(|v| v.parse::<usize>()) else {
                    return usage(&format!("{flag} needs a positive number"));
                };
                if value == 0 {
                    return usage(&format!("{flag} needs a positive number"));
                }
                match flag.as_str() {
                    "--n" => options.n = value,
                    "--round-trips" => options.round_trips = value,
                    "--runs" => options.runs = value,
                    "--in-flight" => options.in_flight = value,
                    _ => options.worker_pid = u32::try_from(value).ok(),
                }
            }
            other => return usage(&format!("unknown option {other:?}")),
        }
    }
    let Ok(settings) = settings() else { return ExitCode::from(EXIT_USAGE) };
    match courier::bench::run(&settings, &options).await {
        Ok(report) if options.json => {
            println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Ok(report) => {
            print!("{}", courier::bench::table(&report));
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("producer: bench: {err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

async fn dead_letters(args: &[String]) -> ExitCode {
    let limit = match args {
        [] => 100,
        [flag, n] if flag == "--limit" => match n.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => return usage("--limit needs a positive number"),
        },
        _ => return usage("dead-letters takes only --limit <n>"),
    };
    let Ok(settings) = settings() else { return ExitCode::from(EXIT_USAGE) };
    let producer = match connect(&settings).await {
        Ok(producer) => producer,
        Err(code) => return code,
    };
    match courier::dead_letters::list(producer.publisher().jetstream(), &settings.nats, limit).await {
        Ok(letters) => {
            for letter in letters {
                println!("{}", serde_json::to_string(&letter).unwrap_or_default());
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("producer: {err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

async fn replay(args: &[String]) -> ExitCode {
    let [task_id] = args else { return usage("replay needs exactly one task id") };
    let Ok(settings) = settings() else { return ExitCode::from(EXIT_USAGE) };
    let producer = match connect(&settings).await {
        Ok(producer) => producer,
        Err(code) => return code,
    };
    match courier::dead_letters::replay(&producer, &settings.nats, task_id).await {
        Ok(letter) => {
            println!("{task_id}: back in the queue (was dead letter {}: {})", letter.sequence, letter.reason);
            ExitCode::SUCCESS
        }
        Err(courier::dead_letters::DeadLetterError::NotFound(_)) => {
            eprintln!("producer: no dead letter for task {task_id}");
            ExitCode::from(EXIT_NO_RECORD)
        }
        Err(err) => {
            eprintln!("producer: {err}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}
