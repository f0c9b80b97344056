//! The `/metrics` scrape: Prometheus text parsed into samples, looked up by name and labels,
//! and checked for well-formedness (one `# HELP` and one `# TYPE` before each family).
//!
//! Owns: reading the exposition format. Must not touch: fetching it (`TestProxy::scrape`).

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed Prometheus text scrape.
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("bad sample line {l:?}")))
            .collect();
        Scrape {
            text: text.into(),
            samples,
        }
    }

    /// The value of the series with exactly these labels (in any order).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
    }

    /// Like [`Scrape::get`], failing the test (and listing the series of `name`) when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let known: Vec<_> = self.samples.iter().filter(|s| s.name == name).collect();
            panic!("no series {name}{labels:?}; series of that name: {known:#?}")
        })
    }

    /// Basic exposition-format sanity: every sample belongs to a family announced by exactly
    /// one `# HELP` and one `# TYPE` line, which come before its samples.
    pub fn assert_well_formed(&self) {
        use std::collections::HashMap;
        let mut help: HashMap<&str, usize> = HashMap::new();
        let mut kind: HashMap<&str, &str> = HashMap::new();
        for line in self.text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                *help.entry(name).or_default() += 1;
                assert!(
                    rest.len() > name.len() + 1,
                    "empty help text for {name}: {line:?}"
                );
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, t) = rest.split_once(' ').expect("# TYPE name type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                    "unknown type in {line:?}"
                );
                assert!(kind.insert(name, t).is_none(), "second # TYPE for {name}");
            } else if line.starts_with('#') || line.is_empty() {
                continue;
            } else {
                let sample = parse_sample(line).unwrap();
                let family = family_of(&sample.name, &kind);
                assert!(
                    kind.contains_key(family),
                    "sample {line:?} comes before (or without) a # TYPE for {family}"
                );
                assert_eq!(
                    help.get(family),
                    Some(&1),
                    "family {family} needs exactly one # HELP before its samples"
                );
            }
        }
        assert!(!kind.is_empty(), "no metric families in the scrape");
    }

    /// Every series of `name`, for checks over all label sets.
    pub fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (n, v) = line.split_once(' ')?;
            return Some(Sample {
                name: n.into(),
                labels: Vec::new(),
                value: parse_value(v)?,
            });
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest.char_indices().peekable();
    loop {
        let (start, c) = chars.next()?;
        if c == '}' {
            let value = rest[start + 1..].trim();
            return Some(Sample {
                name: name.into(),
                labels,
                value: parse_value(value)?,
            });
        }
        if c == ',' {
            continue;
        }
        let eq = rest[start..].find('=')? + start;
        let key = rest[start..eq].trim().to_string();
        while chars.peek()?.0 <= eq {
            chars.next();
        }
        if chars.next()?.1 != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()?.1 {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.push((key, value));
    }
}

/// The family a sample belongs to: histogram and summary samples carry a suffix.
fn family_of<'a>(name: &'a str, kinds: &std::collections::HashMap<&str, &str>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(kinds.get(base), Some(&"histogram") | Some(&"summary")) {
                return base;
            }
        }
    }
    name
}

fn parse_value(v: &str) -> Option<f64> {
    let v = v.split_whitespace().next()?;
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => v.parse().ok(),
    }
}
