//! The board's page frame and small pieces shared by the pages.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::auth::Session;

/// The sections in the navigation bar: (path, title).
const SECTIONS: [(&str, &str); 6] = [
    ("/", "Overview"),
    ("/tasks", "Tasks"),
    ("/dead-letters", "Dead letters"),
    ("/campaigns", "Campaigns"),
    ("/schedules", "Schedules"),
    ("/flood", "Flood control"),
];

/// A page with the navigation bar; `flash` is a one-line notice on top.
pub fn page(title: &str, session: &Session, current: &str, flash: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Courier Board" }
                link rel="stylesheet" href="/assets/board.css";
                script src="/assets/board.js" defer {}
            }
            body {
                header {
                    span.brand { "Courier Board" }
                    nav {
                        @for (path, name) in SECTIONS {
                            a href=(path) class=[(path == current).then_some("current")] { (name) }
                        }
                    }
                    span.who { (session.user) }
                    @if session.user != "local" {
                        (post_button(session, "/logout", "Log out", "link"))
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(flash) = flash {
                        p.flash id="flash" { (flash) }
                    }
                    (body)
                }
            }
        }
    }
}

/// A page without navigation (login, refusals).
pub fn page_bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · Courier Board" }
                link rel="stylesheet" href="/assets/board.css";
            }
            body.bare { main { h1 { (title) } (body) } }
        }
    }
}

/// The login form; `token` is its pre-session's (auth.rs).
pub fn login(error: Option<&str>, token: &str) -> Markup {
    page_bare(
        "Log in",
        html! {
            @if let Some(error) = error { p.error id="login-error" { (error) } }
            form method="post" action="/login" {
                input type="hidden" name="csrf" value=(token);
                label { "Password " input type="password" name="password" id="password" autofocus required; }
                button type="submit" id="login" { "Log in" }
            }
        },
    )
}

/// A one-button form that POSTs to `action` with the CSRF token; buttons
/// with class `danger` ask for confirmation first (board.js).
pub fn post_button(session: &Session, action: &str, label: &str, class: &str) -> Markup {
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="csrf" value=(session.csrf);
            button type="submit" class=(class) { (label) }
        }
    }
}

/// 404 with a message.
pub fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, page_bare("Not found", html! { p { (what) } p { a href="/" { "Back to the board" } } }))
        .into_response()
}

/// A failure reading a source, shown in place of its section.
pub fn unavailable(what: &str, err: impl std::fmt::Display) -> Markup {
    html! { p.error { (what) " is unavailable: " (err.to_string()) } }
}

/// Unix milliseconds as `2026-12-07 09:00:00`, UTC.
pub fn time_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

/// Unix seconds (with a fraction) as [`time_ms`] does.
pub fn time_s(seconds: f64) -> String {
    time_ms((seconds * 1000.0) as i64)
}

/// A progress bar (`share` from 0 to 1) with a caption.
pub fn bar(share: f64, caption: &str) -> Markup {
    let percent = (share.clamp(0.0, 1.0) * 100.0).round() as u32;
    html! {
        div.bar title=(caption) {
            progress max="100" value=(percent) {}
            span { (caption) }
        }
    }
}
