//! Store objects in and out: the add operations of every protocol version, imports, and
//! the two operations that send a NAR back (ExportPath, NarFromPath).
//!
//! | op | payload | store call |
//! |---|---|---|
//! | AddToStore ≥ 1.25 | framed: a NAR (`fixed:r:`) or raw bytes (flat, `text:`) | `add_to_store_ca` |
//! | AddToStore < 1.25 | inline NAR; for flat files a NAR of one regular file, whose contents are added | `add_to_store_ca` |
//! | AddTextToStore | — (the text is a field) | `add_text` |
//! | AddToStoreNar | framed ≥ 1.23, `STDERR_READ` 1.21–1.22, inline < 1.21 | `add_to_store_nar` |
//! | AddMultipleToStore | framed: `u64 n, n × (ValidPathInfo 1.16 layout, NAR)` | `add_to_store_nar` per item |
//! | ImportPaths | `STDERR_READ`: a `nix-store --export` stream | `import_paths` |
//! | ExportPath | — ; the export record goes out as `STDERR_WRITE` chunks | `export_path` |
//! | NarFromPath | — ; `STDERR_LAST`, then the NAR raw | `nar_from_path` |
//!
//! Trust (see [`crate::policy`]): uploads from untrusted clients always have their
//! signatures checked (content-addressed paths verify by their contents) and never keep
//! `ultimate`; AddMultipleToStore clears `ultimate` for everyone, as CppNix does. A
//! trusted client that turned `require-sigs` off for its session skips the check.
//! Every path added is temp-rooted for the session by the store.

use std::collections::BTreeSet;

use tokio::io::{AsyncRead, AsyncWrite};

use nixnest_core::nar::{NarEvent, NarReader};
use nixnest_core::{ContentAddressMethod, StorePath, ValidPathInfo};
use nixnest_protocol::request::{AddToStoreRequest, Request};
use nixnest_protocol::response::Response;
use nixnest_protocol::{ProtocolVersion, WireReader, WireType};

use super::{Outcome, is_valid, not_valid, reply, require_visible};
use crate::error::{OpError, OpResult, protocol_message};
use crate::session::Session;
use crate::work::{BlockingReader, block_on};

fn bad_request(e: &nixnest_protocol::Error) -> OpError {
    OpError::failed(protocol_message(e))
}

/// AddToStore (7), both forms.
pub async fn add_to_store<S>(
    s: &mut Session<S>,
    req: &Request,
    args: AddToStoreRequest,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = match args {
        AddToStoreRequest::ContentAddressed {
            name,
            method,
            algo,
            references,
            repair,
        } => {
            s.run_with_payload(req, move |job| {
                require_visible(job, &references)?;
                let info = job.store.add_to_store_ca(
                    &name,
                    method,
                    algo,
                    &references,
                    &mut job.input,
                    repair,
                    &job.roots,
                    &job.log,
                )?;
                job.view.note_added(&info.path)?;
                Ok(info)
            })
            .await?
        }
        legacy @ AddToStoreRequest::Legacy { .. } => {
            let name = legacy.name().to_owned();
            let method_and_algo = legacy.method_and_algo();
            s.run_with_payload(req, move |job| {
                let (method, algo) = method_and_algo.map_err(|e| bad_request(&e))?;
                let none = BTreeSet::new();
                let info = if method == ContentAddressMethod::Flat {
                    // A NAR of one regular file: its contents are what is added.
                    let mut nar = NarReader::new(&mut job.input);
                    if !matches!(nar.next()?, Some(NarEvent::Regular { .. })) {
                        return Err(OpError::failed("regular file expected"));
                    }
                    let info = job.store.add_to_store_ca(
                        &name,
                        method,
                        algo,
                        &none,
                        &mut nar.contents(),
                        false,
                        &job.roots,
                        &job.log,
                    )?;
                    if nar.next()?.is_some() {
                        return Err(OpError::failed("regular file expected"));
                    }
                    info
                } else {
                    job.store.add_to_store_ca(
                        &name,
                        method,
                        algo,
                        &none,
                        &mut job.input,
                        false,
                        &job.roots,
                        &job.log,
                    )?
                };
                job.view.note_added(&info.path)?;
                Ok(info)
            })
            .await?
        }
    };
    // Before 1.25 the reply is just the path; the encoder knows.
    reply(Response::PathInfo(Box::new(info)))
}

