//! Hostile and malformed input over real sockets against the reference
//! server: each case must get the right error reply or a closed connection,
//! never a panic, and a second client connected at the same time must keep
//! working throughout.

mod nbd_common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use nbd_common::*;
use sluice_reactor::nbd::proto::*;
use sluice_reactor::nbd::ProtocolError;

const SIZE: u64 = 1 << 20;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EOVERFLOW: u32 = 75;

fn server() -> TestServer {
    TestServer::start(vec![
        MemExport::new("disk", SIZE, false),
        MemExport::with_data("snap", &vec![0x5a; 64 << 10], true),
    ])
}

/// A well-behaved client in transmission phase, over TCP (the hostile ones
/// use the Unix socket, so both listeners are exercised).
fn bystander(server: &TestServer) -> RawClient<std::net::TcpStream> {
    RawClient::connect(server.connect_tcp(), "disk", true).expect("bystander connects")
}

/// The bystander still reads and writes correctly.
fn check_bystander(c: &mut RawClient<std::net::TcpStream>, tag: u8) {
    let data = vec![tag; 4096];
    assert_eq!(c.write_at(1000 + u64::from(tag), 8192, &data).unwrap(), 0);
    assert_eq!(c.read_at(2000 + u64::from(tag), 8192, 4096).unwrap(), data);
}

fn unix_greeted(server: &TestServer) -> UnixStream {
    RawClient::greet(server.connect_unix()).expect("greeting")
}

#[test]
fn nbd_garbage_after_greeting_closes_only_that_connection() {
    let server = server();
    let mut ok = bystander(&server);

    // Valid flags, then garbage instead of an option.
    let mut s = unix_greeted(&server);
    s.write_all(&random_bytes(7, 64)).unwrap();
    let mut c = RawClient {
        s,
        structured: false,
        size: 0,
        flags: 0,
    };
    assert!(c.is_closed_by_server());
    check_bystander(&mut ok, 1);

    // Garbage as the client flags themselves.
    let mut s = server.connect_unix();
    let mut g = [0u8; GREETING_LEN];
    std::io::Read::read_exact(&mut s, &mut g).unwrap();
    s.write_all(&[0xff; 32]).unwrap();
    let mut c = RawClient {
        s,
        structured: false,
        size: 0,
        flags: 0,
    };
    assert!(c.is_closed_by_server());
    check_bystander(&mut ok, 2);

    let ends = server.wait_for_ends(2);
    assert!(
        ends.iter()
            .any(|e| matches!(e, ConnEnd::Protocol(ProtocolError::BadOptionMagic(_)))),
        "{ends:?}"
    );
    assert!(
        ends.contains(&ConnEnd::Protocol(ProtocolError::BadClientFlags(
            0xffff_ffff
        ))),
        "{ends:?}"
    );
    assert_eq!(server.panics(), 0);
}

