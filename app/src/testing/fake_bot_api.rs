//! A fake Telegram Bot API: serves scripted updates to `getUpdates` (long
//! polling; an offset confirms, and drops for good, every update below it,
//! as Telegram does), records requests and answers like Telegram, or with a
//! scripted reply (a 429 with `retry_after`) or a scripted delay. Started
//! with limits it enforces Telegram's flood rules ([`crate::testing::flood`])
//! and records every accepted message with its time. A test may serve a
//! confirmed update again, as Telegram does to a bot that never confirmed it.
//!
//! The `fake-telegram` binary serves one on a port for load tests and
//! demos, controlled over HTTP (see [`FakeTelegram::start_on`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::testing::flood::{FloodRules, Verdict};
use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::{Value, json};
use settings::TelegramLimits;
use tokio::sync::Notify;

/// One request the fake received (and completed; `getUpdates` is recorded
/// when it arrives, before its long poll).
#[derive(Debug, Clone)]
pub struct Request {
    /// The token from the path (`/bot<TOKEN>/<method>`).
    pub token: String,
    /// The method, lower-cased (`sendmessage`).
    pub method: String,
    /// The JSON body.
    pub body: Value,
    /// When it was answered.
    pub at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    requests: Vec<Request>,
    /// Replies to use instead of the default, per lower-cased method.
    scripted: HashMap<String, VecDeque<(StatusCode, Value)>>,
    /// Delays before the next request of a method is taken in.
    delays: HashMap<String, VecDeque<Duration>>,
    /// Requests of each method waiting out a scripted delay right now.
    in_delay: HashMap<String, usize>,
    /// Updates not yet confirmed by an offset past them.
    updates: Vec<Value>,
    /// Updates confirmed (and dropped), kept for [`FakeTelegram::serve_again`].
    confirmed: Vec<Value>,
    next_update_id: i64,
    next_message_id: i64,
    /// Telegram's limits, when the fake enforces them.
    flood: Option<FloodRules>,
    /// Messages accepted, with the chat and when.
    accepted: Vec<(i64, Value, Instant)>,
    /// Messages accepted in all (`accepted` may have forgotten the oldest).
    accepted_count: u64,
    /// At most this many requests and accepted messages are remembered
    /// (the oldest half is forgotten past it); `None`: all (tests).
    history: Option<usize>,
}

#[derive(Debug, Default)]
struct Shared {
    inner: Mutex<Inner>,
    new_update: Notify,
}

/// Handle to a running fake (it serves until the test's runtime ends).
#[derive(Debug, Clone)]
pub struct FakeTelegram {
    /// Base URL to use as `telegram.api_url`.
    pub url: String,
    shared: Arc<Shared>,
}

impl FakeTelegram {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> Self {
        Self::serve(Shared::default()).await
    }

    /// Starts a fake that enforces `limits` as Telegram does: a message
    /// past them gets `429` with `retry_after` (see `courier::testing::flood`).
    pub async fn start_with_limits(limits: TelegramLimits) -> Self {
        let shared = Shared::default();
        shared.inner.lock().unwrap_or_else(PoisonError::into_inner).flood = Some(FloodRules::new(limits));
        Self::serve(shared).await
    }

