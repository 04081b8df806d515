//! Logins, sessions and the CSRF check.
//!
//! A login's session is a random 128-bit id in an HttpOnly, SameSite=Strict
//! cookie, held in this process' memory (a restarted board asks for the
//! password again) and bounded in number. A board without a password (on
//! loopback) keeps no sessions: its cookie is a random id and its CSRF token
//! that id's HMAC under a key of this process, so no request can fill or
//! evict anything. Every POST behind [`guard`] must carry the session's CSRF
//! token as the form field `csrf`, and a browser's `Origin` and
//! `Sec-Fetch-Site` must say the page is the board's own; the checks run
//! before any handler, so no action can forget them. A board without a
//! password also answers only to a loopback `Host` (DNS rebinding).
//!
//! The login form has a token of its own (there is no session yet): the
//! login page sets a short-lived pre-session cookie (`courier_login`, the
//! time it was issued and a random nonce; HttpOnly, SameSite=Strict, path
//! `/login`) and puts that value's HMAC in the form; a login POST without
//! both, or with a token that is not the cookie's, is refused before the
//! password is looked at (double submit, signed: a page of another site can
//! neither read the token nor make one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::Board;
use super::view;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "courier_board";
/// The most sessions held; past it the one nearest its end goes.
const MAX_SESSIONS: usize = 10_000;
/// The largest form a POST may carry.
const MAX_FORM: usize = 64 * 1024;
/// The login form's pre-session cookie.
pub const LOGIN_COOKIE: &str = "courier_login";
/// How long a login form stays good.
const LOGIN_FORM_TTL: Duration = Duration::from_secs(600);

/// Who is acting, for pages and the audit log.
#[derive(Debug, Clone)]
pub struct Session {
    /// `admin` after a password login, `local` on a loopback board without one.
    pub user: &'static str,
    /// The token every form carries.
    pub csrf: String,
    /// A short, non-secret name of the session for the audit log.
    pub label: String,
    expires: Instant,
}

impl Session {
    /// `user (session label)`, for the audit log.
    pub fn who(&self) -> String {
        format!("{} (session {})", self.user, self.label)
    }
}

/// The sessions of this process.
pub struct Sessions {
    ttl: Duration,
    by_id: Mutex<HashMap<String, Session>>,
    /// Login attempts are checked here one at a time; a failed one holds it
    /// a second.
    login_gate: tokio::sync::Mutex<()>,
    /// Keys the CSRF tokens of password-less (local) sessions.
    local_key: ring::hmac::Key,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.by_id.lock().unwrap_or_else(PoisonError::into_inner).len();
        f.debug_struct("Sessions").field("held", &held).finish_non_exhaustive()
    }
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Sessions {
    /// No sessions; each lasts `ttl`.
    pub fn new(ttl: Duration) -> Self {
        let secret = format!("{}{}", random_hex(), random_hex());
        Self {
            ttl,
            by_id: Mutex::new(HashMap::new()),
            login_gate: tokio::sync::Mutex::new(()),
            local_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    /// A password-less session for the cookie value `id`: nothing stored.
    fn local(&self, id: &str) -> Session {
        let tag = ring::hmac::sign(&self.local_key, id.as_bytes());
        let csrf: String = tag.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect();
        Session { user: "local", csrf, label: id.chars().take(8).collect(), expires: Instant::now() + self.ttl }
    }

    /// A new login form's pre-session: the cookie's value (`<issued, Unix
    /// seconds>.<random>`) and the form's token.
    fn login_form(&self) -> (String, String) {
        let value = format!("{}.{}", di::unix_now() as u64, random_hex());
        let token = self.login_token(&value);
        (value, token)
    }

    /// The login form's token for the pre-session cookie `value`: its HMAC
    /// under this process' key (apart from the local sessions' tokens).
    fn login_token(&self, value: &str) -> String {
        let tag = ring::hmac::sign(&self.local_key, format!("login|{value}").as_bytes());
        tag.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// Whether a login POST carries a pre-session cookie this process issued
    /// less than [`LOGIN_FORM_TTL`] ago and that cookie's token.
    fn login_token_ok(&self, cookie: Option<&str>, token: &str) -> bool {
        let Some(value) = cookie else { return false };
        let Some(issued) = value.split_once('.').and_then(|(at, _)| at.parse::<u64>().ok()) else { return false };
        let now = di::unix_now() as u64;
        let fresh = issued <= now + 60 && now.saturating_sub(issued) <= LOGIN_FORM_TTL.as_secs();
        // The token is checked whatever the age, so the time taken says nothing.
        let matches = same(token.as_bytes(), self.login_token(value).as_bytes());
        fresh && matches
    }

    /// Opens a session; returns its id (the cookie's value) and itself.
    fn open(&self, user: &'static str) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            user,
            csrf: random_hex(),
            label: random_hex()[..8].to_owned(),
            expires: Instant::now() + self.ttl,
        };
        let mut all = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        if all.len() >= MAX_SESSIONS {
            let now = Instant::now();
            all.retain(|_, s| s.expires > now);
            if all.len() >= MAX_SESSIONS
                && let Some(oldest) = all.iter().min_by_key(|(_, s)| s.expires).map(|(id, _)| id.clone())
            {
                all.remove(&oldest);
            }
        }
        all.insert(id.clone(), session.clone());
        (id, session)
    }

    fn get(&self, id: &str) -> Option<Session> {
        let mut all = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        match all.get(id) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                all.remove(id);
                None
            }
            None => None,
        }
    }

    fn close(&self, id: &str) {
        self.by_id.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
    }
}

