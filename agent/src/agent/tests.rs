//! Tests of the agent's start-up: its configuration, addresses and the errors that stop it.

use std::time::Duration;

use super::start::{
    allocator_endpoint, allocator_uris, egress_rate, managed_ports, offer_egress, withhold_ports,
};
use super::*;
use crate::checkpoint;

#[test]
fn allocator_addresses_are_normalized() {
    let one = |a: &str| allocator_uris(a).map(|v| v.join(","));
    assert_eq!(
        one("http://127.0.0.1:5050").unwrap(),
        "http://127.0.0.1:5050"
    );
    assert_eq!(one("127.0.0.1:5050").unwrap(), "http://127.0.0.1:5050");
    assert_eq!(one(" http://alloc:5050/ ").unwrap(), "http://alloc:5050");
    assert_eq!(one("https://alloc:5050/").unwrap(), "https://alloc:5050");
    // The replicas of one cluster.
    assert_eq!(
        one("a:5050,https://b:5050").unwrap(),
        "http://a:5050,https://b:5050"
    );
    assert!(one("ftp://alloc:5050").is_err());
    assert!(one("").is_err());
    assert!(one("http://").is_err());
}

#[test]
fn an_https_allocator_needs_the_ca_and_a_whole_identity() {
    let dir = tempfile::tempdir().unwrap();
    let ca = strata_auth::certs::init_ca(dir.path()).unwrap();
    let me = strata_auth::certs::issue(dir.path(), "agent-1", &[]).unwrap();
    let address = "https://alloc:5050";
    let mut config = AgentConfig::new(address, dir.path());
    let e = allocator_endpoint(&config, address).unwrap_err();
    assert!(e.to_string().contains("--tls-ca"), "{e}");
    // Plain allocators read no TLS files.
    config.allocator_tls.ca = Some(dir.path().join("missing.pem"));
    allocator_endpoint(&config, "http://alloc:5050").unwrap();
    let e = allocator_endpoint(&config, address).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    config.allocator_tls.ca = Some(ca.cert.clone());
    allocator_endpoint(&config, address).unwrap();
    config.allocator_tls.cert = Some(me.cert.clone());
    let e = allocator_endpoint(&config, address).unwrap_err();
    assert!(e.to_string().contains("--tls-key"), "{e}");
    assert!(e.to_string().contains("agent-1.pem"), "{e}");
    config.allocator_tls.key = Some(me.key.clone());
    allocator_endpoint(&config, address).unwrap();
}

#[test]
fn config_defaults_match_the_contract() {
    let c = AgentConfig::new("http://127.0.0.1:5050", "/tmp/w");
    assert_eq!(c.default_kill_grace_period, Duration::from_secs(3));
    assert_eq!(c.status_update_retry, Duration::from_secs(10));
    assert_eq!(c.reconnect_backoff_max, Duration::from_secs(5));
    assert_eq!(c.ports, None);
    assert!(c.attributes.is_empty());
}

#[tokio::test]
async fn a_corrupt_agent_id_stops_the_agent_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(checkpoint::AGENT_ID_FILE), "").unwrap();
    let config = AgentConfig::new("127.0.0.1:1", dir.path());
    let err = tokio::time::timeout(Duration::from_secs(10), run(config, std::future::pending()))
        .await
        .expect("run returns at once")
        .unwrap_err();
    assert!(matches!(err, AgentError::AgentId(_)), "{err:?}");
    assert!(err.to_string().contains("agent_id"), "{err}");
}

#[tokio::test]
async fn a_bad_allocator_address_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig::new("ftp://x", dir.path());
    let err = run(config, std::future::pending()).await.unwrap_err();
    assert!(
        matches!(err, AgentError::InvalidAllocatorAddress { .. }),
        "{err:?}"
    );
}

#[test]
fn managed_ports_come_from_resources_then_ports_then_the_default() {
    let mut c = AgentConfig::new("127.0.0.1:5050", "/tmp/w");
    assert_eq!(managed_ports(&c), vec![crate::discovery::DEFAULT_PORTS]);
    c.ports = Some((40000, 40010));
    assert_eq!(managed_ports(&c), vec![(40000, 40010)]);
    c.resources =
        strata_common::parse::agent_resources("cpus:2;ports:[31000-31099];ports(ml):[32000-32009]")
            .expect("valid resources");
    assert_eq!(managed_ports(&c), vec![(31000, 31099), (32000, 32009)]);
}

#[test]
fn net_egress_mbps_is_offered_only_with_the_limiter_on() {
    use strata_common::parse::ResourceValue;
    let name = strata_proto::names::NET_EGRESS_MBPS;
    let offered = |c: &AgentConfig| -> Vec<f64> {
        c.resources
            .iter()
            .filter(|e| e.name == name)
            .filter_map(|e| match e.value {
                ResourceValue::Scalar(v) => Some(v),
                ResourceValue::Ranges(_) => None,
            })
            .collect()
    };
    // On, with a rate found: offered.
    let mut c = AgentConfig::new("127.0.0.1:5050", "/tmp/w");
    offer_egress(&mut c, Ok(("eth0".to_owned(), 1000.0)));
    assert_eq!(offered(&c), vec![1000.0]);
    // On, with the operator's own entry: that entry stays as given.
    let mut c = AgentConfig::new("127.0.0.1:5050", "/tmp/w");
    c.resources = strata_common::parse::agent_resources("cpus:2;net_egress_mbps:400")
        .expect("valid resources");
    offer_egress(&mut c, Ok(("eth0".to_owned(), 400.0)));
    assert_eq!(offered(&c), vec![400.0]);
    // Off (no fq, ...): not offered, even when the operator listed it.
    offer_egress(&mut c, Err("no fq".to_owned()));
    assert!(offered(&c).is_empty());
    assert!(c.resources.iter().any(|e| e.name == "cpus"));
}

#[test]
fn ports_the_agent_cannot_enforce_are_not_offered() {
    let mut c = AgentConfig::new("127.0.0.1:5050", "/tmp/w");
    c.resources = strata_common::parse::agent_resources("cpus:2;ports:[31000-31009]")
        .expect("valid resources");
    assert!(!c.withhold_ports);
    withhold_ports(&mut c, "no cgroup bind hooks");
    assert!(c.withhold_ports, "the discovered range is withheld too");
    assert!(c.resources.iter().all(|e| e.name != "ports"));
    assert!(c.resources.iter().any(|e| e.name == "cpus"));
}

#[test]
fn the_egress_rate_comes_from_resources_then_the_flag_then_the_link_speed() {
    let sys = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(sys.path().join("class/net/eth0")).expect("mkdir");
    std::fs::write(sys.path().join("class/net/eth0/speed"), "10000\n").expect("write");
    let mut c = AgentConfig::new("127.0.0.1:5050", "/tmp/w");
    c.roots.sys = sys.path().to_path_buf();
    assert_eq!(egress_rate(&c, "eth0"), Ok(10_000.0));
    let err = egress_rate(&c, "veth0").expect_err("no speed");
    assert!(err.contains("link speed of veth0 is unknown"), "{err}");
    assert!(err.contains("--net-egress-mbps"), "{err}");
    c.net_egress_mbps = Some(700.0);
    assert_eq!(egress_rate(&c, "veth0"), Ok(700.0));
    c.resources =
        strata_common::parse::agent_resources("net_egress_mbps:300;net_egress_mbps(ml):200")
            .expect("valid resources");
    assert_eq!(egress_rate(&c, "veth0"), Ok(500.0));
}
