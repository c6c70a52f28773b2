//! `nixnest-daemon`: reads the configuration, then either serves the daemon socket (bound
//! here or passed by systemd), one `--stdio` session, or asks a running daemon for its
//! `status`. Logs go to stderr only — with `--stdio`, stdout is the protocol stream.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;

use nixnest_daemon::builds::{Scheduler, SchedulerConfig, own_helper};
use nixnest_daemon::cli::{self, Cli, Command, TrustOverride};
use nixnest_daemon::config::{self, ConfigEnv, Settings};
use nixnest_daemon::control::{self, Registry};
use nixnest_daemon::listener::{self, ActivatedSocket, Listener, ListenerConfig};
use nixnest_daemon::recursive::{self, ServeContext};
use nixnest_daemon::session::Worker;
use nixnest_store::{LocalStore, PublicKey, StoreConfig};

type MainResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    // `nixnest-daemon __build-helper`: the builder's helper process, started by our own
    // builds. It must stay single-threaded, so it is dispatched before anything else runs.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == nixnest_daemon::builds::HELPER_SUBCOMMAND)
    {
        nixnest_build::helper_main();
    }
    let cli = Cli::parse();
    init_logging(&cli);
    let result = match &cli.command {
        Some(Command::Status {
            json,
            control_socket,
        }) => run_status(*json, control_socket.clone()),
        None => run_daemon(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// stderr, no colours unless it is a terminal, no timestamps under journald (it adds its
/// own). `RUST_LOG` wins over `-v`/`--debug`.
fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let level = match (cli.verbose, cli.debug) {
        (0, false) => "info",
        (0, true) | (1, _) => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_env_filter(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// The runtime. Every session may hold a blocking-pool thread while the store works
/// for it (or waits for the client's upload), so the pool is sized for all of them.
fn runtime(sessions: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(sessions.saturating_add(64).max(512))
        .build()
}

fn run_status(json: bool, control_socket: Option<std::path::PathBuf>) -> MainResult {
    let path = match control_socket {
        Some(path) => path,
        None => control::control_socket_path(&ConfigEnv::from_process()?.state_dir),
    };
    let status = runtime(1)?.block_on(control::query_status(&path))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        print!("{}", control::format_status(&status, now));
    }
    Ok(())
}

fn load_settings(cli: &Cli) -> Result<Settings, Box<dyn std::error::Error>> {
    let env = ConfigEnv::from_process()?;
    let loaded = config::load(&env, &cli.option_pairs())?;
    for file in &loaded.files_read {
        tracing::debug!("read configuration from {}", file.display());
    }
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    let mut settings = loaded.settings;
    if let Some(path) = &cli.socket_path {
        settings.daemon_socket = path.clone();
    }
    Ok(settings)
}

/// The store as the settings describe it (the store obeys only these settings; the rest
/// is the session's and the builder's business).
fn open_store(settings: &Settings) -> Result<LocalStore, Box<dyn std::error::Error>> {
    let build_users_gid = match settings.build_users_group.as_str() {
        "" => None,
        group => {
            let gid = nixnest_daemon::auth::group_id(group);
            if gid.is_none() {
                tracing::warn!(
                    "the group '{group}' specified in 'build-users-group' does not exist"
                );
            }
            gid
        }
    };
    let mut trusted_public_keys = Vec::new();
    for key in &settings.trusted_public_keys {
        match PublicKey::parse(key) {
            Ok(k) => trusted_public_keys.push(k),
            Err(e) => tracing::warn!("ignoring trusted public key '{key}': {e}"),
        }
    }
    let config = StoreConfig {
        store_dir: settings.store_dir.clone(),
        state_dir: settings.state_dir.clone(),
        log_dir: settings.log_dir.clone(),
        keep_outputs: settings.keep_outputs,
        keep_derivations: settings.keep_derivations,
        gc_reserved_space: settings.gc_reserved_space,
        fsync_metadata: settings.fsync_metadata,
        build_users_gid,
        require_sigs: settings.require_sigs,
        trusted_public_keys,
        auto_optimise_store: settings.auto_optimise_store,
    };
    let store = LocalStore::open(config, &nixnest_store::logger::TracingLogger)
        .map_err(|e| format!("opening the store {}: {e}", settings.store_dir.display()))?;
    Ok(store)
}

/// The session handler: the store and the build scheduler every session shares.
fn worker(
    settings: &Settings,
    registry: &Arc<Registry>,
) -> Result<Worker, Box<dyn std::error::Error>> {
    let store = Arc::new(open_store(settings)?);
    let helper = own_helper()
        .map_err(|e| format!("cannot find our own executable for build helpers: {e}"))?;
    let scheduler = Scheduler::new(
        Arc::clone(&store),
        Arc::clone(registry),
        SchedulerConfig::from_settings(settings, helper),
    );
    Ok(Worker::new(store, scheduler))
}

fn run_daemon(cli: &Cli) -> MainResult {
    let settings = load_settings(cli)?;
    let trust = cli.trust_override();
    cli::check_trust_override(trust, cli.stdio, &settings)?;

    if cli.stdio {
        let registry = Registry::new();
        let worker = worker(&settings, &registry)?;
        let rt = runtime(1)?;
        let result = rt.block_on(serve_stdio(Arc::new(settings), trust, worker, registry));
        // A blocking stdin read may still be parked on the blocking pool.
        rt.shutdown_timeout(Duration::from_secs(1));
        return result;
    }

    // SAFETY: no runtime and no other thread exist yet.
    let activated = unsafe { listener::take_activation_fds() }?;
    let registry = Registry::new();
    let worker = worker(&settings, &registry)?;
    let rt = runtime(settings.max_connections)?;
    let result = rt.block_on(serve_socket(
        Arc::new(settings),
        activated,
        trust,
        worker,
        registry,
    ));
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

/// SIGTERM/SIGINT: the first resolves `stop`, the second `force`.
fn signals() -> std::io::Result<(impl Future<Output = ()>, impl Future<Output = ()>)> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, rx) = watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tx.send_modify(|n| *n += 1);
            if *tx.borrow() == 1 {
                tracing::info!(
                    "received a termination signal; shutting down (again to abort sessions)"
                );
            }
        }
    });
    let after = move |count: u32| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|n| *n >= count).await;
        }
    };
    Ok((after(1), after(2)))
}

