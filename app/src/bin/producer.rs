//! `producer`: enqueue a task from the command line, read results, and
//! operate dead letters.

use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::{Args, Parser, Subcommand};
use courier::broker::dead_letters::{self, Filter};
use courier::broker::publish::Published;
use courier::cli::completions::Completions;
use courier::cli::output::{print_json, print_json_line, print_text};
use courier::cli::tasks as listing;
use courier::cli::{EXIT_CODES, Exit, envelope_from_json, parse_label, parse_when};
use courier::{Producer, ProducerError, telemetry};
use di::{Registry, ResultRecord, TaskStatus};
use settings::Settings;
// Links the task plug-ins, to check names and arguments before publishing.
use tasks as _;

/// Enqueue Courier tasks, read their results and operate dead letters.
///
/// Settings come from the usual layers (COURIER_* variables, settings files).
#[derive(Debug, Parser)]
#[command(name = "producer", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists the registered tasks with their arguments.
    ///
    /// Prints each task's name, lane, attempts and timeout, and each of its
    /// arguments (the keys of send --kwargs) with its type and default.
    #[command(after_help = EXIT_CODES)]
    Tasks {
        /// Print JSON (an array of tasks) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Enqueues a task and prints its id.
    ///
    /// Checks the arguments against the task's (`producer tasks` lists them):
    /// a missing, unknown or mistyped field is refused, naming it, and
    /// nothing is enqueued. Prints the task id once the broker confirmed it;
    /// with --wait, then the result record as JSON. Sending an --id again
    /// with the same arguments is a duplicate (exit 0, said on stderr); with
    /// others, exit 6. With --in or --at the task waits in the broker until
    /// it is due (status `scheduled`).
    #[command(after_help = EXIT_CODES)]
    Send {
        /// The registered task name (`producer tasks` lists them).
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
        /// Print one JSON object: task_id, duplicate, and with --wait the record.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        when: WhenArgs,
    },
    /// Prints a task's result record as JSON.
    #[command(after_help = EXIT_CODES)]
    Result {
        /// The task id.
        task_id: String,
        /// Follow the task until it ends: its progress on a terminal (a bar),
        /// then the final record.
        #[arg(long)]
        watch: bool,
    },
    /// Cancels a task (or every one matching a filter): if queued or
    /// scheduled it never runs; if running it is told to stop.
    ///
    /// Writes a final `cancelled` record unless the task already has a final
    /// one. A running task sees `ctx.cancelled()` within about a second; if
    /// it stops it ends `cancelled`, if it ignores the signal and finishes it
    /// ends `success`. Says which on stderr; exit 4 when the task had already
    /// ended (its status is said). With --task or --label instead of an id,
    /// cancels every unfinished task whose record matches (all filters
    /// given) and prints the count; --campaign cancels a broadcast campaign.
    #[command(after_help = EXIT_CODES)]
    Cancel {
        /// The task id.
        #[arg(required_unless_present_any = ["task_name", "labels", "campaign"], conflicts_with_all = ["task_name", "labels", "campaign"])]
        task_id: Option<String>,
        /// Every unfinished task of this name.
        #[arg(long = "task")]
        task_name: Option<String>,
        /// Every unfinished task sent with this label, `key=value` (repeatable: all must match).
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// A broadcast campaign (as `producer broadcast cancel`).
        #[arg(long, conflicts_with_all = ["task_name", "labels"])]
        campaign: Option<String>,
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
        /// Print the counts as one JSON object.
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
    /// Cron schedules: list them with their next tick, pause, resume.
    #[command(subcommand, after_help = EXIT_CODES)]
    Schedules(courier::schedule::cli::SchedulesCommand),
    /// Prints a shell completion script.
    #[command(after_help = EXIT_CODES)]
    Completions(Completions),
}

/// When a sent task is due (neither: now).
#[derive(Debug, Args)]
#[group(multiple = false)]
struct WhenArgs {
    /// Run it after this long: 10m, 1h30m, 45s.
    #[arg(long = "in", value_parser = parse_delay)]
    delay: Option<Duration>,
    /// Run it at this time, RFC 3339: 2026-12-01T09:00:00Z.
    #[arg(long, value_parser = parse_at)]
    at: Option<SystemTime>,
}

impl WhenArgs {
    fn due(&self) -> Option<SystemTime> {
        self.at.or_else(|| self.delay.map(|d| SystemTime::now() + d))
    }
}

fn parse_delay(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|_| format!("{text:?} is not a duration such as 10m, 1h30m or 45s"))
}