#[test]
fn nbd_truncated_handshake_and_truncated_write_end_cleanly() {
    let server = server();
    let mut ok = bystander(&server);

    // Connect and hang up before sending anything.
    drop(server.connect_unix());
    // Client flags plus half an option header, then EOF.
    let mut s = unix_greeted(&server);
    s.write_all(&option_bytes(OPT_GO, b"\0\0\0\x04disk\0\0")[..10])
        .unwrap();
    s.close_write();
    let mut c = RawClient {
        s,
        structured: false,
        size: 0,
        flags: 0,
    };
    assert!(c.is_closed_by_server());
    // A full option header announcing data that never comes.
    let mut s = unix_greeted(&server);
    s.write_all(&option_bytes(OPT_GO, &[0u8; 100])[..16 + 40])
        .unwrap();
    s.close_write();
    let mut c = RawClient {
        s,
        structured: false,
        size: 0,
        flags: 0,
    };
    assert!(c.is_closed_by_server());
    check_bystander(&mut ok, 3);

    // In transmission: a write header with only half its payload.
    let mut c = RawClient::connect(server.connect_unix(), "disk", false).unwrap();
    let mut msg = request_bytes(0, CMD_WRITE, 1, 0, 8192);
    msg.extend_from_slice(&[1u8; 4096]);
    c.send(&msg).unwrap();
    c.s.close_write();
    assert!(c.is_closed_by_server());
    // ...and half a request header.
    let mut c = RawClient::connect(server.connect_unix(), "disk", true).unwrap();
    c.send(&request_bytes(0, CMD_READ, 1, 0, 4096)[..13])
        .unwrap();
    c.s.close_write();
    assert!(c.is_closed_by_server());
    check_bystander(&mut ok, 4);

    let ends = server.wait_for_ends(5);
    // The client that hung up at once may make the greeting write fail
    // (EPIPE) instead of the first read seeing EOF; either is a clean end.
    assert!(
        ends.iter().filter(|e| **e == ConnEnd::Eof).count() >= 4
            && ends
                .iter()
                .all(|e| matches!(e, ConnEnd::Eof | ConnEnd::Io(_))),
        "{ends:?}"
    );
    // The partial write never reached the export.
    assert_eq!(server.export("disk").read(0, 4096), vec![0u8; 4096]);
    assert_eq!(server.panics(), 0);
}

#[test]
fn nbd_unknown_command_gets_einval_and_connection_continues() {
    let server = server();
    for structured in [false, true] {
        let mut c = RawClient::connect(server.connect_unix(), "disk", structured).unwrap();
        c.send(&request_bytes(0, 99, 7, 0, 4096)).unwrap();
        assert_eq!(c.expect_error(7).unwrap(), EINVAL);
        // CACHE is supported: validated and answered.
        c.send(&request_bytes(0, CMD_CACHE, 8, 0, 4096)).unwrap();
        assert_eq!(c.expect_error(8).unwrap(), 0);
        assert_eq!(c.write_at(9, 0, &[3u8; 512]).unwrap(), 0);
        assert_eq!(c.read_at(10, 0, 512).unwrap(), vec![3u8; 512]);
    }
    assert_eq!(server.panics(), 0);
}

