//! The validated `fleet` section: [`FleetSpec`], built from the raw section through
//! `TryFrom<FleetInput>`, or a [`FleetError`] that names the field and the broken rule.
//!
//! Owns: what makes a fleet section valid (server URLs, one way to authenticate, readable
//! credentials and TLS files, names usable in NATS subjects, timings in order) and the
//! replica's default id. Must not touch: connections (see `nats`), the serving table, metrics.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::config::{ConfigError, Loaded, RawFleet};

/// How this replica proves itself to the NATS servers.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// A `.creds` file: read again at every connection, so a rotated file is picked up.
    Credentials(PathBuf),
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
}

// Secrets stay out of logs and panics.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Credentials(path) => f.debug_tuple("Credentials").field(path).finish(),
            Auth::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .finish_non_exhaustive(),
            Auth::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// TLS towards the NATS servers; the rustls client config is built with the ring provider.
#[derive(Debug, Clone)]
pub struct FleetTls {
    pub ca_file: Option<PathBuf>,
    pub client: Option<(PathBuf, PathBuf)>,
    pub config: rustls::ClientConfig,
}

/// A fleet section that passed every check.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// As written; each parses as an `async_nats::ServerAddr`.
    pub servers: Vec<String>,
    pub auth: Auth,
    pub tls: Option<FleetTls>,
    pub name: String,
    pub replica: String,
    /// Copies of the bucket JetStream keeps.
    pub replicas: usize,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub stale_after: Duration,
    pub switch_delay: Duration,
    pub max_replicas: usize,
}

impl FleetSpec {
    /// The JetStream KV bucket of this fleet: every key of the fleet lives in it, so its
    /// subjects (`$KV.cohort_<name>.<key>`) all start with the fleet's name.
    pub fn bucket(&self) -> String {
        format!("cohort_{}", self.name)
    }

    /// What is valid but likely to hurt: a `stale_after` that a NATS stream's leader
    /// failover (6 to 8 s measured when the dead node led the stream) can outlast, so that
    /// one node's death sets every canary to 0% on every replica.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.replicas > 1 && self.stale_after < FAILOVER_FLOOR {
            out.push(format!(
                "fleet.stale_after ({:?}) is under {}s: a NATS stream can take 6 to 8 s to replace a dead leader, and a replica out of contact that long sets every canary to 0%",
                self.stale_after,
                FAILOVER_FLOOR.as_secs()
            ));
        }
        out
    }
}

/// The shortest `stale_after` that outlasts a JetStream leader election with room to spare.
pub const FAILOVER_FLOOR: Duration = Duration::from_secs(10);

/// Everything a [`FleetSpec`] is built from.
pub struct FleetInput<'a> {
    pub raw: &'a RawFleet,
    /// Relative paths are resolved against this (the config file's directory).
    pub base_dir: &'a Path,
    /// The host name, for the default replica id (injected so tests need no real host).
    pub host_name: Option<String>,
}

/// A broken rule of the `fleet` section.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("at least one NATS server is required")]
    NoServers,
    #[error("{value:?} is not a NATS server URL (nats://host:port, tls://host:port or host:port): {reason}")]
    BadServer {
        index: usize,
        value: String,
        reason: String,
    },
    #[error("{value:?}: websocket servers are not supported; use nats:// or tls://")]
    Websocket { index: usize, value: String },
    #[error("{value:?} is not a valid {what} name: use 1 to 64 letters, digits, '_' or '-'")]
    BadName {
        field: &'static str,
        what: &'static str,
        value: String,
    },
    #[error("no replica id: the host name is unknown or unusable ({host:?}); set `replica`")]
    NoHostName { host: Option<String> },
    #[error("set one way to authenticate: `{first}` and `{second}` are both set")]
    TwoAuths {
        first: &'static str,
        second: &'static str,
    },
    #[error("`{set}` needs `{missing}` too")]
    Incomplete {
        set: &'static str,
        missing: &'static str,
    },
    #[error("must not be empty")]
    Empty { field: &'static str },
    #[error("{reason}")]
    Unusable { field: &'static str, reason: String },
    #[error("{value} is not a number of bucket copies from 1 to 5")]
    BadReplicas { value: usize },
    #[error("{value} is not a number of replicas from 1 to 1000")]
    BadMaxReplicas { value: usize },
    #[error("{shorter} ({}) must be shorter than {longer} ({})", humantime::format_duration(*shorter_value), humantime::format_duration(*longer_value))]
    Order {
        shorter: &'static str,
        shorter_value: Duration,
        longer: &'static str,
        longer_value: Duration,
    },
}

impl FleetError {
    /// The field it is about, under `fleet`.
    pub fn field(&self) -> String {
        let inside = match self {
            FleetError::NoServers => "servers".to_string(),
            FleetError::BadServer { index, .. } | FleetError::Websocket { index, .. } => {
                format!("servers[{index}]")
            }
            FleetError::BadName { field, .. }
            | FleetError::Empty { field }
            | FleetError::Unusable { field, .. } => field.to_string(),
            FleetError::NoHostName { .. } => "replica".to_string(),
            FleetError::TwoAuths { second, .. } => second.to_string(),
            FleetError::Incomplete { set, .. } => set.to_string(),
            FleetError::BadReplicas { .. } => "replicas".to_string(),
            FleetError::BadMaxReplicas { .. } => "max_replicas".to_string(),
            FleetError::Order { shorter, .. } => shorter.to_string(),
        };
        format!("fleet.{inside}")
    }
}

/// Names that go into NATS subjects and bucket names as one token.
fn check_name(field: &'static str, what: &'static str, value: &str) -> Result<(), FleetError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::BadName {
            field,
            what,
            value: value.to_string(),
        })
    }
}

