//! Masquerading and port mappings of bridge tasks: kernel NAT (conntrack and nf_tables), driven
//! over `NETLINK_NETFILTER` with the messages encoded here (no `nft` binary, no C library).
//!
//! The agent owns one table, `ip <bridge>`, and nothing else; every change rewrites the whole
//! table in one transaction (create it, delete it, create it again with its chains and rules),
//! so the kernel never holds a half-written table and what it holds is exactly what the agent
//! knows, whatever was there before (a previous agent's table after a kill -9 included). The
//! table:
//!
//! - chain `postrouting` (nat, hook postrouting, priority 100): `ip saddr <subnet> oifname !=
//!   <bridge> masquerade` (tasks reach beyond the host with the address of the interface they
//!   leave by), and `ip saddr 127.0.0.0/8 oifname <bridge> masquerade` (the host's own
//!   connections to `127.0.0.1:<host port>`, which `output` sends to a task);
//! - chains `prerouting` (nat, hook prerouting, priority -100) and `output` (nat, hook output,
//!   priority -100), each with one rule per mapping: `fib daddr type local meta l4proto <proto>
//!   th dport <host port> dnat to <task address>:<container port>`. `prerouting` takes the
//!   connections that arrive from outside the host (or from another task), `output` those the
//!   host itself makes to one of its own addresses.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::Subnet;

/// How long the kernel may take to answer a transaction.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The most rules one table may hold (two per mapping): bounds a transaction.
pub const MAX_RULES: usize = 65_536;

/// Errors of the NAT table.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The netfilter socket could not be opened or used.
    #[error("netfilter netlink socket: {0}")]
    Socket(io::Error),
    /// The kernel refused the transaction.
    #[error(
        "cannot {what} nf_tables table ip {table}: {source} (masquerading and port mappings need nf_tables NAT: CONFIG_NF_TABLES, CONFIG_NFT_NAT, CONFIG_NFT_MASQ, CONFIG_NFT_FIB_IPV4, or the nf_tables, nft_chain_nat, nft_nat, nft_masq and nft_fib_ipv4 modules loaded, and CAP_NET_ADMIN)"
    )]
    Refused {
        /// What was asked.
        what: &'static str,
        /// The table.
        table: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// The table would hold too many rules.
    #[error("table ip {table}: {rules} rules, more than {MAX_RULES}")]
    TooLarge {
        /// The table.
        table: String,
        /// How many.
        rules: usize,
    },
    /// The kernel did not answer in time or answered nonsense.
    #[error("table ip {table}: {detail}")]
    Answer {
        /// The table.
        table: String,
        /// What was wrong.
        detail: String,
    },
}

/// A transport protocol of a mapping.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// A host port forwarded to a task's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forward {
    /// The protocol.
    pub protocol: Protocol,
    /// The host port.
    pub host_port: u16,
    /// The task's address.
    pub address: Ipv4Addr,
    /// The task's port.
    pub container_port: u16,
}

// Netlink and nf_tables constants (linux/netlink.h, linux/netfilter/nfnetlink.h,
// linux/netfilter/nf_tables.h, linux/netfilter.h).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETRULE: u16 = 7;
const NFPROTO_IPV4: u8 = 2;
const ENOENT: i32 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;

const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_NAT_DNAT: u32 = 1;
const NFTA_FIB_F_DADDR: u32 = 2;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const RTN_LOCAL: u32 = 2;

/// A netlink attribute buffer.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn raw(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    fn str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.raw(kind, &bytes)
    }

    fn be32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.raw(kind, &value.to_be_bytes())
    }

    fn nested(&mut self, kind: u16, inner: &Attrs) -> &mut Self {
        self.raw(kind | NLA_F_NESTED, &inner.0)
    }

    /// `NFTA_*_DATA { NFTA_DATA_VALUE value }`.
    fn data(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let mut inner = Attrs::default();
        inner.raw(NFTA_DATA_VALUE, value);
        self.nested(kind, &inner)
    }
}

/// One expression of a rule: its name and its attributes.
fn expr(name: &str, data: Option<&Attrs>) -> Attrs {
    let mut e = Attrs::default();
    e.str(NFTA_EXPR_NAME, name);
    if let Some(d) = data {
        e.nested(NFTA_EXPR_DATA, d);
    }
    e
}