#[test]
fn nbd_bad_requests_get_errors_and_connection_continues() {
    let server = server();
    let mut ok = bystander(&server);
    for structured in [false, true] {
        let mut c = RawClient::connect(server.connect_unix(), "disk", structured).unwrap();
        assert_eq!(c.size, SIZE);
        let cases: Vec<(&str, Vec<u8>, u32)> = vec![
            (
                "one byte past end",
                request_bytes(0, CMD_READ, 1, SIZE - 1, 2),
                EINVAL,
            ),
            (
                "unaligned cache past end",
                request_bytes(0, CMD_CACHE, 2, SIZE - 1, 3),
                EINVAL,
            ),
            (
                "read past end",
                request_bytes(0, CMD_READ, 3, SIZE - 512, 1024),
                EINVAL,
            ),
            (
                "read far past end",
                request_bytes(0, CMD_READ, 4, u64::MAX - 511, 512),
                EINVAL,
            ),
            (
                "read over 64 MiB",
                request_bytes(0, CMD_READ, 5, 0, (64 << 20) + 1),
                EOVERFLOW,
            ),
            (
                "zero-length read",
                request_bytes(0, CMD_READ, 6, 0, 0),
                EINVAL,
            ),
            (
                "unknown flag",
                request_bytes(1 << 12, CMD_READ, 7, 0, 512),
                EINVAL,
            ),
            (
                "flush with length",
                request_bytes(0, CMD_FLUSH, 8, 0, 512),
                EINVAL,
            ),
            (
                "trim past end",
                request_bytes(0, CMD_TRIM, 9, SIZE, 4096),
                EINVAL,
            ),
            (
                "zeroes past end",
                request_bytes(0, CMD_WRITE_ZEROES, 10, SIZE, 4096),
                ENOSPC,
            ),
        ];
        for (what, msg, errno) in cases {
            c.send(&msg).unwrap();
            let handle = u64::from_be_bytes(msg[8..16].try_into().unwrap());
            assert_eq!(
                c.expect_error(handle).unwrap(),
                errno,
                "{what} (structured={structured})"
            );
        }
        // BLOCK_STATUS needs base:allocation, which only the structured
        // client negotiated.
        c.send(&request_bytes(0, CMD_BLOCK_STATUS, 11, 0, 4096))
            .unwrap();
        if structured {
            match c.reply().unwrap() {
                Reply::Chunk {
                    ty,
                    flags,
                    handle: 11,
                    ..
                } => {
                    assert_eq!((ty, flags), (REPLY_TYPE_BLOCK_STATUS, REPLY_FLAG_DONE))
                }
                other => panic!("{other:?}"),
            }
        } else {
            assert_eq!(c.expect_error(11).unwrap(), EINVAL);
        }
        // A write past the end: its payload must be skipped, not parsed.
        let mut payload = request_bytes(0, CMD_READ, 0xdead, 0, 512); // looks like a request
        payload.resize(1024, 0xee);
        assert_eq!(c.write_at(12, SIZE - 512, &payload).unwrap(), ENOSPC);
        // Write with a flag it may not carry: also skipped.
        let mut m = request_bytes(CMD_FLAG_DF, CMD_WRITE, 13, 256, payload.len() as u32);
        m.extend_from_slice(&payload);
        c.send(&m).unwrap();
        assert_eq!(c.expect_error(13).unwrap(), EINVAL);
        // Still in sync.
        assert_eq!(c.write_at(14, 4096, &[9u8; 4096]).unwrap(), 0);
        assert_eq!(c.read_at(15, 4096, 4096).unwrap(), vec![9u8; 4096]);
        check_bystander(&mut ok, 5 + u8::from(structured));
    }
    // Writes to the read-only export: EPERM, with the payload skipped.
    let mut c = RawClient::connect(server.connect_unix(), "snap", false).unwrap();
    assert_ne!(c.flags & FLAG_READ_ONLY, 0);
    assert_eq!(c.write_at(1, 0, &[0u8; 4096]).unwrap(), 1);
    c.send(&request_bytes(0, CMD_TRIM, 2, 0, 4096)).unwrap();
    assert_eq!(c.expect_error(2).unwrap(), 1);
    assert_eq!(c.read_at(3, 0, 4096).unwrap(), vec![0x5a; 4096]);
    assert_eq!(server.panics(), 0);
}

#[test]
fn nbd_oversized_write_is_refused_after_its_payload() {
    let server = server();
    let mut ok = bystander(&server);
    let mut c = RawClient::connect(server.connect_unix(), "disk", false).unwrap();
    // One byte over the 64 MiB maximum: the payload is consumed and the
    // request answered with EOVERFLOW; the stream stays in sync.
    let len = (64 << 20) + 1;
    c.send(&request_bytes(0, CMD_WRITE, 1, 0, len)).unwrap();
    c.send(&vec![0x42u8; len as usize]).unwrap();
    assert_eq!(c.expect_error(1).unwrap(), EOVERFLOW);
    assert_eq!(c.write_at(2, 1, &[7u8; 3]).unwrap(), 0);
    assert_eq!(c.read_at(3, 0, 5).unwrap(), vec![0, 7, 7, 7, 0]);
    check_bystander(&mut ok, 7);
    assert_eq!(server.panics(), 0);
}

