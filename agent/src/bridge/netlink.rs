//! The rtnetlink requests of bridge networking (`netlink-packet-route` messages on a
//! `netlink-sys` socket; no `ip` binary): the bridge and its address, a task's veth pair with
//! its peer created in the task's network namespace, and the peer's address and default route,
//! set from a thread that joins that namespace for the purpose.

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::rtnl::{RouteSocket, RtnlError};

/// Errors of a netlink request.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened or used.
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    /// The kernel refused a request.
    #[error("cannot {what}: {source}{hint}")]
    Refused {
        /// What was asked.
        what: String,
        /// The kernel's error.
        source: io::Error,
        /// What is likely missing.
        hint: &'static str,
    },
    /// The kernel's answer could not be decoded.
    #[error("cannot decode the kernel's netlink answer to {what}: {detail}")]
    Decode {
        /// What was asked.
        what: String,
        /// The decoder's error.
        detail: String,
    },
    /// The task's network namespace could not be joined.
    #[error("cannot join the network namespace of process {pid}: {source}")]
    Namespace {
        /// The process.
        pid: u32,
        /// The error.
        source: io::Error,
    },
}

impl NetlinkError {
    /// The kernel's errno, if it refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Refused { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(nix::libc::EOPNOTSUPP) => {
            " (this kernel cannot make that kind of link: it needs CONFIG_BRIDGE and CONFIG_VETH, \
             or the bridge and veth modules loaded)"
        }
        Some(nix::libc::EPERM) => " (the agent needs CAP_NET_ADMIN)",
        _ => "",
    }
}

/// An rtnetlink socket of the calling thread's network namespace at the time it was opened.
#[derive(Debug)]
pub struct Rtnl {
    socket: RouteSocket,
}

impl From<RtnlError> for NetlinkError {
    fn from(e: RtnlError) -> Self {
        match e {
            RtnlError::Socket(source) => Self::Socket(source),
            RtnlError::Refused { what, source } => {
                let hint = hint(&source);
                Self::Refused { what, source, hint }
            }
            RtnlError::Decode { what, detail } => Self::Decode { what, detail },
        }
    }
}

