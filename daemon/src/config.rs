//! `nix.conf`: the daemon's configuration, read the way CppNix reads it, into one typed
//! [`Settings`] value.
//!
//! # Grammar (CppNix `parseConfigFiles`, 2.8 … HEAD)
//!
//! ```text
//! file      = { line "\n" }
//! line      = [ content ] [ "#" comment ]        ; everything from the first '#' is dropped
//! content   = token { sep token }                ; sep = one or more of ' ' '\t' '\r' '\n'
//! directive = "include" path                     ; exactly two tokens
//!           | "!include" path                    ; same, a missing file is no error
//!           | name "=" { token }                 ; the '=' must be a token of its own
//! ```
//!
//! * There is no line continuation and no quoting: the value is the tokens after `=`
//!   joined by single spaces, so `a =  x   y` sets `a` to `x y` and `a = ` sets it to the
//!   empty string. `a=b` (one token) is a syntax error, like in CppNix.
//! * `include` paths are relative to the directory of the including file; `!include`
//!   tolerates a missing file, `include` does not.
//! * `extra-NAME = v` appends `v` to the list-valued setting `NAME` (or its alias); it is
//!   looked up only after `NAME` itself failed, because `extra-platforms` is a setting of
//!   its own.
//! * Within one file (with its includes) `experimental-features` lines are applied first.
//! * Booleans are `true|yes|1` / `false|no|0`; integers take an optional `K`/`M`/`G`/`T`
//!   suffix (powers of 1024).
//!
//! # Where the daemon reads it (CppNix `loadConfFile`)
//!
//! 1. `$NIX_CONF_DIR/nix.conf` (default `/etc/nix/nix.conf`);
//! 2. the user files, lowest priority first: `$NIX_USER_CONF_FILES` (colon-separated) if
//!    set, else `$XDG_CONFIG_DIRS/nix/nix.conf` (default `/etc/xdg`) and
//!    `$NIX_CONFIG_HOME` or `$XDG_CONFIG_HOME/nix` or `~/.config/nix` + `/nix.conf` —
//!    yes, CppNix's daemon reads root's own user configuration too;
//! 3. `$NIX_CONFIG` (file contents in a variable, newline-separated);
//! 4. the daemon's `--option NAME VALUE` arguments.
//!
//! Missing files are skipped. Unlike CppNix (which swallows every I/O error there), a file
//! that exists but cannot be read is an error: a daemon silently running without its
//! configuration is worse than one that refuses to start.
//!
//! # Errors and warnings
//!
//! Syntax errors, missing `include`s and invalid values are fatal ([`ConfigError`], each
//! with `file:line`), as in CppNix. Unknown names are collected as [`ConfigWarning`]s and
//! never abort. Settings that only the client or the evaluator reads (`nix-path`,
//! `show-trace`, …) share the file with the daemon, so they are recognised and skipped
//! quietly; daemon-side settings nixnest does not implement yet are reported.
//!
//! # Per-session settings
//!
//! [`Settings::apply_client_options`] applies a client's `SetOptions` to a *copy* of the
//! daemon settings under CppNix's trust policy (worker-protocol.md §4.3): one client can
//! never change another's settings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// `include` nesting deeper than this is treated as a cycle (CppNix recurses until the
/// stack runs out).
pub const MAX_INCLUDE_DEPTH: usize = 32;

/// Configuration files larger than this are refused rather than read into memory.
pub const MAX_CONF_FILE_SIZE: u64 = 16 << 20;

/// `NIX_STORE_DIR` default.
pub const DEFAULT_NIX_STORE_DIR: &str = "/nix/store";
/// `NIX_STATE_DIR` default.
pub const DEFAULT_NIX_STATE_DIR: &str = "/nix/var/nix";
/// `NIX_LOG_DIR` default.
pub const DEFAULT_NIX_LOG_DIR: &str = "/nix/var/log/nix";
/// `NIX_CONF_DIR` default.
pub const DEFAULT_NIX_CONF_DIR: &str = "/etc/nix";

// ---------------------------------------------------------------------------------------
// Errors and warnings
// ---------------------------------------------------------------------------------------

/// Where a directive came from: a file (or `NIX_CONFIG`, or `--option`) and a 1-based line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub source: String,
    pub line: Option<usize>,
}

impl Origin {
    fn new(source: impl Into<String>, line: Option<usize>) -> Self {
        Origin {
            source: source.into(),
            line,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}", self.source, line),
            None => f.write_str(&self.source),
        }
    }
}

/// A value that does not parse for its setting. The text mirrors CppNix's `UsageError`s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("setting '{name}' has invalid value '{value}' (expected {expected})")]
pub struct ValueError {
    pub name: String,
    pub value: String,
    pub expected: &'static str,
}

impl ValueError {
    fn new(name: &str, value: &str, expected: &'static str) -> Self {
        ValueError {
            name: name.to_owned(),
            value: value.to_owned(),
            expected,
        }
    }
}

/// A fatal configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: syntax error in configuration line '{line}'")]
    Syntax { origin: Origin, line: String },
    #[error("{origin}: file '{}' included from here not found", path.display())]
    IncludeNotFound { origin: Origin, path: PathBuf },
    #[error("{origin}: includes nested more than {MAX_INCLUDE_DEPTH} deep (an include cycle?)")]
    IncludeDepth { origin: Origin },
    #[error("cannot read configuration file '{}': {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file '{}' is larger than {MAX_CONF_FILE_SIZE} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("configuration file '{}' is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("{origin}: {source}")]
    Value {
        origin: Origin,
        #[source]
        source: ValueError,
    },
    #[error("environment variable {var} must be an absolute path, not '{value}'")]
    EnvPath { var: &'static str, value: String },
}

/// Something worth telling the administrator that does not stop the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    pub origin: Origin,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

// ---------------------------------------------------------------------------------------
// Parsing (pure; no file system)
// ---------------------------------------------------------------------------------------

/// One meaningful line of a `nix.conf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Directive<'a> {
    Include { path: &'a str, optional: bool },
    Set { name: &'a str, value: String },
}

/// A directive and its 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedLine<'a> {
    pub line: usize,
    pub directive: Directive<'a>,
}

/// CppNix's `tokenizeString` default separators; other white space is part of a token.
fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Parses the text of one configuration file; `source` names it in errors.
pub fn parse<'a>(text: &'a str, source: &str) -> Result<Vec<ParsedLine<'a>>, ConfigError> {
    let mut out = Vec::new();
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let content = match raw.find('#') {
            Some(hash) => raw.get(..hash).unwrap_or(""),
            None => raw,
        };
        let tokens: Vec<&str> = content
            .split(is_separator)
            .filter(|t| !t.is_empty())
            .collect();
        let syntax = || ConfigError::Syntax {
            origin: Origin::new(source, Some(line)),
            line: content.to_owned(),
        };
        let directive = match tokens.as_slice() {
            [] => continue,
            [_] => return Err(syntax()),
            [keyword @ ("include" | "!include"), path] => Directive::Include {
                path,
                optional: *keyword == "!include",
            },
            ["include" | "!include", ..] => return Err(syntax()),
            [name, "=", value @ ..] => Directive::Set {
                name,
                value: value.join(" "),
            },
            _ => return Err(syntax()),
        };
        out.push(ParsedLine { line, directive });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Value types
// ---------------------------------------------------------------------------------------

/// How a value is read from its text form, whether `extra-` can append to it, and how it
/// is shown.
trait SettingValue: Sized {
    const APPENDABLE: bool = false;
    fn parse_value(name: &str, text: &str) -> Result<Self, ValueError>;
    /// Only called when `APPENDABLE`.
    fn append(&mut self, more: Self) {
        *self = more;
    }
    fn render(&self) -> String;
}

impl SettingValue for bool {
    fn parse_value(name: &str, text: &str) -> Result<Self, ValueError> {
        match text {
            "true" | "yes" | "1" => Ok(true),
            "false" | "no" | "0" => Ok(false),
            _ => Err(ValueError::new(name, text, "a Boolean: true or false")),
        }
    }
    fn render(&self) -> String {
        self.to_string()
    }
}

/// CppNix's `string2IntWithUnitPrefix` for unsigned settings, with overflow checked.
fn parse_unsigned(name: &str, text: &str) -> Result<u64, ValueError> {
    let invalid = || {
        ValueError::new(
            name,
            text,
            "an unsigned integer, optionally with K, M, G or T",
        )
    };
    let unit = text.char_indices().last().and_then(|(at, c)| {
        let shift = match c.to_ascii_uppercase() {
            'K' => 10,
            'M' => 20,
            'G' => 30,
            'T' => 40,
            _ => return None,
        };
        Some((text.get(..at)?, shift))
    });
    let (digits, shift) = unit.unwrap_or((text, 0));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    n.checked_mul(1u64 << shift).ok_or_else(invalid)
}

