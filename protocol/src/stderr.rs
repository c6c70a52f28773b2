//! The stderr channel: everything the daemon sends between a request and its reply.
//!
//! ```text
//! message  = u64 code, payload
//! NEXT     0x6f6c6d67  string line (with trailing "\n")
//! READ     0x64617461  u64 n            client answers with a string of ≤ n bytes
//! WRITE    0x64617416  string chunk     (ExportPath)
//! LAST     0x616c7473  —                success; the op's reply follows
//! ERROR    0x63787470  error            failure; no reply follows
//!   < 1.26: string message, u64 exitStatus
//!   ≥ 1.26: string "Error", u64 level, string "Error", string msg, u64 havePos = 0,
//!           u64 nrTraces, nrTraces × (u64 havePos = 0, string trace)
//! START_ACTIVITY 0x53545254  u64 id, u64 level, u64 type, string text, fields, u64 parent  (≥ 1.20)
//! STOP_ACTIVITY  0x53544f50  u64 id                                                       (≥ 1.20)
//! RESULT         0x52534c54  u64 id, u64 type, fields                                     (≥ 1.20)
//! fields   = u64 n, n × (u64 0, u64 value | u64 1, string value)
//! ```
//!
//! Log text is kept as bytes: build output is not necessarily UTF-8 and is forwarded
//! verbatim. Activity and result types are open-ended (newer Nix adds some), so unknown
//! numbers are kept, not rejected.

use std::fmt;

use tokio::io::AsyncRead;

use crate::error::{Error, Result};
use crate::version::ProtocolVersion;
use crate::wire::{WireReader, WireType, WireWriter, limits};

pub const STDERR_NEXT: u64 = 0x6f6c_6d67;
pub const STDERR_READ: u64 = 0x6461_7461;
pub const STDERR_WRITE: u64 = 0x6461_7416;
pub const STDERR_LAST: u64 = 0x616c_7473;
pub const STDERR_ERROR: u64 = 0x6378_7470;
pub const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
pub const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
pub const STDERR_RESULT: u64 = 0x5253_4c54;

/// Nix's log levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verbosity {
    Error = 0,
    Warn = 1,
    Notice = 2,
    Info = 3,
    Talkative = 4,
    Chatty = 5,
    Debug = 6,
    Vomit = 7,
}

impl Verbosity {
    pub const ALL: [Verbosity; 8] = [
        Verbosity::Error,
        Verbosity::Warn,
        Verbosity::Notice,
        Verbosity::Info,
        Verbosity::Talkative,
        Verbosity::Chatty,
        Verbosity::Debug,
        Verbosity::Vomit,
    ];

    pub fn from_u64(v: u64) -> Option<Verbosity> {
        Verbosity::ALL.into_iter().find(|l| *l as u64 == v)
    }

    pub(crate) async fn read<R: AsyncRead + Unpin + Send>(
        r: &mut WireReader<R>,
        field: &'static str,
    ) -> Result<Verbosity> {
        let value = r.read_u64().await?;
        Verbosity::from_u64(value).ok_or(Error::BadEnum {
            field,
            kind: "verbosity (0-7)",
            value,
        })
    }
}

/// Defines an open enum: named values plus `Other(n)` for numbers this version of
/// nixnest does not know.
macro_rules! open_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $value:expr,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $variant,)*
            /// A number not known to nixnest; kept so it can be forwarded.
            Other(u64),
        }

        impl $name {
            pub fn from_u64(v: u64) -> Self {
                match v {
                    $($value => $name::$variant,)*
                    other => $name::Other(other),
                }
            }

            pub fn to_u64(self) -> u64 {
                match self {
                    $($name::$variant => $value,)*
                    $name::Other(v) => v,
                }
            }
        }
    };
}

open_enum!(
    /// `ActivityType` (the `type` of `STDERR_START_ACTIVITY`).
    ActivityType {
        Unknown = 0,
        CopyPath = 100,
        FileTransfer = 101,
        Realise = 102,
        CopyPaths = 103,
        Builds = 104,
        Build = 105,
        OptimiseStore = 106,
        VerifyPaths = 107,
        Substitute = 108,
        QueryPathInfo = 109,
        PostBuildHook = 110,
        BuildWaiting = 111,
        FetchTree = 112,
        FetchToStore = 113,
    }
);

