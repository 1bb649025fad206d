//! One parser per kind of value that Strata's flags, environment variables and config files
//! take. Each returns `Err` with a message that names the value and says what to write
//! instead, so that clap (`value_parser = strata_common::parse::duration`) and config files
//! report the same thing.

use std::net::SocketAddr;
use std::time::Duration;

/// The longest attribute name accepted.
pub const MAX_ATTRIBUTE_NAME: usize = 128;
/// The longest attribute value accepted.
pub const MAX_ATTRIBUTE_VALUE: usize = 1024;

/// A decimal number without sign or exponent, then the rest: `("1.5", "ms")` for `1.5ms`.
fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    text.split_at(end)
}

/// A non-negative decimal number (`3`, `0.25`, `.5`); no sign, exponent, NaN or infinity.
fn decimal(number: &str) -> Option<f64> {
    let digits = number.chars().filter(char::is_ascii_digit).count();
    let dots = number.chars().filter(|c| *c == '.').count();
    if digits == 0 || dots > 1 || digits + dots != number.len() {
        return None;
    }
    number.parse().ok()
}

/// `500ms`, `5s`, `2m`, `1h`, `1d` or plain (possibly fractional) seconds (`1.5`).
pub fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "invalid duration {text:?}: use a number with an optional unit (ms, s, m, h, d), like 500ms, 5s, 2m or 1.5"
        )
    };
    let (number, unit) = split_number(text);
    let value = decimal(number).ok_or_else(invalid)?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => return Err(invalid()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| invalid())
}

/// A duration as [`duration`] reads it: `500ms`, `5s`, `1.5s`, `2m`, `1h`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

/// A size in MiB: a plain number is MiB; `KiB`, `MiB`, `GiB`, `TiB` (and `KB`, `MB`, `GB`,
/// `TB`, read as the same binary units) scale it.
pub fn size_mib(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let invalid = || {
        format!(
            "invalid size {text:?}: use a number of MiB, or one with a unit (KiB, MiB, GiB, TiB), like 512 or 8GiB"
        )
    };
    let (number, unit) = split_number(text);
    let value = decimal(number).ok_or_else(invalid)?;
    let scale = match unit.trim() {
        "" | "MiB" | "MB" => 1.0,
        "KiB" | "KB" => 1.0 / 1024.0,
        "GiB" | "GB" => 1024.0,
        "TiB" | "TB" => 1024.0 * 1024.0,
        _ => return Err(invalid()),
    };
    Ok(value * scale)
}

/// A count of cpus (or another plain scalar): a non-negative number, like `2` or `0.5`.
pub fn scalar(text: &str) -> Result<f64, String> {
    decimal(text.trim())
        .ok_or_else(|| format!("invalid number {text:?}: use a non-negative number, like 2 or 0.5"))
}

/// `NAME=VALUE` with a non-empty name; both trimmed, and bounded
/// ([`MAX_ATTRIBUTE_NAME`], [`MAX_ATTRIBUTE_VALUE`]).
pub fn attribute(text: &str) -> Result<(String, String), String> {
    let invalid = || format!("invalid attribute {text:?}: use NAME=VALUE, like rack=r1");
    let (name, value) = text.split_once('=').ok_or_else(invalid)?;
    let (name, value) = (name.trim(), value.trim());
    if name.is_empty() || name.chars().any(char::is_control) || value.chars().any(char::is_control)
    {
        return Err(invalid());
    }
    if name.len() > MAX_ATTRIBUTE_NAME || value.len() > MAX_ATTRIBUTE_VALUE {
        return Err(format!(
            "invalid attribute {:?}: names are at most {MAX_ATTRIBUTE_NAME} bytes and values at most {MAX_ATTRIBUTE_VALUE}",
            text.chars().take(40).collect::<String>()
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// `NAME=VALUE` for a resource: `cpus=2`, `gpus=1`, and sizes for `mem` and `disk`
/// (`mem=8GiB`, in MiB); the value non-negative.
pub fn resource(text: &str) -> Result<(String, f64), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| {
        format!("invalid resource {text:?}: write NAME=VALUE, like cpus=4 or mem=8GiB")
    })?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!(
            "invalid resource {text:?}: give a name, like cpus=4 or mem=8GiB"
        ));
    }
    let value = if matches!(name, "mem" | "disk") {
        size_mib(value)
    } else {
        scalar(value).map_err(|e| format!("{e} (only mem and disk take a size unit)"))
    }
    .map_err(|e| format!("invalid resource {text:?}: {e}"))?;
    Ok((name.to_owned(), value))
}

