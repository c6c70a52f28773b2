//! What a client sees of a build request: the activity tree CppNix's worker reports,
//! as stderr messages.
//!
//! Recorded from a 2.8 daemon (`nix-build` of two derivations; every id is daemon-wide):
//!
//! ```text
//! START  actRealise(102)  level 0, no text, parent 0
//! START  actBuilds(104)   level 0
//! START  actCopyPaths(103) level 0
//! RESULT actBuilds resProgress [done, expected, running, failed]   ┐ after every change
//! RESULT actCopyPaths resProgress [0, 0, 0, 0]                      │ (CppNix's
//! RESULT actRealise resSetExpected [101, 0], [100, 0]               ┘  updateProgress)
//! START  actBuild(105)    level 3, "building '<drv>'", fields [drv, "", 1, 1], parent 0
//! RESULT actBuild resBuildLogLine [line]          one per line of output
//! (a dependency that failed: STDERR_NEXT "error: <its message>")
//! STOP   actBuild
//! STOP   actCopyPaths, actBuilds, actRealise
//! ```
//!
//! Waiting for a build user shows as `actBuildWaiting` (111, level 1) "waiting for UID
//! to build '…'". Lines `@nix {…}` from the builder are CppNix's JSON log protocol,
//! handled as for an untrusted builder: only `actFileTransfer` activities may be started
//! (as children of the build), `setPhase` becomes `resSetPhase` on the build, `msg` a log
//! message. `STDERR_NEXT` messages obey the session's verbosity; activities and results
//! are always sent (clients filter them). Clients older than 1.20 get the downgrade the
//! protocol crate applies to every activity.

use std::collections::HashMap;

use serde_json::Value;
use tokio::sync::mpsc;

use nixnest_protocol::stderr::{
    ActivityType, Field, ResultType, StartActivity, StderrMessage, Verbosity,
};
use nixnest_store::logger::next_activity_id;

use super::error::{Error, Result};

/// Where a build request's stderr messages go: the session writes them to the client in
/// order. When the receiver is gone, the request stops (the client went away).
pub type Sink = mpsc::Sender<StderrMessage>;

/// CppNix's error text as the client prints it: continuation lines indented under the
/// `error: ` prefix.
pub fn format_error(msg: &str) -> String {
    format!("error: {}", msg.replace('\n', "\n       "))
}

/// The request-level activities and the build counters.
pub(crate) struct Reporter<'a> {
    sink: &'a Sink,
    verbosity: Verbosity,
    realise: u64,
    builds: u64,
    copy: u64,
    /// Builds done, still expected, running, failed.
    pub done: u64,
    pub expected: u64,
    pub running: u64,
    pub failed: u64,
    sent: Option<(u64, u64, u64, u64)>,
}