/// The session cookie's value in a request, if any.
fn cookie(headers: &HeaderMap) -> Option<String> {
    cookie_named(headers, SESSION_COOKIE)
}

/// The value of the cookie `wanted` in a request, if any (at most 64 bytes).
fn cookie_named(headers: &HeaderMap, wanted: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == wanted && !value.is_empty() && value.len() <= 64).then(|| value.to_owned())
    })
}

/// The login form's pre-session cookie (`value` empty: deleted).
fn login_cookie(headers: &HeaderMap, value: &str) -> HeaderValue {
    let secure = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let max_age = if value.is_empty() { 0 } else { LOGIN_FORM_TTL.as_secs() };
    let value = format!(
        "{LOGIN_COOKIE}={value}; Path=/login; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// The login form with a new pre-session (its cookie set on the answer).
fn login_form(board: &Board, headers: &HeaderMap, status: StatusCode, error: Option<&str>) -> Response {
    let (value, token) = board.sessions.login_form();
    let mut response = (status, view::login(error, &token)).into_response();
    response.headers_mut().append(header::SET_COOKIE, login_cookie(headers, &value));
    response
}

fn set_cookie(headers: &HeaderMap, id: &str, ttl: Duration) -> HeaderValue {
    // Secure when a TLS proxy in front says the page came over HTTPS.
    let secure = headers.get("x-forwarded-proto").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let value = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        ttl.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("invalid=1"))
}

/// Equal in time whatever the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The form field `name` of a urlencoded body.
pub(crate) fn form_field(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, view::page_bare("Refused", html! { p.error { (why) } })).into_response()
}

/// Whether a `Host` header names this machine's loopback (any port).
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else { return false };
    let name = if host.starts_with('[') {
        host.split(']').next().map(|h| format!("{h}]")).unwrap_or_default()
    } else {
        host.split(':').next().unwrap_or_default().to_owned()
    };
    matches!(name.to_ascii_lowercase().as_str(), "127.0.0.1" | "localhost" | "[::1]")
}

/// A POST a browser says came from another site (`Origin` not this host,
/// or `Sec-Fetch-Site` cross-site); clients that send neither pass.
fn cross_site(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // Browsers that send it say it best (Chromium sends `Origin: null` for a
    // form of a page whose referrer policy hides the referrer).
    if let Some(site) = text("sec-fetch-site") {
        return site != "same-origin" && site != "none";
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, rest)| rest) != Some(host),
        (Some(_), None) => true,
        _ => false,
    }
}

