//! The wire form: what a client sends ([`Request`]), what the daemon answers (events and one
//! final [`Outcome`]), each one line of JSON.

use std::io;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use crate::ops::drain::DrainOptions;
use crate::ops::exit;
use crate::ops::maintenance::{MaintenanceOffRequest, MaintenanceRequest};
use crate::ops::undrain::UndrainOptions;

/// One request: the operation and its arguments, as one JSON object tagged by `op`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Report the node's state.
    Status,
    /// Take the node out of service.
    Drain(DrainOptions),
    /// Undo a drain.
    Undrain(UndrainOptions),
    /// Drain and hold the node out of service, recording why.
    #[serde(rename = "maintenance-on")]
    MaintenanceOn(MaintenanceRequest),
    /// End maintenance: undrain and clear the record.
    #[serde(rename = "maintenance-off")]
    MaintenanceOff(MaintenanceOffRequest),
}

impl Request {
    /// The operation's name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Drain(_) => "drain",
            Request::Undrain(_) => "undrain",
            Request::MaintenanceOn(_) => "maintenance-on",
            Request::MaintenanceOff(_) => "maintenance-off",
        }
    }
}

/// The final answer to a request.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Result document (for errors: `{"error": "..."}`).
    pub result: Value,
    /// Exit code the CLI exits with.
    pub exit_code: u8,
}

impl Outcome {
    /// A successful result (exit code 0).
    pub fn ok(result: Value) -> Outcome {
        Outcome {
            result,
            exit_code: exit::OK,
        }
    }

    /// A failure: `{"error": message}` with the given exit code.
    pub fn error(exit_code: u8, message: impl Into<String>) -> Outcome {
        Outcome {
            result: serde_json::to_value(ErrorDoc {
                error: message.into(),
            })
            .unwrap_or_default(),
            exit_code,
        }
    }
}

/// The result document of a request that failed.
#[derive(Serialize)]
struct ErrorDoc {
    error: String,
}

/// Who is on the other end of a connection, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// The client's process id, when the kernel knows it.
    pub pid: Option<i32>,
    /// Its effective user id at connect time.
    pub uid: u32,
    /// Its effective group id at connect time.
    pub gid: u32,
}

/// One line from the daemon.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Reply {
    Event(Value),
    Final(Outcome),
}

impl Reply {
    pub(super) fn to_line(&self) -> String {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Line<'a> {
            Event { event: &'a Value },
            Final { result: &'a Value, exit_code: u8 },
        }
        let line = match self {
            Reply::Event(event) => Line::Event { event },
            Reply::Final(o) => Line::Final {
                result: &o.result,
                exit_code: o.exit_code,
            },
        };
        let mut line = serde_json::to_string(&line).expect("a reply serialises");
        line.push('\n');
        line
    }

    pub(super) fn parse(line: &str) -> Result<Reply, String> {
        let Value::Object(mut map) =
            serde_json::from_str::<Value>(line).map_err(|e| format!("reply is not JSON ({e})"))?
        else {
            return Err("reply is not a JSON object".to_string());
        };
        if let Some(event) = map.remove("event") {
            return if map.is_empty() {
                Ok(Reply::Event(event))
            } else {
                Err("event line with extra keys".to_string())
            };
        }
        let (Some(result), Some(code)) = (map.remove("result"), map.remove("exit_code")) else {
            return Err("reply has neither \"event\" nor \"result\" and \"exit_code\"".to_string());
        };
        if !map.is_empty() {
            return Err("final line with extra keys".to_string());
        }
        let exit_code = code
            .as_u64()
            .and_then(|c| u8::try_from(c).ok())
            .ok_or_else(|| format!("exit_code {code} is not 0..=255"))?;
        Ok(Reply::Final(Outcome { result, exit_code }))
    }
}

/// Reads one line of at most `max` bytes; `Ok(None)` at end of stream before any byte.
pub(super) async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: u64,
) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = reader.take(max + 1).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("line longer than {max} bytes"),
        ));
    }
    if buf.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "line not terminated by a newline",
        ));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}