fn non_empty(field: &'static str, value: &Option<String>) -> Result<Option<String>, FleetError> {
    match value {
        Some(v) if v.is_empty() => Err(FleetError::Empty { field }),
        other => Ok(other.clone()),
    }
}

fn auth(raw: &RawFleet, base_dir: &Path) -> Result<Auth, FleetError> {
    let user = non_empty("user", &raw.user)?;
    let password = non_empty("password", &raw.password)?;
    let token = non_empty("token", &raw.token)?;
    let ways = [
        ("credentials", raw.credentials.is_some()),
        (
            if user.is_some() { "user" } else { "password" },
            user.is_some() || password.is_some(),
        ),
        ("token", token.is_some()),
    ];
    let mut set = ways.iter().filter(|(_, on)| *on).map(|(name, _)| *name);
    if let (Some(first), Some(second)) = (set.next(), set.next()) {
        return Err(FleetError::TwoAuths { first, second });
    }
    if let Some(path) = &raw.credentials {
        let path = base_dir.join(path);
        // Parsed as the client will parse it, so `cohort check` finds a broken file.
        let text = std::fs::read_to_string(&path).map_err(|e| FleetError::Unusable {
            field: "credentials",
            reason: format!("{}: {e}", path.display()),
        })?;
        async_nats::ConnectOptions::with_credentials(&text).map_err(|e| FleetError::Unusable {
            field: "credentials",
            reason: format!("{}: not a NATS credentials file: {e}", path.display()),
        })?;
        return Ok(Auth::Credentials(path));
    }
    match (user, password, token) {
        (Some(user), Some(password), _) => Ok(Auth::UserPassword { user, password }),
        (Some(_), None, _) => Err(FleetError::Incomplete {
            set: "user",
            missing: "password",
        }),
        (None, Some(_), _) => Err(FleetError::Incomplete {
            set: "password",
            missing: "user",
        }),
        (None, None, Some(token)) => Ok(Auth::Token(token)),
        (None, None, None) => Ok(Auth::None),
    }
}

fn tls(raw: &RawFleet, base_dir: &Path) -> Result<Option<FleetTls>, FleetError> {
    let Some(t) = &raw.tls else { return Ok(None) };
    let ca_file = t.ca_file.as_ref().map(|p| base_dir.join(p));
    let client = match (&t.client_cert, &t.client_key) {
        (Some(cert), Some(key)) => Some((base_dir.join(cert), base_dir.join(key))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(FleetError::Incomplete {
                set: "tls.client_cert",
                missing: "tls.client_key",
            })
        }
        (None, Some(_)) => {
            return Err(FleetError::Incomplete {
                set: "tls.client_key",
                missing: "tls.client_cert",
            })
        }
    };
    let built = crate::upstream::tls::client_config(
        ca_file.as_deref(),
        client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
    );
    let config = built.map_err(|e| {
        // The error names its file; the field is the one that names that file.
        let field = if ca_file.as_deref() == Some(e.path.as_path()) {
            "tls.ca_file"
        } else if client.as_ref().is_some_and(|(c, _)| c == &e.path) {
            "tls.client_cert"
        } else {
            "tls.client_key"
        };
        FleetError::Unusable {
            field,
            reason: e.to_string(),
        }
    })?;
    Ok(Some(FleetTls {
        ca_file,
        client,
        config,
    }))
}