fn meta_load(key: u32) -> Attrs {
    let mut d = Attrs::default();
    d.be32(2, key).be32(1, NFT_REG_1); // NFTA_META_KEY, NFTA_META_DREG
    expr("meta", Some(&d))
}

fn cmp(op: u32, value: &[u8]) -> Attrs {
    let mut d = Attrs::default();
    d.be32(1, NFT_REG_1).be32(2, op).data(3, value); // SREG, OP, DATA
    expr("cmp", Some(&d))
}

fn payload_load(base: u32, offset: u32, len: u32) -> Attrs {
    let mut d = Attrs::default();
    // DREG, BASE, OFFSET, LEN
    d.be32(1, NFT_REG_1)
        .be32(2, base)
        .be32(3, offset)
        .be32(4, len);
    expr("payload", Some(&d))
}

/// `reg1 = reg1 & mask` (4 bytes).
fn mask4(mask: [u8; 4]) -> Attrs {
    let mut d = Attrs::default();
    // SREG, DREG, LEN, MASK, XOR
    d.be32(1, NFT_REG_1)
        .be32(2, NFT_REG_1)
        .be32(3, 4)
        .data(4, &mask)
        .data(5, &[0; 4]);
    expr("bitwise", Some(&d))
}

fn immediate(reg: u32, value: &[u8]) -> Attrs {
    let mut d = Attrs::default();
    d.be32(1, reg).data(2, value); // DREG, DATA
    expr("immediate", Some(&d))
}

/// The 16-byte register value of an interface name.
fn ifname(name: &str) -> [u8; 16] {
    let mut v = [0u8; 16];
    let n = name.len().min(15);
    v[..n].copy_from_slice(&name.as_bytes()[..n]);
    v
}

/// `ip saddr <network>/<prefix>`.
fn saddr_in(network: Ipv4Addr, prefix: u8) -> [Attrs; 3] {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    [
        payload_load(NFT_PAYLOAD_NETWORK_HEADER, 12, 4),
        mask4(mask.to_be_bytes()),
        cmp(NFT_CMP_EQ, &(u32::from(network) & mask).to_be_bytes()),
    ]
}

/// The expressions of a masquerade rule for sources in `network/prefix` whose output interface
/// is (`out_is == true`) or is not `bridge`.
fn masquerade_rule(network: Ipv4Addr, prefix: u8, bridge: &str, out_is: bool) -> Vec<Attrs> {
    let mut v: Vec<Attrs> = saddr_in(network, prefix).into();
    v.push(meta_load(NFT_META_OIFNAME));
    v.push(cmp(
        if out_is { NFT_CMP_EQ } else { NFT_CMP_NEQ },
        &ifname(bridge),
    ));
    v.push(expr("masq", None));
    v
}

/// The expressions of a mapping's DNAT rule.
fn dnat_rule(f: &Forward) -> Vec<Attrs> {
    let mut fib = Attrs::default();
    // DREG, RESULT, FLAGS
    fib.be32(1, NFT_REG_1)
        .be32(2, NFT_FIB_RESULT_ADDRTYPE)
        .be32(3, NFTA_FIB_F_DADDR);
    let mut nat = Attrs::default();
    // TYPE, FAMILY, REG_ADDR_MIN, REG_PROTO_MIN
    nat.be32(1, NFT_NAT_DNAT)
        .be32(2, u32::from(NFPROTO_IPV4))
        .be32(3, NFT_REG_1)
        .be32(5, NFT_REG_2);
    vec![
        expr("fib", Some(&fib)),
        cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes()),
        meta_load(NFT_META_L4PROTO),
        cmp(NFT_CMP_EQ, &[f.protocol.number()]),
        payload_load(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
        cmp(NFT_CMP_EQ, &f.host_port.to_be_bytes()),
        immediate(NFT_REG_1, &f.address.octets()),
        immediate(NFT_REG_2, &f.container_port.to_be_bytes()),
        expr("nat", Some(&nat)),
    ]
}

/// A batch of nf_tables messages (or, built with `default`, one request on its own).
#[derive(Default)]
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    first: u32,
    acked: usize,
}

