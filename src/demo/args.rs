//! The command-line options of `cohort demo`, `cohort demo-agent` and `cohort demo-load`.

use std::net::IpAddr;

use super::AgentSpec;

/// A share such as `0.05` or `5%`, between 0 and 1.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v = match s.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => s.trim().parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a share such as 0.05 or 5%"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?} is not between 0 and 1 (0% and 100%)"))
    }
}

fn parse_rps(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 100_000.0 => Ok(v),
        _ => Err(format!("{s:?} is not a request rate between 0 and 100000")),
    }
}

/// A multiplier of completion tokens, such as `1.4`, above 0 and at most 10.
fn parse_verbosity(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 10.0 => Ok(v),
        _ => Err(format!(
            "{s:?} is not a multiplier above 0 and at most 10, such as 1.4"
        )),
    }
}

/// How the demo's canary misbehaves, and the demo's own load.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DemoArgs {
    /// Drive RPS requests per second from random users through the proxy, and show the live
    /// table.
    #[arg(long, value_name = "RPS", value_parser = parse_rps)]
    pub load: Option<f64>,
    /// Stop the load after N requests (the proxy keeps serving) and print exact totals.
    #[arg(long, value_name = "N", requires = "load")]
    pub requests: Option<u64>,
    /// How many distinct users the load draws from (user-1 ..= user-N).
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub users: u32,
    /// Share of canary replies that fail with 500 (0.05 or 5%).
    #[arg(long, value_name = "P", value_parser = parse_rate)]
    pub canary_errors: Option<f64>,
    /// Canary think time before its response headers, in ms (each reply waits 1 to 1.5 times it).
    #[arg(long, value_name = "MS")]
    pub canary_latency_ms: Option<u64>,
    /// Share of canary turns that end escalated (0.3 or 30%).
    #[arg(long, value_name = "P", value_parser = parse_rate)]
    pub canary_escalations: Option<f64>,
    /// Delay between the canary's streamed tokens, in ms (default 30; stable's is 40).
    #[arg(long, value_name = "MS")]
    pub canary_token_ms: Option<u64>,
    /// Multiplies the canary's completion tokens (1.4: 40% more tokens; default 1.0).
    #[arg(long, value_name = "X", value_parser = parse_verbosity)]
    pub canary_verbosity: Option<f64>,
    /// Extra delay after the canary's response head before its first streamed event, in ms
    /// (a slower time to first token).
    #[arg(long, value_name = "MS")]
    pub canary_first_token_ms: Option<u64>,
    /// Show the live table even without --load (for traffic you send yourself).
    #[arg(long)]
    pub table: bool,
    /// Run a rollout of the canary on screen (config/demo-rollout.yaml), with load at 200
    /// req/s unless --load says otherwise.
    #[arg(long)]
    pub rollout: bool,
    /// Delay between streamed tokens of both agents, in ms: for tests that need streams short.
    #[arg(long, value_name = "MS", hide = true)]
    pub agents_token_ms: Option<u64>,
}

/// The demo's load with `--rollout` and no `--load`.
const ROLLOUT_RPS: f64 = 200.0;

impl DemoArgs {
    pub(super) fn canary(&self) -> AgentSpec {
        AgentSpec::canary()
            .tuned(
                self.canary_errors.unwrap_or(0.0),
                self.canary_latency_ms.unwrap_or(0),
                self.canary_escalations,
                self.canary_token_ms.or(self.agents_token_ms),
            )
            .talking(self.canary_verbosity, self.canary_first_token_ms)
    }

    pub(super) fn stable(&self) -> AgentSpec {
        AgentSpec::stable().tuned(0.0, 0, None, self.agents_token_ms)
    }

    /// The demo's own load, in requests per second, if any.
    pub(super) fn load_rps(&self) -> Option<f64> {
        self.load.or(self.rollout.then_some(ROLLOUT_RPS))
    }
}