/// In front of every page and action: checks the `Host` (a board without a
/// password answers only to loopback names), finds the session (or sends
/// GETs to the login page and refuses POSTs), and checks every POST's
/// origin and CSRF token.
pub async fn guard(State(board): State<Arc<Board>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    if !board.needs_login() && !loopback_host(&parts.headers) {
        audit("-", "refused", &path, "Host is not a loopback name (no password set)");
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            "This board has no password: open it as 127.0.0.1 or localhost.",
        );
    }
    let id = cookie(&parts.headers);
    let mut new_cookie = None;
    let session = if board.needs_login() {
        match id.as_deref().and_then(|id| board.sessions.get(id)) {
            Some(session) => session,
            None if parts.method == Method::POST => {
                audit("-", "refused", &path, "no session");
                return refuse(StatusCode::FORBIDDEN, "No session: log in first.");
            }
            None => return Redirect::to("/login").into_response(),
        }
    } else {
        match id {
            Some(id) => board.sessions.local(&id),
            None if parts.method == Method::POST => {
                audit("-", "refused", &path, "no session");
                return refuse(StatusCode::FORBIDDEN, "No session: reload the page first.");
            }
            None => {
                let id = random_hex();
                new_cookie = Some(set_cookie(&parts.headers, &id, board.settings.board.session_ttl));
                board.sessions.local(&id)
            }
        }
    };
    let body = if parts.method == Method::POST {
        if cross_site(&parts.headers) {
            audit(&session.who(), "refused", &path, "the request came from another site");
            return refuse(StatusCode::FORBIDDEN, "Refused: the request came from another site.");
        }
        let Ok(bytes) = to_bytes(body, MAX_FORM).await else {
            audit(&session.who(), "refused", &path, "form over 64 KiB");
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
        };
        let token = form_field(&bytes, "csrf").unwrap_or_default();
        if !same(token.as_bytes(), session.csrf.as_bytes()) {
            audit(&session.who(), "refused", &path, "missing or wrong CSRF token");
            return refuse(StatusCode::FORBIDDEN, "Missing or wrong CSRF token: reload the page and try again.");
        }
        Body::from(bytes)
    } else if parts.method == Method::GET || parts.method == Method::HEAD {
        body
    } else {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "Only GET and POST.");
    };
    parts.extensions.insert(session);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if let Some(cookie) = new_cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// `GET /login`: the form, with a new pre-session cookie and its token.
pub async fn login_page(State(board): State<Arc<Board>>, headers: HeaderMap) -> Response {
    if !board.needs_login() {
        return Redirect::to("/").into_response();
    }
    login_form(&board, &headers, StatusCode::OK, None)
}