/// AddTextToStore (8).
pub async fn add_text_to_store<S>(
    s: &mut Session<S>,
    name: String,
    text: Vec<u8>,
    references: BTreeSet<StorePath>,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let info = s
        .run(move |job| {
            require_visible(job, &references)?;
            let info = job
                .store
                .add_text(&name, &text, &references, &job.roots, &job.log)?;
            job.view.note_added(&info.path)?;
            Ok(info)
        })
        .await?;
    reply(Response::Path(info.path))
}

/// ExportPath (16): one export record, sent through `STDERR_WRITE`.
pub async fn export_path<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    s.run(move |job| {
        if !is_valid(job, &path)? {
            return Err(not_valid(job, &path));
        }
        job.store.export_path(&path, &mut job.output)?;
        Ok(())
    })
    .await?;
    reply(Response::Ack)
}

/// ImportPaths (27): the export stream is pulled with `STDERR_READ`. Signatures are
/// checked unless the client is trusted.
pub async fn import_paths<S>(s: &mut Session<S>, req: &Request) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let check_sigs = s.policy.import_checks_sigs() && s.settings.require_sigs;
    let paths = s
        .run_with_payload(req, move |job| {
            let paths = job
                .store
                .import_paths(&mut job.input, check_sigs, &job.roots, &job.log)?;
            for p in &paths {
                job.view.note_added(p)?;
            }
            Ok(paths)
        })
        .await?;
    reply(Response::PathList(paths))
}

/// NarFromPath (38): `STDERR_LAST`, then the NAR itself. The path is checked (and
/// temp-rooted) first, so an invalid path is an ordinary error; a failure half-way
/// through the NAR can only be answered by closing the connection.
pub async fn nar_from_path<S>(s: &mut Session<S>, path: StorePath) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let checked = path.clone();
    s.run(move |job| {
        if !is_valid(job, &checked)? {
            return Err(not_valid(job, &checked));
        }
        job.roots.add_path(&checked)?;
        Ok(())
    })
    .await?;
    s.out.last().await?;
    let sent = s
        .run_raw(move |job| Ok(job.store.nar_from_path(&path, &mut job.output)?))
        .await;
    match sent {
        Ok(_) => Ok(Outcome::Sent),
        Err(OpError::Disconnected(e)) => Err(OpError::Disconnected(e)),
        Err(e) => {
            tracing::warn!("sending a NAR failed half-way: {e}");
            Err(OpError::Disconnected(std::io::Error::other(e.to_string())))
        }
    }
}

/// AddToStoreNar (39).
pub async fn add_to_store_nar<S>(
    s: &mut Session<S>,
    req: &Request,
    mut info: ValidPathInfo,
    repair: bool,
    dont_check_sigs: bool,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    info.ultimate = s.policy.ultimate(info.ultimate);
    let check_sigs = s.policy.check_sigs(dont_check_sigs) && s.settings.require_sigs;
    s.run_with_payload(req, move |job| {
        require_visible(job, info.references.iter().filter(|r| **r != info.path))?;
        job.store.add_to_store_nar(
            &info,
            &mut job.input,
            repair,
            check_sigs,
            &job.roots,
            &job.log,
        )?;
        job.view.note_added(&info.path)?;
        Ok(())
    })
    .await?;
    reply(Response::Unit)
}

/// AddMultipleToStore (44): the framed stream holds a count and then, per path, its
/// ValidPathInfo (always the 1.16 layout) and NAR; paths are added one by one, in the
/// order sent (dependencies first), with `ultimate` cleared.
pub async fn add_multiple_to_store<S>(
    s: &mut Session<S>,
    req: &Request,
    repair: bool,
    dont_check_sigs: bool,
) -> OpResult<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let check_sigs = s.policy.check_sigs(dont_check_sigs) && s.settings.require_sigs;
    s.run_with_payload(req, move |job| {
        let store_dir = job.store.store_dir().clone();
        let mut r = WireReader::new(
            BlockingReader(&mut job.input),
            ProtocolVersion::new(1, 16),
            store_dir,
        );
        let count = block_on(r.read_u64()).map_err(|e| bad_request(&e))?;
        for _ in 0..count {
            let mut info = block_on(ValidPathInfo::decode(&mut r)).map_err(|e| bad_request(&e))?;
            info.ultimate = false;
            if let Some(p) = info
                .references
                .iter()
                .find(|p| **p != info.path && !job.view.is_visible(p))
            {
                return Err(OpError::failed(format!(
                    "path '{}' is not valid",
                    job.store.print(p)
                )));
            }
            job.store.add_to_store_nar(
                &info,
                &mut *r.get_mut().0,
                repair,
                check_sigs,
                &job.roots,
                &job.log,
            )?;
            job.view.note_added(&info.path)?;
        }
        Ok(())
    })
    .await?;
    reply(Response::Unit)
}