impl<'a> Reporter<'a> {
    /// Starts the request's activities.
    pub async fn begin(sink: &'a Sink, verbosity: Verbosity) -> Result<Reporter<'a>> {
        let mut r = Reporter {
            sink,
            verbosity,
            realise: next_activity_id(),
            builds: next_activity_id(),
            copy: next_activity_id(),
            done: 0,
            expected: 0,
            running: 0,
            failed: 0,
            sent: None,
        };
        for (id, ty) in [
            (r.realise, ActivityType::Realise),
            (r.builds, ActivityType::Builds),
            (r.copy, ActivityType::CopyPaths),
        ] {
            r.start(id, Verbosity::Error, ty, String::new(), Vec::new(), 0)
                .await?;
        }
        r.progress().await?;
        Ok(r)
    }

    async fn send(&self, msg: StderrMessage) -> Result<()> {
        self.sink.send(msg).await.map_err(|_| Error::ClientGone)
    }

    pub async fn start(
        &self,
        id: u64,
        level: Verbosity,
        activity_type: ActivityType,
        text: String,
        fields: Vec<Field>,
        parent: u64,
    ) -> Result<()> {
        self.send(StderrMessage::StartActivity(StartActivity {
            id,
            level,
            activity_type,
            text: text.into_bytes(),
            fields,
            parent,
        }))
        .await
    }

    pub async fn stop(&self, id: u64) -> Result<()> {
        self.send(StderrMessage::StopActivity { id }).await
    }

    pub async fn result(&self, id: u64, result_type: ResultType, fields: Vec<Field>) -> Result<()> {
        self.send(StderrMessage::Result {
            id,
            result_type,
            fields,
        })
        .await
    }

    /// A log message (`STDERR_NEXT`), if the client's verbosity admits `level`.
    pub async fn log(&self, level: Verbosity, text: &str) -> Result<()> {
        if (level as u64) > (self.verbosity as u64) {
            return Ok(());
        }
        let mut line = text.as_bytes().to_vec();
        line.push(b'\n');
        self.send(StderrMessage::Next(line)).await
    }

    /// CppNix's `updateProgress`, when a counter changed.
    pub async fn progress(&mut self) -> Result<()> {
        let now = (
            self.done,
            self.done + self.expected,
            self.running,
            self.failed,
        );
        if self.sent == Some(now) {
            return Ok(());
        }
        self.sent = Some(now);
        let ints = |v: [u64; 4]| v.into_iter().map(Field::Int).collect::<Vec<_>>();
        self.result(
            self.builds,
            ResultType::Progress,
            ints([now.0, now.1, now.2, now.3]),
        )
        .await?;
        self.result(self.copy, ResultType::Progress, ints([0, 0, 0, 0]))
            .await?;
        for ty in [ActivityType::FileTransfer, ActivityType::CopyPath] {
            self.result(
                self.realise,
                ResultType::SetExpected,
                vec![Field::Int(ty.to_u64()), Field::Int(0)],
            )
            .await?;
        }
        Ok(())
    }

    /// Stops the request's activities.
    pub async fn end(self) -> Result<()> {
        for id in [self.copy, self.builds, self.realise] {
            self.stop(id).await?;
        }
        Ok(())
    }
}

/// The activities of one build as one request shows them.
#[derive(Default)]
pub(crate) struct BuildActivity {
    /// `actBuild`, once the builder runs.
    pub act: Option<u64>,
    /// `actBuildWaiting`, while waiting.
    pub waiting: Option<u64>,
    /// Builder activity id → ours (JSON log protocol).
    pub children: HashMap<u64, u64>,
}

impl BuildActivity {
    pub async fn waiting(&mut self, rep: &Reporter<'_>, text: Option<String>) -> Result<()> {
        if let Some(id) = self.waiting.take() {
            rep.stop(id).await?;
        }
        if let Some(text) = text {
            let id = next_activity_id();
            rep.start(
                id,
                Verbosity::Warn,
                ActivityType::BuildWaiting,
                text,
                Vec::new(),
                0,
            )
            .await?;
            self.waiting = Some(id);
        }
        Ok(())
    }

    /// `actBuild` for `drv` (printed).
    pub async fn started(&mut self, rep: &Reporter<'_>, drv: &str) -> Result<()> {
        self.waiting(rep, None).await?;
        if self.act.is_some() {
            return Ok(());
        }
        let id = next_activity_id();
        rep.start(
            id,
            Verbosity::Info,
            ActivityType::Build,
            format!("building '{drv}'"),
            vec![
                Field::String(drv.as_bytes().to_vec()),
                Field::String(Vec::new()),
                Field::Int(1),
                Field::Int(1),
            ],
            0,
        )
        .await?;
        self.act = Some(id);
        Ok(())
    }

    pub async fn line(&self, rep: &Reporter<'_>, line: Vec<u8>) -> Result<()> {
        match self.act {
            Some(id) => {
                rep.result(id, ResultType::BuildLogLine, vec![Field::String(line)])
                    .await
            }
            None => Ok(()),
        }
    }