    async fn serve(shared: Shared) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        Self::serve_on(listener, shared, false)
    }

    /// Serves on `listener`, enforcing `limits` when given, remembering at
    /// most `history` requests; with `control`, also the control routes:
    /// `GET /_fake/stats`, `POST /_fake/429` (`{"chat_id": 5,
    /// "retry_after": 3}`; no `chat_id`: the whole bot), `POST
    /// /_fake/block`, `/_fake/deactivate` and `/_fake/forget`
    /// (`{"chat_id": 5}`).
    pub fn start_on(listener: tokio::net::TcpListener, limits: Option<TelegramLimits>, history: usize) -> Self {
        let shared = Shared::default();
        {
            let mut inner = shared.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.flood = limits.map(FloodRules::new);
            inner.history = Some(history.max(2));
        }
        Self::serve_on(listener, shared, true)
    }

    fn serve_on(listener: tokio::net::TcpListener, shared: Shared, control: bool) -> Self {
        let shared = Arc::new(shared);
        let mut app = Router::new().route("/{bot}/{method}", post(handle));
        if control {
            app = app.route("/_fake/stats", get(stats)).route("/_fake/{action}", post(steer));
        }
        let app = app.with_state(shared.clone());
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url: format!("http://{addr}/"), shared }
    }

    /// Messages accepted so far, including any no longer remembered.
    pub fn accepted_count(&self) -> u64 {
        self.lock().accepted_count
    }

    /// With limits: runs `f` on the rules (block a chat, inject a 429...).
    ///
    /// # Panics
    /// If the fake was started without limits.
    pub fn rules<T>(&self, f: impl FnOnce(&mut FloodRules) -> T) -> T {
        f(self.lock().flood.as_mut().expect("started with limits"))
    }

    /// 429s answered by the limits so far.
    pub fn too_many(&self) -> u64 {
        self.lock().flood.as_ref().map_or(0, |rules| rules.too_many)
    }

    /// Every accepted message: chat id, text, when.
    pub fn accepted(&self) -> Vec<(i64, Value, Instant)> {
        self.lock().accepted.clone()
    }

    /// Every completed request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// The completed `sendMessage` requests so far.
    pub fn sent_messages(&self) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.method == "sendmessage").collect()
    }

    /// The completed `sendMessage` requests to `chat_id`.
    pub fn sent_to(&self, chat_id: i64) -> Vec<Request> {
        self.sent_messages().into_iter().filter(|r| r.body["chat_id"] == chat_id).collect()
    }

    /// Makes the next call of `method` answer `status` with `body`.
    pub fn script(&self, method: &str, status: u16, body: Value) {
        let status = StatusCode::from_u16(status).expect("valid status");
        self.lock().scripted.entry(method.to_ascii_lowercase()).or_default().push_back((status, body));
    }

    /// Makes the next `method` call answer 429 with `retry_after` seconds.
    pub fn script_rate_limit(&self, method: &str, retry_after: u64) {
        self.script(
            method,
            429,
            json!({"ok": false, "error_code": 429, "description": format!("Too Many Requests: retry after {retry_after}"),
                   "parameters": {"retry_after": retry_after}}),
        );
    }

    /// Makes the next `method` call wait `delay` before it is taken in. A
    /// client that gives up (or dies) meanwhile was never heard: nothing
    /// is recorded, as with a request that never reached Telegram.
    pub fn script_delay(&self, method: &str, delay: Duration) {
        self.lock().delays.entry(method.to_ascii_lowercase()).or_default().push_back(delay);
    }

    /// How many `method` requests are waiting out a scripted delay now.
    pub fn in_delay(&self, method: &str) -> usize {
        self.lock().in_delay.get(&method.to_ascii_lowercase()).copied().unwrap_or(0)
    }

    /// The `getUpdates` requests so far (recorded when received).
    pub fn polls(&self) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.method == "getupdates").collect()
    }

    /// Serves update `update_id` again although it was confirmed, as
    /// Telegram does after a crash that kept the bot from confirming it.
    pub fn serve_again(&self, update_id: i64) {
        let mut inner = self.lock();
        let at = inner.confirmed.iter().position(|u| u["update_id"] == update_id);
        let update = at.map(|at| inner.confirmed.remove(at)).expect("serve_again: no such confirmed update");
        inner.updates.push(update);
        inner.updates.sort_by_key(|u| u["update_id"].as_i64());
        drop(inner);
        self.shared.new_update.notify_waiters();
    }

    /// Queues a text message from a private chat for `getUpdates`; returns
    /// its update id.
    pub fn push_message(&self, chat_id: i64, text: &str) -> i64 {
        let mut inner = self.lock();
        inner.next_update_id += 1;
        inner.next_message_id += 1;
        let update = json!({
            "update_id": inner.next_update_id,
            "message": {
                "message_id": inner.next_message_id, "date": 1_700_000_000,
                "chat": {"id": chat_id, "type": "private", "first_name": "Tester"},
                "from": {"id": chat_id, "is_bot": false, "first_name": "Tester"},
                "text": text,
            }
        });
        inner.updates.push(update);
        let id = inner.next_update_id;
        drop(inner);
        self.shared.new_update.notify_waiters();
        id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((bot, method)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> (StatusCode, Json<Value>) {
    let method = method.to_ascii_lowercase();
    let body = body.map_or(Value::Null, |Json(v)| v);
    let delay = shared
        .inner
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .delays
        .get_mut(&method)
        .and_then(VecDeque::pop_front);
    if let Some(delay) = delay {
        // Counted while waiting; the guard uncounts even if the client goes
        // away and this future is dropped.
        let _waiting = InDelay::enter(shared.clone(), &method);
        tokio::time::sleep(delay).await;
    }
    let request = Request {
        token: bot.trim_start_matches("bot").to_owned(),
        method: method.clone(),
        body: body.clone(),
        at: Instant::now(),
    };
    if method == "getupdates" {
        shared.inner.lock().unwrap_or_else(PoisonError::into_inner).requests.push(request);
        return get_updates(&shared, &body).await;
    }
    let mut inner = shared.inner.lock().unwrap_or_else(PoisonError::into_inner);
    inner.requests.push(request);
    inner.forget_oldest();
    if let Some((status, reply)) = inner.scripted.get_mut(&method).and_then(VecDeque::pop_front) {
        return (status, Json(reply));
    }
    let result = match method.as_str() {
        "getme" => json!({"id": 1, "is_bot": true, "first_name": "Courier", "username": "courier_test_bot",
                          "can_join_groups": false, "can_read_all_group_messages": false,
                          "supports_inline_queries": false, "can_connect_to_business": false, "has_main_web_app": false}),
        "sendmessage" => {
            let chat_id = body["chat_id"].as_i64().unwrap_or(0);
            let paid = body["allow_paid_broadcast"].as_bool().unwrap_or(false);
            if let Some(refused) = inner.flood.as_mut().and_then(|rules| refusal(rules.judge_message(chat_id, paid))) {
                return refused;
            }
            inner.accepted.push((chat_id, body["text"].clone(), Instant::now()));
            inner.accepted_count += 1;
            inner.next_message_id += 1;
            json!({"message_id": inner.next_message_id, "date": 1_700_000_000,
                   "chat": {"id": body["chat_id"], "type": "private", "first_name": "Test"}, "text": body["text"]})
        }
        _ => json!(true),
    };
    (StatusCode::OK, Json(json!({"ok": true, "result": result})))
}

impl Inner {
    fn forget_oldest(&mut self) {
        let Some(most) = self.history else { return };
        for len in [self.requests.len(), self.accepted.len()] {
            if len > most {
                self.requests.drain(..self.requests.len().min(most / 2));
                self.accepted.drain(..self.accepted.len().min(most / 2));
                return;
            }
        }
    }
}

/// `GET /_fake/stats`: what the fake has seen.
async fn stats(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let inner = shared.inner.lock().unwrap_or_else(PoisonError::into_inner);
    let flood = inner.flood.as_ref();
    Json(json!({
        "accepted": inner.accepted_count,
        "too_many": flood.map_or(0, |rules| rules.too_many),
        "paid_accepted": flood.map_or(0, |rules| rules.paid_accepted),
        "limits_enforced": flood.is_some(),
    }))
}

/// `POST /_fake/{429,block,deactivate,forget}`: steers the flood rules.
async fn steer(
    State(shared): State<Arc<Shared>>,
    Path(action): Path<String>,
    body: Option<Json<Value>>,
) -> (StatusCode, Json<Value>) {
    let body = body.map_or(Value::Null, |Json(v)| v);
    let chat = body["chat_id"].as_i64();
    let mut inner = shared.inner.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(rules) = inner.flood.as_mut() else {
        return (StatusCode::CONFLICT, Json(json!({"error": "started without limits"})));
    };
    match (action.as_str(), chat) {
        ("429", Some(chat)) => rules.inject_chat_429(chat, body["retry_after"].as_u64().unwrap_or(1)),
        ("429", None) => rules.inject_global_429(body["retry_after"].as_u64().unwrap_or(1)),
        ("block", Some(chat)) => rules.block(chat),
        ("deactivate", Some(chat)) => rules.deactivate(chat),
        ("forget", Some(chat)) => rules.forget(chat),
        _ => return (StatusCode::BAD_REQUEST, Json(json!({"error": "unknown action or no chat_id"}))),
    }
    (StatusCode::OK, Json(json!({"ok": true})))
}

/// Telegram's answer to a message the rules refuse.
fn refusal(verdict: Verdict) -> Option<(StatusCode, Json<Value>)> {
    let (status, description, parameters) = match verdict {
        Verdict::Accept => return None,
        Verdict::TooMany { retry_after } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too Many Requests: retry after {retry_after}"),
            json!({"retry_after": retry_after}),
        ),
        Verdict::Blocked => (StatusCode::FORBIDDEN, "Forbidden: bot was blocked by the user".to_owned(), Value::Null),
        Verdict::Deactivated => (StatusCode::FORBIDDEN, "Forbidden: user is deactivated".to_owned(), Value::Null),
        Verdict::NotFound => (StatusCode::BAD_REQUEST, "Bad Request: chat not found".to_owned(), Value::Null),
    };
    let mut body = json!({"ok": false, "error_code": status.as_u16(), "description": description});
    if !parameters.is_null() {
        body["parameters"] = parameters;
    }
    Some((status, Json(body)))
}

/// Long polling: answers with the updates at or past `offset`, waiting (at
/// most `timeout` seconds, capped at 2 s to keep tests quick) for one.
async fn get_updates(shared: &Shared, body: &Value) -> (StatusCode, Json<Value>) {
    let offset = body["offset"].as_i64().unwrap_or(0);
    let wait = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0).min(2));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = shared.new_update.notified();
        {
            let mut inner = shared.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let (kept, confirmed): (Vec<Value>, Vec<Value>) =
                std::mem::take(&mut inner.updates).into_iter().partition(|u| u["update_id"].as_i64() >= Some(offset));
            inner.updates = kept;
            inner.confirmed.extend(confirmed);
            if !inner.updates.is_empty() || tokio::time::Instant::now() >= deadline {
                return (StatusCode::OK, Json(json!({"ok": true, "result": inner.updates.clone()})));
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

struct InDelay {
    shared: Arc<Shared>,
    method: String,
}

impl InDelay {
    fn enter(shared: Arc<Shared>, method: &str) -> Self {
        *shared.inner.lock().unwrap_or_else(PoisonError::into_inner).in_delay.entry(method.to_owned()).or_default() +=
            1;
        Self { shared, method: method.to_owned() }
    }
}

impl Drop for InDelay {
    fn drop(&mut self) {
        let mut inner = self.shared.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = inner.in_delay.get_mut(&self.method) {
            *n = n.saturating_sub(1);
        }
    }
}
