//! The transmission phase of one connection as a sans-IO state machine.
//!
//! This file owns what a connection does with each request, given the
//! bytes it received: [`Session::next`] decodes the next request header
//! (compact or extended, per the negotiation) from the front of a buffer
//! and decides, without any I/O:
//!
//! * [`Action::Serve`] — run it against storage; its payload (WRITE data)
//!   follows and must be read into its own buffer, after acquiring
//!   [`Session::cost`] bytes of the memory budget;
//! * [`Action::Refuse`] — answer with an error after reading and
//!   discarding its payload (oversized WRITEs included: never a silent
//!   close);
//! * [`Action::Answer`] — answer success at once (`NBD_CMD_CACHE`: we
//!   validate it and do not prefetch; the engine has no page cache to warm);
//! * [`Action::Disconnect`] — `NBD_CMD_DISC`.
//!
//! A fatal [`ProtocolError`] (bad magic; a payload too long to be worth
//! discarding) means hang up. Reply frames for the negotiation (simple,
//! structured, extended) come from `transmission`; the I/O driver is
//! `conn`.

use super::handshake::Negotiated;
use super::proto::*;
use super::transmission::{parse_header, validate, Request};

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Serve it (read its `payload_len()` bytes of payload first).
    Serve(Request),
    /// Read and discard `discard` payload bytes, then reply `errno`.
    Refuse {
        req: Request,
        errno: Errno,
        discard: u64,
    },
    /// Reply success without touching storage.
    Answer(Request),
    /// The client disconnects: no reply; finish in-flight work and close.
    Disconnect,
}

/// Per-connection transmission state: the negotiated parameters.
#[derive(Debug, Clone)]
pub struct Session {
    neg: Negotiated,
}

impl Session {
    pub fn new(neg: Negotiated) -> Session {
        Session { neg }
    }

    pub fn negotiated(&self) -> &Negotiated {
        &self.neg
    }

    /// Length of a request header on this connection.
    pub fn header_len(&self) -> usize {
        if self.neg.extended_headers {
            EXTENDED_REQUEST_HEADER_LEN
        } else {
            REQUEST_HEADER_LEN
        }
    }

    /// Decode and judge the request at the front of `buf`. `Ok(None)`
    /// until the whole header is there; else the action and the header
    /// bytes consumed (the payload, if any, is the caller's to read or
    /// discard as the action says).
    pub fn next(&self, buf: &[u8]) -> Result<Option<(Action, usize)>, ProtocolError> {
        let Some((req, used)) = parse_header(buf, self.neg.extended_headers)? else {
            return Ok(None);
        };
        Ok(Some((self.decide(req)?, used)))
    }

    /// The action for a decoded request.
    pub fn decide(&self, req: Request) -> Result<Action, ProtocolError> {
        if req.cmd == Command::Disc {
            return Ok(Action::Disconnect);
        }
        if let Err(errno) = validate(&req, &self.neg) {
            if req.payload_len() > MAX_DISCARD_LEN {
                return Err(ProtocolError::PayloadTooLarge {
                    len: req.payload_len(),
                    max: MAX_DISCARD_LEN,
                });
            }
            return Ok(Action::Refuse {
                req,
                errno,
                discard: req.payload_len(),
            });
        }
        Ok(match req.cmd {
            Command::Cache => Action::Answer(req),
            _ => Action::Serve(req),
        })
    }