macro_rules! unsigned_setting {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn parse_value(name: &str, text: &str) -> Result<Self, ValueError> {
                let n = parse_unsigned(name, text)?;
                <$t>::try_from(n).map_err(|_| ValueError::new(name, text, "a smaller number"))
            }
            fn render(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
unsigned_setting!(u32, u64, usize);

impl SettingValue for String {
    fn parse_value(_: &str, text: &str) -> Result<Self, ValueError> {
        Ok(text.to_owned())
    }
    fn render(&self) -> String {
        self.clone()
    }
}

fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(is_separator)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// An ordered, whitespace-separated list (CppNix `Strings`).
impl SettingValue for Vec<String> {
    const APPENDABLE: bool = true;
    fn parse_value(_: &str, text: &str) -> Result<Self, ValueError> {
        Ok(tokens(text).collect())
    }
    fn append(&mut self, more: Self) {
        self.extend(more);
    }
    fn render(&self) -> String {
        self.join(" ")
    }
}

/// A whitespace-separated set (CppNix `StringSet`).
impl SettingValue for BTreeSet<String> {
    const APPENDABLE: bool = true;
    fn parse_value(_: &str, text: &str) -> Result<Self, ValueError> {
        Ok(tokens(text).collect())
    }
    fn append(&mut self, more: Self) {
        self.extend(more);
    }
    fn render(&self) -> String {
        self.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Lexically canonicalises an absolute path (CppNix `canonPath`): no `.`, `..`, repeated
/// or trailing slashes. `None` for relative paths.
pub fn canon_path(text: &str) -> Option<PathBuf> {
    let path = Path::new(text);
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// An absolute path setting that must not be empty (CppNix `AbsolutePath`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbsPath(pub PathBuf);

impl SettingValue for AbsPath {
    fn parse_value(name: &str, text: &str) -> Result<Self, ValueError> {
        canon_path(text)
            .map(AbsPath)
            .ok_or_else(|| ValueError::new(name, text, "an absolute path"))
    }
    fn render(&self) -> String {
        self.0.display().to_string()
    }
}

/// An absolute path, or empty for "not set".
impl SettingValue for Option<PathBuf> {
    fn parse_value(name: &str, text: &str) -> Result<Self, ValueError> {
        if text.is_empty() {
            return Ok(None);
        }
        canon_path(text)
            .map(Some)
            .ok_or_else(|| ValueError::new(name, text, "an absolute path or nothing"))
    }
    fn render(&self) -> String {
        self.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

/// `sandbox = true | false | relaxed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxMode {
    Enabled,
    Disabled,
    /// Sandbox unless the derivation sets `__noChroot` (or is fixed-output/impure).
    Relaxed,
}

impl SettingValue for SandboxMode {
    fn parse_value(name: &str, text: &str) -> Result<Self, ValueError> {
        match text {
            "true" => Ok(SandboxMode::Enabled),
            "false" => Ok(SandboxMode::Disabled),
            "relaxed" => Ok(SandboxMode::Relaxed),
            _ => Err(ValueError::new(name, text, "true, false or relaxed")),
        }
    }
    fn render(&self) -> String {
        match self {
            SandboxMode::Enabled => "true",
            SandboxMode::Disabled => "false",
            SandboxMode::Relaxed => "relaxed",
        }
        .to_owned()
    }
}

/// `max-jobs`: a number, or `auto` for the number of CPUs (resolved when parsed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxJobs(pub u32);

impl SettingValue for MaxJobs {
    fn parse_value(name: &str, text: &str) -> Result<Self, ValueError> {
        if text == "auto" {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            return Ok(MaxJobs(u32::try_from(cpus).unwrap_or(u32::MAX)));
        }
        u32::parse_value(name, text)
            .map(MaxJobs)
            .map_err(|_| ValueError::new(name, text, "'auto' or an integer"))
    }
    fn render(&self) -> String {
        self.0.to_string()
    }
}

/// One `sandbox-paths` entry: what to mount (`source`) and whether it may be missing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChrootPath {
    pub source: String,
    pub optional: bool,
}

/// `sandbox-paths`: tokens `inside[=outside][?]`, keyed by the path inside the sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathsInChroot(pub BTreeMap<String, ChrootPath>);

impl SettingValue for PathsInChroot {
    const APPENDABLE: bool = true;
    fn parse_value(_: &str, text: &str) -> Result<Self, ValueError> {
        let mut map = BTreeMap::new();
        for token in tokens(text) {
            let (token, optional) = match token.strip_suffix('?') {
                Some(rest) => (rest.to_owned(), true),
                None => (token, false),
            };
            let (inside, source) = match token.split_once('=') {
                Some((inside, outside)) => (inside.to_owned(), outside.to_owned()),
                None => (token.clone(), token),
            };
            if inside.is_empty() {
                continue;
            }
            map.insert(inside, ChrootPath { source, optional });
        }
        Ok(PathsInChroot(map))
    }
    fn append(&mut self, more: Self) {
        self.0.extend(more.0);
    }
    fn render(&self) -> String {
        let mut parts = Vec::new();
        for (inside, path) in &self.0 {
            let mut s = inside.clone();
            if path.source != *inside {
                s.push('=');
                s.push_str(&path.source);
            }
            if path.optional {
                s.push('?');
            }
            parts.push(s);
        }
        parts.join(" ")
    }
}

// ---------------------------------------------------------------------------------------
// The settings table
// ---------------------------------------------------------------------------------------

/// Declares [`Settings`] once: the environment-derived paths, then every `nix.conf`
/// setting with its canonical name and aliases. The macro generates the name lookup,
/// the typed assignment and the rendering from the same list, so they cannot drift.
macro_rules! settings {
    (
        paths { $( $(#[doc = $pdoc:literal])* $pfield:ident, )* }
        conf { $( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $name:literal $([ $($alias:literal),* ])?, )* }
    ) => {
        /// Everything the daemon, store and builder read from the environment and
        /// `nix.conf`. Cheap to clone: each session gets its own copy.
        #[derive(Clone, Debug, PartialEq)]
        pub struct Settings {
            $( $(#[doc = $pdoc])* pub $pfield: PathBuf, )*
            $( $(#[doc = $doc])* #[doc = concat!("\n\n`", $name, "`", $( $(", alias `", $alias, "`",)* )?)] pub $field: $ty, )*
        }

        impl Settings {
            /// Every canonical setting name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),*];

            /// The canonical name for `name` or one of its aliases.
            pub fn canonical_name(name: &str) -> Option<&'static str> {
                match name {
                    $( $name $( $(| $alias)* )? => Some($name), )*
                    _ => None,
                }
            }

            fn appendable(canonical: &str) -> bool {
                match canonical {
                    $( $name => <$ty as SettingValue>::APPENDABLE, )*
                    _ => false,
                }
            }

            /// Sets (or with `append`, extends) the setting with canonical name `canonical`.
            fn assign(&mut self, canonical: &str, value: &str, append: bool) -> Result<(), ValueError> {
                match canonical {
                    $( $name => {
                        let parsed = <$ty as SettingValue>::parse_value($name, value)?;
                        if append {
                            SettingValue::append(&mut self.$field, parsed);
                        } else {
                            self.$field = parsed;
                        }
                        Ok(())
                    } )*
                    _ => Ok(()),
                }
            }

            /// The current value of a setting (by canonical name or alias) in `nix.conf`
            /// syntax, as `nix show-config` would print it.
            pub fn get(&self, name: &str) -> Option<String> {
                match Self::canonical_name(name)? {
                    $( $name => Some(SettingValue::render(&self.$field)), )*
                    _ => None,
                }
            }
        }
    };
}

settings! {
    paths {
        /// The logical store directory (`NIX_STORE_DIR`, legacy `NIX_STORE`; `/nix/store`).
        store_dir,
        /// `NIX_STATE_DIR` (`/nix/var/nix`): db, gcroots, profiles, temproots, sockets.
        state_dir,
        /// `NIX_LOG_DIR` (`/nix/var/log/nix`): build logs under `drvs/`.
        log_dir,
        /// `NIX_CONF_DIR` (`/etc/nix`).
        conf_dir,
        /// The daemon socket (`NIX_DAEMON_SOCKET_PATH`, else `<state>/daemon-socket/socket`).
        daemon_socket,
    }
    conf {
        // --- who may connect (auth.rs) ---
        /// Users (or `@group`s, or `*`) whose connections are trusted. Default `root`.
        trusted_users: Vec<String> = "trusted-users",
        /// Users (or `@group`s, or `*`) allowed to connect at all. Default `*`.
        allowed_users: Vec<String> = "allowed-users",
        /// The build users' group; `nixbld` when the daemon runs as root, else empty.
        /// Peers whose primary group is this group are refused (recursive-Nix guard).
        build_users_group: String = "build-users-group",
        /// Allocate build uids from a range instead of `build-users-group`.
        auto_allocate_uids: bool = "auto-allocate-uids",
        /// First uid of the auto-allocated range (Linux default 0x34000000).
        start_id: u32 = "start-id",
        /// Size of the auto-allocated uid range (65536 × 128).
        id_count: u32 = "id-count",
        /// nixnest: admit connections from build users (seed-style recursive Nix) as
        /// `BuildUser` sessions instead of refusing them. Default false.
        allow_build_user_connections: bool = "allow-build-user-connections",
        /// nixnest: sessions served at once; further clients wait in the socket backlog.
        max_connections: usize = "max-connections",
        /// nixnest: how deeply recursive-Nix builds may nest.
        recursive_nix_max_depth: u32 = "recursive-nix-max-depth",

        // --- building ---
        /// Concurrent local builds (`auto` = number of CPUs). Default 1.
        max_jobs: MaxJobs = "max-jobs" ["build-max-jobs"],
        /// `NIX_BUILD_CORES` for builders; 0 means all cores.
        cores: u32 = "cores" ["build-cores"],
        /// Seconds a builder may be silent before it is killed; 0 = no limit.
        max_silent_time: u64 = "max-silent-time" ["build-max-silent-time"],
        /// Seconds a build may run; 0 = no limit.
        timeout: u64 = "timeout" ["build-timeout"],
        /// Seconds between polls for locks.
        build_poll_interval: u64 = "build-poll-interval",
        /// Keep the build directory of failed builds.
        keep_failed: bool = "keep-failed",
        /// Keep building other derivations after one failed.
        keep_going: bool = "keep-going",
        /// Build from source when substitution fails.
        fallback: bool = "fallback" ["build-fallback"],
        /// `true` on Linux.
        sandbox: SandboxMode = "sandbox" ["build-use-sandbox", "build-use-chroot"],
        /// Extra paths bind-mounted into the sandbox (`extra-sandbox-paths` appends).
        sandbox_paths: PathsInChroot = "sandbox-paths" ["build-sandbox-paths", "build-chroot-dirs"],
        /// Build unsandboxed when the kernel refuses namespaces.
        sandbox_fallback: bool = "sandbox-fallback",
        /// The build directory as the builder sees it (`/build`).
        sandbox_build_dir: AbsPath = "sandbox-build-dir",
        /// Size of the sandbox's `/dev/shm` tmpfs (`50%`).
        sandbox_dev_shm_size: String = "sandbox-dev-shm-size",
        /// Where build directories are created; unset = `<state>/builds`.
        build_dir: Option<PathBuf> = "build-dir",
        /// Fail a build when supplementary groups cannot be dropped (true for root).
        require_drop_supplementary_groups: bool = "require-drop-supplementary-groups",
        /// Install the seccomp filter in builders.
        filter_syscalls: bool = "filter-syscalls",
        /// Leave `no_new_privs` off in builders.
        allow_new_privileges: bool = "allow-new-privileges",
        /// `personality(UNAME26)` for builders.
        impersonate_linux_26: bool = "impersonate-linux-26" ["build-impersonate-linux-26"],
        /// Program run before each build to add sandbox paths.
        pre_build_hook: String = "pre-build-hook",
        /// Program run after each successful build.
        post_build_hook: String = "post-build-hook",
        /// Remote build machines (`@file` or the list itself).
        builders: String = "builders",
        /// Let remote builders substitute.
        builders_use_substitutes: bool = "builders-use-substitutes",
        /// The platform of this machine, e.g. `x86_64-linux`.
        system: String = "system",
        /// Other platforms this machine can build for (`i686-linux` on x86_64, …).
        extra_platforms: BTreeSet<String> = "extra-platforms",
        /// Features this machine offers to `requiredSystemFeatures`.
        system_features: BTreeSet<String> = "system-features",
        /// Enabled experimental features (never taken from clients).
        experimental_features: BTreeSet<String> = "experimental-features",
        /// Extended attributes ignored when canonicalising outputs.
        ignored_acls: BTreeSet<String> = "ignored-acls",

        // --- build logs ---
        /// Write build logs to `<log>/drvs/`.
        keep_build_log: bool = "keep-build-log" ["build-keep-log"],
        /// bzip2-compress stored build logs.
        compress_build_log: bool = "compress-build-log" ["build-compress-log"],
        /// Kill builders whose log exceeds this many bytes; 0 = no limit.
        max_build_log_size: u64 = "max-build-log-size" ["build-max-log-size"],
        /// Lines of log tail shown when a build fails.
        log_lines: usize = "log-lines",

        // --- store and garbage collection ---
        /// GC keeps outputs of live derivations.
        keep_outputs: bool = "keep-outputs" ["gc-keep-outputs"],
        /// GC keeps derivations of live outputs.
        keep_derivations: bool = "keep-derivations" ["gc-keep-derivations"],
        /// Hard-link identical files on registration.
        auto_optimise_store: bool = "auto-optimise-store",
        /// Start a GC when free space drops below this many bytes; 0 = never.
        min_free: u64 = "min-free",
        /// Stop that GC once this many bytes are free.
        max_free: u64 = "max-free",
        /// Seconds between free-space checks during builds.
        min_free_check_interval: u64 = "min-free-check-interval",
        /// Size of `db/reserved` (8 MiB).
        gc_reserved_space: u64 = "gc-reserved-space",
        /// fsync the SQLite db.
        fsync_metadata: bool = "fsync-metadata",
        /// fsync store paths on registration.
        fsync_store_paths: bool = "fsync-store-paths",
        /// `sync()` before registering paths.
        sync_before_registering: bool = "sync-before-registering",
        /// SQLite in WAL mode.
        use_sqlite_wal: bool = "use-sqlite-wal",
        /// Accept a store directory that is (or is under) a symlink.
        allow_symlinked_store: bool = "allow-symlinked-store",

        // --- substitution and signatures ---
        /// Use substitutes.
        substitute: bool = "substitute" ["build-use-substitutes"],
        /// Binary caches used by default.
        substituters: Vec<String> = "substituters" ["binary-caches"],
        /// Binary caches untrusted clients may additionally select.
        trusted_substituters: Vec<String> = "trusted-substituters" ["trusted-binary-caches"],
        /// Keys whose signatures make a path trusted.
        trusted_public_keys: Vec<String> = "trusted-public-keys" ["binary-cache-public-keys"],
        /// Keys used to sign locally built paths.
        secret_key_files: Vec<String> = "secret-key-files",
        /// Require a trusted signature on imported non-CA paths.
        require_sigs: bool = "require-sigs",
        /// Concurrent substitutions.
        max_substitution_jobs: u32 = "max-substitution-jobs" ["substitution-max-jobs"],
        /// Seconds to establish a connection to a binary cache (0 = no limit).
        connect_timeout: u64 = "connect-timeout",
        /// Seconds a download may stall.
        stalled_download_timeout: u64 = "stalled-download-timeout",
        /// `netrc` file for downloads.
        netrc_file: String = "netrc-file",
        /// CA bundle for downloads.
        ssl_cert_file: String = "ssl-cert-file",
        /// Mirrors for `builtin:fetchurl` by hash.
        hashed_mirrors: Vec<String> = "hashed-mirrors",
    }
}

/// Settings that the client, the evaluator or the fetchers read from the same `nix.conf`.
/// The daemon recognises them so that a shared file does not produce warnings, and a
/// trusted client sending them in `SetOptions` is not told they are unknown.
const CLIENT_SIDE: &[&str] = &[
    "abort-on-warn",
    "accept-flake-config",
    "access-tokens",
    "allow-dirty",
    "allow-dirty-locks",
    "allow-import-from-derivation",
    "allow-unsafe-native-code-during-evaluation",
    "allowed-uris",
    "bash-prompt",
    "bash-prompt-prefix",
    "bash-prompt-suffix",
    "commit-lock-file-summary",
    "commit-lockfile-summary",
    "debugger-on-trace",
    "debugger-on-warn",
    "download-buffer-size",
    "eval-attrset-update-layer-rhs-threshold",
    "eval-cache",
    "eval-profile-file",
    "eval-profiler",
    "eval-profiler-frequency",
    "eval-system",
    "env-keep-derivations",
    "flake-registry",
    "ignore-try",
    "json-log-path",
    "keep-env-derivations",
    "lint-absolute-path-literals",
    "lint-short-path-literals",
    "lint-url-literals",
    "log-fd",
    "max-call-depth",
    "narinfo-cache-meta-ttl",
    "narinfo-cache-negative-ttl",
    "narinfo-cache-positive-ttl",
    "nix-path",
    "nix-shell-always-looks-for-shell-nix",
    "nix-shell-shebang-arguments-relative-to-script",
    "print-missing",
    "pure-eval",
    "restrict-eval",
    "show-trace",
    "store",
    "tarball-ttl",
    "trace-function-calls",
    "trace-import-from-derivation",
    "trace-verbose",
    "trust-tarballs-from-git-forges",
    "upgrade-nix-store-path-url",
    "use-registries",
    "use-xdg-base-directories",
    "user-agent-suffix",
    "warn-dirty",
    "warn-large-path-threshold",
];

/// Daemon-side CppNix settings that nixnest does not implement: accepted, reported.
const UNSUPPORTED: &[&str] = &[
    "allowed-impure-host-deps",
    "always-allow-substitutes",
    "binary-caches-parallel-connections",
    "build-hook",
    "build-hook-kill-timeout",
    "build-repeat",
    "darwin-log-sandbox-violations",
    "diff-hook",
    "download-attempts",
    "enforce-determinism",
    "external-builders",
    "filetransfer-retry-attempts",
    "filetransfer-retry-delay",
    "filetransfer-retry-delay-rate-limited",
    "filetransfer-retry-jitter",
    "filetransfer-retry-max-delay",
    "http-connections",
    "ignore-gc-delete-failure",
    "impure-env",
    "nar-buffer-size",
    "plugin-files",
    "preallocate-contents",
    "repeat",
    "run-diff-hook",
    "use-case-hack",
    "use-cgroups",
    "use-roots-daemon",
];

/// What happened to one `name = value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetOutcome {
    Applied,
    /// A client/evaluator setting the daemon has no use for.
    ClientSide,
    /// A daemon setting nixnest does not implement.
    Unsupported,
    Unknown,
}

// ---------------------------------------------------------------------------------------
// The environment and defaults
// ---------------------------------------------------------------------------------------

/// Everything the defaults and the file search depend on, captured once from the
/// process (or built by a test), so loading is deterministic.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigEnv {
    pub store_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub conf_dir: PathBuf,
    pub daemon_socket: PathBuf,
    /// User configuration files, highest priority first (CppNix order).
    pub user_conf_files: Vec<PathBuf>,
    /// The contents of `$NIX_CONFIG`.
    pub nix_config: Option<String>,
    /// Root gets `build-users-group = nixbld` and `require-drop-supplementary-groups`.
    pub is_root: bool,
    /// `/dev/kvm` is read-writable: `kvm` is a default system feature.
    pub kvm: bool,
    /// Default `system`.
    pub system: String,
    /// Default `extra-platforms`.
    pub extra_platforms: BTreeSet<String>,
    /// Default `ssl-cert-file`.
    pub ssl_cert_file: String,
}

impl ConfigEnv {
    /// Reads the real process environment.
    pub fn from_process() -> Result<Self, ConfigError> {
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(|| crate::auth::home_dir(rustix::process::geteuid().as_raw()));
        let mut env = Self::from_vars(|name| std::env::var(name).ok(), home.as_deref())?;
        env.is_root = rustix::process::geteuid().is_root();
        env.kvm = rustix::fs::access(
            "/dev/kvm",
            rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
        )
        .is_ok();
        env.extra_platforms = host_extra_platforms();
        env.ssl_cert_file = ["NIX_SSL_CERT_FILE", "SSL_CERT_FILE"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| {
                let debian = "/etc/ssl/certs/ca-certificates.crt";
                if Path::new(debian).exists() {
                    debian.to_owned()
                } else {
                    String::new()
                }
            });
        Ok(env)
    }

    /// Builds the environment from a variable lookup and a home directory; host facts
    /// (`is_root`, `kvm`, platforms) get neutral values the caller may change.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let non_empty = |name: &str| var(name).filter(|v| !v.is_empty());
        let abs = |name: &'static str, default: &str| -> Result<PathBuf, ConfigError> {
            let value = non_empty(name).unwrap_or_else(|| default.to_owned());
            canon_path(&value).ok_or(ConfigError::EnvPath { var: name, value })
        };
        let store_dir = match non_empty("NIX_STORE_DIR") {
            Some(_) => abs("NIX_STORE_DIR", DEFAULT_NIX_STORE_DIR)?,
            None => abs("NIX_STORE", DEFAULT_NIX_STORE_DIR)?,
        };
        let state_dir = abs("NIX_STATE_DIR", DEFAULT_NIX_STATE_DIR)?;
        let log_dir = abs("NIX_LOG_DIR", DEFAULT_NIX_LOG_DIR)?;
        let conf_dir = abs("NIX_CONF_DIR", DEFAULT_NIX_CONF_DIR)?;
        let daemon_socket = match non_empty("NIX_DAEMON_SOCKET_PATH") {
            Some(_) => abs("NIX_DAEMON_SOCKET_PATH", "")?,
            None => state_dir.join("daemon-socket/socket"),
        };

        let user_conf_files = match var("NIX_USER_CONF_FILES") {
            Some(list) => list
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect(),
            None => {
                let mut dirs = Vec::new();
                let config_home = non_empty("NIX_CONFIG_HOME").map(PathBuf::from).or_else(|| {
                    non_empty("XDG_CONFIG_HOME")
                        .map(PathBuf::from)
                        .or_else(|| home.map(|h| h.join(".config")))
                        .map(|d| d.join("nix"))
                });
                dirs.extend(config_home);
                let xdg_dirs = var("XDG_CONFIG_DIRS").unwrap_or_else(|| "/etc/xdg".to_owned());
                dirs.extend(
                    xdg_dirs
                        .split(':')
                        .filter(|s| !s.is_empty())
                        .map(|d| Path::new(d).join("nix")),
                );
                dirs.into_iter().map(|d| d.join("nix.conf")).collect()
            }
        };

        Ok(ConfigEnv {
            store_dir,
            state_dir,
            log_dir,
            conf_dir,
            daemon_socket,
            user_conf_files,
            nix_config: var("NIX_CONFIG"),
            is_root: false,
            kvm: false,
            system: host_system(),
            extra_platforms: BTreeSet::new(),
            ssl_cert_file: String::new(),
        })
    }
}

/// The Nix system name of the running binary (`x86_64-linux`, `aarch64-linux`, …).
pub fn host_system() -> String {
    let arch = match std::env::consts::ARCH {
        "x86" => "i686",
        "arm" => "armv7l",
        other => other,
    };
    format!("{arch}-{}", std::env::consts::OS)
}

/// CppNix's default `extra-platforms`: `i686-linux` on x86_64, plus the x86-64
/// micro-architecture levels this CPU supports (`x86_64-v2-linux`, …).
fn host_extra_platforms() -> BTreeSet<String> {
    #[allow(unused_mut)]
    let mut set = BTreeSet::new();
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        set.insert("i686-linux".to_owned());
        let v2 = std::arch::is_x86_feature_detected!("cmpxchg16b")
            && std::arch::is_x86_feature_detected!("popcnt")
            && std::arch::is_x86_feature_detected!("sse3")
            && std::arch::is_x86_feature_detected!("ssse3")
            && std::arch::is_x86_feature_detected!("sse4.1")
            && std::arch::is_x86_feature_detected!("sse4.2");
        let v3 = v2
            && std::arch::is_x86_feature_detected!("avx")
            && std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("bmi1")
            && std::arch::is_x86_feature_detected!("bmi2")
            && std::arch::is_x86_feature_detected!("f16c")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("lzcnt")
            && std::arch::is_x86_feature_detected!("movbe");
        let v4 = v3
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512cd")
            && std::arch::is_x86_feature_detected!("avx512dq")
            && std::arch::is_x86_feature_detected!("avx512vl");
        for (level, ok) in [
            ("x86_64-v1", true),
            ("x86_64-v2", v2),
            ("x86_64-v3", v3),
            ("x86_64-v4", v4),
        ] {
            if ok {
                set.insert(format!("{level}-linux"));
            }
        }
    }
    set
}

impl Settings {
    /// CppNix's defaults (as root where they differ), for the given environment.
    pub fn defaults(env: &ConfigEnv) -> Settings {
        let mut system_features: BTreeSet<String> = ["benchmark", "big-parallel", "nixos-test"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if env.kvm {
            system_features.insert("kvm".to_owned());
        }
        Settings {
            store_dir: env.store_dir.clone(),
            state_dir: env.state_dir.clone(),
            log_dir: env.log_dir.clone(),
            conf_dir: env.conf_dir.clone(),
            daemon_socket: env.daemon_socket.clone(),

            trusted_users: vec!["root".to_owned()],
            allowed_users: vec!["*".to_owned()],
            build_users_group: if env.is_root {
                "nixbld".to_owned()
            } else {
                String::new()
            },
            auto_allocate_uids: false,
            start_id: 0x3400_0000,
            id_count: 65536 * 128,
            allow_build_user_connections: false,
            max_connections: 1024,
            recursive_nix_max_depth: 3,

            max_jobs: MaxJobs(1),
            cores: 0,
            max_silent_time: 0,
            timeout: 0,
            build_poll_interval: 5,
            keep_failed: false,
            keep_going: false,
            fallback: false,
            sandbox: if cfg!(target_os = "linux") {
                SandboxMode::Enabled
            } else {
                SandboxMode::Disabled
            },
            sandbox_paths: PathsInChroot::default(),
            sandbox_fallback: true,
            sandbox_build_dir: AbsPath(PathBuf::from("/build")),
            sandbox_dev_shm_size: "50%".to_owned(),
            build_dir: None,
            require_drop_supplementary_groups: env.is_root,
            filter_syscalls: true,
            allow_new_privileges: false,
            impersonate_linux_26: false,
            pre_build_hook: String::new(),
            post_build_hook: String::new(),
            builders: format!("@{}", env.conf_dir.join("machines").display()),
            builders_use_substitutes: false,
            system: env.system.clone(),
            extra_platforms: env.extra_platforms.clone(),
            system_features,
            experimental_features: BTreeSet::new(),
            ignored_acls: ["security.csm", "security.selinux", "system.nfs4_acl"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),

            keep_build_log: true,
            compress_build_log: true,
            max_build_log_size: 0,
            log_lines: 25,

            keep_outputs: false,
            keep_derivations: true,
            auto_optimise_store: false,
            min_free: 0,
            max_free: i64::MAX as u64,
            min_free_check_interval: 5,
            gc_reserved_space: 8 << 20,
            fsync_metadata: true,
            fsync_store_paths: false,
            sync_before_registering: false,
            use_sqlite_wal: true,
            allow_symlinked_store: false,

            substitute: true,
            substituters: vec!["https://cache.nixos.org/".to_owned()],
            trusted_substituters: Vec::new(),
            trusted_public_keys: vec![
                "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=".to_owned(),
            ],
            secret_key_files: Vec::new(),
            require_sigs: true,
            max_substitution_jobs: 16,
            connect_timeout: 15,
            stalled_download_timeout: 300,
            netrc_file: env.conf_dir.join("netrc").display().to_string(),
            ssl_cert_file: env.ssl_cert_file.clone(),
            hashed_mirrors: Vec::new(),
        }
    }

    /// The effective build directory (`build-dir`, default `<state>/builds`).
    pub fn build_dir(&self) -> PathBuf {
        self.build_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("builds"))
    }

    /// Whether `experimental-features` contains `feature`.
    pub fn has_experimental_feature(&self, feature: &str) -> bool {
        self.experimental_features.contains(feature)
    }

    /// Applies one `name = value` with CppNix's lookup order: the name or an alias, then
    /// `extra-` + an appendable name, then the known-but-unused lists.
    pub fn set(&mut self, name: &str, value: &str) -> Result<SetOutcome, ValueError> {
        if let Some(canonical) = Self::canonical_name(name) {
            self.assign(canonical, value, false)?;
            return Ok(SetOutcome::Applied);
        }
        let base = name.strip_prefix("extra-");
        if let Some(canonical) = base.and_then(Self::canonical_name) {
            if Self::appendable(canonical) {
                self.assign(canonical, value, true)?;
                return Ok(SetOutcome::Applied);
            }
            return Ok(SetOutcome::Unknown);
        }
        let known = |list: &[&str]| list.contains(&name) || base.is_some_and(|b| list.contains(&b));
        Ok(if known(CLIENT_SIDE) {
            SetOutcome::ClientSide
        } else if known(UNSUPPORTED) {
            SetOutcome::Unsupported
        } else {
            SetOutcome::Unknown
        })
    }
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

/// The result of [`load`]: the settings, what deserves a warning, and the files read.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub settings: Settings,
    pub warnings: Vec<ConfigWarning>,
    pub files_read: Vec<PathBuf>,
}

/// Reads the configuration the way CppNix's daemon does (see the module docs) and applies
/// `cli_options` (`--option NAME VALUE`) last.
pub fn load(env: &ConfigEnv, cli_options: &[(String, String)]) -> Result<Loaded, ConfigError> {
    let mut loader = Loader {
        settings: Settings::defaults(env),
        warnings: Vec::new(),
        files_read: Vec::new(),
    };
    loader.apply_file(&env.conf_dir.join("nix.conf"))?;
    for file in env.user_conf_files.iter().rev() {
        loader.apply_file(file)?;
    }
    if let Some(text) = &env.nix_config {
        loader.apply_text(text, Path::new("NIX_CONFIG"))?;
    }
    for (name, value) in cli_options {
        loader.set(name, value, Origin::new("--option", None))?;
    }
    Ok(Loaded {
        settings: loader.settings,
        warnings: loader.warnings,
        files_read: loader.files_read,
    })
}

/// A `Set` directive resolved from a file or an include, with its origin.
struct Pending {
    name: String,
    value: String,
    origin: Origin,
}

struct Loader {
    settings: Settings,
    warnings: Vec<ConfigWarning>,
    files_read: Vec<PathBuf>,
}

impl Loader {
    /// A top-level file: missing is fine.
    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let Some(text) = read_conf_file(path)? else {
            return Ok(());
        };
        self.files_read.push(path.to_owned());
        self.apply_text(&text, path)
    }

    /// One chunk of configuration text, includes expanded; `experimental-features` first.
    fn apply_text(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let mut pending = Vec::new();
        self.collect(text, path, 0, &mut pending)?;
        let is_xp = |p: &Pending| {
            p.name == "experimental-features" || p.name == "extra-experimental-features"
        };
        let (xp, rest): (Vec<_>, Vec<_>) = pending.into_iter().partition(is_xp);
        for p in xp.into_iter().chain(rest) {
            self.set(&p.name, &p.value, p.origin)?;
        }
        Ok(())
    }

    fn collect(
        &mut self,
        text: &str,
        path: &Path,
        depth: usize,
        out: &mut Vec<Pending>,
    ) -> Result<(), ConfigError> {
        let source = path.display().to_string();
        for parsed in parse(text, &source)? {
            let origin = Origin::new(source.clone(), Some(parsed.line));
            match parsed.directive {
                Directive::Set { name, value } => out.push(Pending {
                    name: name.to_owned(),
                    value,
                    origin,
                }),
                Directive::Include {
                    path: target,
                    optional,
                } => {
                    if depth >= MAX_INCLUDE_DEPTH {
                        return Err(ConfigError::IncludeDepth { origin });
                    }
                    let base = path.parent().unwrap_or(Path::new(""));
                    let included = base.join(target);
                    match read_conf_file(&included)? {
                        Some(text) => {
                            self.files_read.push(included.clone());
                            self.collect(&text, &included, depth + 1, out)?;
                        }
                        None if optional => {}
                        None => {
                            return Err(ConfigError::IncludeNotFound {
                                origin,
                                path: included,
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn set(&mut self, name: &str, value: &str, origin: Origin) -> Result<(), ConfigError> {
        let outcome = self
            .settings
            .set(name, value)
            .map_err(|source| ConfigError::Value {
                origin: origin.clone(),
                source,
            })?;
        let message = match outcome {
            SetOutcome::Applied | SetOutcome::ClientSide => return Ok(()),
            SetOutcome::Unsupported => {
                format!("setting '{name}' is not supported by nixnest and has no effect")
            }
            SetOutcome::Unknown => format!("unknown setting '{name}'"),
        };
        self.warnings.push(ConfigWarning { origin, message });
        Ok(())
    }
}

/// Reads a configuration file; `Ok(None)` if it does not exist.
fn read_conf_file(path: &Path) -> Result<Option<String>, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_CONF_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONF_FILE_SIZE {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| ConfigError::NotUtf8 {
            path: path.to_owned(),
        })
}

/// Parses `text` as a configuration file and applies it to `settings` without touching
/// the file system (includes are not followed). The fuzz target drives this.
pub fn apply_text_without_includes(
    settings: &mut Settings,
    text: &str,
) -> Result<Vec<SetOutcome>, ConfigError> {
    let mut outcomes = Vec::new();
    for parsed in parse(text, "<input>")? {
        if let Directive::Set { name, value } = parsed.directive {
            let outcome = settings
                .set(name, &value)
                .map_err(|source| ConfigError::Value {
                    origin: Origin::new("<input>", Some(parsed.line)),
                    source,
                })?;
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}

// ---------------------------------------------------------------------------------------
// Per-session overrides (SetOptions)
// ---------------------------------------------------------------------------------------

/// How much a session's client may change (from the authorization decision).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTrust {
    Trusted,
    Untrusted,
    /// A build talking to the daemon from inside the sandbox: takes no settings at all.
    Recursive,
}

/// The `SetOptions` request's contents, already decoded. Wire integers arrive as u64;
/// values too large for the setting saturate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientOptions {
    pub keep_failed: bool,
    pub keep_going: bool,
    pub try_fallback: bool,
    pub max_build_jobs: u64,
    pub max_silent_time: u64,
    pub build_cores: u64,
    pub use_substitutes: bool,
    /// In wire order; duplicates keep the first value and are applied sorted by name,
    /// because CppNix reads them into a `std::map`.
    pub overrides: Vec<(String, String)>,
}

/// Why a client-specified setting (or one of its values) was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IgnoreReason {
    /// `ssh-auth-sock`: obsolete, silently dropped.
    Obsolete,
    /// `experimental-features` is never taken from clients.
    ExperimentalFeatures,
    /// `plugin-files` is never taken from clients.
    PluginFiles,
    /// Not on the untrusted whitelist.
    Restricted,
    /// One `substituters` entry not in `trusted-substituters` or the daemon's own list.
    UntrustedSubstituter(String),
    /// Known to nixnest only as a client/evaluator setting: no effect in the daemon.
    ClientSide,
    /// A daemon setting nixnest does not implement.
    Unsupported,
    Unknown,
    Invalid(ValueError),
    /// Sessions from inside a build take no settings.
    RecursiveSession,
}

/// How loudly a session should report an [`IgnoredOverride`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Tell the client (CppNix `warn`).
    Warn,
    /// Only in the daemon's debug log.
    Debug,
}

/// A client override that was dropped, with the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredOverride {
    pub name: String,
    pub value: String,
    pub reason: IgnoreReason,
}

impl IgnoredOverride {
    pub fn severity(&self) -> Severity {
        match self.reason {
            IgnoreReason::Obsolete
            | IgnoreReason::ExperimentalFeatures
            | IgnoreReason::ClientSide
            | IgnoreReason::RecursiveSession => Severity::Debug,
            IgnoreReason::PluginFiles
            | IgnoreReason::Restricted
            | IgnoreReason::UntrustedSubstituter(_)
            | IgnoreReason::Unsupported
            | IgnoreReason::Unknown
            | IgnoreReason::Invalid(_) => Severity::Warn,
        }
    }
}

impl fmt::Display for IgnoredOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.name;
        match &self.reason {
            IgnoreReason::Obsolete => write!(f, "ignoring the obsolete client-specified setting '{name}'"),
            IgnoreReason::ExperimentalFeatures => f.write_str("ignoring the client-specified experimental features"),
            IgnoreReason::PluginFiles => f.write_str(
                "ignoring the client-specified plugin-files; the client specifying plugins to the daemon never made sense",
            ),
            IgnoreReason::Restricted => write!(
                f,
                "ignoring the client-specified setting '{name}', because it is a restricted setting and you are not a trusted user"
            ),
            IgnoreReason::UntrustedSubstituter(s) => write!(
                f,
                "ignoring untrusted substituter '{s}', you are not a trusted user.\n\
                 Run `man nix.conf` for more information on the `substituters` configuration option."
            ),
            IgnoreReason::ClientSide => write!(f, "ignoring the client-side setting '{name}'"),
            IgnoreReason::Unsupported => {
                write!(f, "ignoring the client-specified setting '{name}': not supported by nixnest")
            }
            IgnoreReason::Unknown => write!(f, "unknown setting '{name}'"),
            IgnoreReason::Invalid(e) => write!(f, "{e}"),
            IgnoreReason::RecursiveSession => write!(f, "ignoring setting '{name}' sent from inside a build"),
        }
    }
}

/// Settings an untrusted client may override (CppNix `ClientSettings::apply`). The
/// aliases are accepted too, though real clients send canonical names.
const UNTRUSTED_WHITELIST: &[&str] = &[
    "timeout",
    "max-silent-time",
    "build-poll-interval",
    "connect-timeout",
];

fn trim_slash(s: &str) -> &str {
    s.trim_end_matches('/')
}

impl Settings {
    /// A copy of these settings with a client's `SetOptions` applied under CppNix's
    /// policy, plus every override that was not (fully) applied and why.
    ///
    /// * The fixed fields apply to every non-recursive session.
    /// * `ssh-auth-sock`, `experimental-features`, `plugin-files`: always ignored.
    /// * Trusted: everything else, unknown names reported.
    /// * Untrusted: `timeout`, `max-silent-time`, `build-poll-interval`, `connect-timeout`,
    ///   `builders` only when empty, and `substituters` filtered to
    ///   `trusted-substituters` ∪ the daemon's `substituters` (ignoring trailing `/`).
    /// * Recursive (a build's own client): nothing.
    pub fn apply_client_options(
        &self,
        options: &ClientOptions,
        trust: ClientTrust,
    ) -> (Settings, Vec<IgnoredOverride>) {
        let mut session = self.clone();
        let mut ignored = Vec::new();

        let mut overrides: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, value) in &options.overrides {
            overrides.entry(name.as_str()).or_insert(value.as_str());
        }
        let ignore = |name: &str, value: &str, reason| IgnoredOverride {
            name: name.to_owned(),
            value: value.to_owned(),
            reason,
        };

        if trust == ClientTrust::Recursive {
            for (name, value) in overrides {
                ignored.push(ignore(name, value, IgnoreReason::RecursiveSession));
            }
            return (session, ignored);
        }

        let saturate = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        session.keep_failed = options.keep_failed;
        session.keep_going = options.keep_going;
        session.fallback = options.try_fallback;
        session.max_jobs = MaxJobs(saturate(options.max_build_jobs));
        session.max_silent_time = options.max_silent_time;
        session.cores = saturate(options.build_cores);
        session.substitute = options.use_substitutes;

        for (name, value) in overrides {
            let canonical = Self::canonical_name(name);
            if name == "ssh-auth-sock" {
                ignored.push(ignore(name, value, IgnoreReason::Obsolete));
                continue;
            }
            let appended = name.strip_prefix("extra-").and_then(Self::canonical_name);
            if canonical == Some("experimental-features")
                || appended == Some("experimental-features")
            {
                ignored.push(ignore(name, value, IgnoreReason::ExperimentalFeatures));
                continue;
            }
            if name == "plugin-files" {
                ignored.push(ignore(name, value, IgnoreReason::PluginFiles));
                continue;
            }
            let whitelisted = canonical.is_some_and(|c| UNTRUSTED_WHITELIST.contains(&c))
                || (canonical == Some("builders") && value.is_empty());
            if trust == ClientTrust::Trusted || whitelisted {
                let reason = match session.set(name, value) {
                    Ok(SetOutcome::Applied) => None,
                    Ok(SetOutcome::ClientSide) => Some(IgnoreReason::ClientSide),
                    Ok(SetOutcome::Unsupported) => Some(IgnoreReason::Unsupported),
                    Ok(SetOutcome::Unknown) => Some(IgnoreReason::Unknown),
                    Err(e) => Some(IgnoreReason::Invalid(e)),
                };
                ignored.extend(reason.map(|r| ignore(name, value, r)));
            } else if canonical == Some("substituters") {
                let allowed: Vec<&str> = self
                    .trusted_substituters
                    .iter()
                    .chain(&self.substituters)
                    .map(String::as_str)
                    .collect();
                let mut accepted = Vec::new();
                for wanted in tokens(value) {
                    match allowed
                        .iter()
                        .find(|a| trim_slash(a) == trim_slash(&wanted))
                    {
                        Some(configured) => accepted.push((*configured).to_owned()),
                        None => ignored.push(ignore(
                            name,
                            value,
                            IgnoreReason::UntrustedSubstituter(wanted),
                        )),
                    }
                }
                session.substituters = accepted;
            } else {
                ignored.push(ignore(name, value, IgnoreReason::Restricted));
            }
        }
        (session, ignored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn env_in(dir: &Path) -> ConfigEnv {
        let conf = dir.join("etc");
        let vars = |name: &str| match name {
            "NIX_CONF_DIR" => Some(conf.display().to_string()),
            "NIX_USER_CONF_FILES" => Some(String::new()),
            _ => None,
        };
        let mut env = ConfigEnv::from_vars(vars, None).unwrap();
        env.is_root = true;
        env
    }

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn defaults() -> Settings {
        Settings::defaults(&ConfigEnv::from_vars(|_| None, None).unwrap())
    }

    #[test]
    fn parse_table() {
        use Directive::*;
        let set = |name, value: &str| Set {
            name,
            value: value.to_owned(),
        };
        #[rustfmt::skip]
        let ok: Vec<(&str, Vec<(usize, Directive)>)> = vec![
            ("", vec![]),
            ("   \n\t\n# only a comment\n", vec![]),
            ("a = b", vec![(1, set("a", "b"))]),
            ("a = ", vec![(1, set("a", ""))]),
            ("  a   =  x \t y  # tail\n", vec![(1, set("a", "x y"))]),
            ("a = x#y z", vec![(1, set("a", "x"))]),
            ("a = b\r\nc = d\r\n", vec![(1, set("a", "b")), (2, set("c", "d"))]),
            ("\n\nx = = y", vec![(3, set("x", "= y"))]),
            ("include foo.conf", vec![(1, Include { path: "foo.conf", optional: false })]),
            ("!include /abs/f", vec![(1, Include { path: "/abs/f", optional: true })]),
            // a backslash is an ordinary character: no line continuation
            ("a = b \\\nc = d", vec![(1, set("a", "b \\")), (2, set("c", "d"))]),
            // other white space belongs to the token
            ("a = \u{b}x\u{a0}", vec![(1, set("a", "\u{b}x\u{a0}"))]),
        ];
        for (text, want) in ok {
            let got = parse(text, "t").unwrap_or_else(|e| panic!("{text:?}: {e}"));
            let want: Vec<_> = want
                .into_iter()
                .map(|(line, directive)| ParsedLine { line, directive })
                .collect();
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let bad = [
            ("a=b", 1, "a=b"),
            ("ok = 1\nfoo\n", 2, "foo"),
            ("a : b", 1, "a : b"),
            ("\n\ninclude", 3, "include"),
            ("include a b", 1, "include a b"),
            ("!include", 1, "!include"),
            ("x = 1\n  lonely # comment", 2, "  lonely "),
            // only ' ', \t, \r and \n separate tokens: "a\x0b=" is a single token
            ("a\u{b}= b", 1, "a\u{b}= b"),
        ];
        for (text, line, shown) in bad {
            let err = parse(text, "/etc/nix/nix.conf").unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("/etc/nix/nix.conf:{line}: syntax error in configuration line '{shown}'"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn values_table() {
        let mut s = defaults();
        let cases: &[(&str, &str, &str)] = &[
            ("keep-failed", "true", "true"),
            ("keep-failed", "no", "false"),
            ("keep-failed", "1", "true"),
            ("keep-failed", "0", "false"),
            ("keep-failed", "yes", "true"),
            ("max-jobs", "8", "8"),
            ("cores", "0", "0"),
            ("min-free", "1K", "1024"),
            ("min-free", "2m", "2097152"),
            ("max-free", "3G", "3221225472"),
            ("gc-reserved-space", "1T", "1099511627776"),
            ("sandbox", "relaxed", "relaxed"),
            ("sandbox", "false", "false"),
            (
                "sandbox-paths",
                "/bin/sh=/nix/store/x-busybox/bin/sh /etc/hosts? /usr",
                "/bin/sh=/nix/store/x-busybox/bin/sh /etc/hosts? /usr",
            ),
            ("build-dir", "/var//tmp/./b/", "/var/tmp/b"),
            ("build-dir", "", ""),
            ("sandbox-build-dir", "/b/../c", "/c"),
            ("trusted-users", "root   @wheel alice", "root @wheel alice"),
            (
                "system-features",
                "kvm big-parallel kvm",
                "big-parallel kvm",
            ),
            (
                "builders",
                "ssh://a x86_64-linux ; ssh://b",
                "ssh://a x86_64-linux ; ssh://b",
            ),
        ];
        for (name, value, want) in cases {
            assert_eq!(
                s.set(name, value),
                Ok(SetOutcome::Applied),
                "{name} = {value}"
            );
            assert_eq!(s.get(name).as_deref(), Some(*want), "{name} = {value}");
        }
        let auto = s.set("max-jobs", "auto");
        assert_eq!(auto, Ok(SetOutcome::Applied));
        assert!(s.max_jobs.0 >= 1);

        let invalid: &[(&str, &str)] = &[
            ("keep-failed", "TRUE"),
            ("keep-failed", ""),
            ("max-jobs", "many"),
            ("cores", "-1"),
            ("cores", "+1"),
            ("cores", "4294967296"),
            ("min-free", "1X"),
            ("min-free", "K"),
            ("min-free", "99999999999T"),
            ("sandbox", "yes"),
            ("sandbox-build-dir", "build"),
            ("sandbox-build-dir", ""),
            ("build-dir", "relative/dir"),
        ];
        for (name, value) in invalid {
            let err = s.set(name, value).unwrap_err();
            assert_eq!(err.name, *name);
            assert_eq!(err.value, *value);
        }
    }

    #[test]
    fn aliases_set_the_canonical_setting() {
        let cases = [
            ("build-timeout", "timeout", "7"),
            ("build-max-jobs", "max-jobs", "3"),
            ("build-cores", "cores", "5"),
            ("build-max-silent-time", "max-silent-time", "9"),
            ("build-use-sandbox", "sandbox", "relaxed"),
            ("build-use-chroot", "sandbox", "false"),
            ("build-chroot-dirs", "sandbox-paths", "/a"),
            ("build-sandbox-paths", "sandbox-paths", "/b"),
            ("gc-keep-outputs", "keep-outputs", "true"),
            ("gc-keep-derivations", "keep-derivations", "false"),
            ("binary-caches", "substituters", "https://a/ https://b"),
            ("trusted-binary-caches", "trusted-substituters", "https://c"),
            ("binary-cache-public-keys", "trusted-public-keys", "k:1"),
            ("build-fallback", "fallback", "true"),
            ("build-use-substitutes", "substitute", "false"),
            ("build-keep-log", "keep-build-log", "false"),
            ("build-compress-log", "compress-build-log", "false"),
            ("build-max-log-size", "max-build-log-size", "100"),
            ("build-impersonate-linux-26", "impersonate-linux-26", "true"),
            ("substitution-max-jobs", "max-substitution-jobs", "2"),
        ];
        for (alias, canonical, value) in cases {
            assert_eq!(Settings::canonical_name(alias), Some(canonical));
            let mut s = defaults();
            assert_eq!(s.set(alias, value), Ok(SetOutcome::Applied));
            assert_eq!(s.get(canonical).as_deref(), Some(value), "{alias}");
            assert_eq!(s.get(alias), s.get(canonical));
        }
        // `build-users-group` is itself canonical.
        assert_eq!(
            Settings::canonical_name("build-users-group"),
            Some("build-users-group")
        );
    }

    #[test]
    fn extra_prefix_appends() {
        let mut s = defaults();
        s.set("substituters", "https://a/").unwrap();
        assert_eq!(
            s.set("extra-substituters", "https://b/ https://c/"),
            Ok(SetOutcome::Applied)
        );
        assert_eq!(
            s.substituters,
            vec!["https://a/", "https://b/", "https://c/"]
        );
        // through an alias
        s.set("extra-binary-caches", "https://d/").unwrap();
        assert_eq!(s.substituters.len(), 4);
        s.set("extra-sandbox-paths", "/x=/y").unwrap();
        s.set("extra-build-sandbox-paths", "/z?").unwrap();
        assert_eq!(s.get("sandbox-paths").unwrap(), "/x=/y /z?");
        s.set("extra-trusted-users", "@wheel").unwrap();
        assert_eq!(s.trusted_users, vec!["root", "@wheel"]);
        s.set("extra-experimental-features", "nix-command").unwrap();
        assert!(s.has_experimental_feature("nix-command"));
        // `extra-platforms` is a setting of its own; `extra-extra-platforms` appends to it.
        s.set("extra-platforms", "aarch64-linux").unwrap();
        s.set("extra-extra-platforms", "riscv64-linux").unwrap();
        assert_eq!(
            s.get("extra-platforms").unwrap(),
            "aarch64-linux riscv64-linux"
        );
        // not appendable: reported as unknown, like CppNix
        assert_eq!(s.set("extra-sandbox", "true"), Ok(SetOutcome::Unknown));
        assert_eq!(s.set("extra-keep-failed", "true"), Ok(SetOutcome::Unknown));
        assert_eq!(s.set("extra-no-such-thing", "1"), Ok(SetOutcome::Unknown));
    }

    #[test]
    fn defaults_match_cppnix_for_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = load(&env_in(dir.path()), &[]).unwrap().settings;
        assert_eq!(s.trusted_users, vec!["root"]);
        assert_eq!(s.allowed_users, vec!["*"]);
        assert_eq!(s.build_users_group, "nixbld");
        assert_eq!(s.max_jobs, MaxJobs(1));
        assert_eq!(s.sandbox, SandboxMode::Enabled);
        assert_eq!(s.sandbox_build_dir, AbsPath("/build".into()));
        assert_eq!(s.build_dir(), PathBuf::from("/nix/var/nix/builds"));
        assert_eq!(
            s.daemon_socket,
            PathBuf::from("/nix/var/nix/daemon-socket/socket")
        );
        assert_eq!(s.store_dir, PathBuf::from("/nix/store"));
        assert_eq!(s.substituters, vec!["https://cache.nixos.org/"]);
        assert!(s.require_sigs && s.keep_derivations && !s.keep_outputs);
        assert!(!s.allow_build_user_connections);
        assert_eq!(
            s.builders,
            format!("@{}/etc/machines", dir.path().display())
        );
        let mut non_root = env_in(dir.path());
        non_root.is_root = false;
        assert_eq!(Settings::defaults(&non_root).build_users_group, "");
    }

    #[test]
    fn environment_paths() {
        let vars = |name: &str| {
            match name {
                "NIX_STORE" => Some("/legacy/store"),
                "NIX_STATE_DIR" => Some("/s//state/"),
                "NIX_LOG_DIR" => Some(""),
                "NIX_DAEMON_SOCKET_PATH" => Some("/run/x/sock"),
                "XDG_CONFIG_HOME" => Some("/home/r/.cfg"),
                "XDG_CONFIG_DIRS" => Some("/x1:/x2"),
                _ => None,
            }
            .map(str::to_owned)
        };
        let env = ConfigEnv::from_vars(vars, Some(Path::new("/root"))).unwrap();
        assert_eq!(env.store_dir, PathBuf::from("/legacy/store"));
        assert_eq!(env.state_dir, PathBuf::from("/s/state"));
        assert_eq!(
            env.log_dir,
            PathBuf::from("/nix/var/log/nix"),
            "empty means unset"
        );
        assert_eq!(env.daemon_socket, PathBuf::from("/run/x/sock"));
        assert_eq!(
            env.user_conf_files,
            [
                "/home/r/.cfg/nix/nix.conf",
                "/x1/nix/nix.conf",
                "/x2/nix/nix.conf"
            ]
            .map(PathBuf::from)
        );
        let env = ConfigEnv::from_vars(|_| None, Some(Path::new("/root"))).unwrap();
        assert_eq!(
            env.user_conf_files,
            ["/root/.config/nix/nix.conf", "/etc/xdg/nix/nix.conf"].map(PathBuf::from)
        );
        assert_eq!(
            env.daemon_socket,
            PathBuf::from("/nix/var/nix/daemon-socket/socket")
        );
        let err = ConfigEnv::from_vars(|n| (n == "NIX_STATE_DIR").then(|| "rel".to_owned()), None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable NIX_STATE_DIR must be an absolute path, not 'rel'"
        );
    }

    #[test]
    fn includes() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        write(
            &etc.join("nix.conf"),
            "include sub/a.conf\n!include missing.conf\nmax-jobs = 4\n",
        );
        // relative to the *including* file: sub/a.conf includes sub/b.conf as "b.conf"
        write(&etc.join("sub/a.conf"), "cores = 3\ninclude b.conf\n");
        write(
            &etc.join("sub/b.conf"),
            "keep-failed = true\nmax-jobs = 2\n",
        );
        let loaded = load(&env_in(dir.path()), &[]).unwrap();
        let s = loaded.settings;
        assert_eq!((s.cores, s.max_jobs, s.keep_failed), (3, MaxJobs(4), true));
        assert_eq!(loaded.files_read.len(), 3);
        assert!(loaded.warnings.is_empty());

        write(&etc.join("nix.conf"), "cores = 1\ninclude nope.conf\n");
        let err = load(&env_in(dir.path()), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: file '{}' included from here not found",
                etc.join("nix.conf").display(),
                etc.join("nope.conf").display()
            )
        );

        // a cycle is an error, not a stack overflow
        write(&etc.join("nix.conf"), "include nix.conf\n");
        assert!(matches!(
            load(&env_in(dir.path()), &[]),
            Err(ConfigError::IncludeDepth { .. })
        ));

        // an absolute include
        let abs = dir.path().join("abs.conf");
        write(&abs, "log-lines = 7\n");
        write(
            &etc.join("nix.conf"),
            &format!("include {}\n", abs.display()),
        );
        assert_eq!(
            load(&env_in(dir.path()), &[]).unwrap().settings.log_lines,
            7
        );

        // an error inside an include names the included file
        write(&abs, "log-lines = seven\n");
        let err = load(&env_in(dir.path()), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}:1: setting 'log-lines' has invalid value 'seven' (expected an unsigned integer, optionally with K, M, G or T)",
                abs.display()
            )
        );
    }

    #[test]
    fn missing_main_file_is_fine_and_order_is_cppnix() {
        let dir = tempfile::tempdir().unwrap();
        let mut env = env_in(dir.path());
        assert_eq!(load(&env, &[]).unwrap().settings, Settings::defaults(&env));

        let high = dir.path().join("home/nix.conf");
        let low = dir.path().join("xdg/nix.conf");
        write(
            &env.conf_dir.join("nix.conf"),
            "max-jobs = 1\ncores = 1\nlog-lines = 1\ntimeout = 1\n",
        );
        write(&low, "cores = 2\nlog-lines = 2\ntimeout = 2\n");
        write(&high, "log-lines = 3\ntimeout = 3\n");
        env.user_conf_files = vec![high, low];
        env.nix_config = Some("timeout = 4\n\nextra-trusted-users = alice\n".to_owned());
        let cli = [("keep-going".to_owned(), "true".to_owned())];
        let s = load(&env, &cli).unwrap().settings;
        assert_eq!(
            (s.max_jobs.0, s.cores, s.log_lines, s.timeout),
            (1, 2, 3, 4)
        );
        assert_eq!(s.trusted_users, vec!["root", "alice"]);
        assert!(s.keep_going);

        env.nix_config = Some("a = 1\nbroken\n".to_owned());
        assert_eq!(
            load(&env, &[]).unwrap_err().to_string(),
            "NIX_CONFIG:2: syntax error in configuration line 'broken'"
        );
        env.nix_config = None;
        let cli = [("sandbox".to_owned(), "sometimes".to_owned())];
        assert!(
            load(&env, &cli)
                .unwrap_err()
                .to_string()
                .starts_with("--option: setting 'sandbox' has invalid value")
        );
    }

    #[test]
    fn unknown_and_unsupported_settings_warn_client_side_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path());
        write(
            &env.conf_dir.join("nix.conf"),
            "frobnicate = yes\nnix-path = nixpkgs=/x\nextra-nix-path = y=/z\nwarn-dirty = false\nuse-cgroups = true\nmax-jobs = 2\n",
        );
        let cli = [("no-such-option".to_owned(), "1".to_owned())];
        let loaded = load(&env, &cli).unwrap();
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        let file = env.conf_dir.join("nix.conf").display().to_string();
        assert_eq!(
            warnings,
            vec![
                format!("{file}:1: unknown setting 'frobnicate'"),
                format!(
                    "{file}:5: setting 'use-cgroups' is not supported by nixnest and has no effect"
                ),
                "--option: unknown setting 'no-such-option'".to_owned(),
            ]
        );
        assert_eq!(loaded.settings.max_jobs, MaxJobs(2));
    }

    #[test]
    fn experimental_features_lines_apply_first() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path());
        write(
            &env.conf_dir.join("nix.conf"),
            "extra-experimental-features = b\nexperimental-features = a\nmax-jobs = 2\n",
        );
        // both xp lines keep their relative order: `= a` after `extra- = b` resets to {a}
        let s = load(&env, &[]).unwrap().settings;
        assert_eq!(s.get("experimental-features").unwrap(), "a");
    }

    #[test]
    fn unreadable_and_oversized_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_in(dir.path());
        fs::create_dir_all(env.conf_dir.join("nix.conf")).unwrap(); // a directory: read fails
        assert!(matches!(load(&env, &[]), Err(ConfigError::Read { .. })));
        fs::remove_dir(env.conf_dir.join("nix.conf")).unwrap();
        fs::write(env.conf_dir.join("nix.conf"), b"a = \xff\n").unwrap();
        assert!(matches!(load(&env, &[]), Err(ConfigError::NotUtf8 { .. })));
    }

    fn opts(overrides: &[(&str, &str)]) -> ClientOptions {
        ClientOptions {
            keep_failed: true,
            keep_going: true,
            try_fallback: true,
            max_build_jobs: 6,
            max_silent_time: 60,
            build_cores: u64::MAX,
            use_substitutes: false,
            overrides: overrides
                .iter()
                .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                .collect(),
        }
    }

    fn daemon_settings() -> Settings {
        let mut s = defaults();
        s.substituters = vec!["https://cache.nixos.org/".into()];
        s.trusted_substituters = vec![
            "https://trusted.example".into(),
            "file:///srv/cache/".into(),
        ];
        s
    }

    #[test]
    fn fixed_fields_apply_unless_recursive() {
        let base = daemon_settings();
        for trust in [ClientTrust::Trusted, ClientTrust::Untrusted] {
            let (s, ignored) = base.apply_client_options(&opts(&[]), trust);
            assert!(ignored.is_empty());
            assert!(s.keep_failed && s.keep_going && s.fallback && !s.substitute);
            assert_eq!(
                (s.max_jobs, s.max_silent_time, s.cores),
                (MaxJobs(6), 60, u32::MAX)
            );
        }
        let (s, ignored) =
            base.apply_client_options(&opts(&[("timeout", "5")]), ClientTrust::Recursive);
        assert_eq!(s, base);
        assert_eq!(ignored.len(), 1);
        assert_eq!(ignored[0].reason, IgnoreReason::RecursiveSession);
        assert_eq!(ignored[0].severity(), Severity::Debug);
    }

    /// (override name, value, trust) → the setting's value after, or the ignore reason.
    #[test]
    fn override_policy_table() {
        use ClientTrust::*;
        use IgnoreReason as R;
        enum Want {
            Value(&'static str, &'static str),
            Ignored(IgnoreReason),
        }
        use Want::*;
        let invalid_timeout = ValueError::new(
            "timeout",
            "soon",
            "an unsigned integer, optionally with K, M, G or T",
        );
        #[rustfmt::skip]
        let table: Vec<(&str, &str, ClientTrust, Want)> = vec![
            // always ignored
            ("ssh-auth-sock", "/tmp/x", Trusted, Ignored(R::Obsolete)),
            ("experimental-features", "ca-derivations", Trusted, Ignored(R::ExperimentalFeatures)),
            ("experimental-features", "ca-derivations", Untrusted, Ignored(R::ExperimentalFeatures)),
            ("extra-experimental-features", "recursive-nix", Trusted, Ignored(R::ExperimentalFeatures)),
            ("plugin-files", "/x.so", Trusted, Ignored(R::PluginFiles)),
            // trusted: everything known
            ("sandbox", "false", Trusted, Value("sandbox", "false")),
            ("build-use-sandbox", "relaxed", Trusted, Value("sandbox", "relaxed")),
            ("trusted-public-keys", "k:1", Trusted, Value("trusted-public-keys", "k:1")),
            ("extra-substituters", "https://any/", Trusted, Value("substituters", "https://cache.nixos.org/ https://any/")),
            ("substituters", "https://evil.example/", Trusted, Value("substituters", "https://evil.example/")),
            ("builders", "ssh://x", Trusted, Value("builders", "ssh://x")),
            ("no-such-setting", "1", Trusted, Ignored(R::Unknown)),
            ("pure-eval", "false", Trusted, Ignored(R::ClientSide)),
            ("use-cgroups", "true", Trusted, Ignored(R::Unsupported)),
            // untrusted: the whitelist
            ("timeout", "30", Untrusted, Value("timeout", "30")),
            ("build-timeout", "31", Untrusted, Value("timeout", "31")),
            ("max-silent-time", "32", Untrusted, Value("max-silent-time", "32")),
            ("build-poll-interval", "9", Untrusted, Value("build-poll-interval", "9")),
            ("connect-timeout", "3", Untrusted, Value("connect-timeout", "3")),
            ("builders", "", Untrusted, Value("builders", "")),
            ("timeout", "soon", Untrusted, Ignored(R::Invalid(invalid_timeout))),
            // untrusted: everything else
            ("builders", "ssh://x", Untrusted, Ignored(R::Restricted)),
            ("sandbox", "false", Untrusted, Ignored(R::Restricted)),
            ("trusted-users", "*", Untrusted, Ignored(R::Restricted)),
            ("extra-substituters", "https://trusted.example", Untrusted, Ignored(R::Restricted)),
            ("no-such-setting", "1", Untrusted, Ignored(R::Restricted)),
            ("pure-eval", "false", Untrusted, Ignored(R::Restricted)),
            // untrusted substituters: filtered, slash-insensitive, configured spelling kept
            ("substituters", "https://trusted.example/", Untrusted, Value("substituters", "https://trusted.example")),
            ("binary-caches", "https://cache.nixos.org", Untrusted, Value("substituters", "https://cache.nixos.org/")),
            ("substituters", "file:///srv/cache", Untrusted, Value("substituters", "file:///srv/cache/")),
            ("substituters", "", Untrusted, Value("substituters", "")),
        ];
        let base = daemon_settings();
        for (name, value, trust, want) in table {
            let (s, ignored) = base.apply_client_options(&opts(&[(name, value)]), trust);
            match want {
                Value(setting, expected) => {
                    assert!(ignored.is_empty(), "{name}={value} {trust:?}: {ignored:?}");
                    assert_eq!(
                        s.get(setting).as_deref(),
                        Some(expected),
                        "{name}={value} {trust:?}"
                    );
                }
                Ignored(reason) => {
                    assert_eq!(ignored.len(), 1, "{name}={value} {trust:?}");
                    assert_eq!(ignored[0].reason, reason, "{name}={value} {trust:?}");
                    assert_eq!(ignored[0].name, name);
                    // nothing but the fixed fields changed
                    let (fixed_only, _) = base.apply_client_options(&opts(&[]), trust);
                    assert_eq!(s, fixed_only, "{name}={value} {trust:?}");
                }
            }
        }
    }

    #[test]
    fn untrusted_substituters_partially_accepted() {
        let base = daemon_settings();
        let (s, ignored) = base.apply_client_options(
            &opts(&[(
                "substituters",
                "https://evil.example https://trusted.example/ ssh://other",
            )]),
            ClientTrust::Untrusted,
        );
        assert_eq!(s.substituters, vec!["https://trusted.example"]);
        let dropped: Vec<_> = ignored
            .iter()
            .map(|i| match &i.reason {
                IgnoreReason::UntrustedSubstituter(s) => s.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(dropped, vec!["https://evil.example", "ssh://other"]);
        assert!(ignored[0].to_string().starts_with(
            "ignoring untrusted substituter 'https://evil.example', you are not a trusted user."
        ));
        assert_eq!(ignored[0].severity(), Severity::Warn);
    }

    #[test]
    fn overrides_dedup_first_wins_and_apply_sorted() {
        let base = daemon_settings();
        // std::map semantics: first value for a name wins; names applied in sorted order,
        // so `extra-substituters` (sorted first) is overwritten by `substituters`.
        let o = opts(&[
            ("substituters", "https://a/"),
            ("timeout", "1"),
            ("timeout", "2"),
            ("extra-substituters", "https://b/"),
        ]);
        let (s, ignored) = base.apply_client_options(&o, ClientTrust::Trusted);
        assert!(ignored.is_empty());
        assert_eq!(s.timeout, 1);
        assert_eq!(s.substituters, vec!["https://a/"]);
        // the daemon's own settings are untouched
        assert_eq!(base.timeout, 0);
    }

    #[test]
    fn every_name_round_trips_through_get_and_set() {
        let mut s = defaults();
        for name in Settings::NAMES {
            let shown = s.get(name).unwrap();
            // every rendered default parses back to the same value (build-dir "" → None)
            assert_eq!(
                s.set(name, &shown),
                Ok(SetOutcome::Applied),
                "{name} = {shown}"
            );
            assert_eq!(s.get(name).unwrap(), shown, "{name}");
        }
        assert_eq!(s, defaults());
    }
}
