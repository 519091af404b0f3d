//! The OpenMetrics text exposition (1.0.0), served to scrapers that ask for it: the Prometheus
//! text with each counter's family named without `_total` (its samples keep it), quotes escaped
//! in HELP, no blank lines, an exemplar on every histogram bucket that has one, and the closing
//! `# EOF`.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use super::exemplars::Exemplars;

/// The media type of the OpenMetrics exposition.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (as Prometheus does by default).
pub(crate) fn asked_for(accept: &str) -> bool {
    accept
        .split(',')
        .filter_map(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next()?;
            // A range the client refuses (`q=0`) does not count.
            let refused = parts.any(|p| p.strip_prefix("q=").is_some_and(|q| q.parse::<f32>() == Ok(0.0)));
            (!refused).then_some(media)
        })
        .any(|media| media.eq_ignore_ascii_case("application/openmetrics-text"))
}

/// `text` (the Prometheus exposition) as OpenMetrics, with the exemplars of `exemplars`.
pub(crate) fn convert(text: &str, exemplars: &Exemplars) -> String {
    let snapshot = exemplars.snapshot();
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            (kind.trim() == "counter").then_some(name)
        })
        .collect();
    let family = |name: &str| -> String {
        match counters.contains(name) {
            true => name.strip_suffix("_total").unwrap_or(name).to_owned(),
            false => name.to_owned(),
        }
    };
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let _ = writeln!(out, "# HELP {} {}", family(name), help.replace('"', "\\\""));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let _ = writeln!(out, "# TYPE {} {}", family(name), kind.trim());
        } else if line.is_empty() || line.starts_with('#') {
            // OpenMetrics has no blank lines and no other comments.
        } else {
            sample(&mut out, line, &counters, &snapshot, exemplars);
        }
    }
    out.push_str("# EOF\n");
    out
}

/// Writes the sample `line`: a counter's sample named with `_total`, a bucket with its exemplar.
fn sample(
    out: &mut String,
    line: &str,
    counters: &HashSet<&str>,
    snapshot: &HashMap<(String, String), Vec<Option<String>>>,
    exemplars: &Exemplars,
) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    if counters.contains(name) && !name.ends_with("_total") {
        let _ = write!(out, "{name}_total{rest}");
    } else {
        out.push_str(line);
    }
    if let Some(exemplar) = name
        .strip_suffix("_bucket")
        .and_then(|histogram| bucket_exemplar(histogram, rest, snapshot, exemplars))
    {
        let _ = write!(out, " # {exemplar}");
    }
    out.push('\n');
}

/// The exemplar of the bucket whose labels and value are `rest` (`{a="x",le="0.1"} 3`).
fn bucket_exemplar<'a>(
    histogram: &str,
    rest: &str,
    snapshot: &'a HashMap<(String, String), Vec<Option<String>>>,
    exemplars: &Exemplars,
) -> Option<&'a str> {
    let labels = rest.strip_prefix('{')?.rsplit_once('}')?.0;
    // `le` is written last.
    let at = labels.rfind("le=\"")?;
    let le = labels[at + 4..].strip_suffix('"')?;
    let others = labels[..at].strip_suffix(',').unwrap_or(&labels[..at]);
    let slots = snapshot.get(&(histogram.to_owned(), others.to_owned()))?;
    slots.get(exemplars.bucket(le)?)?.as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_asked_for_as_prometheus_asks() {
        assert!(asked_for(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        ));
        assert!(!asked_for("text/plain;version=0.0.4"));
        assert!(!asked_for("application/openmetrics-text;q=0, text/plain"));
        assert!(!asked_for("*/*"));
    }

    #[test]
    fn counters_are_named_without_total_and_the_exposition_ends_with_eof() {
        let text = "# HELP jobs_total Jobs \"done\".\n# TYPE jobs_total counter\njobs_total{queue=\"a\"} 3\n\n\
                    # TYPE plain counter\nplain 1\n# TYPE depth gauge\ndepth 2\n";
        let converted = convert(text, &Exemplars::new(&[0.1]));
        assert_eq!(
            converted,
            "# HELP jobs Jobs \\\"done\\\".\n# TYPE jobs counter\njobs_total{queue=\"a\"} 3\n\
             # TYPE plain counter\nplain_total 1\n# TYPE depth gauge\ndepth 2\n# EOF\n"
        );
    }
}
