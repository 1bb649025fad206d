//! The `fq` qdisc the egress limits need, set on a device through rtnetlink
//! (`netlink-packet-route` messages on a `netlink-sys` socket; no `tc` binary).
//!
//! fq sends each packet no earlier than its `skb->tstamp`, which the EDT program sets. A device
//! with one transmit queue gets a root fq; a multi-queue device gets `mq` at the root with an fq
//! on each queue (as `tc qdisc replace dev D root mq` then one fq per class would do).

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::rtnl::{RouteSocket, RtnlError};

/// The handle of the `mq` qdisc the agent puts at the root of a multi-queue device ("ST").
const MQ_MAJOR: u16 = 0x5354;

/// Errors of qdisc set-up.
#[derive(Debug, thiserror::Error)]
pub enum QdiscError {
    /// The netlink socket could not be opened or used.
    #[error("device {device}: netlink: {source}")]
    Socket {
        /// The device.
        device: String,
        /// The error.
        source: io::Error,
    },
    /// The kernel refused a request.
    #[error("device {device}: cannot {what}: {source}{hint}")]
    Refused {
        /// The device.
        device: String,
        /// What was asked ("replace the root qdisc with fq", ...).
        what: String,
        /// The kernel's error.
        source: io::Error,
        /// What is likely missing.
        hint: &'static str,
    },
    /// The kernel's answer could not be decoded.
    #[error("device {device}: cannot decode the kernel's netlink answer: {detail}")]
    Decode {
        /// The device.
        device: String,
        /// The decoder's error.
        detail: String,
    },
}

struct Netlink {
    socket: RouteSocket,
    device: String,
}

impl Netlink {
    fn open(device: &str) -> Result<Self, QdiscError> {
        Ok(Self {
            socket: RouteSocket::open().map_err(|e| error(device, e))?,
            device: device.to_owned(),
        })
    }

    /// Sends `msg` with `flags`; returns the messages of the answer up to the ack (or the end
    /// of a dump).
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, QdiscError> {
        self.socket
            .request(msg, flags, what)
            .map_err(|e| error(&self.device, e))
    }
}

/// A request's error, for `device`.
fn error(device: &str, e: RtnlError) -> QdiscError {
    let device = device.to_owned();
    match e {
        RtnlError::Socket(source) => QdiscError::Socket { device, source },
        RtnlError::Refused { what, source } => {
            let hint = hint(&source);
            QdiscError::Refused {
                device,
                what,
                source,
                hint,
            }
        }
        RtnlError::Decode { detail, .. } => QdiscError::Decode { device, detail },
    }
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(nix::libc::ENOENT) => {
            " (this kernel has no such qdisc: it needs CONFIG_NET_SCH_FQ, or the sch_fq module \
             loaded)"
        }
        Some(nix::libc::EPERM) => " (the agent needs CAP_NET_ADMIN)",
        Some(nix::libc::ENODEV) => " (no such device)",
        _ => "",
    }
}

fn qdisc(index: u32, handle: TcHandle, parent: TcHandle, kind: &str) -> TcMessage {
    TcMessage::from_parts(
        TcHeader {
            family: AddressFamily::Unspec,
            index: index as i32,
            handle,
            parent,
            info: 0,
        },
        vec![TcAttribute::Kind(kind.to_owned())],
    )
}

/// The kind of the root qdisc of the device with index `index` ("noqueue", "fq_codel", ...),
/// if it has one the kernel reports.
pub fn root_kind(device: &str, index: u32) -> Result<Option<String>, QdiscError> {
    let mut nl = Netlink::open(device)?;
    let answer = nl.request(
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
        NLM_F_REQUEST | NLM_F_DUMP,
        "list qdiscs",
    )?;
    Ok(answer.into_iter().find_map(|m| match m {
        RouteNetlinkMessage::NewQueueDiscipline(q)
            if q.header.index == index as i32 && q.header.parent == TcHandle::ROOT =>
        {
            q.attributes.into_iter().find_map(|a| match a {
                TcAttribute::Kind(k) => Some(k),
                _ => None,
            })
        }
        _ => None,
    }))
}

/// Puts fq on the device: a root fq with one transmit queue, else mq with an fq per queue.
pub fn set_fq(device: &str, index: u32, tx_queues: u32) -> Result<(), QdiscError> {
    let mut nl = Netlink::open(device)?;
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    if tx_queues <= 1 {
        nl.request(
            RouteNetlinkMessage::NewQueueDiscipline(qdisc(
                index,
                TcHandle::UNSPEC,
                TcHandle::ROOT,
                "fq",
            )),
            flags,
            "replace the root qdisc with fq",
        )?;
        return Ok(());
    }
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(qdisc(
            index,
            TcHandle {
                major: MQ_MAJOR,
                minor: 0,
            },
            TcHandle::ROOT,
            "mq",
        )),
        flags,
        "replace the root qdisc with mq",
    )?;
    for queue in 1..=tx_queues {
        let minor = u16::try_from(queue).unwrap_or(u16::MAX);
        nl.request(
            RouteNetlinkMessage::NewQueueDiscipline(qdisc(
                index,
                TcHandle::UNSPEC,
                TcHandle {
                    major: MQ_MAJOR,
                    minor,
                },
                "fq",
            )),
            flags,
            &format!("put fq on transmit queue {queue} (mq class {MQ_MAJOR:x}:{minor:x})"),
        )?;
    }
    Ok(())
}