async fn serve_stdio(
    settings: Arc<Settings>,
    trust: TrustOverride,
    worker: Worker,
    registry: Arc<Registry>,
) -> MainResult {
    let (trigger, shutdown) = listener::shutdown_channel();
    let (stop, force) = signals()?;
    let stream = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    let access = nixnest_daemon::auth::stdio_access(trust == TrustOverride::ForceUntrusted);
    let session = listener::serve_one(&worker, stream, access, settings, &registry, shutdown);
    let mut session = pin!(session);
    tokio::select! {
        () = &mut session => return Ok(()),
        () = stop => trigger.trigger(),
    }
    tokio::select! {
        () = session => {}
        () = tokio::time::sleep(Duration::from_secs(60)) => tracing::warn!("session still open; exiting"),
        () = force => {}
    }
    Ok(())
}

async fn serve_socket(
    settings: Arc<Settings>,
    activated: Option<Vec<ActivatedSocket>>,
    trust: TrustOverride,
    worker: Worker,
    registry: Arc<Registry>,
) -> MainResult {
    let sockets = match activated {
        Some(passed) => {
            let mut sockets = Vec::new();
            for socket in passed {
                let described = socket.describe();
                if !socket.is_daemon_socket() {
                    tracing::warn!("ignoring {described} passed by systemd");
                    continue;
                }
                sockets.push(socket.into_listener()?);
                tracing::info!("listening on {described}");
            }
            if sockets.is_empty() {
                return Err(
                    "systemd passed no daemon socket (expected one named nix-daemon.socket)".into(),
                );
            }
            sockets
        }
        None => {
            let path = &settings.daemon_socket;
            let socket = listener::bind_unix_socket(path, 0o666, listener::BACKLOG)?;
            tracing::info!("listening on {}", path.display());
            vec![socket]
        }
    };
    if settings.allow_build_user_connections {
        // Seed-style recursive Nix: build users must reach the socket.
        for warning in recursive::prepare_seed_socket(&settings) {
            tracing::warn!("{warning}");
        }
    }

    let mut config = ListenerConfig::from_settings(&settings);
    config.force_untrusted = trust == TrustOverride::ForceUntrusted;
    let shared = Arc::clone(worker.shared());
    let listener = Listener::new(
        sockets,
        Arc::clone(&settings),
        Arc::clone(&registry),
        Arc::new(worker),
        config,
    )?;
    shared.recursive.install(ServeContext {
        shared: Arc::downgrade(&shared),
        settings: Arc::clone(&settings),
        registry: Arc::clone(&registry),
        shutdown: listener.subscribe_shutdown(),
        runtime: tokio::runtime::Handle::current(),
    });

    let control_path = control::control_socket_path(&settings.state_dir);
    match control::bind_control_socket(&control_path) {
        Ok(socket) => {
            tracing::debug!("control socket on {}", control_path.display());
            tokio::spawn(control::serve_control(
                socket,
                Arc::clone(&registry),
                listener.subscribe_shutdown(),
            ));
        }
        Err(e) => tracing::warn!("no control socket ('nixnest-daemon status' will not work): {e}"),
    }

    let (stop, force) = signals()?;
    let report = listener.run(stop, force).await;
    tracing::info!(
        "stopped: {} session(s) finished during shutdown, {} aborted",
        report.finished,
        report.aborted
    );
    Ok(())
}
