//! The command line, compatible with `nix-daemon`'s:
//!
//! ```text
//! nixnest-daemon [--daemon] [--stdio] [--force-trusted | --force-untrusted | --default-trust]
//!                [--socket-path PATH] [--option NAME VALUE]... [-v]... [--debug]
//! nixnest-daemon status [--json] [--control-socket PATH]
//! ```
//!
//! * `--daemon` is accepted and ignored (NixOS's unit passes it).
//! * `--stdio` serves one session on stdin/stdout; the peer is trusted, as when CppNix
//!   serves `--stdio` itself (`ssh-ng://` runs it on the remote side).
//! * The trust flags need the `daemon-trust-override` experimental feature, like in
//!   CppNix; the last one given wins. `--force-untrusted` also applies to socket
//!   clients (authorization still runs, trusted peers are served as untrusted).
//!   Unlike CppNix, `--force-trusted` is refused without `--stdio`: on the socket it
//!   would make every local user root-equivalent.
//! * `--option NAME VALUE` is applied after every configuration file and `NIX_CONFIG`.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

use crate::config::Settings;

/// `--version` output: our version, then the Nix-compatible string clients see.
const VERSION_TEXT: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\nreports itself to Nix clients as version ",
    crate::daemon_version_string!()
);

#[derive(Debug, Parser)]
#[command(
    name = "nixnest-daemon",
    version = VERSION_TEXT,
    about = "A nix-daemon replacement: serves the Nix worker protocol on the daemon socket",
    args_override_self = true
)]
pub struct Cli {
    /// Ignored, for compatibility with `nix-daemon --daemon`.
    #[arg(long)]
    pub daemon: bool,

    /// Serve one session on standard input/output instead of listening on the socket.
    #[arg(long, conflicts_with = "socket_path")]
    pub stdio: bool,

    /// Trust the client (`--stdio` only; needs experimental feature daemon-trust-override).
    #[arg(long, overrides_with_all = ["force_untrusted", "default_trust"])]
    pub force_trusted: bool,

    /// Treat clients as untrusted (needs experimental feature daemon-trust-override).
    #[arg(long, overrides_with_all = ["force_trusted", "default_trust"])]
    pub force_untrusted: bool,

    /// Decide trust from trusted-users (the default).
    #[arg(long, overrides_with_all = ["force_trusted", "force_untrusted"])]
    pub default_trust: bool,

    /// Listen on this socket instead of NIX_DAEMON_SOCKET_PATH / the default.
    #[arg(long, value_name = "PATH")]
    pub socket_path: Option<PathBuf>,

    /// Set a nix.conf setting, after all configuration files. Repeatable.
    #[arg(long = "option", num_args = 2, value_names = ["NAME", "VALUE"], action = ArgAction::Append)]
    pub options: Vec<String>,

    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Debug log output (same as -v).
    #[arg(long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the running daemon's open sessions and builds (root only).
    Status {
        /// Print the raw JSON reply.
        #[arg(long)]
        json: bool,
        /// The control socket (default: <NIX_STATE_DIR>/nixnest/control).
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
    },
}

/// The effect of the trust flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrustOverride {
    Default,
    ForceTrusted,
    ForceUntrusted,
}

impl Cli {
    /// `--option` arguments as (name, value) pairs, in order.
    pub fn option_pairs(&self) -> Vec<(String, String)> {
        self.options
            .chunks(2)
            .filter_map(|pair| match pair {
                [name, value] => Some((name.clone(), value.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn trust_override(&self) -> TrustOverride {
        if self.force_trusted {
            TrustOverride::ForceTrusted
        } else if self.force_untrusted {
            TrustOverride::ForceUntrusted
        } else {
            TrustOverride::Default
        }
    }
}

/// Checks the trust flags against the mode and the settings (see the module docs).
pub fn check_trust_override(
    trust: TrustOverride,
    stdio: bool,
    settings: &Settings,
) -> Result<(), String> {
    if trust == TrustOverride::Default {
        return Ok(());
    }
    if !settings.has_experimental_feature("daemon-trust-override") {
        return Err(
            "experimental Nix feature 'daemon-trust-override' is disabled; add \
                    '--option extra-experimental-features daemon-trust-override' to enable it"
                .to_owned(),
        );
    }
    if trust == TrustOverride::ForceTrusted && !stdio {
        return Err(
            "'--force-trusted' is only supported with '--stdio': on the daemon socket it \
                    would make every local user root-equivalent; add them to trusted-users instead"
                .to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigEnv;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("nixnest-daemon").chain(args.iter().copied()))
    }

    #[test]
    fn flags() {
        let cli = parse(&[
            "--daemon", "--option", "max-jobs", "4", "--option", "sandbox", "false", "-vv",
        ])
        .unwrap();
        assert!(cli.daemon && !cli.stdio && cli.command.is_none());
        assert_eq!(
            cli.option_pairs(),
            vec![
                ("max-jobs".into(), "4".into()),
                ("sandbox".into(), "false".into())
            ]
        );
        assert_eq!(cli.verbose, 2);
        // a value may be empty or look like a flag's argument
        let cli = parse(&["--option", "builders", ""]).unwrap();
        assert_eq!(cli.option_pairs(), vec![("builders".into(), String::new())]);
        assert!(parse(&["--option", "max-jobs"]).is_err());
        assert!(parse(&["--stdio", "--socket-path", "/x"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        let cli = parse(&["status", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Status { json: true, .. })
        ));
    }

    #[test]
    fn last_trust_flag_wins() {
        let cases: &[(&[&str], TrustOverride)] = &[
            (&[], TrustOverride::Default),
            (&["--force-trusted"], TrustOverride::ForceTrusted),
            (&["--force-untrusted"], TrustOverride::ForceUntrusted),
            (
                &["--force-trusted", "--force-untrusted"],
                TrustOverride::ForceUntrusted,
            ),
            (
                &["--force-untrusted", "--force-trusted"],
                TrustOverride::ForceTrusted,
            ),
            (
                &["--force-trusted", "--default-trust"],
                TrustOverride::Default,
            ),
        ];
        for (args, want) in cases {
            assert_eq!(parse(args).unwrap().trust_override(), *want, "{args:?}");
        }
    }

    #[test]
    fn trust_override_policy() {
        let env = ConfigEnv::from_vars(|_| None, None).unwrap();
        let plain = Settings::defaults(&env);
        let mut xp = plain.clone();
        xp.set("experimental-features", "daemon-trust-override")
            .unwrap();
        use TrustOverride::*;
        assert!(check_trust_override(Default, false, &plain).is_ok());
        assert!(
            check_trust_override(ForceTrusted, true, &plain)
                .unwrap_err()
                .contains("daemon-trust-override")
        );
        assert!(check_trust_override(ForceTrusted, true, &xp).is_ok());
        assert!(check_trust_override(ForceUntrusted, false, &xp).is_ok());
        assert!(
            check_trust_override(ForceTrusted, false, &xp)
                .unwrap_err()
                .contains("--stdio")
        );
    }

    #[test]
    fn version_text_names_both_versions() {
        assert!(VERSION_TEXT.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION_TEXT.ends_with(crate::DAEMON_VERSION_STRING));
        Cli::command_for_tests().debug_assert();
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
