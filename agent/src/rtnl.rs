//! One rtnetlink request at a time on a `NETLINK_ROUTE` socket (the agent's qdiscs and its
//! bridge, veths and addresses): send a message, read the kernel's answer up to its
//! acknowledgement or the end of a dump. The callers say what the request was for and what a
//! refusal likely means.

use std::io;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    /// The socket could not be opened or used.
    #[error("netlink socket: {0}")]
    Socket(io::Error),
    /// The kernel refused the request.
    #[error("cannot {what}: {source}")]
    Refused {
        /// What was asked.
        what: String,
        /// The kernel's error.
        source: io::Error,
    },
    /// The kernel's answer could not be decoded.
    #[error("cannot decode the kernel's netlink answer to {what}: {detail}")]
    Decode {
        /// What was asked.
        what: String,
        /// The decoder's error.
        detail: String,
    },
}

/// An rtnetlink socket of the calling thread's network namespace at the time it was opened.
pub struct RouteSocket {
    socket: Socket,
    seq: u32,
}

impl std::fmt::Debug for RouteSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSocket")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl RouteSocket {
    /// Opens one.
    pub fn open() -> Result<Self, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(RtnlError::Socket)?;
        socket.bind_auto().map_err(RtnlError::Socket)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(RtnlError::Socket)?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends `msg` with `flags` (`what` it is for, in errors); returns the messages of the
    /// answer up to the ack (or the end of a dump).
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(RtnlError::Socket)?;
        let decode = |detail: String| RtnlError::Decode {
            what: what.to_owned(),
            detail,
        };
        let mut answer = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full().map_err(RtnlError::Socket)?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| decode(e.to_string()))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    return Err(decode("a message of length 0".to_owned()));
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
                            Some(_) => Err(RtnlError::Refused {
                                what: what.to_owned(),
                                source: e.to_io(),
                            }),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => answer.push(m),
                    _ => {}
                }
            }
        }
    }
}
