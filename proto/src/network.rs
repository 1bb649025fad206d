//! A task's network, resolved from its `TaskInfo`: the mode (with the legacy
//! `network_isolation` flag) and, in bridge mode, its port mappings checked against the ports it
//! was given. The allocator checks them at ACCEPT and the agent again at launch.

use crate::{NetworkMode, PortMapping, PortProtocol, TaskInfo, names};

/// The most port mappings one task may have.
pub const MAX_PORT_MAPPINGS: usize = 64;

/// A task's network mode, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The host's network namespace.
    Host,
    /// A namespace of its own on the agent's bridge.
    Bridge,
    /// A namespace of its own with loopback only.
    None,
}

/// One forwarded port: `host` on the agent's addresses to `container` in the task's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mapping {
    /// The host port (one of the task's `ports`).
    pub host: u16,
    /// The port in the task's namespace.
    pub container: u16,
    /// Forwards tcp.
    pub tcp: bool,
    /// Forwards udp.
    pub udp: bool,
}

/// The task's mode: `network_mode` when set, else none with `network_isolation`, else host. An
/// unknown enum value is an error naming it.
pub fn mode(task: &TaskInfo) -> Result<Mode, String> {
    match NetworkMode::try_from(task.network_mode) {
        Ok(NetworkMode::Unspecified) if task.network_isolation => Ok(Mode::None),
        Ok(NetworkMode::Unspecified | NetworkMode::Host) => Ok(Mode::Host),
        Ok(NetworkMode::Bridge) => Ok(Mode::Bridge),
        Ok(NetworkMode::None) => Ok(Mode::None),
        Err(_) => Err(format!(
            "unknown network_mode {}: use host, bridge or none",
            task.network_mode
        )),
    }
}

/// The ports of the task's `ports` resource, as closed ranges.
fn task_ports(task: &TaskInfo) -> Vec<(u64, u64)> {
    task.resources
        .iter()
        .filter(|r| r.name == names::PORTS)
        .flat_map(|r| r.ranges.iter().map(|v| (v.begin, v.end)))
        .collect()
}

/// The task's port mappings, checked: only in bridge mode, at most [`MAX_PORT_MAPPINGS`], each
/// host port one of the task's `ports`, ports 1 to 65535, no host port and protocol mapped
/// twice. In bridge mode without mappings, every port of the task's `ports` maps to the same
/// port in its namespace (tcp and udp), up to [`MAX_PORT_MAPPINGS`] ports.
pub fn mappings(task: &TaskInfo) -> Result<Vec<Mapping>, String> {
    let mode = mode(task)?;
    if mode != Mode::Bridge {
        if task.port_mappings.is_empty() {
            return Ok(Vec::new());
        }
        return Err(format!(
            "port_mappings are for bridge mode only, and this task's network is {}",
            match mode {
                Mode::Host => "host",
                Mode::None => "none",
                Mode::Bridge => "bridge",
            }
        ));
    }
    let ports = task_ports(task);
    if task.port_mappings.is_empty() {
        let count: u64 = ports
            .iter()
            .map(|(b, e)| e.saturating_sub(*b).saturating_add(1))
            .sum();
        if count > MAX_PORT_MAPPINGS as u64 {
            return Err(format!(
                "a bridge task maps each of its ports to the same port by default, and this one \
                 has {count}: at most {MAX_PORT_MAPPINGS}; give port_mappings explicitly"
            ));
        }
        let mut out = Vec::new();
        for (b, e) in ports {
            for p in b..=e {
                let port = port_number(p, "ports resource")?;
                out.push(Mapping {
                    host: port,
                    container: port,
                    tcp: true,
                    udp: true,
                });
            }
        }
        return Ok(out);
    }
    check_explicit(&task.port_mappings, &ports)
}

fn port_number(p: u64, what: &str) -> Result<u16, String> {
    match u16::try_from(p) {
        Ok(0) | Err(_) => Err(format!("port {p} in the {what} is not a port (1 to 65535)")),
        Ok(p) => Ok(p),
    }
}