#[test]
fn nbd_bad_request_magic_and_oversized_option_close_connection() {
    let server = server();
    let mut ok = bystander(&server);
    let mut c = RawClient::connect(server.connect_unix(), "disk", true).unwrap();
    c.send(b"this is not an NBD request header").unwrap();
    assert!(c.is_closed_by_server());

    let mut s = unix_greeted(&server);
    let mut opt = IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&OPT_GO.to_be_bytes());
    opt.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.write_all(&opt).unwrap();
    let mut c = RawClient {
        s,
        structured: false,
        size: 0,
        flags: 0,
    };
    assert!(c.is_closed_by_server());
    check_bystander(&mut ok, 8);

    let ends = server.wait_for_ends(2);
    assert!(
        ends.iter()
            .any(|e| matches!(e, ConnEnd::Protocol(ProtocolError::BadRequestMagic(_)))),
        "{ends:?}"
    );
    assert!(
        ends.iter().any(|e| matches!(e, ConnEnd::Protocol(ProtocolError::OptionTooLarge { len, .. }) if *len == 1 << 30)),
        "{ends:?}"
    );
    assert_eq!(server.panics(), 0);
}

#[test]
fn nbd_option_errors_abort_and_export_name() {
    let server = server();
    let mut s = unix_greeted(&server);
    // Unknown option, malformed LIST, unknown export via GO: all answered,
    // and haggling goes on.
    s.write_all(&option_bytes(4242, b"xyz")).unwrap();
    assert_eq!(read_opt_reply(&mut s).unwrap().1, REP_ERR_UNSUP);
    s.write_all(&option_bytes(OPT_LIST, b"junk")).unwrap();
    assert_eq!(read_opt_reply(&mut s).unwrap().1, REP_ERR_INVALID);
    s.write_all(&option_bytes(OPT_GO, b"\0\0\0\x04nope\0\0"))
        .unwrap();
    assert_eq!(read_opt_reply(&mut s).unwrap().1, REP_ERR_UNKNOWN);
    s.write_all(&option_bytes(
        OPT_SET_META_CONTEXT,
        b"\0\0\0\x04disk\0\0\0\0",
    ))
    .unwrap();
    assert_eq!(
        read_opt_reply(&mut s).unwrap().1,
        REP_ERR_INVALID,
        "needs structured replies"
    );
    s.write_all(&option_bytes(OPT_ABORT, &[])).unwrap();
    assert_eq!(
        read_opt_reply(&mut s).unwrap(),
        (OPT_ABORT, REP_ACK, vec![])
    );
    let mut c = RawClient {
        s,
        structured: false,
        size: 0,
        flags: 0,
    };
    assert!(c.is_closed_by_server());

    // EXPORT_NAME with NO_ZEROES: 8 bytes size + 2 bytes flags, then
    // transmission (no zero padding).
    let mut s = unix_greeted(&server);
    s.write_all(&option_bytes(OPT_EXPORT_NAME, b"disk"))
        .unwrap();
    let mut r = [0u8; 10];
    std::io::Read::read_exact(&mut s, &mut r).unwrap();
    assert_eq!(u64::from_be_bytes(r[0..8].try_into().unwrap()), SIZE);
    let mut c = RawClient {
        s,
        structured: false,
        size: SIZE,
        flags: 0,
    };
    assert_eq!(c.write_at(1, 0, &[4u8; 512]).unwrap(), 0);
    assert_eq!(c.read_at(2, 0, 512).unwrap(), vec![4u8; 512]);
    c.send(&request_bytes(0, CMD_DISC, 3, 0, 0)).unwrap();
    assert!(c.is_closed_by_server());

    // EXPORT_NAME for an unknown export: the server can only hang up.
    let mut s = unix_greeted(&server);
    s.write_all(&option_bytes(OPT_EXPORT_NAME, b"nope"))
        .unwrap();
    let mut c = RawClient {
        s,
        structured: false,
        size: 0,
        flags: 0,
    };
    assert!(c.is_closed_by_server());

    let ends = server.wait_for_ends(3);
    assert!(ends.contains(&ConnEnd::Aborted), "{ends:?}");
    assert!(ends.contains(&ConnEnd::Disconnect), "{ends:?}");
    assert!(
        ends.contains(&ConnEnd::Protocol(ProtocolError::UnknownExport(
            "nope".into()
        ))),
        "{ends:?}"
    );
    assert_eq!(server.panics(), 0);
}