/// `POST /login`: the password in the form field `password`, the login
/// form's token in `csrf` (refused without it and its cookie). Attempts are
/// checked one at a time in a task of their own, which logs the outcome and
/// holds the gate a second after a wrong password even if the client has
/// gone: at most one wrong guess a second, each in the audit log.
pub async fn login(State(board): State<Arc<Board>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if !board.needs_login() {
        return Redirect::to("/").into_response();
    }
    if cross_site(&headers) {
        audit("-", "login", "-", "refused: the request came from another site");
        return refuse(StatusCode::FORBIDDEN, "Refused: the request came from another site.");
    }
    let token = form_field(&body, "csrf").unwrap_or_default();
    if !board.sessions.login_token_ok(cookie_named(&headers, LOGIN_COOKIE).as_deref(), &token) {
        audit("-", "login", "-", "refused: missing, expired or wrong login form token");
        return login_form(
            &board,
            &headers,
            StatusCode::FORBIDDEN,
            Some("This login form expired or is not this board's: log in again here."),
        );
    }
    let given = form_field(&body, "password").unwrap_or_default();
    let checking = board.clone();
    let checked = tokio::spawn(async move {
        let _gate = checking.sessions.login_gate.lock().await;
        let expected = checking.settings.board.password.as_ref().map(|p| p.expose().as_bytes()).unwrap_or_default();
        if same(given.as_bytes(), expected) {
            let opened = checking.sessions.open("admin");
            audit(&opened.1.who(), "login", "-", "ok");
            Some(opened)
        } else {
            audit("-", "login", "-", "wrong password");
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
    });
    let Ok(Some((id, _))) = checked.await else {
        return login_form(&board, &headers, StatusCode::UNAUTHORIZED, Some("Wrong password."));
    };
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().append(header::SET_COOKIE, set_cookie(&headers, &id, board.settings.board.session_ttl));
    response.headers_mut().append(header::SET_COOKIE, login_cookie(&headers, ""));
    response
}

/// `POST /logout`.
pub async fn logout(
    State(board): State<Arc<Board>>,
    axum::Extension(session): axum::Extension<Session>,
    headers: HeaderMap,
) -> Response {
    if let Some(id) = cookie(&headers) {
        board.sessions.close(&id);
    }
    audit(&session.who(), "logout", "-", "ok");
    let mut response = Redirect::to("/login").into_response();
    let gone = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(value) = HeaderValue::from_str(&gone) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// One audit line: who did what to which target, and how it ended.
pub fn audit(who: &str, action: &str, target: &str, outcome: &str) {
    tracing::info!(target: "courier::board::audit", who, action, target, outcome, "board action");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others_and_odd_ones_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; courier_board=abc; b=2"));
        assert_eq!(cookie(&headers).as_deref(), Some("abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("courier_board="));
        assert_eq!(cookie(&headers), None);
    }

    #[test]
    fn sessions_expire_and_stay_bounded() {
        let sessions = Sessions::new(Duration::from_millis(1));
        let (id, _) = sessions.open("admin");
        std::thread::sleep(Duration::from_millis(5));
        assert!(sessions.get(&id).is_none(), "expired");
        let sessions = Sessions::new(Duration::from_secs(60));
        for _ in 0..MAX_SESSIONS + 10 {
            sessions.open("local");
        }
        assert_eq!(sessions.by_id.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn local_sessions_store_nothing_and_their_tokens_follow_the_cookie() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (a, b) = (sessions.local("one"), sessions.local("two"));
        assert_eq!(sessions.local("one").csrf, a.csrf, "the same cookie, the same token");
        assert_ne!(a.csrf, b.csrf);
        assert_ne!(Sessions::new(Duration::from_secs(60)).local("one").csrf, a.csrf, "a key per process");
        assert!(sessions.by_id.lock().unwrap().is_empty());
    }

    #[test]
    fn login_form_tokens_belong_to_their_cookie_and_expire() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (value, token) = sessions.login_form();
        assert!(sessions.login_token_ok(Some(&value), &token));
        assert!(!sessions.login_token_ok(None, &token), "no cookie");
        assert!(!sessions.login_token_ok(Some(&value), ""), "no token");
        let (other, _) = sessions.login_form();
        assert!(!sessions.login_token_ok(Some(&other), &token), "another form's cookie");
        assert!(!Sessions::new(Duration::from_secs(60)).login_token_ok(Some(&value), &token), "another process");
        assert_ne!(token, sessions.local(&value).csrf, "not a local session's token");
        let old = format!("{}.{}", di::unix_now() as u64 - LOGIN_FORM_TTL.as_secs() - 5, random_hex());
        assert!(!sessions.login_token_ok(Some(&old), &sessions.login_token(&old)), "expired");
    }

    #[test]
    fn hosts_and_origins() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            headers
        };
        assert!(loopback_host(&with(&[("host", "127.0.0.1:9465")])));
        assert!(loopback_host(&with(&[("host", "localhost")])));
        assert!(loopback_host(&with(&[("host", "[::1]:9465")])));
        assert!(!loopback_host(&with(&[("host", "evil.example:9465")])));
        assert!(!loopback_host(&with(&[("host", "127.0.0.1.evil.example")])));
        assert!(!cross_site(&with(&[("host", "b:1"), ("origin", "http://b:1")])));
        assert!(cross_site(&with(&[("host", "b:1"), ("origin", "http://evil:1")])));
        assert!(cross_site(&with(&[("host", "b:1"), ("sec-fetch-site", "cross-site")])));
        assert!(!cross_site(&with(&[("host", "b:1")])), "curl sends neither");
        assert!(!cross_site(&with(&[("host", "b:1"), ("origin", "null"), ("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&with(&[("host", "b:1"), ("origin", "null")])));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert_eq!(form_field(b"a=1&csrf=x%20y", "csrf").as_deref(), Some("x y"));
    }
}