impl Batch {
    fn new(seq: u32) -> Self {
        let mut b = Self {
            buf: Vec::new(),
            seq,
            first: seq,
            acked: 0,
        };
        b.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            &Attrs::default(),
        );
        b
    }

    fn message(&mut self, kind: u16, flags: u16, family: u8, res_id: u16, attrs: &Attrs) {
        let len = 16 + 4 + attrs.0.len();
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&self.seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(&attrs.0);
        self.seq = self.seq.wrapping_add(1);
    }

    fn nft(&mut self, msg: u16, flags: u16, attrs: &Attrs) {
        self.acked += 1;
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_IPV4,
            0,
            attrs,
        );
    }

    fn end(mut self) -> (Vec<u8>, u32, usize) {
        self.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            &Attrs::default(),
        );
        (self.buf, self.first, self.acked)
    }
}

/// The agent's NAT table of one bridge.
#[derive(Debug, Clone)]
pub struct NatTable {
    table: String,
    bridge: String,
    subnet: Subnet,
}

impl NatTable {
    /// The table of bridge `bridge` with `subnet` (the table is named after the bridge).
    pub fn new(bridge: &str, subnet: Subnet) -> Self {
        Self {
            table: bridge.to_owned(),
            bridge: bridge.to_owned(),
            subnet,
        }
    }

    /// The table's name (family `ip`).
    pub fn name(&self) -> &str {
        &self.table
    }

