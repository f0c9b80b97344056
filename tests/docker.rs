//! docker/ as users run it, checked without Docker, Kubernetes or Grafana: every YAML file
//! parses (multi-document files included), the configs it carries validate with cohort's own
//! loader, the pieces agree with each other (ports, paths, service names, arguments), the
//! Dockerfile's build stage gets every file `cargo build --locked --release` reads, and the
//! rules and dashboard query only the contract's metrics. `docker/check-image.sh` and
//! `tests/prometheus.sh` run the real thing where this machine can.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file (`---`-separated).
fn documents(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{rel}: {e}")))
        .collect()
}

fn document(rel: &str) -> Value {
    let mut docs = documents(rel);
    assert_eq!(docs.len(), 1, "{rel} should hold one document");
    let mut doc = docs.remove(0);
    doc.apply_merge()
        .unwrap_or_else(|e| panic!("{rel}: merge keys: {e}"));
    doc
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yml" || e == "yaml") {
            out.push(path);
        }
    }
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} should be a string: {v:?}"))
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what} should be a list: {v:?}"))
        .iter()
        .map(|s| match s {
            Value::Number(n) => n.to_string(),
            other => str_of(other, what).to_string(),
        })
        .collect()
}

/// Validates a cohort config text as `cohort check` does and returns its admin port.
fn validate_cohort_config(what: &str, text: &str) -> cohort::routing::table::RoutingTable {
    let loaded = cohort::config::parse(Path::new(what), text.to_string())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    cohort::routing::table::from_loaded(&loaded, &cohort::telemetry::Metrics::new(), None, 1)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

#[test]
fn every_yaml_file_under_docker_parses() {
    let mut files = Vec::new();
    yaml_files(&repo().join("docker"), &mut files);
    let names: BTreeSet<String> = files
        .iter()
        .map(|p| {
            p.strip_prefix(repo())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for expected in [
        "docker/docker-compose.yml",
        "docker/cohort/cohort.yaml",
        "docker/prometheus/prometheus.yml",
        "docker/prometheus/rules.yml",
        "docker/prometheus/rules_test.yml",
        "docker/grafana/provisioning/datasources/prometheus.yml",
        "docker/grafana/provisioning/dashboards/cohort.yml",
        "docker/k8s/configmap.yaml",
        "docker/k8s/deployment.yaml",
        "docker/k8s/canary.yaml",
        "docker/k8s/service.yaml",
        "docker/k8s/podmonitor.yaml",
        "docker/k8s/kustomization.yaml",
        "docker/fleet/docker-compose.yml",
        "docker/fleet/cohort.yaml",
        "docker/k8s/fleet/kustomization.yaml",
        "docker/k8s/fleet/nats.yaml",
        "docker/k8s/fleet/agents.yaml",
        "docker/k8s/fleet/configmap.yaml",
        "docker/k8s/fleet/deployment.yaml",
        "docker/k8s/fleet/service.yaml",
    ] {
        assert!(names.contains(expected), "{expected} is missing: {names:?}");
    }
    for name in &names {
        let docs = documents(name);
        assert!(!docs.is_empty(), "{name} has no document");
        for (i, doc) in docs.iter().enumerate() {
            assert!(doc.is_mapping(), "{name} document {i} is not a mapping");
        }
    }
    assert_eq!(
        documents("docker/k8s/canary.yaml").len(),
        2,
        "Deployment + Service"
    );
}

/// `${NAME:-default}` → `default`, as compose substitutes with an empty environment.
fn compose_defaults(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closing brace") + start;
        let inner = &rest[start + 2..end];
        out.push_str(inner.split_once(":-").map_or("", |(_, d)| d));
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[derive(Parser)]
struct AgentCli {
    #[command(flatten)]
    args: cohort::demo::AgentArgs,
}

#[derive(Parser)]
struct LoadCli {
    #[command(flatten)]
    args: cohort::demo::LoadArgs,
}

/// Parses a container command line the way `cohort` would, for the demo subcommands.
fn demo_agent_args(command: &[String]) -> cohort::demo::AgentArgs {
    assert_eq!(command[0], "demo-agent", "{command:?}");
    let argv = std::iter::once("cohort".to_string()).chain(command[1..].iter().cloned());
    AgentCli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
        .args
}

#[test]
fn compose_runs_cohort_in_front_of_its_agents() {
    let compose = document("docker/docker-compose.yml");
    let services = &compose["services"];
    for name in [
        "stable",
        "canary",
        "cohort",
        "load",
        "prometheus",
        "grafana",
    ] {
        assert!(services.get(name).is_some(), "service {name} is missing");
    }
    // The services that run cohort's image build it from docker/Dockerfile.
    for name in ["stable", "canary", "cohort", "load"] {
        let build = &services[name]["build"];
        let context = repo()
            .join("docker")
            .join(str_of(&build["context"], "context"));
        let dockerfile = str_of(&build["dockerfile"], "dockerfile");
        assert!(context.join(dockerfile).is_file(), "{name}: {dockerfile}");
        assert_eq!(str_of(&services[name]["image"], "image"), "cohort:dev");
    }

    // cohort serves the mounted directory's config, which validates.
    let command = strings(&services["cohort"]["command"], "command");
    assert_eq!(command, ["run", "--config", "/etc/cohort/cohort.yaml"]);
    let volumes = strings(&services["cohort"]["volumes"], "volumes");
    assert!(
        volumes.contains(&"./cohort:/etc/cohort:ro".to_string()),
        "a directory mount: {volumes:?}"
    );
    let table = validate_cohort_config(
        "docker/cohort/cohort.yaml",
        &read("docker/cohort/cohort.yaml"),
    );
    assert_eq!(table.admin_address.to_string(), "0.0.0.0:9901");

    // Each upstream names a compose service whose demo agent listens on that port.
    let config: Value = serde_yaml::from_str(&read("docker/cohort/cohort.yaml")).unwrap();
    for (name, upstream) in config["upstreams"].as_mapping().unwrap() {
        let name = str_of(name, "upstream");
        let endpoint = strings(&upstream["endpoints"], "endpoints").remove(0);
        let (host, port) = endpoint
            .trim_start_matches("http://")
            .split_once(':')
            .unwrap();
        let command: Vec<String> = strings(&services[host]["command"], "command")
            .iter()
            .map(|a| compose_defaults(a))
            .collect();
        let agent = demo_agent_args(&command);
        assert_eq!(agent.name, name);
        assert_eq!(agent.port.to_string(), port, "{host}");
        assert!(
            agent.bind.is_unspecified(),
            "{host} must bind 0.0.0.0 in its container"
        );
        let health = strings(&services[host]["healthcheck"]["test"], "healthcheck").join(" ");
        assert!(
            health.contains(&format!("127.0.0.1:{port}/healthz")),
            "{health}"
        );
    }

    // The load generator targets cohort's public listener.
    let load: Vec<String> = strings(&services["load"]["command"], "command")
        .iter()
        .map(|a| compose_defaults(a))
        .collect();
    assert_eq!(load[0], "demo-load");
    let args = LoadCli::try_parse_from(
        std::iter::once("cohort".to_string()).chain(load[1..].iter().cloned()),
    )
    .unwrap_or_else(|e| panic!("{load:?}: {e}"))
    .args;
    let public = table.listeners[0].address.port();
    assert_eq!(args.target, format!("http://cohort:{public}"));

    // Prometheus scrapes cohort's admin port; Grafana mounts what exists.
    let prom = document("docker/prometheus/prometheus.yml");
    let target = strings(
        &prom["scrape_configs"][0]["static_configs"][0]["targets"],
        "targets",
    );
    assert_eq!(target, [format!("cohort:{}", table.admin_address.port())]);
    for rule_file in strings(&prom["rule_files"], "rule_files") {
        assert!(
            repo().join("docker/prometheus").join(&rule_file).is_file(),
            "{rule_file}"
        );
    }
    for volume in strings(&services["grafana"]["volumes"], "volumes")
        .iter()
        .chain(&strings(&services["prometheus"]["volumes"], "volumes"))
    {
        let host = volume.split(':').next().unwrap();
        assert!(repo().join("docker").join(host).is_dir(), "{volume}");
    }
    let home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    let provider = document("docker/grafana/provisioning/dashboards/cohort.yml");
    let dir = str_of(&provider["providers"][0]["options"]["path"], "path");
    assert!(home.starts_with(dir), "{home} is not under {dir}");
    let file = Path::new(home).file_name().unwrap();
    assert!(repo()
        .join("docker/grafana/dashboards")
        .join(file)
        .is_file());
}

/// The nats-server release the fleet tests run against (.ci/run installs it); the manifests
/// run the same one.
const NATS_VERSION: &str = "2.15.1";

/// Host names in a config's upstream endpoints (`http://host:port`).
fn endpoint_hosts(config: &Value) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for (_, upstream) in config["upstreams"].as_mapping().expect("upstreams") {
        for e in strings(&upstream["endpoints"], "endpoints") {
            let rest = e.split_once("://").map_or(e.as_str(), |(_, r)| r);
            hosts.insert(rest.split(':').next().unwrap_or_default().to_string());
        }
    }
    hosts
}

#[test]
fn compose_runs_a_fleet_of_two_on_one_nats() {
    let compose = document("docker/fleet/docker-compose.yml");
    let services = &compose["services"];
    let text = read("docker/fleet/cohort.yaml");
    validate_cohort_config("docker/fleet/cohort.yaml", &text);
    let config: Value = serde_yaml::from_str(&text).unwrap();
    let fleet = &config["fleet"];
    assert_eq!(strings(&fleet["servers"], "servers"), ["nats://nats:4222"]);
    // One NATS server holds one copy of the bucket.
    assert_eq!(fleet["replicas"].as_u64(), Some(1));
    assert!(
        config["routes"][0]["rollout"].is_mapping(),
        "the fleet runs a rollout"
    );
    let nats = &services["nats"];
    assert_eq!(
        str_of(&nats["image"], "image"),
        format!("nats:{NATS_VERSION}-alpine")
    );
    assert!(strings(&nats["command"], "command").contains(&"--jetstream".to_string()));
    let mut hostnames = BTreeSet::new();
    for replica in ["cohort-a", "cohort-b"] {
        let s = &services[replica];
        assert_eq!(
            strings(&s["command"], "command"),
            ["run", "--config", "/etc/cohort/cohort.yaml"]
        );
        assert_eq!(strings(&s["volumes"], "volumes"), ["./:/etc/cohort:ro"]);
        assert!(
            s["depends_on"]["nats"].is_mapping(),
            "{replica} waits for nats"
        );
        // The replica id defaults to the host name: two replicas must not share one.
        assert!(hostnames.insert(str_of(&s["hostname"], "hostname").to_string()));
    }
    for host in endpoint_hosts(&config) {
        assert!(services[host.as_str()].is_mapping(), "no service {host}");
    }
}

#[test]
fn kubernetes_runs_a_fleet_of_three_on_a_nats_cluster_of_three() {
    let mut docs = Vec::new();
    let kustomization = document("docker/k8s/fleet/kustomization.yaml");
    for file in strings(&kustomization["resources"], "resources") {
        docs.extend(documents(&format!("docker/k8s/fleet/{file}")));
    }
    let configmap = kind(&docs, "ConfigMap", "cohort-fleet-config");
    let text = str_of(&configmap["data"]["cohort.yaml"], "cohort.yaml");
    validate_cohort_config("fleet/configmap.yaml:cohort.yaml", text);
    let config: Value = serde_yaml::from_str(text).unwrap();

    let deployment = kind(&docs, "Deployment", "cohort-fleet");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(3));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"],
        "cohort-fleet-config"
    );
    assert!(
        pod["volumes"][1]["emptyDir"].is_mapping(),
        "state_dir on an emptyDir"
    );
    let mounts = &pod["containers"][0]["volumeMounts"];
    assert_eq!(mounts[1]["mountPath"], config["state_dir"]);

    // The servers are the StatefulSet's pods by their stable names, and the bucket is kept on
    // as many of them as there are.
    let sts = kind(&docs, "StatefulSet", "cohort-nats");
    let nodes = sts["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(nodes, 3);
    let service = str_of(&sts["spec"]["serviceName"], "serviceName");
    let headless = kind(&docs, "Service", service);
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let names: Vec<String> = (0..nodes)
        .map(|i| format!("cohort-nats-{i}.{service}"))
        .collect();
    let expected: Vec<String> = names.iter().map(|n| format!("nats://{n}:4222")).collect();
    assert_eq!(strings(&config["fleet"]["servers"], "servers"), expected);
    assert_eq!(config["fleet"]["replicas"].as_u64(), Some(nodes));
    let nats_conf = str_of(
        &kind(&docs, "ConfigMap", "cohort-nats")["data"]["nats.conf"],
        "nats.conf",
    );
    for n in &names {
        assert!(
            nats_conf.contains(&format!("nats://{n}:6222")),
            "route to {n}"
        );
    }
    assert!(nats_conf.contains("jetstream"));
    assert_eq!(
        str_of(
            &sts["spec"]["template"]["spec"]["containers"][0]["image"],
            "image"
        ),
        format!("nats:{NATS_VERSION}-alpine")
    );
    for host in endpoint_hosts(&config) {
        kind(&docs, "Service", &host);
    }
}

fn kind<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn kubernetes_runs_cohort_as_a_sidecar_on_its_configmap() {
    let mut docs = Vec::new();
    let kustomization = document("docker/k8s/kustomization.yaml");
    for file in strings(&kustomization["resources"], "resources") {
        docs.extend(documents(&format!("docker/k8s/{file}")));
    }
    let configmap = kind(&docs, "ConfigMap", "cohort-config");
    let text = str_of(&configmap["data"]["cohort.yaml"], "cohort.yaml");
    let table = validate_cohort_config("configmap.yaml:cohort.yaml", text);
    assert!(
        table.admin_address.ip().is_unspecified(),
        "in a pod the admin listener binds 0.0.0.0 for scraping"
    );
    let admin_port = table.admin_address.port();
    let public_port = table.listeners[0].address.port();

    let deployment = kind(&docs, "Deployment", "support-agent");
    let pod = &deployment["spec"]["template"];
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        admin_port.to_string().as_str()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    assert!(containers.len() >= 2, "the agent and the cohort sidecar");
    let cohort = containers.iter().find(|c| c["name"] == "cohort").unwrap();
    let args = strings(&cohort["args"], "args");
    let config = args[args.iter().position(|a| a == "--config").unwrap() + 1].clone();
    let port = |name: &str| {
        cohort["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("container port {name}"))
    };
    assert_eq!(port("admin"), admin_port as u64);
    assert_eq!(port("http"), public_port as u64);
    assert_eq!(cohort["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(cohort["livenessProbe"]["httpGet"]["path"], "/healthz");

    // The ConfigMap is mounted as the directory holding --config, never through subPath.
    let volume = pod["spec"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["configMap"]["name"] == "cohort-config")
        .expect("a configMap volume");
    let mount = cohort["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .expect("the config volume is mounted");
    assert!(
        mount.get("subPath").is_none(),
        "subPath mounts never see ConfigMap updates"
    );
    assert_eq!(
        Path::new(&config).parent().unwrap(),
        Path::new(str_of(&mount["mountPath"], "mountPath"))
    );
    assert_eq!(Path::new(&config).file_name().unwrap(), "cohort.yaml");

    // The pod leaves the Service's endpoints during shutdown_delay, then drains, all within
    // the grace period; no preStop sleep stacks another delay in front.
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    assert!(
        table.shutdown_delay.as_secs() >= 5,
        "a delay for the endpoints controller"
    );
    let longest = table.shutdown_delay + table.shutdown_timeout + cohort::app::ABORT_GRACE;
    assert!(longest.as_secs() < grace, "{longest:?} within {grace}s");
    assert!(
        cohort["lifecycle"]["preStop"].is_null(),
        "shutdown_delay replaces the preStop sleep"
    );

    // The stable upstream is the agent beside cohort; the canary one is the canary Service.
    let agent = containers.iter().find(|c| c["name"] == "agent").unwrap();
    let agent_args = demo_agent_args(&strings(&agent["args"], "args"));
    let stable = table.routes[0].cohorts[0].upstream.name().to_string();
    assert_eq!(stable, "stable");
    let config: Value = serde_yaml::from_str(text).unwrap();
    let endpoint =
        |name: &str| strings(&config["upstreams"][name]["endpoints"], "endpoints").remove(0);
    assert_eq!(endpoint("stable"), format!("127.0.0.1:{}", agent_args.port));
    let canary_service = kind(&docs, "Service", "support-agent-canary");
    let canary_port = canary_service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        endpoint("canary"),
        format!("http://support-agent-canary:{canary_port}")
    );
    let canary = kind(&docs, "Deployment", "support-agent-canary");
    let canary_agent = &canary["spec"]["template"]["spec"]["containers"][0];
    let canary_args = demo_agent_args(&strings(&canary_agent["args"], "args"));
    assert_eq!(canary_args.port as u64, canary_port);
    for (selector, labels) in [
        (
            &canary_service["spec"]["selector"],
            &canary["spec"]["template"]["metadata"]["labels"],
        ),
        (
            &kind(&docs, "Service", "support-agent")["spec"]["selector"],
            &pod["metadata"]["labels"],
        ),
    ] {
        for (k, v) in selector.as_mapping().unwrap() {
            assert_eq!(&labels[k], v, "selector {k:?}");
        }
    }
    assert_eq!(
        kind(&docs, "Service", "support-agent")["spec"]["ports"][0]["targetPort"],
        "http"
    );

    // The PodMonitor (outside the kustomization) scrapes the admin port of the same pods.
    let monitor = document("docker/k8s/podmonitor.yaml");
    assert_eq!(monitor["kind"], "PodMonitor");
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], "admin");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(&pod["metadata"]["labels"][k], v);
    }
}

/// The metric families a PromQL text or dashboard uses: `cohort_...` names, histogram suffixes
/// removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("cohort_") {
        let start = i + at;
        let boundary = start == 0
            || !(bytes[start - 1].is_ascii_alphanumeric() || b"_:".contains(&bytes[start - 1]));
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary && text.as_bytes().get(end) != Some(&b':') {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_string());
        }
        i = end;
    }
    names
}