/// `BEGIN-END`, inclusive, with BEGIN <= END <= 65535.
pub fn port_range(text: &str) -> Result<(u64, u64), String> {
    let invalid = || format!("invalid port range {text:?}: use BEGIN-END, like 31000-32000");
    let (begin, end) = text.split_once('-').ok_or_else(invalid)?;
    let begin: u64 = begin.trim().parse().map_err(|_| invalid())?;
    let end: u64 = end.trim().parse().map_err(|_| invalid())?;
    if begin > end || end > 65535 {
        return Err(invalid());
    }
    Ok((begin, end))
}

/// A published port, `HOST:CONTAINER` with an optional `/tcp` or `/udp` (neither: both), ports
/// 1 to 65535; returned as (host, container, protocol) with the protocol `""`, `"tcp"` or
/// `"udp"`.
pub fn publish(text: &str) -> Result<(u16, u16, &'static str), String> {
    let invalid = || {
        format!("invalid port mapping {text:?}: use HOST:CONTAINER[/tcp|/udp], like 31000:80/tcp")
    };
    let (ports, protocol) = match text.rsplit_once('/') {
        Some((p, "tcp")) => (p, "tcp"),
        Some((p, "udp")) => (p, "udp"),
        Some(_) => return Err(invalid()),
        None => (text, ""),
    };
    let (host, container) = ports.split_once(':').ok_or_else(invalid)?;
    let port = |p: &str| match p.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(p) => Ok(p),
    };
    Ok((port(host)?, port(container)?, protocol))
}

/// The longest bridge name: a bridge's veths are named `<bridge>v<offset>` (offset up to
/// 65534) within the kernel's 15 bytes.
pub const MAX_BRIDGE_NAME: usize = 9;

/// A bridge name: 1 to [`MAX_BRIDGE_NAME`] letters, digits, `-` or `_`.
pub fn bridge_name(text: &str) -> Result<String, String> {
    if text.is_empty()
        || text.len() > MAX_BRIDGE_NAME
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "invalid bridge name {text:?}: use 1 to {MAX_BRIDGE_NAME} letters, digits, '-' or '_'"
        ));
    }
    Ok(text.to_owned())
}

/// An IPv4 subnet `A.B.C.D/LEN` with LEN from 16 to 30 and no host bits set; returned as the
/// network address and the prefix length.
pub fn ipv4_subnet(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let invalid = |why: &str| format!("invalid subnet {text:?}: {why}");
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| invalid("use A.B.C.D/LEN, like 172.31.0.0/24"))?;
    let addr: std::net::Ipv4Addr = addr
        .trim()
        .parse()
        .map_err(|_| invalid("the address is not an IPv4 address"))?;
    let len: u8 = len
        .trim()
        .parse()
        .map_err(|_| invalid("the prefix length is not a number"))?;
    if !(16..=30).contains(&len) {
        return Err(invalid(
            "the prefix length must be 16 to 30 (at least 2 addresses for tasks, at most 65534)",
        ));
    }
    let mask = u32::MAX << (32 - u32::from(len));
    if u32::from(addr) & !mask != 0 {
        return Err(invalid("host bits are set: give the network address"));
    }
    Ok((addr, len))
}

/// An address to listen on: `HOST:PORT` (port 0 picks a free one), also written as a URL
/// (`http://HOST:PORT/`); returned as `HOST:PORT`.
pub fn listen(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let bare = trimmed
        .strip_prefix("http://")
        .unwrap_or(trimmed)
        .trim_end_matches('/');
    match bare.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && port.parse::<u16>().is_ok() && !host.contains('/') =>
        {
            Ok(bare.to_owned())
        }
        _ => Err(format!(
            "invalid address {text:?}: use HOST:PORT, like 127.0.0.1:5050 (port 0 picks a free one)"
        )),
    }
}