    /// Makes the table hold masquerading and exactly `forwards`, replacing whatever it held, in
    /// one transaction.
    pub fn sync(&self, forwards: &[Forward]) -> Result<(), NatError> {
        let rules = 2 + 2 * forwards.len();
        if rules > MAX_RULES {
            return Err(NatError::TooLarge {
                table: self.table.clone(),
                rules,
            });
        }
        let mut table = Attrs::default();
        table.str(NFTA_TABLE_NAME, &self.table);
        let mut b = Batch::new(1);
        b.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, &table);
        b.nft(NFT_MSG_DELTABLE, 0, &table);
        b.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, &table);
        for (chain, hook, priority) in [
            ("postrouting", NF_INET_POST_ROUTING, 100i32),
            ("prerouting", NF_INET_PRE_ROUTING, -100),
            ("output", NF_INET_LOCAL_OUT, -100),
        ] {
            let mut h = Attrs::default();
            h.be32(NFTA_HOOK_HOOKNUM, hook)
                .be32(NFTA_HOOK_PRIORITY, priority as u32);
            let mut c = Attrs::default();
            c.str(NFTA_CHAIN_TABLE, &self.table)
                .str(NFTA_CHAIN_NAME, chain)
                .nested(NFTA_CHAIN_HOOK, &h)
                .str(NFTA_CHAIN_TYPE, "nat");
            b.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, &c);
        }
        let subnet = self.subnet;
        let add_rule = |b: &mut Batch, chain: &str, exprs: Vec<Attrs>| {
            let mut list = Attrs::default();
            for e in &exprs {
                list.nested(NFTA_LIST_ELEM, e);
            }
            let mut r = Attrs::default();
            r.str(NFTA_RULE_TABLE, &self.table)
                .str(NFTA_RULE_CHAIN, chain)
                .nested(NFTA_RULE_EXPRESSIONS, &list);
            b.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, &r);
        };
        add_rule(
            &mut b,
            "postrouting",
            masquerade_rule(subnet.network, subnet.prefix, &self.bridge, false),
        );
        add_rule(
            &mut b,
            "postrouting",
            masquerade_rule(Ipv4Addr::new(127, 0, 0, 0), 8, &self.bridge, true),
        );
        for f in forwards {
            add_rule(&mut b, "prerouting", dnat_rule(f));
            add_rule(&mut b, "output", dnat_rule(f));
        }
        self.transact(b, "write")
    }

    /// Sends a batch and reads the acknowledgements of its messages: the first error, or none.
    fn transact(&self, batch: Batch, what: &'static str) -> Result<(), NatError> {
        let (buf, first, acked) = batch.end();
        let answer = |detail: String| NatError::Answer {
            table: self.table.clone(),
            detail,
        };
        let socket = open_socket()?;
        socket.send(&buf, 0).map_err(NatError::Socket)?;
        let mut answered = 0usize;
        let mut failure: Option<io::Error> = None;
        while answered < acked {
            let (data, _) = match socket.recv_from_full() {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && failure.is_some() => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(answer(format!(
                        "the kernel answered {answered} of {acked} messages in {} s",
                        ANSWER_WITHIN.as_secs()
                    )));
                }
                Err(e) => return Err(NatError::Socket(e)),
            };
            let mut offset = 0;
            while offset + 16 <= data.len() {
                let word =
                    |at: usize| u32::from_ne_bytes(data[at..at + 4].try_into().unwrap_or([0; 4]));
                let len = word(offset) as usize;
                let kind = u16::from_ne_bytes([data[offset + 4], data[offset + 5]]);
                let seq = word(offset + 8);
                if len < 16 || offset + len > data.len() {
                    return Err(answer(format!("a message of length {len}")));
                }
                if kind == NLMSG_ERROR && len >= 20 && seq.wrapping_sub(first) < acked as u32 + 2 {
                    answered += 1;
                    let code = word(offset + 16) as i32;
                    if code != 0 && failure.is_none() {
                        failure = Some(io::Error::from_raw_os_error(-code));
                    }
                }
                offset += (len + 3) & !3;
            }
            if failure.is_some() {
                // The transaction is aborted; the rest of the answers do not matter.
                break;
            }
        }
        match failure {
            Some(source) => Err(NatError::Refused {
                what,
                table: self.table.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

/// Removes the table of bridge `bridge` (`--remove-cgroups`); `false` when there was none.
pub fn remove_table(bridge: &str) -> Result<bool, NatError> {
    let t = NatTable {
        table: bridge.to_owned(),
        bridge: bridge.to_owned(),
        subnet: Subnet {
            network: Ipv4Addr::UNSPECIFIED,
            prefix: 16,
        },
    };
    let mut attrs = Attrs::default();
    attrs.str(NFTA_TABLE_NAME, &t.table);
    let mut b = Batch::new(1);
    b.nft(NFT_MSG_DELTABLE, 0, &attrs);
    match t.transact(b, "remove") {
        Ok(()) => Ok(true),
        Err(NatError::Refused { source, .. }) if source.raw_os_error() == Some(ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many rules the table of bridge `bridge` holds in the calling thread's network
/// namespace; `None` when there is no such table. For tests and diagnostics: after teardown it
/// holds the masquerading rules only, after `--remove-cgroups` it is gone.
pub fn rule_count(bridge: &str) -> Result<Option<usize>, NatError> {
    let answer = |detail: String| NatError::Answer {
        table: bridge.to_owned(),
        detail,
    };
    let socket = open_socket()?;
    let mut attrs = Attrs::default();
    attrs.str(NFTA_TABLE_NAME, bridge);
    let mut get = Batch::default();
    get.nft(NFT_MSG_GETTABLE, 0, &attrs);
    socket.send(&get.buf, 0).map_err(NatError::Socket)?;
    match read_dump(&socket, get.first, false).map_err(answer)? {
        Err(e) if e.raw_os_error() == Some(ENOENT) => return Ok(None),
        Err(source) => {
            return Err(NatError::Refused {
                what: "read",
                table: bridge.to_owned(),
                source,
            });
        }
        Ok(_) => {}
    }
    let mut attrs = Attrs::default();
    attrs.str(NFTA_RULE_TABLE, bridge);
    let mut dump = Batch {
        seq: 2,
        first: 2,
        ..Batch::default()
    };
    dump.nft(NFT_MSG_GETRULE, NLM_F_DUMP, &attrs);
    socket.send(&dump.buf, 0).map_err(NatError::Socket)?;
    match read_dump(&socket, 2, true).map_err(answer)? {
        Ok(n) => Ok(Some(n)),
        Err(source) => Err(NatError::Refused {
            what: "read",
            table: bridge.to_owned(),
            source,
        }),
    }
}

/// Reads the answer to request `seq`: the number of nf_tables messages up to the end of the
/// dump (`dump`) or the acknowledgement, or the kernel's error.
fn read_dump(socket: &Socket, seq: u32, dump: bool) -> Result<io::Result<usize>, String> {
    let mut count = 0;
    loop {
        let (data, _) = socket.recv_from_full().map_err(|e| e.to_string())?;
        let mut offset = 0;
        while offset + 16 <= data.len() {
            let word =
                |at: usize| u32::from_ne_bytes(data[at..at + 4].try_into().unwrap_or([0; 4]));
            let len = word(offset) as usize;
            let kind = u16::from_ne_bytes([data[offset + 4], data[offset + 5]]);
            if len < 16 || offset + len > data.len() {
                return Err(format!("a message of length {len}"));
            }
            if word(offset + 8) == seq {
                match kind {
                    NLMSG_ERROR if len >= 20 => {
                        let code = word(offset + 16) as i32;
                        if code != 0 {
                            return Ok(Err(io::Error::from_raw_os_error(-code)));
                        }
                        if !dump {
                            return Ok(Ok(count));
                        }
                    }
                    NLMSG_DONE => return Ok(Ok(count)),
                    k if k >> 8 == NFNL_SUBSYS_NFTABLES => {
                        count += 1;
                        if !dump {
                            return Ok(Ok(count));
                        }
                    }
                    _ => {}
                }
            }
            offset += (len + 3) & !3;
        }
    }
}

fn open_socket() -> Result<Socket, NatError> {
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(NatError::Socket)?;
    socket.bind_auto().map_err(NatError::Socket)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(NatError::Socket)?;
    nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::ReceiveTimeout,
        &nix::sys::time::TimeVal::new(ANSWER_WITHIN.as_secs() as _, 0),
    )
    .map_err(|e| NatError::Socket(e.into()))?;
    Ok(socket)
}

/// Turns IPv4 forwarding on in the calling thread's network namespace (`<proc>/sys/net/ipv4/
/// ip_forward`) and lets the bridge route the host's loopback sources (`route_localnet`, for
/// `127.0.0.1:<host port>`); returns whether forwarding was off before.
pub fn enable_forwarding(proc_root: &std::path::Path, bridge: &str) -> io::Result<bool> {
    let forward = proc_root.join("sys/net/ipv4/ip_forward");
    let was_on = std::fs::read_to_string(&forward)?.trim() == "1";
    if !was_on {
        std::fs::write(&forward, "1")?;
    }
    let localnet = proc_root
        .join("sys/net/ipv4/conf")
        .join(bridge)
        .join("route_localnet");
    std::fs::write(localnet, "1")?;
    Ok(!was_on)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested() {
        let mut a = Attrs::default();
        a.str(1, "ab");
        assert_eq!(a.0, vec![7, 0, 1, 0, b'a', b'b', 0, 0]);
        let mut n = Attrs::default();
        n.nested(4, &a);
        assert_eq!(&n.0[..4], &[12, 0, 4, 0x80]);
        let mut d = Attrs::default();
        d.be32(2, 0x0102_0304);
        assert_eq!(d.0, vec![8, 0, 2, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_subnet_match_masks_the_source_address() {
        let [load, mask, cmp] = saddr_in(Ipv4Addr::new(10, 77, 0, 0), 24);
        // payload: network header, offset 12 (the source address), 4 bytes.
        assert!(load.0.windows(4).any(|w| w == [0, 0, 0, 12]));
        assert!(mask.0.windows(4).any(|w| w == [255, 255, 255, 0]));
        assert!(cmp.0.windows(4).any(|w| w == [10, 77, 0, 0]));
    }

    #[test]
    fn interface_names_fill_a_register() {
        assert_eq!(&ifname("strata0")[..8], b"strata0\0");
        assert_eq!(ifname("strata0").len(), 16);
    }

    #[test]
    fn forwarding_is_turned_on_under_the_given_root() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sys/net/ipv4/conf/br9")).unwrap();
        std::fs::write(dir.path().join("sys/net/ipv4/ip_forward"), "0\n").unwrap();
        assert!(enable_forwarding(dir.path(), "br9").unwrap());
        assert!(!enable_forwarding(dir.path(), "br9").unwrap());
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("sys/net/ipv4/ip_forward"), "1");
        assert_eq!(read("sys/net/ipv4/conf/br9/route_localnet"), "1");
    }

    #[test]
    fn abuse_a_table_too_large_is_refused_before_the_kernel_sees_it() {
        let t = NatTable::new("x0", Subnet::parse("10.9.0.0/24").unwrap());
        let f = Forward {
            protocol: Protocol::Tcp,
            host_port: 1,
            address: Ipv4Addr::new(10, 9, 0, 2),
            container_port: 1,
        };
        let err = t.sync(&vec![f; MAX_RULES]).unwrap_err();
        assert!(matches!(err, NatError::TooLarge { .. }), "{err}");
    }
}