open_enum!(
    /// `ResultType` (the `type` of `STDERR_RESULT`).
    ResultType {
        FileLinked = 100,
        BuildLogLine = 101,
        UntrustedPath = 102,
        CorruptedPath = 103,
        SetPhase = 104,
        Progress = 105,
        SetExpected = 106,
        PostBuildLogLine = 107,
        FetchStatus = 108,
        FetchToStore = 109,
    }
);

/// One field of an activity or result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Field {
    Int(u64),
    String(Vec<u8>),
}

impl WireType for Field {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        match r.read_u64().await? {
            0 => Ok(Field::Int(r.read_u64().await?)),
            1 => Ok(Field::String(r.read_bytes(limits::STRING, "field").await?)),
            value => Err(Error::BadEnum {
                field: "field kind",
                kind: "field kind (0 int, 1 string)",
                value,
            }),
        }
    }
    fn encode(&self, w: &mut WireWriter) {
        match self {
            Field::Int(v) => {
                w.write_u64(0);
                w.write_u64(*v);
            }
            Field::String(s) => {
                w.write_u64(1);
                w.write_bytes(s);
            }
        }
    }
}

/// The error payload of `STDERR_ERROR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NixError {
    /// Log level of the error (always `Error` in practice).
    pub level: Verbosity,
    /// The message without the `error:` prefix (≥ 1.26); the full text (< 1.26).
    pub msg: String,
    /// "while …" context lines, innermost last. Not sent to clients < 1.26.
    pub traces: Vec<String>,
    /// Process exit status the client should use; only sent to clients < 1.26.
    pub exit_status: u64,
}

impl NixError {
    pub fn new(msg: impl Into<String>) -> Self {
        NixError {
            level: Verbosity::Error,
            msg: msg.into(),
            traces: Vec::new(),
            exit_status: 1,
        }
    }

    pub fn with_trace(mut self, trace: impl Into<String>) -> Self {
        self.traces.push(trace.into());
        self
    }
}

impl fmt::Display for NixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)?;
        for t in &self.traces {
            write!(f, "\n… {t}")?;
        }
        Ok(())
    }
}

impl std::error::Error for NixError {}

/// The type tag the structured error form must carry.
const ERROR_TYPE: &str = "Error";

impl WireType for NixError {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        if !r.version().at_least(26) {
            let msg = r.read_text("error message").await?;
            let exit_status = r.read_u64().await?;
            return Ok(NixError {
                level: Verbosity::Error,
                msg,
                traces: Vec::new(),
                exit_status,
            });
        }
        let ty = r.read_string(limits::SHORT, "error type").await?;
        if ty != ERROR_TYPE {
            return Err(Error::invalid(
                "error type",
                format!("expected \"Error\", got {ty:?}"),
            ));
        }
        let level = Verbosity::read(r, "error level").await?;
        let _old_name = r.read_string(limits::SHORT, "error name").await?;
        let msg = r.read_text("error message").await?;
        expect_no_pos(r).await?;
        let n = r.read_count(limits::ITEMS, "error traces").await?;
        let mut traces = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            expect_no_pos(r).await?;
            traces.push(r.read_text("error trace").await?);
        }
        Ok(NixError {
            level,
            msg,
            traces,
            exit_status: 1,
        })
    }

    fn encode(&self, w: &mut WireWriter) {
        if !w.version().at_least(26) {
            w.write_str(&self.msg);
            w.write_u64(self.exit_status);
            return;
        }
        w.write_str(ERROR_TYPE);
        w.write_u64(self.level as u64);
        w.write_str(ERROR_TYPE);
        w.write_str(&self.msg);
        w.write_u64(0);
        w.write_u64(self.traces.len() as u64);
        for t in &self.traces {
            w.write_u64(0);
            w.write_str(t);
        }
    }
}

/// Positions are never sent; Nix's readers insist on `havePos = 0`.
async fn expect_no_pos<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<()> {
    match r.read_u64().await? {
        0 => Ok(()),
        value => Err(Error::BadEnum {
            field: "error havePos",
            kind: "havePos (positions are never sent, must be 0)",
            value,
        }),
    }
}

