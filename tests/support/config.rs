//! Config files for the proxy under test, written from builders: listener and admin on port
//! 0, upstreams, routes and listener certificates, plus the setups many tests share.
//!
//! Owns: the YAML the tests feed the proxy. Must not touch: starting it (`proxy.rs`), beyond
//! the `start` shorthands.

use std::fmt::Display;
use std::path::Path;

use super::{MockUpstream, TestProxy};

/// A config file: listener and admin on port 0, then upstreams and routes as added.
#[derive(Default)]
pub struct Config {
    top: Vec<String>,
    /// Lines under `admin:` after its address.
    admin: Vec<String>,
    upstreams: Vec<String>,
    routes: Vec<Route>,
    /// `listeners[0].tls.certificates` entries, already in YAML.
    certificates: Vec<String>,
}

/// A path as a double-quoted YAML scalar.
pub fn yaml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

impl Config {
    pub fn new() -> Self {
        Self::default()
    }

    /// A top-level line such as `trusted_cidrs: ["127.0.0.1/32"]`.
    pub fn top(mut self, line: &str) -> Self {
        self.top.push(line.into());
        self
    }

    /// A line under `admin:` such as `token_file: /run/secrets/token`.
    pub fn admin(mut self, line: &str) -> Self {
        self.admin.push(line.into());
        self
    }

    pub fn upstream(self, name: &str, endpoint: impl Display) -> Self {
        self.upstream_with(name, endpoint, &[])
    }

    /// An upstream with extra option lines such as `response_timeout: 200ms`.
    pub fn upstream_with(mut self, name: &str, endpoint: impl Display, options: &[&str]) -> Self {
        let mut s = format!("  {name}:\n    endpoints: [\"{endpoint}\"]\n");
        for o in options {
            s.push_str(&format!("    {o}\n"));
        }
        self.upstreams.push(s);
        self
    }

    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// Terminates TLS on the public listener with this certificate, for `server_names` (none
    /// for a default certificate). Certificates are listed in the order added.
    pub fn certificate(mut self, cert: &Path, key: &Path, server_names: &[&str]) -> Self {
        let names: Vec<String> = server_names.iter().map(|n| format!("{n:?}")).collect();
        self.certificates.push(format!(
            "        - cert: {}\n          key: {}\n          server_names: [{}]\n",
            yaml_path(cert),
            yaml_path(key),
            names.join(", ")
        ));
        self
    }

    pub fn yaml(&self) -> String {
        let mut s = String::from("listeners:\n  - name: public\n    address: 127.0.0.1:0\n");
        if !self.certificates.is_empty() {
            s.push_str("    tls:\n      certificates:\n");
            for c in &self.certificates {
                s.push_str(c);
            }
        }
        s.push_str("admin:\n  address: 127.0.0.1:0\n");
        for a in &self.admin {
            s.push_str(&format!("  {a}\n"));
        }
        for t in &self.top {
            s.push_str(t);
            s.push('\n');
        }
        s.push_str("upstreams:\n");
        for u in &self.upstreams {
            s.push_str(u);
        }
        s.push_str("routes:\n");
        for r in &self.routes {
            s.push_str(&r.yaml());
        }
        s
    }

    pub async fn start(&self) -> TestProxy {
        TestProxy::start(&self.yaml()).await
    }
}

/// One route of a [`Config`].
pub struct Route {
    name: String,
    matcher: Vec<String>,
    keys: Vec<String>,
    options: Vec<String>,
    split: Vec<(String, String, String)>,
}

impl Route {
    pub fn new(name: &str) -> Self {
        Route {
            name: name.into(),
            matcher: Vec::new(),
            keys: Vec::new(),
            options: Vec::new(),
            split: Vec::new(),
        }
    }

    /// A `match` line such as `path_prefix: /v1/` or `headers: {x-tenant: acme}`.
    pub fn matching(mut self, line: &str) -> Self {
        self.matcher.push(line.into());
        self
    }

    /// A `cohort_key` source such as `header: x-user-id` or `client_ip: true`.
    pub fn key(mut self, source: &str) -> Self {
        self.keys.push(source.into());
        self
    }

    /// A route option line such as `salt: s` or `fallback: canary`.
    pub fn set(mut self, line: &str) -> Self {
        self.options.push(line.into());
        self
    }

    /// `(cohort, upstream, percent)` in split order; percent is written as given.
    pub fn split(mut self, cohorts: &[(&str, &str, &str)]) -> Self {
        self.split = cohorts
            .iter()
            .map(|(c, u, p)| (c.to_string(), u.to_string(), p.to_string()))
            .collect();
        self
    }

    /// A route that sends everything to one cohort named like its upstream.
    pub fn single(self, upstream: &str) -> Self {
        self.split(&[(upstream, upstream, "100")])
    }

    fn yaml(&self) -> String {
        let mut s = format!("  - name: {}\n", self.name);
        if !self.matcher.is_empty() {
            s.push_str("    match:\n");
            for m in &self.matcher {
                s.push_str(&format!("      {m}\n"));
            }
        }
        if !self.keys.is_empty() {
            s.push_str("    cohort_key:\n");
            for k in &self.keys {
                s.push_str(&format!("      - {k}\n"));
            }
        }
        for o in &self.options {
            s.push_str(&format!("    {o}\n"));
        }
        s.push_str("    split:\n");
        for (c, u, p) in &self.split {
            s.push_str(&format!(
                "      - cohort: {c}\n        upstream: {u}\n        percent: {p}\n"
            ));
        }
        s
    }
}

/// The most common setup: route `agent` (every path, keyed on `x-user-id`) sends everything
/// to cohort `backend` on upstream `backend` at `endpoint`, with extra upstream `options`.
pub async fn proxy_to_backend(endpoint: impl Display, options: &[&str]) -> TestProxy {
    Config::new()
        .upstream_with("backend", endpoint, options)
        .route(
            Route::new("agent")
                .key("header: x-user-id")
                .single("backend"),
        )
        .start()
        .await
}

/// Upstreams `stable` and `canary` and route `agent`, keyed on `x-user-id`, that puts every
/// user in `stable` (canary at 0%): only the override header `x-cohort-override` reaches the
/// canary. `trusted` is the `trusted_cidrs` list; `options` are extra route lines.
pub async fn override_proxy(
    trusted: &str,
    options: &[&str],
) -> (TestProxy, MockUpstream, MockUpstream) {
    let stable = MockUpstream::json("stable").await;
    let canary = MockUpstream::json("canary").await;
    let mut route = Route::new("agent")
        .key("header: x-user-id")
        .set("override_header: x-cohort-override");
    for line in options {
        route = route.set(line);
    }
    let proxy = Config::new()
        .top(&format!("trusted_cidrs: {trusted}"))
        .upstream("stable", stable.addr)
        .upstream("canary", canary.addr)
        .route(route.split(&[("stable", "stable", "100"), ("canary", "canary", "0")]))
        .start()
        .await;
    (proxy, stable, canary)
}