fn check_explicit(given: &[PortMapping], ports: &[(u64, u64)]) -> Result<Vec<Mapping>, String> {
    if given.len() > MAX_PORT_MAPPINGS {
        return Err(format!(
            "{} port_mappings: a task may have at most {MAX_PORT_MAPPINGS}",
            given.len()
        ));
    }
    let mut out: Vec<Mapping> = Vec::with_capacity(given.len());
    for m in given {
        let host = port_number(u64::from(m.host_port), "port mapping's host_port")?;
        let container = port_number(u64::from(m.container_port), "port mapping's container_port")?;
        if !ports
            .iter()
            .any(|(b, e)| (*b..=*e).contains(&u64::from(host)))
        {
            return Err(format!(
                "port mapping {host}:{container} maps host port {host}, which is not one of the \
                 task's ports: add it to the task's ports resource"
            ));
        }
        let (tcp, udp) = match PortProtocol::try_from(m.protocol) {
            Ok(PortProtocol::Unspecified) => (true, true),
            Ok(PortProtocol::Tcp) => (true, false),
            Ok(PortProtocol::Udp) => (false, true),
            Err(_) => {
                return Err(format!(
                    "port mapping {host}:{container} has an unknown protocol {}: use tcp or udp",
                    m.protocol
                ));
            }
        };
        if out
            .iter()
            .any(|o| o.host == host && ((o.tcp && tcp) || (o.udp && udp)))
        {
            return Err(format!(
                "host port {host} is mapped twice for the same protocol: map each host port once"
            ));
        }
        out.push(Mapping {
            host,
            container,
            tcp,
            udp,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Resource;

    fn task(
        mode: NetworkMode,
        ports: &[(u64, u64)],
        maps: &[(u32, u32, PortProtocol)],
    ) -> TaskInfo {
        TaskInfo {
            task_id: "t".to_owned(),
            network_mode: mode as i32,
            resources: vec![Resource::ranges(names::PORTS, ports.iter().copied())],
            port_mappings: maps
                .iter()
                .map(|&(h, c, p)| PortMapping {
                    host_port: h,
                    container_port: c,
                    protocol: p as i32,
                })
                .collect(),
            ..TaskInfo::default()
        }
    }

    #[test]
    fn the_mode_defaults_to_host_and_the_legacy_flag_means_none() {
        let mut t = TaskInfo::default();
        assert_eq!(mode(&t), Ok(Mode::Host));
        t.network_isolation = true;
        assert_eq!(mode(&t), Ok(Mode::None));
        t.network_mode = NetworkMode::Bridge as i32;
        assert_eq!(mode(&t), Ok(Mode::Bridge), "an explicit mode wins");
        t.network_mode = 99;
        assert!(mode(&t).unwrap_err().contains("unknown network_mode 99"));
    }

    #[test]
    fn a_bridge_task_without_mappings_maps_each_port_to_itself() {
        let t = task(NetworkMode::Bridge, &[(31000, 31001)], &[]);
        let m = mappings(&t).unwrap();
        assert_eq!(
            m.iter().map(|m| (m.host, m.container)).collect::<Vec<_>>(),
            vec![(31000, 31000), (31001, 31001)]
        );
        assert!(m.iter().all(|m| m.tcp && m.udp));
    }

    #[test]
    fn explicit_mappings_keep_their_protocol() {
        let t = task(
            NetworkMode::Bridge,
            &[(31000, 31005)],
            &[
                (31000, 80, PortProtocol::Tcp),
                (31000, 53, PortProtocol::Udp),
            ],
        );
        let m = mappings(&t).unwrap();
        assert_eq!(
            m[0],
            Mapping {
                host: 31000,
                container: 80,
                tcp: true,
                udp: false
            }
        );
        assert_eq!(
            m[1],
            Mapping {
                host: 31000,
                container: 53,
                tcp: false,
                udp: true
            }
        );
    }

    #[test]
    fn abuse_a_mapping_outside_the_tasks_ports_is_refused() {
        let t = task(
            NetworkMode::Bridge,
            &[(31000, 31000)],
            &[(22, 22, PortProtocol::Tcp)],
        );
        assert!(
            mappings(&t)
                .unwrap_err()
                .contains("not one of the task's ports")
        );
    }

    #[test]
    fn abuse_duplicate_and_zero_and_huge_ports_are_refused() {
        let dup = task(
            NetworkMode::Bridge,
            &[(31000, 31000)],
            &[
                (31000, 80, PortProtocol::Unspecified),
                (31000, 81, PortProtocol::Tcp),
            ],
        );
        assert!(mappings(&dup).unwrap_err().contains("mapped twice"));
        let zero = task(
            NetworkMode::Bridge,
            &[(31000, 31000)],
            &[(31000, 0, PortProtocol::Tcp)],
        );
        assert!(mappings(&zero).unwrap_err().contains("is not a port"));
        let huge = task(
            NetworkMode::Bridge,
            &[(31000, 31000)],
            &[(31000, 70000, PortProtocol::Tcp)],
        );
        assert!(mappings(&huge).unwrap_err().contains("is not a port"));
        let bad_proto = TaskInfo {
            port_mappings: vec![PortMapping {
                host_port: 31000,
                container_port: 1,
                protocol: 9,
            }],
            ..task(NetworkMode::Bridge, &[(31000, 31000)], &[])
        };
        assert!(
            mappings(&bad_proto)
                .unwrap_err()
                .contains("unknown protocol 9")
        );
    }

    #[test]
    fn abuse_too_many_mappings_are_refused() {
        let many: Vec<_> = (0..=MAX_PORT_MAPPINGS as u32)
            .map(|i| (31000 + i, 80, PortProtocol::Tcp))
            .collect();
        let t = task(NetworkMode::Bridge, &[(31000, 32000)], &many);
        assert!(mappings(&t).unwrap_err().contains("at most 64"));
        let wide = task(NetworkMode::Bridge, &[(31000, 32000)], &[]);
        assert!(
            mappings(&wide)
                .unwrap_err()
                .contains("give port_mappings explicitly")
        );
    }

    #[test]
    fn abuse_mappings_outside_bridge_mode_are_refused() {
        let t = task(
            NetworkMode::Host,
            &[(31000, 31000)],
            &[(31000, 80, PortProtocol::Tcp)],
        );
        assert!(mappings(&t).unwrap_err().contains("bridge mode only"));
        assert_eq!(
            mappings(&task(NetworkMode::Host, &[(31000, 31000)], &[])),
            Ok(vec![])
        );
    }
}