/// Which GPUs an agent offers (`--gpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    /// Every GPU NVML finds (none, with one log line, where there is no NVML).
    Auto,
    /// No GPUs: NVML is not even loaded.
    None,
    /// These NVML indexes, each of which must exist.
    List(Vec<u32>),
}

/// The most GPU indexes `--gpus` takes.
pub const MAX_GPU_INDEXES: usize = 64;

/// A whole number of GPUs, like `1` (at most [`MAX_GPU_INDEXES`]).
pub fn gpu_count(text: &str) -> Result<u32, String> {
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n as usize <= MAX_GPU_INDEXES)
        .ok_or_else(|| {
            format!(
                "invalid GPU count {:?}: use a whole number from 0 to {MAX_GPU_INDEXES}, like 1",
                text.chars().take(40).collect::<String>()
            )
        })
}

/// `auto`, `none`, or a comma-separated list of NVML indexes like `0,1,3` (each once, at most
/// [`MAX_GPU_INDEXES`]).
pub fn gpus(text: &str) -> Result<GpuSelection, String> {
    let invalid = || {
        format!(
            "invalid GPU selection {:?}: use auto, none, or NVML indexes like 0,1",
            text.chars().take(40).collect::<String>()
        )
    };
    match text.trim() {
        "auto" => return Ok(GpuSelection::Auto),
        "none" => return Ok(GpuSelection::None),
        _ => {}
    }
    let mut indexes = Vec::new();
    for part in text.split(',') {
        if indexes.len() == MAX_GPU_INDEXES {
            return Err(format!("{}: at most {MAX_GPU_INDEXES} indexes", invalid()));
        }
        let index: u32 = part.trim().parse().map_err(|_| invalid())?;
        if indexes.contains(&index) {
            return Err(format!("{}: index {index} is listed twice", invalid()));
        }
        indexes.push(index);
    }
    Ok(GpuSelection::List(indexes))
}

/// A value, or `none` (`OrNone(None)`): an address to serve on, or nothing to serve. A type
/// of its own, so that a flag can be absent (`Option<OrNone<T>>`: the program's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrNone<T>(pub Option<T>);

/// [`listen`], or `none` (nothing to serve).
pub fn listen_or_none(text: &str) -> Result<OrNone<String>, String> {
    if text.trim() == "none" {
        return Ok(OrNone(None));
    }
    listen(text)
        .map(|l| OrNone(Some(l)))
        .map_err(|e| format!("{e}, or none"))
}

/// An IP socket address to listen on (`ADDR:PORT`, port 0 picks a free one), or `none`.
pub fn socket_addr_or_none(text: &str) -> Result<OrNone<SocketAddr>, String> {
    if text.trim() == "none" {
        return Ok(OrNone(None));
    }
    text.trim().parse().map(|a| OrNone(Some(a))).map_err(|_| {
        format!(
            "invalid address {text:?}: use ADDR:PORT, like 0.0.0.0:5051 or 127.0.0.1:0, or none"
        )
    })
}

/// The allocator's address as a URL: `HOST:PORT` or `http://HOST:PORT[/]` become
/// `http://HOST:PORT`; `https://HOST:PORT[/]` stays `https://HOST:PORT` (TLS, verified
/// against the cluster's CA). Other schemes are refused.
pub fn endpoint(text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('/');
    let (scheme, bare) = match trimmed.split_once("://") {
        None => ("http", trimmed),
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "invalid allocator address {text:?}: unknown scheme {scheme:?}; use HOST:PORT, http://HOST:PORT or https://HOST:PORT"
            ));
        }
    };
    match bare.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !host.contains('/')
                && port.parse::<u16>().is_ok_and(|p| p != 0) =>
        {
            Ok(format!("{scheme}://{bare}"))
        }
        _ => Err(format!(
            "invalid allocator address {text:?}: use HOST:PORT, http://HOST:PORT or https://HOST:PORT, like 127.0.0.1:5050"
        )),
    }
}

