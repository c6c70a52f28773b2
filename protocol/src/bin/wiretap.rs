//! `nixnest-wiretap`: a logging, decoding proxy in front of a Nix daemon socket.
//!
//! ```text
//! nixnest-wiretap --listen <socket> --daemon <socket> [--log <file>] [--store-dir <dir>]
//! ```
//! Every byte is forwarded unchanged; each request, reply and decoding problem is
//! logged as one JSON line (to `--log`, appended, or stdout). See
//! `nixnest_protocol::wiretap` for the format.

use std::path::PathBuf;
use std::process::ExitCode;

use nixnest_core::StoreDir;
use nixnest_protocol::wiretap::{Log, serve};

fn usage() -> ExitCode {
    eprintln!(
        "usage: nixnest-wiretap --listen <socket> --daemon <socket> [--log <file>] [--store-dir <dir>]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut listen = None;
    let mut daemon = None;
    let mut log_file = None;
    let mut store_dir = String::from("/nix/store");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        match (a.as_str(), value) {
            ("--listen", Some(v)) => listen = Some(PathBuf::from(v)),
            ("--daemon", Some(v)) => daemon = Some(PathBuf::from(v)),
            ("--log", Some(v)) => log_file = Some(PathBuf::from(v)),
            ("--store-dir", Some(v)) => store_dir = v,
            _ => return usage(),
        }
    }
    let (Some(listen), Some(daemon)) = (listen, daemon) else {
        return usage();
    };
    let store_dir = match StoreDir::new(store_dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("nixnest-wiretap: {e}");
            return ExitCode::from(2);
        }
    };
    let out: Box<dyn std::io::Write + Send> = match &log_file {
        Some(p) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                eprintln!("nixnest-wiretap: cannot open log {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
        None => Box::new(std::io::stdout()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nixnest-wiretap: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = runtime.block_on(async {
        let _ = std::fs::remove_file(&listen);
        let listener = tokio::net::UnixListener::bind(&listen)?;
        serve(listener, daemon, Log::new(out), store_dir).await
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixnest-wiretap: {e}");
            ExitCode::FAILURE
        }
    }
}
