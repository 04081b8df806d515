//! `producer broadcast ...`: the campaign commands.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use settings::Settings;

use super::recipients::Recipients;
use super::{CampaignError, CampaignSpec, Campaigns, Counters};
use crate::cli::Exit;

/// A broadcast campaign: one task to many chats at Telegram's limit.
#[derive(Debug, Subcommand)]
pub enum BroadcastCommand {
    /// Creates a campaign, imports its recipients and publishes them.
    ///
    /// Prints progress on stderr and the campaign id alone on the last line
    /// of stdout. Starting the same --id again (after a crash) resumes the
    /// import and the fan-out; nothing is sent twice.
    Start(StartArgs),
    /// Shows a campaign's status and counters (--json for scripts).
    Status {
        /// The campaign id.
        id: String,
        /// One JSON object: status, counters by outcome, total, eta_seconds.
        #[arg(long)]
        json: bool,
        /// Keep showing until the campaign ends (a terminal gets a bar).
        #[arg(long)]
        watch: bool,
    },
    /// Pauses a campaign: no worker sends another of its messages.
    Pause {
        /// The campaign id.
        id: String,
    },
    /// Resumes a paused campaign (or a fan-out cut short by a crash).
    Resume {
        /// The campaign id.
        id: String,
    },
    /// Cancels a campaign: recipients not yet reached become cancelled.
    Cancel {
        /// The campaign id.
        id: String,
    },
    /// Every recipient's outcome, or only the dead chats.
    ///
    /// Without --csv: the counters and the dead chats (blocked,
    /// deactivated, kicked, not found), one `chat_id reason` per line.
    Report {
        /// The campaign id.
        id: String,
        /// CSV of every recipient: seq,chat_id,status,message_id,reason.
        #[arg(long)]
        csv: bool,
        /// Only the dead chats (with --csv too).
        #[arg(long)]
        dead: bool,
    },
}

/// `broadcast start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The registered task every recipient gets (it takes chat_id), e.g. send_message.
    #[arg(long)]
    task: String,
    /// A CSV file with a chat_id column.
    #[arg(long, conflicts_with = "sql", required_unless_present = "sql")]
    recipients: Option<PathBuf>,
    /// A query on the database whose chat_id column (or only column) lists the chats.
    #[arg(long)]
    sql: Option<String>,
    /// The shared arguments, a JSON object (chat_id is filled in per recipient).
    #[arg(long, default_value = "{}")]
    kwargs: String,
    /// The campaign id (a new one if not given); starting it again resumes it.
    #[arg(long)]
    id: Option<String>,
    /// Send as paid broadcasts (the paid lane, telegram.limits.paid_*).
    #[arg(long)]
    paid: bool,
    /// A task enqueued once per dead chat with chat_id, reason and campaign_id.
    #[arg(long)]
    follow_up: Option<String>,
}

/// What a command ended with: an exit code and what to say on stderr.
pub type Outcome = Result<(), (Exit, String)>;

fn failed(otherwise: Exit) -> impl Fn(CampaignError) -> (Exit, String) {
    move |err| {
        let exit = match err {
            CampaignError::NotFound(_) => Exit::NotFound,
            CampaignError::Invalid(_) | CampaignError::Recipients(_) | CampaignError::Status { .. } => Exit::Usage,
            CampaignError::Conflict(_) => Exit::Conflict,
            CampaignError::Startup(_) | CampaignError::Broker(_) | CampaignError::Db(_) | CampaignError::Publish(_) => {
                Exit::Unavailable
            }
            _ => otherwise,
        };
        (exit, err.to_string())
    }
}

