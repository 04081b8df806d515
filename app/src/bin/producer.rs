//! `producer`: enqueue a task from the command line, read results, and
//! operate dead letters.

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use courier::cli::{envelope_from_json, parse_label, parse_when};
use courier::dead_letters::{self, Filter};
use courier::publish::Published;
use courier::{Producer, ProducerError, telemetry};
use di::{Registry, ResultRecord, TaskStatus};
use settings::Settings;
// Links the task plug-ins, to check names and arguments before publishing.
use tasks as _;

const EXIT_FAILED: u8 = 1;
const EXIT_TIMEOUT: u8 = 2;
const EXIT_NO_RECORD: u8 = 3;
const EXIT_UNAVAILABLE: u8 = 4;
const EXIT_USAGE: u8 = 64;
const EXIT_CONFLICT: u8 = 65;

const EXIT_CODES: &str = "Exit codes:
  0   success (or queued, without --wait; a duplicate is said on stderr)
  1   the task failed (send --wait, result); replay: some matches failed
  2   --wait timed out
  3   no record (result) or no dead letter (replay) for that task id
  4   NATS or Redis failed
  64  bad usage: unknown task or flag, arguments that do not fit the task,
      an invalid task id (1-128 of A-Z a-z 0-9 - _ . :) or label
  65  send --id: that id was already sent with other arguments";