/// `cohort demo-agent`: one mock agent.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentArgs {
    /// The agent's name (its `x-agent` header and JSON); `canary` takes the canary's profile.
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub port: u16,
    /// Address to bind; 0.0.0.0 inside a container.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Share of replies that fail with 500 and outcome `error` (0.05 or 5%).
    #[arg(long, value_name = "P", value_parser = parse_rate, default_value = "0")]
    pub error_rate: f64,
    /// Think time before the response headers, in ms (each reply waits 1 to 1.5 times it).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of turns that end escalated (default: the profile's 17%, or 12% for canary).
    #[arg(long, value_name = "P", value_parser = parse_rate)]
    pub escalation_rate: Option<f64>,
    /// Delay between streamed tokens, in ms.
    #[arg(long, value_name = "MS")]
    pub token_ms: Option<u64>,
    /// Multiplies the completion tokens of OpenAI replies (1.4: 40% more; default 1.0).
    #[arg(long, value_name = "X", value_parser = parse_verbosity)]
    pub verbosity: Option<f64>,
    /// Extra delay after the response head before the first streamed event, in ms.
    #[arg(long, value_name = "MS")]
    pub first_token_ms: Option<u64>,
}

impl AgentArgs {
    pub fn spec(&self) -> AgentSpec {
        let profile = if self.name == "canary" {
            AgentSpec::canary()
        } else {
            AgentSpec::named(&self.name)
        };
        profile
            .tuned(
                self.error_rate,
                self.latency_ms,
                self.escalation_rate,
                self.token_ms,
            )
            .talking(self.verbosity, self.first_token_ms)
    }
}

/// `cohort demo-load`: the demo's load against a proxy running elsewhere.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The proxy's public address, as `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Path of the OpenAI-style chat completions (about half ask for a stream).
    #[arg(long, default_value = "/v1/chat/completions")]
    pub path: String,
    #[arg(long, value_name = "RPS", value_parser = parse_rps, default_value = "10")]
    pub rps: f64,
    /// Stop after N requests and print exact totals.
    #[arg(long, value_name = "N")]
    pub requests: Option<u64>,
    #[arg(long, value_name = "N", default_value_t = 5000)]
    pub users: u32,
    /// Seconds between two plain report lines when the output is not a terminal.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub report_every: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_take_shares_or_percents() {
        assert_eq!(parse_rate("0.05"), Ok(0.05));
        assert_eq!(parse_rate("5%"), Ok(0.05));
        assert_eq!(parse_rate("100%"), Ok(1.0));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-1%").is_err());
        assert!(parse_rate("lots").is_err());
        assert!(parse_rps("0").is_err() && parse_rps("20").is_ok());
    }

    #[test]
    fn canary_knobs_reach_the_canary_only() {
        let args = DemoArgs {
            canary_errors: Some(0.2),
            canary_latency_ms: Some(300),
            canary_escalations: Some(0.5),
            ..DemoArgs::default()
        };
        let c = args.canary();
        assert_eq!(
            (c.name.as_str(), c.error_rate, c.escalation_rate),
            ("canary", 0.2, Some(0.5))
        );
        assert_eq!(c.latency, Duration::from_millis(300));
        let plain = DemoArgs::default().canary();
        assert_eq!(
            (plain.error_rate, plain.latency, plain.escalation_rate),
            (0.0, Duration::ZERO, None)
        );
        assert_eq!(
            (plain.verbosity, plain.first_token_delay),
            (1.0, Duration::ZERO)
        );
    }

    #[test]
    fn talking_knobs_and_the_rollouts_load() {
        let args = DemoArgs {
            canary_verbosity: Some(1.4),
            canary_first_token_ms: Some(250),
            ..DemoArgs::default()
        };
        let c = args.canary();
        assert_eq!(
            (c.verbosity, c.first_token_delay),
            (1.4, Duration::from_millis(250))
        );
        assert_eq!(
            args.stable().verbosity,
            1.0,
            "the stable agent keeps its profile"
        );
        assert!(parse_verbosity("0").is_err() && parse_verbosity("11").is_err());
        assert_eq!(args.load_rps(), None);
        let rollout = DemoArgs {
            rollout: true,
            ..DemoArgs::default()
        };
        assert_eq!(rollout.load_rps(), Some(ROLLOUT_RPS));
        let given = DemoArgs {
            load: Some(30.0),
            ..rollout
        };
        assert_eq!(given.load_rps(), Some(30.0));
    }
}