/// The host name up to its first '.', as `hostname -s` gives it: a pod's name in Kubernetes.
fn replica_from_host(host: Option<&str>) -> Result<String, FleetError> {
    let short = host.map(|h| h.split('.').next().unwrap_or_default());
    match short {
        Some(s) if check_name("replica", "replica", s).is_ok() => Ok(s.to_string()),
        _ => Err(FleetError::NoHostName {
            host: host.map(str::to_string),
        }),
    }
}

fn order(
    shorter: (&'static str, Duration),
    longer: (&'static str, Duration),
) -> Result<(), FleetError> {
    if shorter.1 < longer.1 {
        Ok(())
    } else {
        Err(FleetError::Order {
            shorter: shorter.0,
            shorter_value: shorter.1,
            longer: longer.0,
            longer_value: longer.1,
        })
    }
}

impl TryFrom<FleetInput<'_>> for FleetSpec {
    type Error = FleetError;

    fn try_from(input: FleetInput<'_>) -> Result<Self, FleetError> {
        let raw = input.raw;
        if raw.servers.is_empty() {
            return Err(FleetError::NoServers);
        }
        for (index, value) in raw.servers.iter().enumerate() {
            let addr =
                async_nats::ServerAddr::from_str(value).map_err(|e| FleetError::BadServer {
                    index,
                    value: value.clone(),
                    reason: e.to_string(),
                })?;
            if matches!(addr.into_inner().scheme(), "ws" | "wss") {
                return Err(FleetError::Websocket {
                    index,
                    value: value.clone(),
                });
            }
        }
        check_name("name", "fleet", &raw.name)?;
        let replica = match &raw.replica {
            Some(r) => {
                check_name("replica", "replica", r)?;
                r.clone()
            }
            None => replica_from_host(input.host_name.as_deref())?,
        };
        if !(1..=5).contains(&raw.replicas) {
            return Err(FleetError::BadReplicas {
                value: raw.replicas,
            });
        }
        // A heartbeat renews the lease, so several must fit in one; and a replica must not
        // give up on the fleet (stale_after) before a dead judge's lease could even expire.
        order(("heartbeat", raw.heartbeat), ("lease", raw.lease))?;
        order(("lease", raw.lease), ("stale_after", raw.stale_after))?;
        // A switch later than a lease would let a dead judge's successor see a step not yet in
        // force for longer than the takeover it is meant to follow.
        order(("switch_delay", raw.switch_delay), ("lease", raw.lease))?;
        if !(1..=1000).contains(&raw.max_replicas) {
            return Err(FleetError::BadMaxReplicas {
                value: raw.max_replicas,
            });
        }
        Ok(FleetSpec {
            servers: raw.servers.clone(),
            auth: auth(raw, input.base_dir)?,
            tls: tls(raw, input.base_dir)?,
            name: raw.name.clone(),
            replica,
            replicas: raw.replicas,
            lease: raw.lease,
            heartbeat: raw.heartbeat,
            stale_after: raw.stale_after,
            switch_delay: raw.switch_delay,
            max_replicas: raw.max_replicas,
        })
    }
}

/// This machine's host name, or `None` when it has none usable.
pub fn host_name() -> Option<String> {
    #[cfg(unix)]
    let name = rustix::system::uname()
        .nodename()
        .to_str()
        .ok()
        .map(str::to_string);
    #[cfg(not(unix))]
    let name = std::env::var("COMPUTERNAME").ok();
    name.filter(|n| !n.is_empty())
}

/// The loaded file's fleet section, validated, or `None` without one; an error is placed at
/// the field it is about.
pub fn from_loaded(loaded: &Loaded) -> Result<Option<FleetSpec>, ConfigError> {
    let Some(raw) = &loaded.raw.fleet else {
        return Ok(None);
    };
    let input = FleetInput {
        raw,
        base_dir: loaded.base_dir(),
        host_name: host_name(),
    };
    FleetSpec::try_from(input)
        .map(Some)
        .map_err(|e| loaded.error_at(&e.field(), e.to_string()))
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
