//! SetOptions (19): the client's settings for this session only.
//!
//! The verbosity becomes the session's `STDERR_NEXT` filter at once; the other fields and
//! the overrides are applied to a fresh copy of the daemon's settings under the client's
//! trust ([`Settings::apply_client_options`](crate::config::Settings::apply_client_options)),
//! so one client's options never reach another session. Overrides that were dropped are
//! reported as CppNix does: a `warning:` line, or a debug message. A build's own session
//! (recursive Nix) applies nothing and warns about every override.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use nixnest_protocol::response::Response;
use nixnest_protocol::stderr::Verbosity;
use nixnest_protocol::types::ClientSettings;

use super::{Outcome, reply};
use crate::config::{ClientOptions, Severity};
use crate::error::OpResult;
use crate::session::Session;

pub async fn set_options<S>(s: &mut Session<S>, o: ClientSettings) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.out.set_verbosity(o.verbosity);
    let options = ClientOptions {
        keep_failed: o.keep_failed,
        keep_going: o.keep_going,
        try_fallback: o.try_fallback,
        max_build_jobs: o.max_build_jobs,
        max_silent_time: o.max_silent_time,
        build_cores: o.build_cores,
        use_substitutes: o.use_substitutes,
        overrides: o.overrides,
    };
    let (settings, ignored) = s
        .daemon_settings
        .apply_client_options(&options, s.policy.client_trust());
    s.settings = Arc::new(settings);
    for ignored in ignored {
        // A build's own client gets nothing applied (not even the whitelist), and is told
        // so for every setting it sent: `--option sandbox false` from inside a build is
        // visibly refused rather than quietly dropped.
        let severity = if s.view.is_restricted() {
            Severity::Warn
        } else {
            ignored.severity()
        };
        match severity {
            Severity::Warn => {
                tracing::debug!("client setting ignored: {ignored}");
                s.out
                    .log(Verbosity::Warn, &format!("warning: {ignored}"))
                    .await?;
            }
            Severity::Debug => {
                tracing::debug!("client setting ignored: {ignored}");
                s.out.log(Verbosity::Debug, &ignored.to_string()).await?;
            }
        }
    }
    reply(Response::Unit)
}