/// The most allocator addresses a list may name.
pub const MAX_ENDPOINTS: usize = 16;

/// A comma-separated list of allocator addresses (the replicas of one cluster: clients try
/// them in turn and stay with the one that answers, the leader), each as [`endpoint`] reads
/// it; duplicates are dropped, at most [`MAX_ENDPOINTS`].
pub fn endpoints(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for part in text.split(',') {
        if part.trim().is_empty() {
            continue;
        }
        let url = endpoint(part)?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    if out.is_empty() {
        return Err(format!(
            "invalid allocator address {text:?}: give HOST:PORT, or several separated by commas"
        ));
    }
    if out.len() > MAX_ENDPOINTS {
        return Err(format!(
            "{} allocator addresses given: at most {MAX_ENDPOINTS}",
            out.len()
        ));
    }
    Ok(out)
}

/// [`endpoints`] as one normalized, comma-separated text (a flag's value parser).
pub fn endpoint_list(text: &str) -> Result<String, String> {
    endpoints(text).map(|list| list.join(","))
}

/// The most entries `--resources` takes, and its longest text.
pub const MAX_RESOURCE_ENTRIES: usize = 64;
/// See [`MAX_RESOURCE_ENTRIES`].
pub const MAX_RESOURCES_TEXT: usize = 4096;

/// One entry of an agent's `--resources`, Mesos' agent syntax: `NAME[(ROLE)]:VALUE`.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceEntry {
    /// `cpus`, `mem`, `disk`, `ports`, `gpus` or another name.
    pub name: String,
    /// The role it is reserved for; `None` (or `*`) is unreserved.
    pub role: Option<String>,
    /// Its value.
    pub value: ResourceValue,
}

/// The value of a [`ResourceEntry`].
#[derive(Clone, Debug, PartialEq)]
pub enum ResourceValue {
    /// A number (MiB for `mem` and `disk`, which also take units: `mem:8GiB`).
    Scalar(f64),
    /// Ranges, `[31000-31099,32000-32000]`.
    Ranges(Vec<(u64, u64)>),
}