    /// One `@nix` message, with CppNix's untrusted-builder rules.
    pub async fn json(&mut self, rep: &Reporter<'_>, text: &str) -> Result<()> {
        let Some(act) = self.act else {
            return Ok(());
        };
        match parse_json_message(text) {
            Ok(JsonMessage::Start {
                id,
                level,
                activity_type,
                text,
                fields,
            }) => {
                if activity_type == ActivityType::FileTransfer && !self.children.contains_key(&id) {
                    let ours = next_activity_id();
                    rep.start(ours, level, activity_type, text, fields, act)
                        .await?;
                    self.children.insert(id, ours);
                }
                Ok(())
            }
            Ok(JsonMessage::Stop { id }) => match self.children.remove(&id) {
                Some(ours) => rep.stop(ours).await,
                None => Ok(()),
            },
            Ok(JsonMessage::Result {
                id,
                result_type,
                fields,
            }) => match self.children.get(&id) {
                Some(&ours) => rep.result(ours, result_type, fields).await,
                None => Ok(()),
            },
            Ok(JsonMessage::SetPhase(phase)) => {
                rep.result(
                    act,
                    ResultType::SetPhase,
                    vec![Field::String(phase.into_bytes())],
                )
                .await
            }
            Ok(JsonMessage::Msg { level, msg }) => rep.log(level, &msg).await,
            Ok(JsonMessage::Other) => Ok(()),
            Err(e) => {
                rep.log(
                    Verbosity::Error,
                    &format!("error: bad JSON log message from builder: {e}"),
                )
                .await
            }
        }
    }