fn contract_metrics() -> BTreeSet<String> {
    use cohort::telemetry::*;
    [
        REQUESTS,
        DURATION,
        TTFB,
        UPSTREAM_FAILURES,
        OUTCOMES,
        IN_FLIGHT,
        SPLIT,
        UNROUTED,
        RELOADS,
        GENERATION,
        TOKENS,
        USAGE_ANSWERS,
        OUTPUT_TOKENS,
        COST,
        TTFT,
        INTER_TOKEN,
        cohort::control::rollout::STEP_PERCENT,
        cohort::control::rollout::STATE,
        cohort::control::rollout::DECISIONS,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn rules_use_only_contract_metrics_and_cover_the_issue() {
    let rules = document("docker/prometheus/rules.yml");
    let mut records = BTreeSet::new();
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = str_of(&rule["expr"], "expr");
            used.extend(metric_names(expr));
            if let Some(r) = rule["record"].as_str() {
                records.insert(r.to_string());
            } else {
                let alert = str_of(&rule["alert"], "alert").to_string();
                if alert.starts_with("CohortCanary") {
                    assert_eq!(rule["for"], "5m", "{alert}");
                }
                alerts.insert(alert);
            }
        }
    }
    let known = contract_metrics();
    assert!(
        used.is_subset(&known),
        "unknown metrics: {:?}",
        used.difference(&known).collect::<Vec<_>>()
    );
    for part in [
        "requests:rate",
        "error_ratio",
        "p50",
        "p95",
        "p99",
        "resolution",
        "escalation",
        "tokens:rate",
        "output_tokens_per_answer",
        "cost:rate",
        "cost_per_answer",
        "usage_coverage",
    ] {
        assert!(
            records.iter().any(|r| r.contains(part)),
            "no recording rule for {part}"
        );
    }
    for quantity in [
        "request_duration_seconds",
        "time_to_first_byte_seconds",
        "time_to_first_token_seconds",
        "inter_token_seconds",
    ] {
        for q in ["p50", "p95", "p99"] {
            assert!(
                records
                    .iter()
                    .any(|r| r.contains(quantity) && r.contains(q)),
                "{quantity} {q}"
            );
        }
    }
    for alert in [
        "CohortCanaryErrorRatioAboveStable",
        "CohortCanaryLatencyAboveStable",
        "CohortCanaryEscalationsAboveStable",
        "CohortCanaryTTFTAboveStable",
        "CohortCanaryInterTokenAboveStable",
        "CohortCanaryOutputTokensAboveStable",
        "CohortCanaryCostPerAnswerAboveStable",
        "CohortUsageMissing",
    ] {
        assert!(alerts.contains(alert), "{alert}");
    }
    // Every alert is exercised by the promtool unit tests.
    let tests = read("docker/prometheus/rules_test.yml");
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("docker/grafana/dashboards/cohort.json")).unwrap()
}