/// Mesos' `--resources` syntax for an agent: `;`-separated `NAME[(ROLE)]:VALUE` entries, like
/// `cpus:4;cpus(ml):4;mem(ml):8GiB;ports(ml):[31000-31099]`: a `(ROLE)` makes the entry a
/// static reservation for that role. Values are scalars (sizes with units for `mem` and
/// `disk`) or `[BEGIN-END,...]` ranges (ports 0 to 65535).
pub fn agent_resources(text: &str) -> Result<Vec<ResourceEntry>, String> {
    if text.len() > MAX_RESOURCES_TEXT {
        return Err(format!(
            "--resources is {} bytes: at most {MAX_RESOURCES_TEXT}",
            text.len()
        ));
    }
    let mut out = Vec::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        if out.len() == MAX_RESOURCE_ENTRIES {
            return Err(format!(
                "--resources has more than {MAX_RESOURCE_ENTRIES} entries"
            ));
        }
        let invalid = |why: &str| {
            format!(
                "invalid resource {:?}: {why}; use NAME[(ROLE)]:VALUE, like cpus(ml):4, \
                 mem:8GiB or ports(ml):[31000-31099]",
                entry.chars().take(64).collect::<String>()
            )
        };
        let (head, value) = entry
            .split_once(':')
            .ok_or_else(|| invalid("no `:` before the value"))?;
        let head = head.trim();
        let (name, role) = match head.split_once('(') {
            Some((name, rest)) => {
                let role = rest
                    .strip_suffix(')')
                    .ok_or_else(|| invalid("the role is not closed with `)`"))?;
                (name.trim(), Some(role.trim()))
            }
            None => (head, None),
        };
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            return Err(invalid(
                "the name must be letters, digits, `_`, `-` or `.` (at most 64)",
            ));
        }
        let role = match role {
            None | Some("*") => None,
            Some(role) => {
                let bad = role.is_empty()
                    || role.len() > 256
                    || role.split('/').any(|segment| {
                        segment.is_empty()
                            || segment == "."
                            || segment == ".."
                            || segment.starts_with('-')
                            || segment.chars().any(|c| {
                                c.is_whitespace()
                                    || c.is_control()
                                    || matches!(c, '*' | '\\' | '(' | ')')
                            })
                    });
                if bad {
                    return Err(invalid(
                        "the role must be `/`-separated names without whitespace, `*`, `.` or `..`",
                    ));
                }
                Some(role.to_owned())
            }
        };
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| invalid("the ranges are not closed with `]`"))?;
            let mut ranges = Vec::new();
            for range in inner.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                ranges.push(port_range(range).map_err(|e| invalid(&e))?);
            }
            if ranges.is_empty() {
                return Err(invalid("no ranges between `[` and `]`"));
            }
            ResourceValue::Ranges(ranges)
        } else if matches!(name, "mem" | "disk") {
            ResourceValue::Scalar(size_mib(value).map_err(|e| invalid(&e))?)
        } else {
            ResourceValue::Scalar(scalar(value).map_err(|e| invalid(&e))?)
        };
        out.push(ResourceEntry {
            name: name.to_owned(),
            role,
            value,
        });
    }
    if out.is_empty() {
        return Err("--resources is empty: give entries like cpus:4;mem(ml):8GiB".to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn gpus_are_auto_none_or_distinct_indexes() {
        assert_eq!(gpus("auto"), Ok(GpuSelection::Auto));
        assert_eq!(gpus(" none "), Ok(GpuSelection::None));
        assert_eq!(gpus("0, 2,1"), Ok(GpuSelection::List(vec![0, 2, 1])));
        for bad in ["", "all", "0,,1", "-1", "1.5", "0,0"] {
            let e = gpus(bad).unwrap_err();
            assert!(e.contains("invalid GPU selection"), "{bad:?}: {e}");
        }
        assert!(gpus("0,0").unwrap_err().contains("listed twice"));
        let many = (0..=MAX_GPU_INDEXES)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(gpus(&many).unwrap_err().contains("at most 64"));
        assert_eq!(gpu_count(" 2 "), Ok(2));
        for bad in ["0.5", "-1", "65", "", "1e3"] {
            assert!(
                gpu_count(bad).unwrap_err().contains("whole number"),
                "{bad:?}"
            );
        }
    }

    use super::*;

    #[test]
    fn publish_takes_host_container_and_a_protocol() {
        assert_eq!(publish("31000:80"), Ok((31000, 80, "")));
        assert_eq!(publish("31000:80/tcp"), Ok((31000, 80, "tcp")));
        assert_eq!(publish("31000:53/udp"), Ok((31000, 53, "udp")));
        for bad in [
            "80",
            "0:80",
            "31000:0",
            "31000:70000",
            "31000:80/sctp",
            "a:b",
            "",
        ] {
            assert!(publish(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn abuse_bridge_names_are_bounded_and_plain() {
        assert_eq!(bridge_name("strata0"), Ok("strata0".to_owned()));
        for bad in ["", "strata0123", "br/0", "br 0", "../x", "br\n", "br.0"] {
            assert!(bridge_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ipv4_subnet_takes_a_network_address_and_a_sane_length() {
        assert_eq!(
            ipv4_subnet("172.31.0.0/24"),
            Ok((std::net::Ipv4Addr::new(172, 31, 0, 0), 24))
        );
        assert!(
            ipv4_subnet("172.31.0.1/24")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(
            ipv4_subnet("172.31.0.0/31")
                .unwrap_err()
                .contains("16 to 30")
        );
        assert!(ipv4_subnet("10.0.0.0/8").unwrap_err().contains("16 to 30"));
        assert!(ipv4_subnet("fe80::/64").is_err());
        assert!(ipv4_subnet("172.31.0.0").is_err());
    }

    #[test]
    fn durations_take_units_plain_seconds_and_nothing_else() {
        let ok: &[(&str, Duration)] = &[
            ("500ms", Duration::from_millis(500)),
            ("5s", Duration::from_secs(5)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1d", Duration::from_secs(86_400)),
            ("7", Duration::from_secs(7)),
            ("0.25", Duration::from_millis(250)),
            (".5s", Duration::from_millis(500)),
            (" 1s ", Duration::from_secs(1)),
            ("0", Duration::ZERO),
            ("1.5 s", Duration::from_millis(1500)),
        ];
        for (text, want) in ok {
            assert_eq!(duration(text), Ok(*want), "{text:?}");
        }
        for bad in [
            "",
            "s",
            "-1s",
            "five",
            "5 parsecs",
            "1e3",
            "1e3s",
            "nan",
            "inf",
            "1..2s",
            "+1s",
            "1.2.3",
        ] {
            let e = duration(bad).unwrap_err();
            assert!(e.contains("500ms"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn durations_print_as_they_are_read() {
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(5),
            Duration::from_millis(1500),
            Duration::from_secs(120),
            Duration::from_secs(3600),
        ] {
            assert_eq!(duration(&format_duration(d)), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn sizes_are_mib_with_binary_units() {
        assert_eq!(size_mib("512"), Ok(512.0));
        assert_eq!(size_mib("8GiB"), Ok(8192.0));
        assert_eq!(size_mib("1.5TiB"), Ok(1.5 * 1024.0 * 1024.0));
        assert_eq!(size_mib("512KiB"), Ok(0.5));
        assert_eq!(size_mib("2GB"), Ok(2048.0));
        for bad in ["", "-1", "8Gb", "lots", "1e3"] {
            assert!(size_mib(bad).unwrap_err().contains("8GiB"), "{bad:?}");
        }
    }

    #[test]
    fn attributes_are_trimmed_and_bounded() {
        assert_eq!(attribute("rack=r1"), Ok(("rack".into(), "r1".into())));
        assert_eq!(attribute(" k = a=b "), Ok(("k".into(), "a=b".into())));
        assert_eq!(attribute("empty="), Ok(("empty".into(), String::new())));
        for bad in ["=x", "novalue", "a\nb=c", "k=v\u{7}"] {
            assert!(
                attribute(bad).unwrap_err().contains("NAME=VALUE"),
                "{bad:?}"
            );
        }
        let long = format!("{}=v", "n".repeat(MAX_ATTRIBUTE_NAME + 1));
        assert!(attribute(&long).unwrap_err().contains("at most"));
        let long = format!("n={}", "v".repeat(MAX_ATTRIBUTE_VALUE + 1));
        assert!(attribute(&long).unwrap_err().contains("at most"));
    }

    #[test]
    fn resources_take_sizes_for_mem_and_disk_only() {
        assert_eq!(resource("cpus=2"), Ok(("cpus".into(), 2.0)));
        assert_eq!(resource("mem=512GiB"), Ok(("mem".into(), 512.0 * 1024.0)));
        assert_eq!(
            resource("disk=1.5TiB"),
            Ok(("disk".into(), 1.5 * 1024.0 * 1024.0))
        );
        for bad in ["cpus", "cpus=x", "cpus=4GiB", "=4", "mem=-1"] {
            assert!(
                resource(bad).unwrap_err().contains("invalid resource"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn port_ranges_are_ordered_and_in_range() {
        assert_eq!(port_range("31000-32000"), Ok((31000, 32000)));
        assert_eq!(port_range(" 80 - 80 "), Ok((80, 80)));
        for bad in ["32000-31000", "31000", "1-70000", "a-b"] {
            assert!(
                port_range(bad).unwrap_err().contains("BEGIN-END"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn listen_addresses_are_host_port_or_urls_or_none() {
        assert_eq!(listen("127.0.0.1:5050"), Ok("127.0.0.1:5050".into()));
        assert_eq!(listen("http://127.0.0.1:0/"), Ok("127.0.0.1:0".into()));
        assert_eq!(listen("localhost:5050"), Ok("localhost:5050".into()));
        assert_eq!(listen("[::1]:5050"), Ok("[::1]:5050".into()));
        for bad in ["localhost", ":5050", "host:port", "host:70000", "a/b:1"] {
            assert!(listen(bad).unwrap_err().contains("HOST:PORT"), "{bad:?}");
        }
        assert_eq!(listen_or_none("none"), Ok(OrNone(None)));
        assert!(listen_or_none("x").unwrap_err().ends_with("or none"));
        assert_eq!(
            socket_addr_or_none("127.0.0.1:0"),
            Ok(OrNone(Some(SocketAddr::from(([127, 0, 0, 1], 0)))))
        );
        assert_eq!(socket_addr_or_none("none"), Ok(OrNone(None)));
        assert!(
            socket_addr_or_none("localhost")
                .unwrap_err()
                .contains("ADDR:PORT")
        );
    }

    #[test]
    fn the_allocator_address_is_one_url_whatever_way_it_is_written() {
        for (text, want) in [
            ("127.0.0.1:5050", "http://127.0.0.1:5050"),
            ("http://127.0.0.1:5050/", "http://127.0.0.1:5050"),
            (" alloc:5050 ", "http://alloc:5050"),
            ("[::1]:5050", "http://[::1]:5050"),
            // TLS keeps its scheme: the client verifies the allocator against the CA.
            ("https://alloc:5050", "https://alloc:5050"),
            (" https://10.0.0.1:5050/ ", "https://10.0.0.1:5050"),
            ("https://[::1]:5050", "https://[::1]:5050"),
        ] {
            assert_eq!(endpoint(text).as_deref(), Ok(want), "{text:?}");
        }
        for bad in ["ftp://alloc:5050", "HTTPS://alloc:5050", "grpcs://alloc:1"] {
            assert!(
                endpoint(bad).unwrap_err().contains("unknown scheme"),
                "{bad:?}"
            );
        }
        for bad in [
            "",
            "alloc",
            "alloc:0",
            "http://",
            "https://",
            "alloc:x",
            "https://alloc",
            "https://:5050",
            "https://alloc:5050/path",
        ] {
            assert!(endpoint(bad).unwrap_err().contains("HOST:PORT"), "{bad:?}");
        }
    }

    #[test]
    fn agent_resources_take_mesos_syntax_with_roles() {
        let parsed = agent_resources(
            "cpus:4; cpus(ml):2;mem(eng/ml):1GiB;ports(*):[31000-31009, 32000-32000]",
        )
        .unwrap();
        assert_eq!(
            parsed,
            vec![
                ResourceEntry {
                    name: "cpus".into(),
                    role: None,
                    value: ResourceValue::Scalar(4.0)
                },
                ResourceEntry {
                    name: "cpus".into(),
                    role: Some("ml".into()),
                    value: ResourceValue::Scalar(2.0)
                },
                ResourceEntry {
                    name: "mem".into(),
                    role: Some("eng/ml".into()),
                    value: ResourceValue::Scalar(1024.0)
                },
                ResourceEntry {
                    name: "ports".into(),
                    role: None,
                    value: ResourceValue::Ranges(vec![(31000, 31009), (32000, 32000)])
                },
            ]
        );
        for (bad, says) in [
            ("cpus", "no `:`"),
            ("cpus(ml:2", "not closed"),
            ("cpus(..):2", "the role must be"),
            ("cp us:2", "the name must be"),
            ("cpus:-1", "invalid number"),
            ("ports:[1-2", "not closed with `]`"),
            ("ports:[70000-70001]", "invalid port range"),
            ("", "empty"),
        ] {
            let err = agent_resources(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        let many = vec!["cpus:1"; MAX_RESOURCE_ENTRIES + 1].join(";");
        assert!(agent_resources(&many).unwrap_err().contains("more than"));
    }

    #[test]
    fn endpoint_lists_are_read_deduplicated_and_bounded() {
        assert_eq!(
            endpoints("a:1, http://b:2/,a:1,").unwrap(),
            ["http://a:1", "http://b:2"]
        );
        assert!(endpoints("").is_err());
        assert!(endpoints(" , ").is_err());
        assert!(endpoints("a:1,ftp://b:2").unwrap_err().contains("ftp"));
        let many: Vec<String> = (1..=17).map(|p| format!("h:{p}")).collect();
        assert!(
            endpoints(&many.join(","))
                .unwrap_err()
                .contains("at most 16")
        );
    }
}