fn parse_at(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|_| format!("{text:?} is not an RFC 3339 time such as 2026-12-01T09:00:00Z"))
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
    let outcome = match Cli::parse().command {
        Command::Tasks { json } => list_tasks(json),
        Command::Send { task, kwargs, id, labels, wait, json, when } => {
            send(&task, &kwargs, id, &labels, (wait, when.due()), json).await
        }
        Command::Result { task_id, watch: false } => result(&task_id).await,
        Command::Result { task_id, watch: true } => watch(&task_id).await,
        Command::Cancel { task_id: Some(task_id), .. } => cancel(&task_id).await,
        Command::Cancel { campaign: Some(id), .. } => {
            broadcast(courier::campaign::cli::BroadcastCommand::Cancel { id }).await
        }
        Command::Cancel { task_name, labels, .. } => cancel_matching(task_name, labels).await,
        Command::DeadLetters { limit, filter } => list_dead_letters(limit.get(), filter.into_filter(None)).await,
        Command::Replay { task_id: Some(task_id), filter, json, .. } => {
            replay_one(&task_id, filter.into_filter(Some(task_id.clone())), json).await
        }
        Command::Replay { task_id: None, filter, json, .. } => replay_all(filter.into_filter(None), json).await,
        Command::Governor { json } => governor(json).await,
        Command::Broadcast(command) => broadcast(command).await,
        Command::Schedules(command) => schedules(command).await,
        Command::Completions(completions) => {
            completions.print::<Cli>();
            Ok(Exit::Ok)
        }
    };
    outcome.unwrap_or_else(|exit| exit).into()
}

async fn broadcast(command: courier::campaign::cli::BroadcastCommand) -> Outcome {
    let settings = settings()?;
    match courier::campaign::cli::run(&settings, command).await {
        Ok(()) => Ok(Exit::Ok),
        Err((exit, problem)) => Err(fail(exit, problem)),
    }
}

async fn schedules(command: courier::schedule::cli::SchedulesCommand) -> Outcome {
    let settings = settings()?;
    match courier::schedule::cli::run(&settings, command).await {
        Ok(()) => Ok(Exit::Ok),
        Err((exit, problem)) => Err(fail(exit, problem)),
    }
}

async fn governor(json: bool) -> Outcome {
    let settings = settings()?;
    let (bot_id, status) =
        courier::producer::flood_status::read(&settings).await.map_err(|err| fail(Exit::Unavailable, err))?;
    let limits = &settings.telegram.limits;
    if json {
        println!("{}", courier::producer::flood_status::json(bot_id, limits, &status));
    } else {
        print!("{}", courier::producer::flood_status::render(bot_id, limits, &status));
    }
    Ok(Exit::Ok)
}

/// What a command returns: its exit, or an early one (already explained on stderr).
type Outcome = Result<Exit, Exit>;

fn fail(exit: impl Into<Exit>, problem: impl std::fmt::Display) -> Exit {
    eprintln!("producer: {problem}");
    exit.into()
}

fn settings() -> Result<Settings, Exit> {
    Settings::load().map_err(|err| fail(Exit::Usage, err))
}

async fn connect() -> Result<(Settings, Producer), Exit> {
    let settings = settings()?;
    let producer = Producer::connect(&settings).await.map_err(|err| fail(&err, &err))?;
    Ok((settings, producer))
}

fn list_tasks(json: bool) -> Outcome {
    let registry = Registry::from_inventory().map_err(|err| fail(Exit::Usage, err))?;
    let listed = listing::describe(&registry);
    if json {
        print_json(&listed);
    } else {
        print_text(&listing::render(&listed));
    }
    Ok(Exit::Ok)
}

async fn send(
    task: &str,
    kwargs: &str,
    id: Option<String>,
    labels: &[(String, String)],
    (wait, due): (Option<Duration>, Option<SystemTime>),
    json: bool,
) -> Outcome {
    let registry = Registry::from_inventory().map_err(|err| fail(Exit::Usage, err))?;
    let Some(def) = registry.get(task) else {
        let known = registry.names().join(", ");
        return Err(fail(Exit::Usage, format!("no task is registered as {task:?}; known tasks: {known}")));
    };
    let envelope = envelope_from_json(id.unwrap_or_else(di::new_task_id), task, kwargs, labels)
        .map_err(|problem| fail(Exit::Usage, problem))?;
    // Before connecting: a refused id or label writes nothing anywhere.
    di::validate_task_id(&envelope.task_id)
        .and_then(|()| di::validate_labels(&envelope.labels))
        .map_err(|err| fail(Exit::Usage, err))?;
    def.check_args(&envelope)
        .map_err(|err| fail(Exit::Usage, format!("{task}: {err}; `producer tasks` lists its arguments")))?;
    let (_, producer) = connect().await?;
    let id = &envelope.task_id;
    let lane = Some(def.options.lane);
    let published = match due {
        Some(due) => producer.enqueue_envelope_at(&envelope, lane, due).await,
        None => producer.enqueue_envelope(&envelope, lane).await,
    };
    let duplicate = match published {
        Ok(published) => published == Published::Duplicate,
        Err(err) => return Err(fail(&err, &err)),
    };
    if duplicate {
        eprintln!("producer: duplicate: task {id} was sent before with these arguments; nothing new was queued");
    }
    if !json {
        println!("{id}");
    }
    let Some(timeout) = wait else {
        if json {
            print_json_line(&serde_json::json!({ "task_id": id, "duplicate": duplicate, "record": null }));
        }
        return Ok(Exit::Ok);
    };
    let record = match producer.wait(id, timeout).await {
        Ok(record) => record,
        Err(ProducerError::Timeout { .. }) => {
            let waited = humantime::format_duration(timeout);
            return Err(fail(Exit::Timeout, format!("no final result for task {id} within {waited}")));
        }
        Err(err) => return Err(fail(&err, &err)),
    };
    if json {
        print_json(&serde_json::json!({ "task_id": id, "duplicate": duplicate, "record": record }));
        Ok(record_exit(&record))
    } else {
        Ok(print_record(&record))
    }
}