/// Each target's PromQL, with its panel.
fn queries(dashboard: &serde_json::Value) -> Vec<(&serde_json::Value, &str)> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((p, t["expr"].as_str().unwrap()));
        }
    }
    out
}

/// The matchers (`{...}`) after each occurrence of `family` (or its histogram series).
fn selectors<'a>(expr: &'a str, family: &str) -> Vec<&'a str> {
    expr.match_indices(family)
        .map(|(at, _)| {
            let rest = &expr[at + family.len()..];
            let rest = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| rest.strip_prefix(s))
                .unwrap_or(rest);
            let body = rest
                .strip_prefix('{')
                .unwrap_or_else(|| panic!("{family} without matchers in {expr}"));
            &body[..body.find('}').unwrap()]
        })
        .collect()
}

/// The values a PromQL text matches `label` against with `=`.
fn label_values(expr: &str, label: &str) -> Vec<String> {
    let pattern = format!("{label}=\"");
    expr.match_indices(&pattern)
        .filter(|(at, _)| *at > 0 && matches!(expr.as_bytes()[at - 1], b'{' | b','))
        .map(|(at, _)| {
            let value = &expr[at + pattern.len()..];
            value[..value.find('"').unwrap()].to_string()
        })
        .collect()
}

#[test]
fn the_dashboard_compares_cohorts_on_contract_metrics() {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut titles = String::new();
    let mut areas: Vec<(u64, u64, u64, u64)> = Vec::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id");
        let grid = &p["gridPos"];
        let at = |k: &str| grid[k].as_u64().unwrap();
        let (x, y, w, h) = (at("x"), at("y"), at("w"), at("h"));
        assert!(x + w <= 24);
        for &(x2, y2, w2, h2) in &areas {
            let apart = x + w <= x2 || x2 + w2 <= x || y + h <= y2 || y2 + h2 <= y;
            assert!(apart, "{:?} overlaps another panel", p["title"]);
        }
        areas.push((x, y, w, h));
        titles.push_str(&p["title"].as_str().unwrap().to_lowercase());
        titles.push('\n');
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{:?}", p["title"]);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{:?}", p["title"]);
        }
    }
    for (_, expr) in queries(&dashboard) {
        assert!(!metric_names(expr).is_empty(), "{expr}");
        used.extend(metric_names(expr));
    }
    let known = contract_metrics();
    assert!(
        used.is_subset(&known),
        "unknown metrics: {:?}",
        used.difference(&known).collect::<Vec<_>>()
    );
    for m in [
        cohort::telemetry::REQUESTS,
        cohort::telemetry::DURATION,
        cohort::telemetry::TTFB,
        cohort::telemetry::OUTCOMES,
        cohort::telemetry::SPLIT,
        cohort::telemetry::RELOADS,
        cohort::telemetry::GENERATION,
        cohort::telemetry::TOKENS,
        cohort::telemetry::USAGE_ANSWERS,
        cohort::telemetry::OUTPUT_TOKENS,
        cohort::telemetry::COST,
        cohort::telemetry::TTFT,
        cohort::telemetry::INTER_TOKEN,
        cohort::control::rollout::STEP_PERCENT,
        cohort::control::rollout::STATE,
        cohort::control::rollout::DECISIONS,
    ] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }
    // Every query on a metric with a route label follows the route variable.
    let unlabelled = [
        cohort::telemetry::UNROUTED,
        cohort::telemetry::RELOADS,
        cohort::telemetry::GENERATION,
    ];
    for (_, expr) in queries(&dashboard) {
        for m in known.iter().filter(|m| !unlabelled.contains(&m.as_str())) {
            for matchers in selectors(expr, m) {
                assert!(
                    matchers.contains("route=~\"$route\""),
                    "{m} ignores $route in {expr}"
                );
            }
        }
    }
    for topic in [
        "requests per second",
        "error ratio",
        "request duration",
        "time to first byte",
        "outcome",
        "split percent",
        "config reloads",
        "config generation",
        "rollout state",
        "rollout step percent",
        "rollout decisions",
        "output tokens per answer",
        "cost per 1,000 answers",
        "spend per hour",
        "tokens per second",
        "usage coverage",
        "time to first token",
        "inter-token",
    ] {
        assert!(titles.contains(topic), "no panel about {topic}:\n{titles}");
    }
    // Side by side: a panel repeated for each cohort, horizontally.
    assert!(panels
        .iter()
        .any(|p| p["repeat"] == "cohort" && p["repeatDirection"] == "h"));
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "route", "cohort"]);
    let datasource = document("docker/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(datasource["datasources"][0]["type"], "prometheus");
}

