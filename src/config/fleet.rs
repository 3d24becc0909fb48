//! `[server.fleet]`: the instances fed by one config source run their rollouts together.
//! One of them, the *decider*, runs every check on the fleet's summed counters and is the
//! only writer of rollout state; the others follow it (`crate::rollouts::fleet`). Which
//! process decides is settled at start: the one whose admin listener is `decider`.

use super::error::Errors;
use super::file::ServerFile;
use std::net::SocketAddr;

/// `[server.fleet]` after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The decider's admin address: followers send it their counters and take the
    /// rollout states from it; the process listening there decides.
    pub decider: SocketAddr,
}

/// `[server.fleet]`, if present: `decider` is an IP:port other followers can reach, and a
/// decider off loopback needs `server.admin_token_env` (followers' reports are POST
/// calls, which a non-loopback peer makes only with the token).
pub(super) fn validate(f: &ServerFile, errs: &mut Errors) -> Option<FleetConfig> {
    let fleet = f.fleet.as_ref()?;
    let path = "server.fleet.decider";
    let Some(text) = fleet.decider.as_deref() else {
        errs.push(
            path,
            "required: the admin address (IP:port) of the instance that decides the fleet's rollouts",
        );
        return None;
    };
    let Ok(decider) = text.parse::<SocketAddr>() else {
        errs.push(
            path,
            format!("{text:?} is not an IP:port address (the decider's server.admin, such as \"10.0.1.5:9090\")"),
        );
        return None;
    };
    let ip = decider.ip().to_canonical();
    if ip.is_unspecified() || decider.port() == 0 {
        errs.push(
            path,
            format!("{text:?} is not an address followers can reach (name the decider's own IP and admin port)"),
        );
        return None;
    }
    let token_set = f.admin_token_env.as_deref().is_some_and(|v| !v.is_empty());
    if !ip.is_loopback() && !token_set {
        errs.push(
            path,
            format!("a decider off loopback ({text}) needs server.admin_token_env: followers report to it with POST calls, which it accepts from other hosts only with the token"),
        );
        return None;
    }
    Some(FleetConfig { decider })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(server: &str) -> Result<Option<super::FleetConfig>, String> {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n{server}\n[[service]]\nname = \"api\"\n[[service.variant]]\nname = \"stable\"\nweight = 1\nbackends = [\"127.0.0.1:9\"]\n"
        );
        Config::parse(&text)
            .map(|c| c.server.fleet)
            .map_err(|e| e.lines().join("\n"))
    }

    #[test]
    fn no_fleet_table_is_one_instance() {
        assert_eq!(parse(""), Ok(None));
    }

    #[test]
    fn a_loopback_decider_needs_no_token() {
        let f = parse("[server.fleet]\ndecider = \"127.0.0.1:9091\"")
            .unwrap()
            .unwrap();
        assert_eq!(f.decider, "127.0.0.1:9091".parse().unwrap());
    }

    #[test]
    fn a_decider_off_loopback_needs_the_admin_token() {
        let err = parse("[server.fleet]\ndecider = \"10.0.1.5:9090\"").unwrap_err();
        assert!(
            err.starts_with("server.fleet.decider: ") && err.contains("admin_token_env"),
            "{err}"
        );
        let ok = parse("admin_token_env = \"T\"\n[server.fleet]\ndecider = \"10.0.1.5:9090\"");
        assert!(matches!(ok, Ok(Some(_))), "{ok:?}");
    }

    /// The commented example in conf/cohort.toml, uncommented, is valid.
    #[test]
    fn the_commented_example_in_conf_cohort_toml_is_valid() {
        let text = include_str!("../../conf/cohort.toml");
        let start = text.find("# [server.fleet]").expect("fleet example");
        let block: Vec<&str> = text[start..]
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .collect();
        let f = parse(&format!("admin_token_env = \"T\"\n{}", block.join("\n")))
            .unwrap()
            .unwrap();
        assert_eq!(f.decider, "10.0.1.5:9090".parse().unwrap());
    }

    #[test]
    fn bad_deciders_are_named_by_their_field_path() {
        for bad in [
            "[server.fleet]",
            "[server.fleet]\ndecider = \"decider.internal:9090\"",
            "[server.fleet]\ndecider = \"0.0.0.0:9090\"",
            "[server.fleet]\ndecider = \"127.0.0.1:0\"",
            "[server.fleet]\ndecider = \"127.0.0.1\"",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.starts_with("server.fleet.decider: "), "{bad}: {err}");
        }
        let err = parse("[server.fleet]\ndecider = \"127.0.0.1:9\"\npeers = []").unwrap_err();
        assert!(err.contains("peers"), "unknown fields are refused: {err}");
    }
}