async fn result(task_id: &str) -> Outcome {
    let (settings, producer) = connect().await?;
    match producer.result(task_id).await {
        Ok(Some(record)) => Ok(print_record(&record)),
        Ok(None) => {
            let ttl = humantime::format_duration(settings.redis.result_ttl);
            Err(fail(Exit::NotFound, format!("no record for task {task_id} (never sent, or expired after {ttl})")))
        }
        Err(err) => Err(fail(&err, &err)),
    }
}

/// Follows a task's progress until its record is final, then prints it.
async fn watch(task_id: &str) -> Outcome {
    let (_, producer) = connect().await?;
    let progress = courier::cli::output::Progress::stderr();
    loop {
        match producer.result(task_id).await {
            Ok(Some(record)) if record.status.is_final() => {
                progress.clear();
                return Ok(print_record(&record));
            }
            Ok(record) => {
                let status = record.map_or("not started", |r| r.status.name());
                let line = match producer.progress(task_id).await {
                    Ok(Some(p)) => {
                        let filled = (p.fraction * 30.0).round() as usize;
                        format!(
                            "{status} [{}{}] {:.0}% {}",
                            "#".repeat(filled),
                            "-".repeat(30 - filled.min(30)),
                            p.fraction * 100.0,
                            p.message
                        )
                    }
                    _ => status.to_owned(),
                };
                progress.set(&line);
            }
            Err(err) => return Err(fail(&err, &err)),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn cancel(task_id: &str) -> Outcome {
    let (_, producer) = connect().await?;
    match producer.cancel(task_id).await {
        Ok(None) => {
            eprintln!("task {task_id}: cancelled (a running task is told to stop)");
            Ok(Exit::Ok)
        }
        Ok(Some(status)) => Err(fail(Exit::NotFound, format!("task {task_id} already ended: {}", status.name()))),
        Err(err) => Err(fail(&err, &err)),
    }
}

async fn cancel_matching(task_name: Option<String>, labels: Vec<(String, String)>) -> Outcome {
    let (_, producer) = connect().await?;
    match producer.cancel_matching(&courier::CancelFilter { task_name, labels, campaign: None }).await {
        Ok(n) => {
            println!("{n}");
            eprintln!("cancelled {n} unfinished task(s) (running ones are told to stop)");
            Ok(Exit::Ok)
        }
        Err(err) => Err(fail(&err, &err)),
    }
}

/// Prints the record as JSON; a failed task is [`Exit::Failed`].
fn print_record(record: &ResultRecord) -> Exit {
    print_json(record);
    record_exit(record)
}

fn record_exit(record: &ResultRecord) -> Exit {
    if record.status == TaskStatus::Failed { Exit::Failed } else { Exit::Ok }
}

async fn list_dead_letters(limit: usize, filter: Filter) -> Outcome {
    let (settings, producer) = connect().await?;
    let letters = dead_letters::list(producer.publisher().jetstream(), &settings.nats, &filter, limit)
        .await
        .map_err(|err| fail(Exit::Unavailable, err))?;
    letters.iter().for_each(print_json_line);
    Ok(Exit::Ok)
}

async fn replay_one(task_id: &str, filter: Filter, json: bool) -> Outcome {
    let (settings, producer) = connect().await?;
    let letter = dead_letters::replay_newest(&producer, &settings.nats, &filter).await;
    match letter {
        Ok(Some(letter)) => {
            if !json {
                println!("{task_id}: back in the queue (was dead letter {}: {})", letter.sequence, letter.reason);
            }
            print_counts(1, 1, 0, json);
            Ok(Exit::Ok)
        }
        Ok(None) => Err(fail(Exit::NotFound, format!("no dead letter for task {task_id}"))),
        Err(err) => Err(fail(Exit::Unavailable, err)),
    }
}

async fn replay_all(filter: Filter, json: bool) -> Outcome {
    let (settings, producer) = connect().await?;
    let counts = dead_letters::replay_matching(&producer, &settings.nats, &filter)
        .await
        .map_err(|err| fail(Exit::Unavailable, err))?;
    print_counts(counts.matched, counts.replayed, counts.failed, json);
    Ok(if counts.failed > 0 { Exit::Failed } else { Exit::Ok })
}

fn print_counts(matched: u64, replayed: u64, failed: u64, json: bool) {
    if json {
        print_json_line(&serde_json::json!({ "matched": matched, "replayed": replayed, "failed": failed }));
    } else {
        println!("matched {matched}, replayed {replayed}, failed {failed}");
    }
}