    /// Buffer bytes a served request pins until its reply is sent: the
    /// READ reply data or the WRITE payload (validated to be at most
    /// [`MAX_BLOCK_SIZE`]); nothing for the rest.
    pub fn cost(req: &Request) -> usize {
        match req.cmd {
            Command::Read | Command::Write => req.length as usize,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::handshake::{transmission_flags, ExportInfo};

    const SIZE: u64 = 1 << 30;

    fn session(extended: bool) -> Session {
        let info = ExportInfo {
            name: "disk".into(),
            size: SIZE,
            read_only: false,
            description: None,
        };
        Session::new(Negotiated {
            export_name: "disk".into(),
            size: SIZE,
            read_only: false,
            structured_replies: extended,
            extended_headers: extended,
            base_allocation_context: Some(1),
            transmission_flags: transmission_flags(&info, extended),
        })
    }

    fn compact(flags: u16, ty: u16, offset: u64, len: u32) -> Vec<u8> {
        let mut v = REQUEST_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&9u64.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    fn extended(flags: u16, ty: u16, offset: u64, len: u64) -> Vec<u8> {
        let mut v = EXTENDED_REQUEST_MAGIC.to_be_bytes().to_vec();
        v.extend_from_slice(&flags.to_be_bytes());
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&9u64.to_be_bytes());
        v.extend_from_slice(&offset.to_be_bytes());
        v.extend_from_slice(&len.to_be_bytes());
        v
    }

    fn action(s: &Session, h: &[u8]) -> Action {
        let (a, used) = s.next(h).unwrap().unwrap();
        assert_eq!(used, s.header_len());
        a
    }

    #[test]
    fn partial_headers_wait_for_more() {
        for (s, h) in [
            (session(false), compact(0, CMD_READ, 0, 512)),
            (session(true), extended(0, CMD_READ, 0, 512)),
        ] {
            for n in 0..h.len() {
                assert_eq!(s.next(&h[..n]), Ok(None), "prefix {n}");
            }
            assert!(matches!(action(&s, &h), Action::Serve(_)));
        }
    }

    #[test]
    fn unaligned_ranges_are_served() {
        let s = session(false);
        match action(&s, &compact(0, CMD_READ, 1, 1_048_590)) {
            Action::Serve(r) => assert_eq!((r.offset, r.length, r.payload), (1, 1_048_590, 0)),
            a => panic!("{a:?}"),
        }
        match action(&s, &compact(0, CMD_WRITE, 4095, 3)) {
            Action::Serve(r) => assert_eq!((r.payload, Session::cost(&r)), (3, 3)),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn max_payload_is_served_and_one_byte_more_is_refused_after_discard() {
        let s = session(false);
        let max = MAX_BLOCK_SIZE;
        assert!(matches!(
            action(&s, &compact(0, CMD_WRITE, 0, max)),
            Action::Serve(_)
        ));
        assert!(matches!(
            action(&s, &compact(0, CMD_READ, 0, max)),
            Action::Serve(_)
        ));
        match action(&s, &compact(0, CMD_WRITE, 0, max + 1)) {
            Action::Refuse { errno, discard, .. } => {
                assert_eq!((errno, discard), (Errno::Overflow, u64::from(max) + 1))
            }
            a => panic!("{a:?}"),
        }
        match action(&s, &compact(0, CMD_READ, 0, max + 1)) {
            Action::Refuse { errno, discard, .. } => {
                assert_eq!((errno, discard), (Errno::Overflow, 0))
            }
            a => panic!("{a:?}"),
        }
        // A compact header can announce at most 4 GiB - 1: always discarded.
        match action(&s, &compact(0, CMD_WRITE, 0, u32::MAX)) {
            Action::Refuse { discard, .. } => assert_eq!(discard, u64::from(u32::MAX)),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn extended_headers_carry_64_bit_lengths() {
        let s = session(true);
        // A 6 GiB trim fits the export? No: out of range -> EINVAL, no payload.
        match action(&s, &extended(0, CMD_TRIM, 0, 6 << 30)) {
            Action::Refuse { errno, discard, .. } => {
                assert_eq!((errno, discard), (Errno::Inval, 0))
            }
            a => panic!("{a:?}"),
        }
        match action(&s, &extended(0, CMD_WRITE_ZEROES, 0, SIZE)) {
            Action::Serve(r) => assert_eq!(r.length, SIZE),
            a => panic!("{a:?}"),
        }
        // PAYLOAD_LEN on a command that takes none: refused, payload eaten.
        match action(&s, &extended(CMD_FLAG_PAYLOAD_LEN, CMD_BLOCK_STATUS, 0, 16)) {
            Action::Refuse { errno, discard, .. } => {
                assert_eq!((errno, discard), (Errno::Inval, 16))
            }
            a => panic!("{a:?}"),
        }
        // A payload beyond what we would read to refuse it: hang up.
        assert!(matches!(
            s.next(&extended(0, CMD_WRITE, 0, 1 << 40)),
            Err(ProtocolError::PayloadTooLarge { .. })
        ));
        // The compact magic is out of sync once extended headers are on.
        assert!(matches!(
            s.next(&compact(0, CMD_READ, 0, 512)),
            Err(ProtocolError::BadRequestMagic(REQUEST_MAGIC))
        ));
    }

    #[test]
    fn cache_is_answered_and_disc_disconnects() {
        let s = session(false);
        assert!(matches!(
            action(&s, &compact(0, CMD_CACHE, 512, 4096)),
            Action::Answer(_)
        ));
        // Out of range CACHE is still refused.
        assert!(matches!(
            action(&s, &compact(0, CMD_CACHE, SIZE, 4096)),
            Action::Refuse {
                errno: Errno::Inval,
                ..
            }
        ));
        assert_eq!(action(&s, &compact(0, CMD_DISC, 0, 0)), Action::Disconnect);
    }
}