#[test]
fn the_dashboard_names_rollout_states_and_decisions_as_cohort_does() {
    use cohort::control::rollout::{DecisionKind, Phase, STATE};
    let dashboard = dashboard();
    let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    let decisions: Vec<&str> = DecisionKind::ALL.iter().map(|d| d.as_str()).collect();
    for (_, expr) in queries(&dashboard) {
        for state in label_values(expr, "state") {
            assert!(phases.contains(&state.as_str()), "no state {state}: {expr}");
        }
        for decision in label_values(expr, "decision") {
            assert!(
                decisions.contains(&decision.as_str()),
                "no decision {decision}"
            );
        }
    }

    // The state panel codes each state as a number (`state="..."} * N`, most serious
    // highest) and maps each number back to the state's name.
    let (panel, expr) = queries(&dashboard)
        .into_iter()
        .find(|(_, e)| metric_names(e).contains(STATE))
        .expect("a panel on the rollout state");
    assert_eq!(panel["type"], "state-timeline");
    let mappings = &panel["fieldConfig"]["defaults"]["mappings"][0]["options"];
    let mut codes = BTreeSet::new();
    for phase in &phases {
        let pattern = format!("state=\"{phase}\"}} * ");
        let at = expr
            .find(&pattern)
            .unwrap_or_else(|| panic!("no code for {phase}"));
        let code: String = expr[at + pattern.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        assert!(codes.insert(code.clone()), "{phase} shares code {code}");
        assert_eq!(mappings[&code]["text"], *phase, "code {code}");
    }
    assert!(!codes.contains("0"), "0 is a route with no rollout");
    assert!(mappings["0"]["text"].is_string());
    assert_eq!(
        mappings.as_object().unwrap().len(),
        phases.len() + 1,
        "{mappings}"
    );

    // Rollbacks stand out among the decisions.
    let (panel, _) = queries(&dashboard)
        .into_iter()
        .find(|(_, e)| metric_names(e).contains(cohort::control::rollout::DECISIONS))
        .expect("a panel on the rollout decisions");
    let overrides = panel["fieldConfig"]["overrides"].to_string();
    assert!(
        overrides.contains(DecisionKind::Rollback.as_str()),
        "{overrides}"
    );
}

/// Dockerfile instructions, continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') && current.is_empty()
            || trimmed.is_empty() && current.is_empty()
        {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((word.to_uppercase(), rest.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn the_dockerfile_builds_what_cargo_builds_and_runs_unprivileged() {
    let dockerfile = read("docker/Dockerfile");
    let steps = instructions(&dockerfile);
    let stages: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, (w, _))| w == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (&steps[stages[0]..stages[1]], &steps[stages[1]..]);
    assert!(build[0].1.ends_with(" AS build"), "{:?}", build[0]);

    let runs: Vec<&str> = build
        .iter()
        .filter(|(w, _)| w == "RUN")
        .map(|(_, r)| r.as_str())
        .collect();
    assert!(
        runs.iter()
            .any(|r| r.contains("cargo build --locked --release")),
        "{runs:?}"
    );

    // What the build stage copies in covers every file cargo reads.
    let mut copied = Vec::new();
    for (_, rest) in build.iter().filter(|(w, _)| w == "COPY") {
        let words: Vec<&str> = rest.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            assert!(
                repo().join(src).exists(),
                "COPY {src}: not in the repository"
            );
            copied.push(src.trim_end_matches('/').to_string());
        }
    }
    let covered = |path: &str| {
        copied
            .iter()
            .any(|c| path == c || path.starts_with(&format!("{c}/")))
    };
    let manifest = read("Cargo.toml");
    let mut needed = vec![
        "Cargo.toml".to_string(),
        "Cargo.lock".to_string(),
        "src/main.rs".to_string(),
        "src/lib.rs".to_string(),
    ];
    let mut section = String::new();
    for line in manifest.lines() {
        if line.starts_with('[') {
            section = line.to_string();
        } else if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().trim_matches('"');
            if key.trim() == "name" && section == "[[bench]]" {
                needed.push(format!("benches/{value}.rs"));
            } else if key.trim() == "path" && section.starts_with('[') {
                needed.push(value.to_string());
            }
        }
    }
    let mut sources = Vec::new();
    rust_files(&repo().join("src"), &mut sources);
    for file in sources {
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text
            .match_indices("include_str!(\"")
            .chain(text.match_indices("include_bytes!(\""))
        {
            let arg = &text[at..];
            let start = arg.find('"').unwrap() + 1;
            let end = start + arg[start..].find('"').unwrap();
            let target = file.parent().unwrap().join(&arg[start..end]);
            let target = target
                .canonicalize()
                .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
            let rel = target.strip_prefix(repo().canonicalize().unwrap()).unwrap();
            needed.push(rel.to_string_lossy().into_owned());
        }
    }
    for path in &needed {
        assert!(
            covered(path),
            "the build stage does not COPY {path} (copies {copied:?})"
        );
    }

    // The context filter lets through everything the Dockerfile copies.
    let ignore = read("docker/Dockerfile.dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for (_, rest) in steps
        .iter()
        .filter(|(w, r)| w == "COPY" && !r.starts_with("--from"))
    {
        let words: Vec<&str> = rest.split_whitespace().collect();
        for src in &words[..words.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(
                allowed
                    .iter()
                    .any(|a| src == *a || src.starts_with(&format!("{a}/"))),
                "{src} is excluded by Dockerfile.dockerignore"
            );
        }
    }

    // Runtime: the binary from the build stage, a numeric non-root user, a health check on
    // the admin /healthz of the config it ships, and `run` on that config.
    let get = |word: &str| {
        runtime
            .iter()
            .filter(|(w, _)| w == word)
            .map(|(_, r)| r.clone())
            .collect::<Vec<_>>()
    };
    assert!(get("COPY")
        .iter()
        .any(|c| c.starts_with("--from=build ") && c.ends_with(" /usr/local/bin/cohort")));
    let user = get("USER").pop().expect("a USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric user");
    assert_ne!(uid, 0);
    let config_copy = get("COPY")
        .into_iter()
        .find(|c| c.ends_with(" /etc/cohort/cohort.yaml"))
        .expect("a default config");
    let config_src = config_copy.split_whitespace().next().unwrap();
    let table = validate_cohort_config(config_src, &read(config_src));
    let json =
        |s: &str| -> Vec<String> { serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}")) };
    let health = get("HEALTHCHECK").pop().expect("a HEALTHCHECK");
    let cmd = json(&health[health.find("CMD ").expect("HEALTHCHECK ... CMD") + 4..]);
    assert_eq!(cmd[..2], ["/usr/local/bin/cohort", "healthcheck"]);
    assert_eq!(
        cmd[2..],
        [
            "--url".to_string(),
            format!("http://127.0.0.1:{}/healthz", table.admin_address.port())
        ]
    );
    let entrypoint = json(&get("ENTRYPOINT").pop().unwrap());
    let command = json(&get("CMD").pop().unwrap());
    assert_eq!(entrypoint, ["/usr/local/bin/cohort"]);
    assert_eq!(command, ["run", "--config", "/etc/cohort/cohort.yaml"]);
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn compose_defaults_substitute_like_compose() {
    assert_eq!(compose_defaults("${A:-12%}"), "12%");
    assert_eq!(compose_defaults("x${A:-1}y${B}z"), "x1yz");
    assert_eq!(compose_defaults("plain"), "plain");
}

#[test]
fn metric_names_finds_families_not_recording_rules() {
    let names = metric_names(
        "sum(rate(cohort_requests_total[5m])) / route_cohort:cohort_requests:rate5m + cohort_time_to_first_byte_seconds_bucket",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["cohort_requests_total", "cohort_time_to_first_byte_seconds"]
    );
}
