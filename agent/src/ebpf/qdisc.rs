//! The `fq` qdisc the egress limits need, set on a device through rtnetlink
//! (`netlink-packet-route` messages on a `netlink-sys` socket; no `tc` binary).
//!
//! fq sends each packet no earlier than its `skb->tstamp`, which the EDT program sets. A device
//! with one transmit queue gets a root fq; a multi-queue device gets `mq` at the root with an fq
//! on each queue (as `tc qdisc replace dev D root mq` then one fq per class would do).

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcHeader, TcMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

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
    socket: Socket,
    device: String,
    seq: u32,
}

impl Netlink {
    fn open(device: &str) -> Result<Self, QdiscError> {
        let err = |source| QdiscError::Socket {
            device: device.to_owned(),
            source,
        };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        Ok(Self {
            socket,
            device: device.to_owned(),
            seq: 0,
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
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|source| QdiscError::Socket {
                device: self.device.clone(),
                source,
            })?;
        let mut answer = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|source| QdiscError::Socket {
                    device: self.device.clone(),
                    source,
                })?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| QdiscError::Decode {
                        device: self.device.clone(),
                        detail: e.to_string(),
                    })?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(QdiscError::Decode {
                        device: self.device.clone(),
                        detail: "a message of length 0".to_owned(),
                    });
                }
                offset += len;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(answer),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answer),
                            Some(_) => {
                                let source = e.to_io();
                                let hint = hint(&source);
                                Err(QdiscError::Refused {
                                    device: self.device.clone(),
                                    what: what.to_owned(),
                                    source,
                                    hint,
                                })
                            }
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => answer.push(m),
                    _ => {}
                }
            }
        }
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
