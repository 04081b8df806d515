//! [`Campaigns`]: create, import, fan out, pause, resume, cancel, status
//! and report, over the database and NATS of the settings.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::{StreamExt, stream::FuturesUnordered};
use settings::Settings;
use sqlx::AnyPool;

use super::recipients::{self, Recipients};
use super::{CAMPAIGN_LABEL, Campaign, CampaignError, CampaignStatus, Counters, RECIPIENT_LABEL, ReportRow, store};
use crate::broker;
use crate::broker::publish::{Published, Publisher};

/// Publishes in flight at once during a fan-out.
const IN_FLIGHT: usize = 256;
/// Recipients fetched per fan-out page.
const FAN_OUT_PAGE: i64 = 1_000;

/// What a new campaign is.
#[derive(Debug, Clone)]
pub struct CampaignSpec {
    /// Its id; a new one when `None`. Starting an id again resumes it.
    pub id: Option<String>,
    /// The registered task every recipient gets (it takes a `chat_id`).
    pub task_name: String,
    /// The shared arguments, a JSON object.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
    /// The lane (`bulk` unless said otherwise; `paid` for paid broadcasts).
    pub lane: di::Lane,
    /// A task to enqueue once per dead chat, with `chat_id`, `reason` and `campaign_id`.
    pub follow_up: Option<String>,
}

/// What a fan-out did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FanOut {
    /// Messages the stream stored.
    pub published: u64,
    /// Messages the stream already had (a re-run within its duplicate window).
    pub duplicates: u64,
}

/// Campaigns over one database and one NATS.
#[derive(Debug, Clone)]
pub struct Campaigns {
    pool: AnyPool,
    publisher: Publisher,
    nats: settings::NatsSettings,
}

impl Campaigns {
    /// Connects to the database (bringing the campaign tables up to date)
    /// and to NATS (creating the streams if missing).
    pub async fn connect(settings: &Settings) -> Result<Self, CampaignError> {
        let db = di::SqlxDb::connect(&settings.database).await?;
        let pool = di::Db::pool(&db).clone();
        super::migrator().run(&pool).await?;
        let client = broker::connect(&settings.nats, "courier-campaigns").await?;
        broker::ensure_streams(&async_nats::jetstream::new(client.clone()), &settings.nats).await?;
        Ok(Self::new(pool, Publisher::new(client, settings.nats.clone()), settings.nats.clone()))
    }

    /// Campaigns over existing parts (the schema must be up to date).
    pub fn new(pool: AnyPool, publisher: Publisher, nats: settings::NatsSettings) -> Self {
        Self { pool, publisher, nats }
    }

    /// The database pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Creates the campaign (or finds it, when the id exists with the same
    /// task and arguments) and imports every recipient of `source`; then it
    /// is `running`. Returns it; [`Campaigns::fan_out`] publishes.
    pub async fn create(&self, spec: CampaignSpec, source: &Recipients) -> Result<Campaign, CampaignError> {
        let registry = di::Registry::from_inventory().map_err(|e| CampaignError::Invalid(e.to_string()))?;
        if registry.get(&spec.task_name).is_none() {
            return Err(CampaignError::Invalid(format!("no task is registered as {:?}", spec.task_name)));
        }
        if let Some(follow_up) = &spec.follow_up
            && registry.get(follow_up).is_none()
        {
            return Err(CampaignError::Invalid(format!("no task is registered as {follow_up:?} (--follow-up)")));
        }
        if spec.kwargs.contains_key("chat_id") {
            return Err(CampaignError::Invalid("--kwargs must not hold chat_id: each recipient's is filled in".into()));
        }
        // The arguments every recipient will get, checked once here rather
        // than failing a million times in the workers.
        let sample = Self::envelope(&spec.task_name, "sample:1", &spec.kwargs, 1)?;
        if let Some(def) = registry.get(&spec.task_name) {
            def.check_args(&sample).map_err(|e| {
                CampaignError::Invalid(format!("{}: arguments do not fit the task: {}", spec.task_name, e.0))
            })?;
        }
        let id = spec.id.clone().unwrap_or_else(super::new_id);
        super::validate_id(&id)?;
        let wanted = Campaign {
            id: id.clone(),
            task_name: spec.task_name,
            kwargs: spec.kwargs,
            lane: spec.lane,
            status: CampaignStatus::Draft,
            follow_up: spec.follow_up,
            imported: false,
            generation: 0,
            created_at: store::now(),
            started_at: None,
            finished_at: None,
        };
        let stored = store::create(&self.pool, &wanted).await?;
        if (&stored.task_name, &stored.kwargs, stored.lane) != (&wanted.task_name, &wanted.kwargs, wanted.lane) {
            return Err(CampaignError::Conflict(id));
        }
        if !stored.imported {
            if let Recipients::Sql(query) = source {
                store::import_query(&self.pool, &id, query).await?;
            } else {
                let pool = self.pool.clone();
                recipients::for_each_page(source, Some(&self.pool), |page| {
                    let (pool, id) = (pool.clone(), id.clone());
                    async move { store::add_recipients(&pool, &id, &page).await.map(drop) }
                })
                .await?;
            }
            store::start(&self.pool, &id).await?;
        }
        store::load(&self.pool, &id).await
    }