    /// Stops whatever is still open (children first).
    pub async fn finish(&mut self, rep: &Reporter<'_>) -> Result<()> {
        let children: Vec<u64> = self.children.drain().map(|(_, v)| v).collect();
        for id in children {
            rep.stop(id).await?;
        }
        self.waiting(rep, None).await?;
        if let Some(id) = self.act.take() {
            rep.stop(id).await?;
        }
        Ok(())
    }
}

/// A message of CppNix's JSON log protocol (`@nix {"action": …}`).
#[derive(Debug, PartialEq)]
pub(crate) enum JsonMessage {
    Start {
        id: u64,
        level: Verbosity,
        activity_type: ActivityType,
        text: String,
        fields: Vec<Field>,
    },
    Stop {
        id: u64,
    },
    Result {
        id: u64,
        result_type: ResultType,
        fields: Vec<Field>,
    },
    SetPhase(String),
    Msg {
        level: Verbosity,
        msg: String,
    },
    /// An action CppNix ignores.
    Other,
}

/// Parses one `@nix` message; the error says what is wrong with it.
pub(crate) fn parse_json_message(text: &str) -> std::result::Result<JsonMessage, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let action = v
        .get("action")
        .and_then(Value::as_str)
        .ok_or("no string \"action\"")?;
    let uint = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("no number \"{k}\""))
    };
    let string = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("no string \"{k}\""))
    };
    let level = |k: &str| -> std::result::Result<Verbosity, String> {
        Ok(Verbosity::from_u64(uint(k)?.min(7)).unwrap_or(Verbosity::Vomit))
    };
    let fields = || -> std::result::Result<Vec<Field>, String> {
        let Some(list) = v.get("fields") else {
            return Ok(Vec::new());
        };
        list.as_array()
            .ok_or("\"fields\" is not a list")?
            .iter()
            .map(|f| match f {
                Value::Number(n) => n
                    .as_u64()
                    .map(Field::Int)
                    .ok_or("a field is not a natural number".to_owned()),
                Value::String(s) => Ok(Field::String(s.clone().into_bytes())),
                _ => Err("a field is neither a number nor a string".to_owned()),
            })
            .collect()
    };
    Ok(match action {
        "start" => JsonMessage::Start {
            id: uint("id")?,
            level: level("level")?,
            activity_type: ActivityType::from_u64(uint("type")?),
            text: v
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            fields: fields()?,
        },
        "stop" => JsonMessage::Stop { id: uint("id")? },
        "result" => JsonMessage::Result {
            id: uint("id")?,
            result_type: ResultType::from_u64(uint("type")?),
            fields: fields()?,
        },
        "setPhase" => JsonMessage::SetPhase(string("phase")?),
        "msg" => JsonMessage::Msg {
            level: level("level")?,
            msg: string("msg")?,
        },
        _ => JsonMessage::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_messages() {
        assert_eq!(
            parse_json_message(
                r#"{"action":"start","id":7,"level":3,"type":101,"text":"downloading","fields":["http://x",2]}"#
            ),
            Ok(JsonMessage::Start {
                id: 7,
                level: Verbosity::Info,
                activity_type: ActivityType::FileTransfer,
                text: "downloading".into(),
                fields: vec![Field::String(b"http://x".to_vec()), Field::Int(2)],
            })
        );
        assert_eq!(
            parse_json_message(r#"{"action":"setPhase","phase":"buildPhase"}"#),
            Ok(JsonMessage::SetPhase("buildPhase".into()))
        );
        assert_eq!(
            parse_json_message(r#"{"action":"msg","level":0,"msg":"hi"}"#),
            Ok(JsonMessage::Msg {
                level: Verbosity::Error,
                msg: "hi".into()
            })
        );
        assert_eq!(
            parse_json_message(r#"{"action":"result","id":7,"type":105,"fields":[1,2,0,0]}"#),
            Ok(JsonMessage::Result {
                id: 7,
                result_type: ResultType::Progress,
                fields: [1, 2, 0, 0].into_iter().map(Field::Int).collect(),
            })
        );
        assert_eq!(
            parse_json_message(r#"{"action":"frobnicate"}"#),
            Ok(JsonMessage::Other)
        );
        assert!(parse_json_message(r#"{"action":"stop"}"#).is_err());
        assert!(
            parse_json_message(r#"{"action":"result","id":1,"type":101,"fields":[{}]}"#).is_err()
        );
        assert!(parse_json_message(r#"[1]"#).is_err());
    }

    #[test]
    fn error_text_is_indented_like_cppnix() {
        assert_eq!(
            format_error("builder for 'x' failed with exit code 3;\nlast 1 log lines:\n> a"),
            "error: builder for 'x' failed with exit code 3;\n       last 1 log lines:\n       > a"
        );
    }

    #[tokio::test]
    async fn request_activities_and_progress() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut rep = Reporter::begin(&tx, Verbosity::Info).await.unwrap();
        rep.expected = 2;
        rep.progress().await.unwrap();
        rep.progress().await.unwrap(); // unchanged: nothing sent
        let mut b = BuildActivity::default();
        b.started(&rep, "/s/x.drv").await.unwrap();
        b.line(&rep, b"hello".to_vec()).await.unwrap();
        rep.log(Verbosity::Debug, "hidden").await.unwrap();
        b.finish(&rep).await.unwrap();
        rep.end().await.unwrap();
        drop(tx);
        let mut msgs = Vec::new();
        while let Some(m) = rx.recv().await {
            msgs.push(m);
        }
        let names: Vec<&str> = msgs.iter().map(StderrMessage::name).collect();
        assert_eq!(
            names,
            [
                "STDERR_START_ACTIVITY",
                "STDERR_START_ACTIVITY",
                "STDERR_START_ACTIVITY",
                "STDERR_RESULT",
                "STDERR_RESULT",
                "STDERR_RESULT",
                "STDERR_RESULT",
                // expected = 2
                "STDERR_RESULT",
                "STDERR_RESULT",
                "STDERR_RESULT",
                "STDERR_RESULT",
                "STDERR_START_ACTIVITY",
                "STDERR_RESULT",
                "STDERR_STOP_ACTIVITY",
                "STDERR_STOP_ACTIVITY",
                "STDERR_STOP_ACTIVITY",
                "STDERR_STOP_ACTIVITY",
            ]
        );
        let StderrMessage::StartActivity(a) = &msgs[11] else {
            panic!()
        };
        assert_eq!(a.activity_type, ActivityType::Build);
        assert_eq!(a.text, b"building '/s/x.drv'");
        assert_eq!(a.level, Verbosity::Info);
        assert_eq!(
            a.fields,
            [
                Field::String(b"/s/x.drv".to_vec()),
                Field::String(vec![]),
                Field::Int(1),
                Field::Int(1)
            ]
        );
        let StderrMessage::Result { fields, .. } = &msgs[7] else {
            panic!()
        };
        assert_eq!(fields, &[0, 2, 0, 0].map(Field::Int));
    }
}
