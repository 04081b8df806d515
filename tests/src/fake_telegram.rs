//! A fake Telegram Bot API on loopback: records every request and answers
//! like Telegram, or with a scripted reply (a 429 with `retry_after`, say).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Request {
    /// The token from the path (`/bot<TOKEN>/<method>`).
    pub token: String,
    /// The method, lower-cased (`sendmessage`).
    pub method: String,
    /// The JSON body.
    pub body: Value,
}

#[derive(Debug, Default)]
struct Inner {
    requests: Vec<Request>,
    /// Replies to use instead of the default, per lower-cased method.
    scripted: HashMap<String, VecDeque<(StatusCode, Value)>>,
    next_message_id: i64,
}

/// Handle to a running fake; dropping it does not stop the server (the
/// test's runtime does).
#[derive(Debug, Clone)]
pub struct FakeTelegram {
    /// Base URL to use as `telegram.api_url`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeTelegram {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new().route("/{bot}/{method}", post(handle)).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr: SocketAddr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url: format!("http://{addr}/"), inner }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// The `sendMessage` requests so far.
    pub fn sent_messages(&self) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.method == "sendmessage").collect()
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn handle(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((bot, method)): Path<(String, String)>,
    body: Option<Json<Value>>,
) -> (StatusCode, Json<Value>) {
    let method = method.to_ascii_lowercase();
    let body = body.map_or(Value::Null, |Json(v)| v);
    let mut inner = inner.lock().unwrap_or_else(PoisonError::into_inner);
    inner.requests.push(Request {
        token: bot.trim_start_matches("bot").to_owned(),
        method: method.clone(),
        body: body.clone(),
    });
    if let Some((status, reply)) = inner.scripted.get_mut(&method).and_then(VecDeque::pop_front) {
        return (status, Json(reply));
    }
    let result = match method.as_str() {
        "getme" => json!({"id": 1, "is_bot": true, "first_name": "Courier", "username": "courier_test_bot",
                          "can_join_groups": false, "can_read_all_group_messages": false,
                          "supports_inline_queries": false, "can_connect_to_business": false, "has_main_web_app": false}),
        "sendmessage" => {
            inner.next_message_id += 1;
            json!({"message_id": inner.next_message_id, "date": 1_700_000_000,
                   "chat": {"id": body["chat_id"], "type": "private", "first_name": "Test"}, "text": body["text"]})
        }
        "getupdates" => json!([]),
        _ => json!(true),
    };
    (StatusCode::OK, Json(json!({"ok": true, "result": result})))
}