/// Enqueue Courier tasks, read their results and operate dead letters.
///
/// Settings come from the usual layers (COURIER_* variables, settings files).
#[derive(Debug, Parser)]
#[command(name = "producer", after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enqueues a task and prints its id.
    ///
    /// Prints the task id once the broker confirmed it; with --wait, then the
    /// result record as JSON. Sending an --id again with the same arguments
    /// is a duplicate (exit 0, said on stderr); with others, exit 65.
    #[command(after_help = EXIT_CODES)]
    Send {
        /// The registered task name.
        task: String,
        /// The arguments, as a JSON object.
        #[arg(long, default_value = "{}")]
        kwargs: String,
        /// The task id (an idempotency key); a new one if not given.
        #[arg(long)]
        id: Option<String>,
        /// A label, `key=value` (repeatable).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Wait this many seconds for the result.
        #[arg(long, value_parser = parse_seconds)]
        wait: Option<Duration>,
    },
    /// Prints a task's result record as JSON.
    #[command(after_help = EXIT_CODES)]
    Result {
        /// The task id.
        task_id: String,
    },
    /// Lists dead letters.
    ///
    /// Prints the newest matching dead letters, oldest first, one JSON object
    /// per line (sequence, time, task_id, task_name, reason, attempt,
    /// subject, bytes).
    #[command(name = "dead-letters", after_help = EXIT_CODES)]
    DeadLetters {
        /// How many to print at most.
        #[arg(long, default_value = "100")]
        limit: NonZeroUsize,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Puts dead letters back in the queue.
    ///
    /// Puts dead letters back in the queue (records reset to queued, under
    /// the task id read from the payload) and removes them from the dead
    /// letters: the newest one of TASK_ID, or with --all every one matching
    /// the filters. Prints the counts.
    #[command(after_help = EXIT_CODES)]
    Replay {
        /// The task id whose newest dead letter to replay.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        task_id: Option<String>,
        /// Replay every dead letter that matches the filters.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Measures Courier against a running worker.
    ///
    /// Measures enqueue rate, end-to-end throughput (noop and a DI SELECT 1)
    /// and round-trip latency against a running worker; --ceiling also
    /// measures the bare primitives and a raw pipeline on the same services.
    #[command(after_help = EXIT_CODES)]
    Bench {
        /// Tasks per throughput phase.
        #[arg(long, default_value = "10000")]
        n: NonZeroUsize,
        /// Sequential round trips for the latency phase.
        #[arg(long, default_value = "1000")]
        round_trips: NonZeroUsize,
        /// Repetitions of the whole suite (figures are medians).
        #[arg(long, default_value = "1")]
        runs: NonZeroUsize,
        /// Enqueues in flight at once.
        #[arg(long, default_value = "64")]
        in_flight: NonZeroUsize,
        /// Also measure the bare primitives and the raw pipeline.
        #[arg(long)]
        ceiling: bool,
        /// The worker's process id, to report its memory.
        #[arg(long)]
        worker_pid: Option<u32>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows the bot's flood control, shared by every worker.
    ///
    /// The limits, messages per second each lane sends now, how far the
    /// global budget is booked ahead, the paid lane's Stars spent today, and
    /// the chats (or the whole bot) frozen by a 429 with the time left.
    #[command(after_help = EXIT_CODES)]
    Governor {
        /// Print one JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Broadcast campaigns: one task to many chats, with progress, pause,
    /// resume, cancel and a report.
    #[command(subcommand, after_help = EXIT_CODES)]
    Broadcast(courier::campaign::cli::BroadcastCommand),
}

/// Which dead letters: every filter given must match.
#[derive(Debug, Args)]
struct FilterArgs {
    /// Only dead letters of this task name.
    #[arg(long = "task")]
    task_name: Option<String>,
    /// Dead-lettered at or after: an RFC 3339 time, or a duration (90m) ago.
    #[arg(long, value_parser = parse_when)]
    since: Option<SystemTime>,
    /// Dead-lettered at or before: an RFC 3339 time, or a duration (90m) ago.
    #[arg(long, value_parser = parse_when)]
    until: Option<SystemTime>,
    /// Only dead letters whose reason contains this text.
    #[arg(long)]
    reason_contains: Option<String>,
}

impl FilterArgs {
    fn into_filter(self, task_id: Option<String>) -> Filter {
        let mut filter = courier::cli::filter(self.task_name, self.since, self.until, self.reason_contains);
        filter.task_id = task_id;
        filter
    }
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs.is_finite() => Ok(Duration::from_secs_f64(secs)),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init_quiet();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return match err.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    let outcome = match cli.command {
        Command::Send { task, kwargs, id, labels, wait } => send(&task, &kwargs, id, &labels, wait).await,
        Command::Result { task_id } => result(&task_id).await,
        Command::DeadLetters { limit, filter } => list_dead_letters(limit.get(), filter.into_filter(None)).await,
        Command::Replay { task_id: Some(task_id), filter, .. } => {
            replay_one(&task_id, filter.into_filter(Some(task_id.clone()))).await
        }
        Command::Replay { task_id: None, filter, .. } => replay_all(filter.into_filter(None)).await,
        Command::Bench { n, round_trips, runs, in_flight, ceiling, worker_pid, json } => {
            let options = courier::bench::BenchOptions {
                n: n.get(),
                round_trips: round_trips.get(),
                in_flight: in_flight.get(),
                runs: runs.get(),
                ceiling,
                worker_pid,
                json,
            };
            bench(&options).await
        }
        Command::Governor { json } => governor(json).await,
        Command::Broadcast(command) => broadcast(command).await,
    };
    outcome.unwrap_or_else(|code| code)
}

async fn broadcast(command: courier::campaign::cli::BroadcastCommand) -> Outcome {
    let settings = settings()?;
    match courier::campaign::cli::run(&settings, command).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err((code, problem)) => Err(fail(code, problem)),
    }
}

async fn governor(json: bool) -> Outcome {
    let settings = settings()?;
    let (bot_id, status) = courier::flood_status::read(&settings).await.map_err(|err| fail(EXIT_UNAVAILABLE, err))?;
    let limits = &settings.telegram.limits;
    if json {
        println!("{}", courier::flood_status::json(bot_id, limits, &status));
    } else {
        print!("{}", courier::flood_status::render(bot_id, limits, &status));
    }
    Ok(ExitCode::SUCCESS)
}

/// What a command returns: its exit code, or an early one (already explained on stderr).
type Outcome = Result<ExitCode, ExitCode>;

fn fail(code: u8, problem: impl std::fmt::Display) -> ExitCode {
    eprintln!("producer: {problem}");
    ExitCode::from(code)
}

fn settings() -> Result<Settings, ExitCode> {
    Settings::load().map_err(|err| fail(EXIT_USAGE, err))
}

async fn connect() -> Result<(Settings, Producer), ExitCode> {
    let settings = settings()?;
    let producer = Producer::connect(&settings).await.map_err(|err| fail(EXIT_UNAVAILABLE, err))?;
    Ok((settings, producer))
}

async fn send(
    task: &str,
    kwargs: &str,
    id: Option<String>,
    labels: &[(String, String)],
    wait: Option<Duration>,
) -> Outcome {
    let registry = Registry::from_inventory().map_err(|err| fail(EXIT_USAGE, err))?;
    let Some(def) = registry.get(task) else {
        let known = registry.names().join(", ");
        return Err(fail(EXIT_USAGE, format!("no task is registered as {task:?}; known tasks: {known}")));
    };
    let explicit_id = id.is_some();
    let envelope = envelope_from_json(id.unwrap_or_else(di::new_task_id), task, kwargs, labels)
        .map_err(|problem| fail(EXIT_USAGE, problem))?;
    // Before connecting: a refused id or label writes nothing anywhere.
    di::validate_task_id(&envelope.task_id)
        .and_then(|()| di::validate_labels(&envelope.labels))
        .map_err(|err| fail(EXIT_USAGE, err))?;
    def.check_args(&envelope).map_err(|err| fail(EXIT_USAGE, format!("--kwargs do not fit {task}: {err}")))?;
    let (_, producer) = connect().await?;
    match producer.enqueue_envelope(&envelope, Some(def.options.lane)).await {
        Ok(Published::Stored) => println!("{}", envelope.task_id),
        Ok(Published::Duplicate) => {
            println!("{}", envelope.task_id);
            let id = &envelope.task_id;
            eprintln!("producer: duplicate: task {id} was sent before with these arguments; nothing new was queued");
        }
        Err(err @ ProducerError::Conflict { .. }) if explicit_id => return Err(fail(EXIT_CONFLICT, err)),
        Err(err @ (ProducerError::Invalid(_) | ProducerError::Conflict { .. })) => return Err(fail(EXIT_USAGE, err)),
        Err(err) => return Err(fail(EXIT_UNAVAILABLE, err)),
    }
    let Some(timeout) = wait else { return Ok(ExitCode::SUCCESS) };
    match producer.wait(&envelope.task_id, timeout).await {
        Ok(record) => Ok(print_record(&record)),
        Err(ProducerError::Timeout { .. }) => Err(fail(EXIT_TIMEOUT, format!("no final result within {timeout:?}"))),
        Err(err) => Err(fail(EXIT_UNAVAILABLE, err)),
    }
}

async fn result(task_id: &str) -> Outcome {
    let (settings, producer) = connect().await?;
    match producer.result(task_id).await {
        Ok(Some(record)) => Ok(print_record(&record)),
        Ok(None) => {
            let ttl = humantime::format_duration(settings.redis.result_ttl);
            Err(fail(EXIT_NO_RECORD, format!("no record for task {task_id} (never sent, or expired after {ttl})")))
        }
        Err(err) => Err(fail(EXIT_UNAVAILABLE, err)),
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

async fn list_dead_letters(limit: usize, filter: Filter) -> Outcome {
    let (settings, producer) = connect().await?;
    let letters = dead_letters::list(producer.publisher().jetstream(), &settings.nats, &filter, limit)
        .await
        .map_err(|err| fail(EXIT_UNAVAILABLE, err))?;
    for letter in letters {
        println!("{}", serde_json::to_string(&letter).unwrap_or_default());
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay_one(task_id: &str, filter: Filter) -> Outcome {
    let (settings, producer) = connect().await?;
    let letter = dead_letters::replay_newest(&producer, &settings.nats, &filter).await;
    match letter {
        Ok(Some(letter)) => {
            println!("{task_id}: back in the queue (was dead letter {}: {})", letter.sequence, letter.reason);
            println!("matched 1, replayed 1, failed 0");
            Ok(ExitCode::SUCCESS)
        }
        Ok(None) => Err(fail(EXIT_NO_RECORD, format!("no dead letter for task {task_id}"))),
        Err(err) => Err(fail(EXIT_UNAVAILABLE, err)),
    }
}

async fn replay_all(filter: Filter) -> Outcome {
    let (settings, producer) = connect().await?;
    let counts = dead_letters::replay_matching(&producer, &settings.nats, &filter)
        .await
        .map_err(|err| fail(EXIT_UNAVAILABLE, err))?;
    println!("matched {}, replayed {}, failed {}", counts.matched, counts.replayed, counts.failed);
    Ok(if counts.failed > 0 { ExitCode::from(EXIT_FAILED) } else { ExitCode::SUCCESS })
}

async fn bench(options: &courier::bench::BenchOptions) -> Outcome {
    let settings = settings()?;
    let report =
        courier::bench::run(&settings, options).await.map_err(|err| fail(EXIT_UNAVAILABLE, format!("bench: {err}")))?;
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", courier::bench::table(&report));
    }
    Ok(ExitCode::SUCCESS)
}