/// Runs one `broadcast` command.
pub async fn run(settings: &Settings, command: BroadcastCommand) -> Outcome {
    let campaigns = Campaigns::connect(settings).await.map_err(failed(Exit::Unavailable))?;
    let terminal = std::io::stderr().is_terminal();
    match command {
        BroadcastCommand::Start(args) => {
            let kwargs: serde_json::Value =
                serde_json::from_str(&args.kwargs).map_err(|e| (Exit::Usage, format!("--kwargs is not JSON: {e}")))?;
            let serde_json::Value::Object(kwargs) = kwargs else {
                return Err((Exit::Usage, "--kwargs must be a JSON object".into()));
            };
            let source = match (args.recipients, args.sql) {
                (Some(path), _) => Recipients::Csv(path),
                (None, Some(sql)) => Recipients::Sql(sql),
                (None, None) => return Err((Exit::Usage, "--recipients FILE or --sql QUERY".into())),
            };
            let lane = if args.paid { di::Lane::Paid } else { di::Lane::Bulk };
            // Said first: an import cut short is resumed with this id.
            let id = args.id.unwrap_or_else(super::new_id);
            eprintln!("campaign {id}: importing recipients (run the same start --id {id} to resume)");
            let spec = CampaignSpec { id: Some(id), task_name: args.task, kwargs, lane, follow_up: args.follow_up };
            let campaign = campaigns.create(spec, &source).await.map_err(failed(Exit::Failed))?;
            eprintln!("campaign {}: recipients imported; publishing", campaign.id);
            let fan_out = campaigns.fan_out(&campaign.id, |n| progress(terminal, &format!("published {n}"))).await;
            let fan_out = fan_out.map_err(failed(Exit::Failed))?;
            end_progress(terminal);
            eprintln!("published {} (the stream had {} already)", fan_out.published, fan_out.duplicates);
            println!("{}", campaign.id);
        }
        BroadcastCommand::Status { id, json, watch } => loop {
            let (campaign, counters) = campaigns.status(&id).await.map_err(failed(Exit::Failed))?;
            let eta = eta_seconds(settings, &counters, campaign.lane);
            let ended = matches!(campaign.status, super::CampaignStatus::Done | super::CampaignStatus::Cancelled);
            if json {
                let value = serde_json::json!({
                    "id": campaign.id, "status": campaign.status, "task": campaign.task_name,
                    "lane": campaign.lane.name(), "total": counters.total, "counters": counters.by_status,
                    "eta_seconds": eta,
                });
                println!("{value}");
            } else if watch && terminal {
                progress(true, &bar(&counters, campaign.status.name(), eta));
            } else {
                println!("{}", bar(&counters, campaign.status.name(), eta));
            }
            if !watch || ended {
                end_progress(watch && terminal && !json);
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        },
        BroadcastCommand::Pause { id } => {
            campaigns.pause(&id).await.map_err(failed(Exit::Failed))?;
            eprintln!("campaign {id} paused");
        }
        BroadcastCommand::Resume { id } => {
            let fan_out = campaigns
                .resume(&id, |n| progress(terminal, &format!("published {n}")))
                .await
                .map_err(failed(Exit::Failed))?;
            end_progress(terminal);
            eprintln!("campaign {id} running; published {} again", fan_out.published);
        }
        BroadcastCommand::Cancel { id } => {
            let cancelled = campaigns.cancel(&id).await.map_err(failed(Exit::Failed))?;
            eprintln!("campaign {id} cancelled; {cancelled} recipients not reached");
            // Its tasks already running are told to stop, as a cancel by id
            // tells one; those still queued end `cancelled` when a worker
            // drops their messages.
            let unavailable = |err: crate::producer::ProducerError| (Exit::Unavailable, err.to_string());
            let producer = crate::producer::Producer::connect(settings).await.map_err(unavailable)?;
            let filter = crate::producer::CancelFilter { campaign: Some(id.clone()), ..Default::default() };
            let stopping = producer.cancel_matching(&filter).await.map_err(unavailable)?;
            eprintln!("campaign {id}: {stopping} running task(s) told to stop");
        }
        BroadcastCommand::Report { id, csv, dead } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut broken = None;
            if csv {
                let _ = writeln!(out, "{}", super::store::ReportRow::CSV_HEADER);
            } else {
                let (campaign, counters) = campaigns.status(&id).await.map_err(failed(Exit::Failed))?;
                let _ = writeln!(out, "{}", bar(&counters, campaign.status.name(), None));
                let _ = writeln!(out, "dead chats ({}):", counters.dead());
            }
            let only_dead = dead || !csv;
            campaigns
                .report(&id, only_dead, |row| {
                    let written = if csv {
                        writeln!(out, "{}", row.csv())
                    } else {
                        writeln!(out, "{} {}", row.chat_id, row.status)
                    };
                    if let Err(err) = written {
                        broken.get_or_insert(err);
                    }
                })
                .await
                .map_err(failed(Exit::Failed))?;
            if let Some(err) = broken.or_else(|| out.flush().err()) {
                return Err((Exit::Failed, format!("writing the report: {err}")));
            }
        }
    }
    Ok(())
}

/// Seconds until the outstanding recipients are sent at the rate the
/// governor gives the campaign's lane (the global rate less the interactive
/// reserve, or the paid rate).
pub(crate) fn eta_seconds(settings: &Settings, counters: &Counters, lane: di::Lane) -> Option<f64> {
    let outstanding = counters.outstanding() as f64;
    let limits = &settings.telegram.limits;
    let rate = match lane {
        di::Lane::Paid => limits.paid_per_second,
        _ => limits.global_per_second * (1.0 - limits.interactive_reserve),
    };
    (rate > 0.0).then(|| (outstanding / rate).ceil())
}

fn bar(counters: &Counters, status: &str, eta: Option<f64>) -> String {
    let finished = counters.total - counters.outstanding();
    let share = if counters.total == 0 { 1.0 } else { finished as f64 / counters.total as f64 };
    let filled = (share * 30.0).round() as usize;
    let mut line = format!(
        "{status:<9} [{}{}] {finished}/{} sent {} dead {} failed {} cancelled {}",
        "#".repeat(filled),
        "-".repeat(30 - filled.min(30)),
        counters.total,
        counters.get("sent"),
        counters.dead(),
        counters.get("failed"),
        counters.get("cancelled"),
    );
    if let Some(eta) = eta.filter(|e| *e > 0.0) {
        line.push_str(&format!(" eta {}", humantime::format_duration(Duration::from_secs(eta as u64))));
    }
    line
}

/// A status line on stderr, overwritten in place; nothing into a pipe.
fn progress(terminal: bool, text: &str) {
    if terminal {
        crate::cli::output::Progress::stderr().set(text);
    }
}

fn end_progress(terminal: bool) {
    if terminal {
        eprintln!();
    }
}