/// `STDERR_START_ACTIVITY`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StartActivity {
    pub id: u64,
    pub level: Verbosity,
    pub activity_type: ActivityType,
    pub text: Vec<u8>,
    pub fields: Vec<Field>,
    /// 0 = no parent.
    pub parent: u64,
}

/// A message on the stderr channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StderrMessage {
    Next(Vec<u8>),
    Read(u64),
    Write(Vec<u8>),
    Last,
    Error(NixError),
    StartActivity(StartActivity),
    StopActivity {
        id: u64,
    },
    Result {
        id: u64,
        result_type: ResultType,
        fields: Vec<Field>,
    },
}

impl StderrMessage {
    pub fn code(&self) -> u64 {
        match self {
            StderrMessage::Next(_) => STDERR_NEXT,
            StderrMessage::Read(_) => STDERR_READ,
            StderrMessage::Write(_) => STDERR_WRITE,
            StderrMessage::Last => STDERR_LAST,
            StderrMessage::Error(_) => STDERR_ERROR,
            StderrMessage::StartActivity(_) => STDERR_START_ACTIVITY,
            StderrMessage::StopActivity { .. } => STDERR_STOP_ACTIVITY,
            StderrMessage::Result { .. } => STDERR_RESULT,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            StderrMessage::Next(_) => "STDERR_NEXT",
            StderrMessage::Read(_) => "STDERR_READ",
            StderrMessage::Write(_) => "STDERR_WRITE",
            StderrMessage::Last => "STDERR_LAST",
            StderrMessage::Error(_) => "STDERR_ERROR",
            StderrMessage::StartActivity(_) => "STDERR_START_ACTIVITY",
            StderrMessage::StopActivity { .. } => "STDERR_STOP_ACTIVITY",
            StderrMessage::Result { .. } => "STDERR_RESULT",
        }
    }

    /// What a peer speaking `version` should receive in place of this message.
    /// Clients < 1.20 know no activities: a start with text becomes a
    /// `STDERR_NEXT "<text>..."`, everything else activity-related is dropped.
    pub fn for_version(&self, version: ProtocolVersion) -> Option<std::borrow::Cow<'_, Self>> {
        use std::borrow::Cow;
        if version.at_least(20) {
            return Some(Cow::Borrowed(self));
        }
        match self {
            StderrMessage::StartActivity(a) if !a.text.is_empty() => {
                let mut line = a.text.clone();
                line.extend_from_slice(b"...\n");
                Some(Cow::Owned(StderrMessage::Next(line)))
            }
            StderrMessage::StartActivity(_)
            | StderrMessage::StopActivity { .. }
            | StderrMessage::Result { .. } => None,
            other => Some(Cow::Borrowed(other)),
        }
    }

    fn encode_exact(&self, w: &mut WireWriter) {
        w.write_u64(self.code());
        match self {
            StderrMessage::Next(s) | StderrMessage::Write(s) => w.write_bytes(s),
            StderrMessage::Read(n) => w.write_u64(*n),
            StderrMessage::Last => {}
            StderrMessage::Error(e) => e.encode(w),
            StderrMessage::StartActivity(a) => {
                w.write_u64(a.id);
                w.write_u64(a.level as u64);
                w.write_u64(a.activity_type.to_u64());
                w.write_bytes(&a.text);
                a.fields.encode(w);
                w.write_u64(a.parent);
            }
            StderrMessage::StopActivity { id } => w.write_u64(*id),
            StderrMessage::Result {
                id,
                result_type,
                fields,
            } => {
                w.write_u64(*id);
                w.write_u64(result_type.to_u64());
                fields.encode(w);
            }
        }
    }
}

