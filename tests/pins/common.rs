//! What the pin tests share: the secret, the route `agent` (stable and canary on `x-user-id`)
//! with or without pins, conversations that carry their pin from turn to turn, and the
//! contract's bucket.

use std::net::SocketAddr;
use std::path::Path;

use cohort::routing::pin::{self, Pin};

use crate::support::{
    fetch, get, yaml_path, Config, H1Client, MockUpstream, Route, Scrape, TestProxy,
};

pub const SECRET: &str = "pins-test-secret-0123456789abcdef";
pub const COOKIE: &str = "cohort_pin";
pub const HEADER: &str = "x-cohort-pin";

/// How the pin travels in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    Cookie,
    Header,
}

/// Writes the secret file (with a trailing newline, as `echo` leaves it) into `dir`, renamed
/// into place so a watcher never reads half of it; its path as a YAML scalar.
pub fn write_secret(dir: &Path, lines: &[&str]) -> String {
    let (path, tmp) = (dir.join("pin.key"), dir.join("pin.key.tmp"));
    std::fs::write(&tmp, lines.join("\n") + "\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    yaml_path(&path)
}

/// Route `agent` keyed on `x-user-id`: stable and canary at `canary` percent, with pins
/// through `carrier` signed by the secret file at `secret` (none when `pin` is None), and
/// `extra` route lines.
pub fn route(canary: &str, pin: Option<(&str, Carrier)>, extra: &[&str]) -> Route {
    let stable = format!("{}", 100.0 - canary.parse::<f64>().unwrap());
    let mut r = Route::new("agent").key("header: x-user-id");
    if let Some((secret, carrier)) = pin {
        r = r.set("pin:").set(&format!("  secret_file: {secret}"));
        r = r.set(&match carrier {
            Carrier::Cookie => format!("  cookie: {COOKIE}"),
            Carrier::Header => format!("  header: {HEADER}"),
        });
    }
    for e in extra {
        r = r.set(e);
    }
    r.split(&[("stable", "stable", &stable), ("canary", "canary", canary)])
}

/// A whole config around [`route`], upstreams at `stable` and `canary`; reloads only when
/// the test asks.
pub fn config(
    stable: SocketAddr,
    canary: SocketAddr,
    percent: &str,
    pin: Option<(&str, Carrier)>,
    top: &[&str],
) -> String {
    let mut c = Config::new().top("reload: {watch: false, poll_interval: 1h}");
    for t in top {
        c = c.top(t);
    }
    c.upstream("stable", stable)
        .upstream("canary", canary)
        .route(route(percent, pin, &[]))
        .yaml()
}

/// Rewrites the proxy's file and reloads it, which must apply.
pub async fn reload(proxy: &TestProxy, yaml: &str) {
    std::fs::write(proxy.dir.path().join("cohort.yaml"), yaml).unwrap();
    match proxy.running.reload("test").await {
        cohort::control::reload::Outcome::Applied { .. } => {}
        other => panic!("reload not applied: {other:?}"),
    }
}

/// The contract's bucket of `key` on route `agent` (salt = the route's name).
pub fn bucket(key: &str) -> u32 {
    use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};
    (xxh3_64_with_seed(key.as_bytes(), xxh3_64(b"agent")) % 10_000) as u32
}

/// The contract's cohort of `key` with the canary at `percent` (whole percents).
pub fn band(key: &str, percent: u32) -> &'static str {
    if bucket(key) >= 10_000 - percent * 100 {
        "canary"
    } else {
        "stable"
    }
}

/// A pin value signed with [`SECRET`] as the proxy would mint it.
pub fn mint(route: &str, cohort: &str, rollout: &str, issued: u64, expires: u64) -> String {
    pin::mint(
        SECRET.as_bytes(),
        &Pin {
            route,
            cohort,
            rollout,
            issued,
            expires,
        },
    )
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One conversation: its user's key and the pin its client keeps, as a browser keeps a
/// cookie or an API client copies the header.
pub struct Conversation {
    pub key: String,
    pub pin: Option<String>,
    pub carrier: Carrier,
}

/// One turn's answer: the cohort that served it and the pin the response carried.
pub struct Turn {
    pub cohort: String,
    pub pin: Option<String>,
    /// The `Set-Cookie` line, for the cookie carrier.
    pub set_cookie: Option<String>,
}

impl Conversation {
    pub fn new(key: String, carrier: Carrier) -> Self {
        Conversation {
            key,
            pin: None,
            carrier,
        }
    }

    /// One turn through the proxy at `addr`; keeps the pin the response carries.
    pub async fn turn(&mut self, client: &H1Client, addr: SocketAddr) -> Turn {
        let cookie = self
            .pin
            .as_ref()
            .map(|p| format!("theme=dark; {COOKIE}={p}"));
        let mut headers = vec![("x-user-id", self.key.as_str())];
        match (self.carrier, &self.pin, &cookie) {
            (Carrier::Cookie, Some(_), Some(c)) => headers.push(("cookie", c)),
            (Carrier::Header, Some(p), _) => headers.push((HEADER, p)),
            _ => {}
        }
        let reply = fetch(client, get(addr, "/v1/chat", &headers)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let cohort = reply.header("x-cohort").unwrap().to_string();
        let (upstream, _) = reply.upstream_saw();
        assert_eq!(upstream, cohort, "x-cohort names the cohort that served");
        let set_cookie = reply
            .all("set-cookie")
            .into_iter()
            .find(|c| c.starts_with(&format!("{COOKIE}=")))
            .map(String::from);
        let pin = match self.carrier {
            Carrier::Cookie => set_cookie.as_ref().map(|c| {
                let v = &c[COOKIE.len() + 1..];
                v[..v.find(';').unwrap_or(v.len())].to_string()
            }),
            Carrier::Header => reply.header(HEADER).map(String::from),
        };
        if let Some(p) = &pin {
            self.pin = Some(p.clone());
        }
        Turn {
            cohort,
            pin,
            set_cookie,
        }
    }
}

/// The cohort a pin value names (its third `~` field).
pub fn pinned_cohort(pin: &str) -> &str {
    pin.split('~').nth(2).unwrap()
}

/// The two mock upstreams, named after their cohorts, and a secret file in a directory of its
/// own (its path as a YAML scalar).
pub struct Backends {
    pub stable: MockUpstream,
    pub canary: MockUpstream,
    pub secret: String,
    _dir: tempfile::TempDir,
}

pub async fn backends() -> Backends {
    let dir = tempfile::tempdir().unwrap();
    Backends {
        stable: MockUpstream::json("stable").await,
        canary: MockUpstream::json("canary").await,
        secret: write_secret(dir.path(), &[SECRET]),
        _dir: dir,
    }
}

/// Asserts route `agent`'s pin counters: `(metric, label value, count)`, the label being
/// `reason` for `cohort_pin_rejected_total` and `cohort` for the others.
#[track_caller]
pub fn assert_counts(scrape: &Scrape, expected: &[(&str, &str, f64)]) {
    for (name, value, count) in expected {
        let label = if *name == "cohort_pin_rejected_total" {
            "reason"
        } else {
            "cohort"
        };
        let got = scrape.metric(name, &[("route", "agent"), (label, value)]);
        assert_eq!(got, *count, "{name}{{{label}={value:?}}}");
    }
}