    /// Publishes every recipient of a running campaign that needs a
    /// message, page by page: each page is marked `queued` in the current
    /// generation (and recorded as the page being published) first, then
    /// published. First it publishes again the page a crash may have cut
    /// short, under unchanged message ids (the stream drops the copies it
    /// has; workers drop any copy that is not its row's live one). Stops when the campaign stops running or
    /// is resumed by another fan-out (a new generation).
    pub async fn fan_out(&self, id: &str, mut progress: impl FnMut(u64)) -> Result<FanOut, CampaignError> {
        let mut done = FanOut::default();
        let campaign = store::load(&self.pool, id).await?;
        if campaign.status != CampaignStatus::Running {
            return Ok(done);
        }
        let (rows, (first, last)) = store::interrupted_page(&self.pool, id).await?;
        if last > 0 {
            self.publish_rows(&campaign, &rows, &mut done).await?;
            store::page_published(&self.pool, id, first, last).await?;
        }
        let mut last_empty_pass: Option<Instant> = None;
        loop {
            let mut after = 0;
            let mut found = false;
            loop {
                let current = store::load(&self.pool, id).await?;
                if current.status != CampaignStatus::Running || current.generation != campaign.generation {
                    return Ok(done);
                }
                let page = store::take_page(&self.pool, id, after, FAN_OUT_PAGE, campaign.generation).await?;
                let (Some(&(first, _)), Some(&(last, _))) = (page.first(), page.last()) else { break };
                found = true;
                let rows: Vec<(i64, i64, i64)> =
                    page.iter().map(|&(seq, chat)| (seq, chat, campaign.generation)).collect();
                self.publish_rows(&campaign, &rows, &mut done).await?;
                store::page_published(&self.pool, id, first, last).await?;
                progress(done.published + done.duplicates);
                after = last;
            }
            // A pause and resume during this pass may have parked rows behind
            // it: look again until a pass a second apart finds nothing.
            match (found, last_empty_pass) {
                (true, _) => last_empty_pass = None,
                (false, Some(at)) if at.elapsed() >= Duration::from_secs(1) => break,
                (false, Some(_)) => {}
                (false, None) => last_empty_pass = Some(Instant::now()),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let _ = store::finish_if_complete(&self.pool, id).await?;
        Ok(done)
    }

    async fn publish_rows(
        &self,
        campaign: &Campaign,
        rows: &[(i64, i64, i64)],
        done: &mut FanOut,
    ) -> Result<(), CampaignError> {
        let published = self.publish_page(campaign, rows).await?;
        done.published += published.published;
        done.duplicates += published.duplicates;
        Ok(())
    }

    async fn publish_page(&self, campaign: &Campaign, page: &[(i64, i64, i64)]) -> Result<FanOut, CampaignError> {
        let subject = broker::lane_subject(&self.nats, campaign.lane);
        let mut pending = FuturesUnordered::new();
        let mut done = FanOut::default();
        for &(seq, chat_id, generation) in page {
            let task_id = super::task_id(&campaign.id, chat_id);
            let mut envelope = Self::envelope(&campaign.task_name, &task_id, &campaign.kwargs, chat_id)?;
            let labels = [
                (CAMPAIGN_LABEL, campaign.id.clone()),
                (RECIPIENT_LABEL, seq.to_string()),
                ("lane", campaign.lane.name().to_owned()),
            ];
            let mut headers = HeaderMap::new();
            for (key, value) in labels {
                envelope.labels.insert(key.to_owned(), value.into());
            }
            headers.insert(super::CAMPAIGN_HEADER, campaign.id.as_str());
            headers.insert(super::RECIPIENT_HEADER, seq.to_string().as_str());
            headers.insert("lane", campaign.lane.name());
            let bytes = envelope.to_msgpack().map_err(|e| CampaignError::Invalid(e.0))?;
            // The row's generation: a resume republishes parked recipients,
            // whose first messages the stream may still remember, and the
            // workers drop any copy but this one.
            let message_id = super::message_id(&task_id, generation);
            let publisher = self.publisher.clone();
            let subject = subject.clone();
            pending.push(async move { publisher.send(subject, &message_id, headers, Bytes::from(bytes)).await });
            if pending.len() >= IN_FLIGHT
                && let Some(result) = pending.next().await
            {
                count(&mut done, result?);
            }
        }
        while let Some(result) = pending.next().await {
            count(&mut done, result?);
        }
        Ok(done)
    }

    /// The envelope of one recipient's task: the shared arguments and its chat.
    fn envelope(
        task_name: &str,
        task_id: &str,
        kwargs: &serde_json::Map<String, serde_json::Value>,
        chat_id: i64,
    ) -> Result<di::Envelope, CampaignError> {
        let mut envelope =
            di::Envelope::new(task_id.to_owned(), task_name, &()).map_err(|e| CampaignError::Invalid(e.to_string()))?;
        for (key, value) in kwargs {
            let value = rmpv::ext::to_value(value).map_err(|e| CampaignError::Invalid(format!("{key}: {e}")))?;
            envelope.kwargs.insert(key.clone(), value);
        }
        envelope.kwargs.insert("chat_id".into(), chat_id.into());
        Ok(envelope)
    }

    /// Pauses a running campaign: no worker sends another of its messages.
    pub async fn pause(&self, id: &str) -> Result<(), CampaignError> {
        self.change(id, &[CampaignStatus::Running], CampaignStatus::Paused, "pause").await
    }

    /// Resumes a paused campaign and publishes its pending recipients again.
    pub async fn resume(&self, id: &str, progress: impl FnMut(u64)) -> Result<FanOut, CampaignError> {
        let campaign = store::load(&self.pool, id).await?;
        // Running already: a fan-out cut short (a crash) goes on.
        if campaign.status != CampaignStatus::Running {
            self.change(id, &[CampaignStatus::Paused], CampaignStatus::Running, "resume").await?;
        }
        self.fan_out(id, progress).await
    }

    /// Cancels a campaign: recipients not yet reached become `cancelled`.
    /// Cancelling again finishes a cancel that a crash cut short.
    pub async fn cancel(&self, id: &str) -> Result<u64, CampaignError> {
        use CampaignStatus::{Cancelled, Draft, Paused, Running};
        self.change(id, &[Draft, Running, Paused, Cancelled], Cancelled, "cancel").await?;
        store::cancel_outstanding(&self.pool, id).await
    }

    async fn change(
        &self,
        id: &str,
        from: &[CampaignStatus],
        to: CampaignStatus,
        action: &'static str,
    ) -> Result<(), CampaignError> {
        if store::transition(&self.pool, id, from, to).await? {
            return Ok(());
        }
        let status = store::load(&self.pool, id).await?.status;
        Err(CampaignError::Status { id: id.to_owned(), status: status.name(), action })
    }

    /// The newest `limit` campaigns' ids, newest first.
    pub async fn recent(&self, limit: i64) -> Result<Vec<String>, CampaignError> {
        let rows = sqlx::query("SELECT id FROM courier_campaigns ORDER BY created_at DESC, id LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().filter_map(|row| sqlx::Row::try_get::<String, _>(row, 0).ok()).collect())
    }

    /// The campaign and its counters (marking it done when it is).
    pub async fn status(&self, id: &str) -> Result<(Campaign, Counters), CampaignError> {
        let _ = store::finish_if_complete(&self.pool, id).await?;
        let campaign = store::load(&self.pool, id).await?;
        Ok((campaign, store::counters(&self.pool, id).await?))
    }

    /// Calls `row` for every recipient in order (or only the dead chats),
    /// a page at a time.
    pub async fn report(
        &self,
        id: &str,
        dead_only: bool,
        mut row: impl FnMut(&ReportRow),
    ) -> Result<(), CampaignError> {
        store::load(&self.pool, id).await?;
        let mut after = 0;
        loop {
            let page = store::report_page(&self.pool, id, after, FAN_OUT_PAGE, dead_only).await?;
            let Some(last) = page.last() else { return Ok(()) };
            after = last.seq;
            page.iter().for_each(&mut row);
        }
    }
}

fn count(done: &mut FanOut, published: Published) {
    match published {
        Published::Stored => done.published += 1,
        Published::Duplicate => done.duplicates += 1,
    }
}