impl Rtnl {
    /// Opens one.
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            socket: RouteSocket::open()?,
        })
    }

    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        Ok(self.socket.request(msg, flags, what)?)
    }

    /// Every link of the namespace: (index, name).
    pub fn links(&mut self) -> Result<Vec<(u32, String)>, NetlinkError> {
        let answer = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_REQUEST | NLM_F_DUMP,
            "list links",
        )?;
        Ok(answer
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => {
                    let name = l.attributes.iter().find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })?;
                    Some((l.header.index, name))
                }
                _ => None,
            })
            .collect())
    }

    /// The index of link `name`, if there is one.
    pub fn index(&mut self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self
            .links()?
            .into_iter()
            .find_map(|(i, n)| (n == name).then_some(i)))
    }

    /// Makes the bridge `name` (when missing), gives it `gateway/prefix` and brings it up;
    /// returns its index.
    pub fn ensure_bridge(
        &mut self,
        name: &str,
        gateway: Ipv4Addr,
        prefix: u8,
    ) -> Result<u32, NetlinkError> {
        if self.index(name)?.is_none() {
            let mut link = LinkMessage::default();
            link.attributes.push(LinkAttribute::IfName(name.to_owned()));
            link.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge,
                )]));
            self.request(
                RouteNetlinkMessage::NewLink(link),
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                &format!("create the bridge {name}"),
            )?;
        }
        let index = self.index(name)?.ok_or_else(|| NetlinkError::Refused {
            what: format!("find the bridge {name} just made"),
            source: io::Error::from_raw_os_error(nix::libc::ENODEV),
            hint: "",
        })?;
        self.add_address(
            index,
            gateway,
            prefix,
            &format!("give {name} {gateway}/{prefix}"),
        )?;
        self.set_up(index, &format!("bring {name} up"))?;
        Ok(index)
    }

    fn add_address(
        &mut self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
        what: &str,
    ) -> Result<(), NetlinkError> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = prefix;
        msg.header.index = index;
        msg.attributes
            .push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes
            .push(AddressAttribute::Address(IpAddr::V4(addr)));
        let broadcast = Ipv4Addr::from(u32::from(addr) | (u32::MAX >> u32::from(prefix)));
        msg.attributes.push(AddressAttribute::Broadcast(broadcast));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            what,
        )?;
        Ok(())
    }

    /// Brings link `index` up (`what` it is, in errors).
    pub fn set_up(&mut self, index: u32, what: &str) -> Result<(), NetlinkError> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        self.request(
            RouteNetlinkMessage::SetLink(link),
            NLM_F_REQUEST | NLM_F_ACK,
            what,
        )?;
        Ok(())
    }

    /// Makes a veth pair: `host` in this namespace, on the bridge of index `bridge` and up, and
    /// `peer` in the network namespace of process `pid`.
    pub fn create_veth(
        &mut self,
        host: &str,
        bridge: u32,
        peer: &str,
        pid: u32,
    ) -> Result<(), NetlinkError> {
        let mut peer_link = LinkMessage::default();
        peer_link
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        peer_link.attributes.push(LinkAttribute::NetNsPid(pid));
        let mut link = LinkMessage::default();
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        link.attributes.push(LinkAttribute::IfName(host.to_owned()));
        link.attributes.push(LinkAttribute::Controller(bridge));
        link.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_link))),
        ]));
        self.request(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &format!("create the veth pair {host} (peer {peer} in the namespace of process {pid})"),
        )?;
        Ok(())
    }

    /// Removes link `name`; `false` when there was none.
    pub fn delete(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let Some(index) = self.index(name)? else {
            return Ok(false);
        };
        let mut link = LinkMessage::default();
        link.header.index = index;
        match self.request(
            RouteNetlinkMessage::DelLink(link),
            NLM_F_REQUEST | NLM_F_ACK,
            &format!("remove {name}"),
        ) {
            Ok(_) => Ok(true),
            // Gone in between (its namespace went with the task).
            Err(e) if e.errno() == Some(nix::libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives link `name` of this namespace `addr/prefix`, brings it and loopback up, and adds a
    /// default route through `gateway`.
    fn configure(
        &mut self,
        name: &str,
        addr: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let index = self.index(name)?.ok_or_else(|| NetlinkError::Refused {
            what: format!("find {name} in the task's namespace"),
            source: io::Error::from_raw_os_error(nix::libc::ENODEV),
            hint: "",
        })?;
        self.add_address(index, addr, prefix, &format!("give {name} {addr}/{prefix}"))?;
        self.set_up(index, &format!("bring {name} up"))?;
        if let Some(lo) = self.index("lo")? {
            self.set_up(lo, "bring lo up")?;
        }
        let mut route = RouteMessage::default();
        route.header = RouteHeader {
            address_family: AddressFamily::Inet,
            destination_prefix_length: 0,
            table: RouteHeader::RT_TABLE_MAIN,
            protocol: RouteProtocol::Boot,
            scope: RouteScope::Universe,
            kind: RouteType::Unicast,
            ..RouteHeader::default()
        };
        route
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        route.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            &format!("add the default route through {gateway}"),
        )?;
        Ok(())
    }
}

/// In the network namespace of process `pid`: gives `name` its address, brings it up and adds
/// the default route (see [`Rtnl::configure`]), from a thread that joins the namespace and ends
/// with the work (the agent's other threads stay where they are).
pub fn configure_in_namespace(
    pid: u32,
    name: &str,
    addr: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), NetlinkError> {
    let name = name.to_owned();
    let joined = std::thread::scope(|s| {
        s.spawn(move || {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
                .map_err(|source| NetlinkError::Namespace { pid, source })?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetlinkError::Namespace {
                    pid,
                    source: io::Error::from_raw_os_error(e as i32),
                }
            })?;
            Rtnl::open()?.configure(&name, addr, prefix, gateway)
        })
        .join()
    });
    joined.unwrap_or_else(|_| {
        Err(NetlinkError::Namespace {
            pid,
            source: io::Error::other("the thread that joined it panicked"),
        })
    })
}
