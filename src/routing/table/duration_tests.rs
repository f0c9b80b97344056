//! Every duration's floor: a value just below it is refused at its own line, column and field
//! path, and the floor itself is accepted (edits of the contract's `minimal.yaml`, as in
//! `tests.rs`).

use super::tests::{accept, insert_after, reject, MINIMAL};

/// Each duration field: its path, its floor, and how to write `value` into `MINIMAL`.
fn cases() -> Vec<(&'static str, &'static str, Write)> {
    let cases: Vec<(&str, &str, Write)> = vec![
        ("reload.poll_interval", "100ms", |v| {
            format!("{MINIMAL}reload:\n  poll_interval: {v}\n")
        }),
        ("shutdown_timeout", "100ms", |v| {
            format!("{MINIMAL}shutdown_timeout: {v}\n")
        }),
        ("limits.header_read_timeout", "100ms", |v| {
            format!("{MINIMAL}limits:\n  header_read_timeout: {v}\n")
        }),
        ("limits.body_read_timeout", "100ms", |v| {
            format!("{MINIMAL}limits:\n  body_read_timeout: {v}\n")
        }),
        ("limits.body_rate_window", "1s", |v| {
            format!("{MINIMAL}limits:\n  body_rate_window: {v}\n")
        }),
        ("limits.keepalive_timeout", "1s", |v| {
            format!("{MINIMAL}limits:\n  keepalive_timeout: {v}\n")
        }),
        ("upstreams.stable.connect_timeout", "100ms", |v| {
            insert_after(endpoint_line(), &format!("    connect_timeout: {v}\n"))
        }),
        ("upstreams.stable.response_timeout", "100ms", |v| {
            insert_after(endpoint_line(), &format!("    response_timeout: {v}\n"))
        }),
        ("upstreams.stable.idle_timeout", "1s", |v| {
            insert_after(endpoint_line(), &format!("    idle_timeout: {v}\n"))
        }),
        ("upstreams.stable.tunnel_idle_timeout", "1s", |v| {
            insert_after(endpoint_line(), &format!("    tunnel_idle_timeout: {v}\n"))
        }),
        ("routes[0].rollout.soak", "1s", |v| {
            format!(
                "{MINIMAL}    rollout:\n      id: v2\n      canary: canary\n      soak: {v}\n\
                 state_dir: state\n"
            )
        }),
    ];
    cases
}

type Write = fn(&str) -> String;

fn endpoint_line() -> &'static str {
    "    endpoints: [\"127.0.0.1:18001\"]"
}

/// 1-based line and column of the only occurrence of `value` in `text`.
fn position(text: &str, value: &str) -> (usize, usize) {
    assert_eq!(text.matches(value).count(), 1, "{value:?} in\n{text}");
    let at = text.find(value).unwrap_or_default();
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    (text[..at].matches('\n').count() + 1, at - line_start + 1)
}

#[test]
fn every_duration_below_its_floor_is_refused_where_it_stands() {
    for (field, floor, write) in cases() {
        let floor_ms = humantime::parse_duration(floor).unwrap().as_millis();
        for below in ["0s".to_string(), format!("{}ms", floor_ms - 1)] {
            let text = write(&below);
            let (line, column) = position(&text, &format!(": {below}\n"));
            reject(
                &text,
                line,
                column + 2,
                field,
                &[&format!(
                    "{below} is shorter than the shortest this field accepts, {floor}"
                )],
            );
        }
        accept(&write(floor));
    }
}
