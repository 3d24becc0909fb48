//! Tests of `[service.rollout]` validation: defaults, every setting, every error path.
use crate::config::{Config, ConfigError, OnInconclusive};

const BASE: &str = "[[service]]\nname = \"api\"\nkey = [\"ip\"]\n[[service.variant]]\nname = \"stable\"\nweight = 95\nbackends = [\"127.0.0.1:9000\"]\n[[service.variant]]\nname = \"canary\"\nweight = 5\nbackends = [\"127.0.0.1:9001\"]\n";

fn parse(rollout: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("{BASE}[service.rollout]\n{rollout}\n"))
}

fn errors(rollout: &str) -> Vec<String> {
    match parse(rollout) {
        Ok(_) => Vec::new(),
        Err(e) => e.lines(),
    }
}

const MIN: &str = "id = \"v2\"\ncanary = \"canary\"\nbaseline = \"stable\"";

#[test]
fn spec_defaults_apply() {
    let c = parse(MIN).unwrap();
    let r = c.services[0].rollout.as_ref().unwrap();
    assert_eq!(r.id, "v2");
    assert_eq!((r.canary.index, r.baseline.index), (1, 0));
    assert_eq!(r.steps, [1.0, 5.0, 25.0, 50.0]);
    assert_eq!(
        (r.step_secs, r.check_secs, r.max_step_secs),
        (300, 30, 1800)
    );
    assert_eq!(r.on_inconclusive, OnInconclusive::Rollback);
    assert_eq!(r.failure_limit, 2);
    assert_eq!(r.webhook, None);
    let g = r.gates;
    assert_eq!(g.max_error_increase, 0.005);
    assert_eq!(g.confidence, 0.99);
    assert_eq!(g.min_requests, 500);
    assert_eq!(g.latency_quantile, 0.99);
    assert_eq!(g.max_latency_ratio, 1.25);
    assert_eq!(g.latency_slack_ms, 5.0);
}

#[test]
fn a_service_without_rollout_has_none() {
    let c = Config::parse(BASE).unwrap();
    assert!(c.services[0].rollout.is_none());
}

#[test]
fn every_setting_is_read() {
    let c = parse(&format!(
        "{MIN}\nsteps = [0.5, 2, 10]\nstep_secs = 60\ncheck_secs = 10\nmax_step_secs = 600\non_inconclusive = \"hold\"\nfailure_limit = 3\nwebhook = \"https://hooks.example.com/x\"\n[service.rollout.gates]\nmax_error_increase = 0\nconfidence = 0.95\nmin_requests = 100\nlatency_quantile = 0.9\nmax_latency_ratio = 1\nlatency_slack_ms = 0"
    ))
    .unwrap();
    let r = c.services[0].rollout.as_ref().unwrap();
    assert_eq!(r.steps, [0.5, 2.0, 10.0]);
    assert_eq!((r.step_secs, r.check_secs, r.max_step_secs), (60, 10, 600));
    assert_eq!(r.on_inconclusive, OnInconclusive::Hold);
    assert_eq!(r.failure_limit, 3);
    assert_eq!(r.webhook.as_deref(), Some("https://hooks.example.com/x"));
    assert_eq!(r.gates.confidence, 0.95);
    assert_eq!(r.gates.min_requests, 100);
    assert_eq!(r.gates.max_latency_ratio, 1.0);
}

