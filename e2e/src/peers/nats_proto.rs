//! The part of the NATS client protocol the benchmark needs, without I/O: encoding
//! `CONNECT`, `SUB`, `PUB`, `PING`/`PONG`, and parsing what a server sends from a byte buffer
//! that may hold a partial operation. Headers (`HMSG`) are never asked for, so they are
//! refused rather than parsed.

/// One operation sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp {
    /// `INFO {json}`.
    Info(String),
    /// `MSG <subject> <sid> [reply-to] <#bytes>` and its payload.
    Msg {
        /// Subject the message was published to.
        subject: String,
        /// Subscription id.
        sid: String,
        /// Reply subject, if any.
        reply: Option<String>,
        /// Payload.
        payload: Vec<u8>,
    },
    /// `PING`: answer with `PONG`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK` (verbose mode only).
    Ok,
    /// `-ERR '<message>'`.
    Err(String),
}

/// A line the benchmark cannot understand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NATS protocol: {0}")]
pub struct ProtoError(pub String);

/// Longest control line accepted before giving up (the server's `INFO` is the longest).
const MAX_LINE: usize = 64 * 1024;

/// Parses the first complete operation in `buf`: `Ok(Some((op, consumed)))`, or `Ok(None)`
/// when more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(ServerOp, usize)>, ProtoError> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > MAX_LINE {
            return Err(ProtoError("control line too long".into()));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..eol])
        .map_err(|_| ProtoError("control line is not UTF-8".into()))?;
    let after = eol + 2;
    let (verb, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
    let rest = rest.trim();
    let op = match verb.to_ascii_uppercase().as_str() {
        "PING" => ServerOp::Ping,
        "PONG" => ServerOp::Pong,
        "+OK" => ServerOp::Ok,
        "-ERR" => ServerOp::Err(rest.trim_matches('\'').to_owned()),
        "INFO" => ServerOp::Info(rest.to_owned()),
        "MSG" => {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let (subject, sid, reply, len) = match parts.as_slice() {
                [s, i, n] => (*s, *i, None, *n),
                [s, i, r, n] => (*s, *i, Some((*r).to_owned()), *n),
                _ => return Err(ProtoError(format!("bad MSG line: {line:?}"))),
            };
            let len: usize = len
                .parse()
                .map_err(|_| ProtoError(format!("bad MSG size: {line:?}")))?;
            let end = after + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtoError("MSG payload not followed by CRLF".into()));
            }
            let op = ServerOp::Msg {
                subject: subject.to_owned(),
                sid: sid.to_owned(),
                reply,
                payload: buf[after..end].to_vec(),
            };
            return Ok(Some((op, end + 2)));
        }
        _ => return Err(ProtoError(format!("unexpected operation: {line:?}"))),
    };
    Ok(Some((op, after)))
}

/// `CONNECT` (no echo of our own messages, no verbose `+OK`s, no headers).
pub fn connect(name: &str) -> Vec<u8> {
    let opts = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "name": name,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "echo": false,
        "headers": false,
    });
    format!("CONNECT {opts}\r\n").into_bytes()
}

/// `SUB <subject> <sid>`.
pub fn sub(subject: &str, sid: &str) -> Vec<u8> {
    format!("SUB {subject} {sid}\r\n").into_bytes()
}

/// `PUB <subject> <reply> <#bytes>` with its payload.
pub fn publish(subject: &str, reply: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
    out
}

/// `PING`: the server's `PONG` confirms everything sent before it was processed.
pub const PING: &[u8] = b"PING\r\n";

/// `PONG`, the answer to a server's `PING`.
pub const PONG: &[u8] = b"PONG\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_lines_parse_and_report_what_they_consumed() {
        let buf = b"INFO {\"server_id\":\"x\"}\r\nPING\r\n";
        let (op, n) = parse(buf).unwrap().unwrap();
        assert_eq!(op, ServerOp::Info("{\"server_id\":\"x\"}".into()));
        let (op, m) = parse(&buf[n..]).unwrap().unwrap();
        assert_eq!((op, n + m), (ServerOp::Ping, buf.len()));
        assert_eq!(parse(b"pong\r\n").unwrap().unwrap().0, ServerOp::Pong);
        assert_eq!(
            parse(b"-ERR 'Authorization Violation'\r\n")
                .unwrap()
                .unwrap()
                .0,
            ServerOp::Err("Authorization Violation".into())
        );
    }

    #[test]
    fn msg_with_and_without_reply_and_with_crlf_inside_the_payload() {
        let buf = b"MSG _INBOX.a.1 1 11\r\n{\"seq\":\r\n7}\r\nMSG x 2 r.y 0\r\n\r\n";
        let (op, n) = parse(buf).unwrap().unwrap();
        assert_eq!(
            op,
            ServerOp::Msg {
                subject: "_INBOX.a.1".into(),
                sid: "1".into(),
                reply: None,
                payload: b"{\"seq\":\r\n7}".to_vec(),
            }
        );
        let (op, m) = parse(&buf[n..]).unwrap().unwrap();
        assert_eq!(n + m, buf.len());
        assert_eq!(
            op,
            ServerOp::Msg {
                subject: "x".into(),
                sid: "2".into(),
                reply: Some("r.y".into()),
                payload: Vec::new(),
            }
        );
    }

    #[test]
    fn partial_input_asks_for_more_at_every_cut() {
        let buf = b"MSG s 1 5\r\nhello\r\n";
        for cut in 0..buf.len() {
            assert_eq!(parse(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(buf).unwrap().is_some());
    }

    #[test]
    fn malformed_input_is_refused() {
        assert!(parse(b"MSG s 1 x\r\n").is_err());
        assert!(parse(b"MSG s\r\n").is_err());
        assert!(parse(b"MSG s 1 2\r\nabXY").is_err());
        assert!(parse(b"HMSG s 1 10 12\r\n").is_err());
        assert!(parse(&vec![b'a'; MAX_LINE + 1]).is_err());
    }

    #[test]
    fn encoders_produce_the_wire_form() {
        assert_eq!(publish("s.1", "_I.2", b"ab"), b"PUB s.1 _I.2 2\r\nab\r\n");
        assert_eq!(sub("_I.*", "1"), b"SUB _I.* 1\r\n");
        let c = String::from_utf8(connect("n")).unwrap();
        assert!(c.starts_with("CONNECT {") && c.ends_with("}\r\n"));
        assert!(c.contains("\"headers\":false"));
    }
}