impl WireType for StderrMessage {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let code = r.read_u64().await?;
        Ok(match code {
            STDERR_NEXT => StderrMessage::Next(r.read_bytes(limits::STRING, "log line").await?),
            STDERR_READ => StderrMessage::Read(r.read_u64().await?),
            STDERR_WRITE => {
                StderrMessage::Write(r.read_bytes(limits::STRING, "STDERR_WRITE data").await?)
            }
            STDERR_LAST => StderrMessage::Last,
            STDERR_ERROR => StderrMessage::Error(NixError::decode(r).await?),
            STDERR_START_ACTIVITY => {
                let id = r.read_u64().await?;
                let level = Verbosity::read(r, "activity level").await?;
                let activity_type = ActivityType::from_u64(r.read_u64().await?);
                let text = r.read_bytes(limits::STRING, "activity text").await?;
                let fields = Vec::<Field>::decode(r).await?;
                let parent = r.read_u64().await?;
                StderrMessage::StartActivity(StartActivity {
                    id,
                    level,
                    activity_type,
                    text,
                    fields,
                    parent,
                })
            }
            STDERR_STOP_ACTIVITY => StderrMessage::StopActivity {
                id: r.read_u64().await?,
            },
            STDERR_RESULT => {
                let id = r.read_u64().await?;
                let result_type = ResultType::from_u64(r.read_u64().await?);
                let fields = Vec::<Field>::decode(r).await?;
                StderrMessage::Result {
                    id,
                    result_type,
                    fields,
                }
            }
            other => return Err(Error::UnknownStderrCode(other)),
        })
    }

    /// Writes the message as the negotiated version expects it (see
    /// [`StderrMessage::for_version`]); a message the peer cannot receive writes nothing.
    fn encode(&self, w: &mut WireWriter) {
        if let Some(m) = self.for_version(w.version()) {
            m.encode_exact(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::*;

    const V: ProtocolVersion = ProtocolVersion::new(1, 34);

    fn hex(s: &str) -> Vec<u8> {
        crate::testutil::hex(s)
    }

    /// Spec §3.2: unknown op 999 answered by a 2.8 daemon.
    #[test]
    fn structured_error_capture() {
        let mut msg = b"invalid operation \x1b[35;1m999\x1b[0m".to_vec();
        assert_eq!(msg.len(), 32);
        let bytes = [
            hex(
                "70 74 78 63 00 00 00 00  05 00 00 00 00 00 00 00  45 72 72 6f 72 00 00 00
                 00 00 00 00 00 00 00 00  05 00 00 00 00 00 00 00  45 72 72 6f 72 00 00 00
                 20 00 00 00 00 00 00 00",
            ),
            std::mem::take(&mut msg),
            hex("00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00"),
        ]
        .concat();
        let m: StderrMessage = decode_all(&bytes, V).unwrap();
        let expected =
            StderrMessage::Error(NixError::new("invalid operation \x1b[35;1m999\x1b[0m"));
        assert_eq!(m, expected);
        assert_eq!(encode(&expected, V), bytes);
    }

    #[test]
    fn legacy_error_form() {
        let v = ProtocolVersion::new(1, 21);
        let e = StderrMessage::Error(NixError::new("error: boom"));
        let bytes = encode(&e, v);
        assert_eq!(
            bytes,
            hex(
                "70 74 78 63 00 00 00 00  0b 00 00 00 00 00 00 00  65 72 72 6f 72 3a 20 62
                 6f 6f 6d 00 00 00 00 00  01 00 00 00 00 00 00 00"
            )
        );
        assert_eq!(decode_all::<StderrMessage>(&bytes, v).unwrap(), e);
    }

    #[test]
    fn error_with_position_rejected() {
        let mut w = writer(V);
        w.write_u64(STDERR_ERROR);
        w.write_str("Error");
        w.write_u64(0);
        w.write_str("Error");
        w.write_str("msg");
        w.write_u64(1);
        let r = decode_all::<StderrMessage>(&w.take(), V);
        assert!(
            matches!(
                r,
                Err(Error::BadEnum {
                    field: "error havePos",
                    ..
                })
            ),
            "{r:?}"
        );
    }

    /// Spec §3.4: START_ACTIVITY(actBuild), RESULT(resBuildLogLine), STOP_ACTIVITY.
    #[test]
    fn activity_capture() {
        let drv = b"/nix/store/qmhlh46z3v35ncdih24lv3kn0z7jigx3-dep.drv";
        let text = [b"building '".as_slice(), drv, b"'"].concat();
        assert_eq!(text.len(), 62);
        let start = StderrMessage::StartActivity(StartActivity {
            id: 0x4bf9_0000_0005,
            level: Verbosity::Info,
            activity_type: ActivityType::Build,
            text: text.clone(),
            fields: vec![
                Field::String(drv.to_vec()),
                Field::String(Vec::new()),
                Field::Int(1),
                Field::Int(1),
            ],
            parent: 0,
        });
        let mut w = writer(V);
        start.encode(&mut w);
        let bytes = w.take();
        let expected_head = hex(
            "54 52 54 53 00 00 00 00  05 00 00 00 f9 4b 00 00  03 00 00 00 00 00 00 00
             69 00 00 00 00 00 00 00  3e 00 00 00 00 00 00 00",
        );
        assert_eq!(&bytes[..40], &expected_head[..]);
        assert_eq!(&bytes[40..102], &text[..]);
        let mut drv_field = hex("01 00 00 00 00 00 00 00  33 00 00 00 00 00 00 00");
        drv_field.extend_from_slice(drv);
        drv_field.extend_from_slice(&[0; 5]);
        let expected = [
            expected_head,
            text.clone(),
            vec![0, 0], // pad 62 -> 64
            hex("04 00 00 00 00 00 00 00"),
            drv_field,
            hex("01 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00
                 00 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00
                 00 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00
                 00 00 00 00 00 00 00 00"),
        ]
        .concat();
        assert_eq!(&bytes[..], &expected[..]);
        assert_eq!(decode_all::<StderrMessage>(&bytes, V).unwrap(), start);

        let result = hex(
            "54 4c 53 52 00 00 00 00  06 00 00 00 f9 4b 00 00  65 00 00 00 00 00 00 00
             01 00 00 00 00 00 00 00  01 00 00 00 00 00 00 00  0f 00 00 00 00 00 00 00
             62 75 69 6c 64 69 6e 67 20 73 69 6d 70 6c 65 00",
        );
        let m = StderrMessage::Result {
            id: 0x4bf9_0000_0006,
            result_type: ResultType::BuildLogLine,
            fields: vec![Field::String(b"building simple".to_vec())],
        };
        assert_eq!(decode_all::<StderrMessage>(&result, V).unwrap(), m);
        assert_eq!(encode(&m, V), result);

        let stop = hex("50 4f 54 53 00 00 00 00  00 00 00 00 f9 4b 00 00");
        let m = StderrMessage::StopActivity {
            id: 0x4bf9_0000_0000,
        };
        assert_eq!(decode_all::<StderrMessage>(&stop, V).unwrap(), m);
        assert_eq!(encode(&m, V), stop);
    }

    #[test]
    fn downgrade_below_1_20() {
        let old = ProtocolVersion::new(1, 19);
        let start = StderrMessage::StartActivity(StartActivity {
            id: 1,
            level: Verbosity::Info,
            activity_type: ActivityType::Build,
            text: b"building foo".to_vec(),
            fields: vec![],
            parent: 0,
        });
        assert_eq!(
            start.for_version(old).map(|c| c.into_owned()),
            Some(StderrMessage::Next(b"building foo...\n".to_vec()))
        );
        assert_eq!(StderrMessage::StopActivity { id: 1 }.for_version(old), None);
        let silent = StderrMessage::StartActivity(StartActivity {
            text: Vec::new(),
            ..match start.clone() {
                StderrMessage::StartActivity(a) => a,
                _ => unreachable!(),
            }
        });
        assert!(encode(&silent, old).is_empty());
        assert_eq!(
            start
                .for_version(ProtocolVersion::new(1, 20))
                .map(|c| c.into_owned()),
            Some(start.clone())
        );
    }

    #[test]
    fn unknown_types_are_kept() {
        let m = StderrMessage::Result {
            id: 9,
            result_type: ResultType::Other(4242),
            fields: vec![Field::Int(7)],
        };
        assert_eq!(decode_all::<StderrMessage>(&encode(&m, V), V).unwrap(), m);
        assert!(matches!(
            decode_all::<StderrMessage>(&0x1234u64.to_le_bytes(), V),
            Err(Error::UnknownStderrCode(0x1234))
        ));
        let mut w = writer(V);
        w.write_u64(STDERR_RESULT);
        w.write_u64(1);
        w.write_u64(100);
        w.write_u64(1);
        w.write_u64(2); // bad field kind
        assert!(matches!(
            decode_all::<StderrMessage>(&w.take(), V),
            Err(Error::BadEnum { value: 2, .. })
        ));
    }
}