#[test]
fn each_invalid_setting_is_reported_at_its_path() {
    let p = "service[0].rollout";
    let cases: Vec<(String, String)> = vec![
        (MIN.replace("\"v2\"", "\"\""), format!("{p}.id: must name")),
        (
            MIN.replace("\"canary\"\nb", "\"canry\"\nb"),
            format!("{p}.canary: unknown variant \"canry\""),
        ),
        (
            MIN.replace("\"stable\"", "\"old\""),
            format!("{p}.baseline: unknown variant \"old\""),
        ),
        (
            MIN.replace("\"stable\"", "\"canary\""),
            format!("{p}.baseline: must differ from canary"),
        ),
        (
            format!("{MIN}\nsteps = []"),
            format!("{p}.steps: must list at least one"),
        ),
        (
            format!("{MIN}\nsteps = [1, 5, 5]"),
            format!("{p}.steps[2]: must be greater than the step before"),
        ),
        (
            format!("{MIN}\nsteps = [10, 5]"),
            format!("{p}.steps[1]: must be greater"),
        ),
        (
            format!("{MIN}\nsteps = [0, 5]"),
            format!("{p}.steps[0]: must be a percentage in (0, 100)"),
        ),
        (
            format!("{MIN}\nsteps = [5, 100]"),
            format!("{p}.steps[1]: must be a percentage in (0, 100)"),
        ),
        (
            format!("{MIN}\nsteps = [nan]"),
            format!("{p}.steps[0]: must be a percentage"),
        ),
        (
            format!("{MIN}\nstep_secs = 0"),
            format!("{p}.step_secs: must be 1 to"),
        ),
        (
            format!("{MIN}\ncheck_secs = 0"),
            format!("{p}.check_secs: must be 1 to"),
        ),
        (
            format!("{MIN}\ncheck_secs = 400"),
            format!("{p}.check_secs: must be <= step_secs"),
        ),
        (
            format!("{MIN}\nmax_step_secs = 200"),
            format!("{p}.max_step_secs: must be >= step_secs"),
        ),
        (
            format!("{MIN}\non_inconclusive = \"retry\""),
            format!("{p}.on_inconclusive: \"retry\": expected rollback, advance or hold"),
        ),
        (
            format!("{MIN}\nfailure_limit = 0"),
            format!("{p}.failure_limit: must be >= 1"),
        ),
        (
            format!("{MIN}\nwebhook = \"ftp://x\""),
            format!("{p}.webhook: \"ftp://x\" is not an http"),
        ),
        (
            format!("{MIN}\nwebhook = \"hooks.example.com\""),
            format!("{p}.webhook:"),
        ),
        (
            format!("{MIN}\n[service.rollout.gates]\nmax_error_increase = 1"),
            format!("{p}.gates.max_error_increase: must be in [0, 1)"),
        ),
        (
            format!("{MIN}\n[service.rollout.gates]\nmax_error_increase = -0.1"),
            format!("{p}.gates.max_error_increase:"),
        ),
        (
            format!("{MIN}\n[service.rollout.gates]\nconfidence = 1"),
            format!("{p}.gates.confidence: must be in (0, 1)"),
        ),
        (
            format!("{MIN}\n[service.rollout.gates]\nconfidence = 0"),
            format!("{p}.gates.confidence:"),
        ),
        (
            format!("{MIN}\n[service.rollout.gates]\nmin_requests = 0"),
            format!("{p}.gates.min_requests: must be >= 1"),
        ),
        (
            format!("{MIN}\n[service.rollout.gates]\nlatency_quantile = 1"),
            format!("{p}.gates.latency_quantile: must be in (0, 1)"),
        ),
        (
            format!("{MIN}\n[service.rollout.gates]\nmax_latency_ratio = 0.9"),
            format!("{p}.gates.max_latency_ratio: must be >= 1"),
        ),
        (
            format!("{MIN}\n[service.rollout.gates]\nlatency_slack_ms = -1"),
            format!("{p}.gates.latency_slack_ms: must be >= 0"),
        ),
    ];
    for (text, want) in cases {
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{text}\n{errs:?}");
        assert!(
            errs[0].starts_with(&want),
            "{text}\ngot {errs:?}\nwant {want}"
        );
    }
}

#[test]
fn unknown_fields_are_syntax_errors() {
    let errs = errors(&format!("{MIN}\nstep = [1]"));
    assert!(errs[0].contains("unknown field `step`"), "{errs:?}");
    let errs = errors(&format!("{MIN}\n[service.rollout.gates]\nconfidnce = 0.9"));
    assert!(errs[0].contains("unknown field `confidnce`"), "{errs:?}");
}

#[test]
fn canary_and_baseline_with_zero_weights_have_no_users_to_split() {
    let text = BASE
        .replace("weight = 95", "weight = 0")
        .replace("weight = 5", "weight = 0")
        + "[[service.variant]]\nname = \"beta\"\nweight = 1\nbackends = [\"127.0.0.1:9002\"]\n"
        + "[service.rollout]\n"
        + MIN;
    let errs = Config::parse(&text).unwrap_err().lines();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0]
            .starts_with("service[0].rollout: the weights of \"canary\" and \"stable\" sum to 0"),
        "{errs:?}"
    );
}

/// The annotated example in conf/cohort.toml is commented out (a rollout is opt-in);
/// uncommented, it must be valid.
#[test]
fn the_commented_example_in_conf_cohort_toml_is_valid() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/cohort.toml")).unwrap();
    let start = text
        .find("# [service.rollout]")
        .expect("rollout example in conf/cohort.toml");
    let block: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
        .collect::<Vec<_>>()
        .join("\n");
    let c = Config::parse(&format!("{BASE}{block}\n")).unwrap();
    let r = c.services[0].rollout.as_ref().unwrap();
    assert_eq!(r.steps, [1.0, 5.0, 25.0, 50.0]);
    assert!(block.contains("[service.rollout.gates]"), "{block}");
}
