//! Workload 6: a recursive-Nix build that makes inner builds through the daemon.
//!
//! Not driven yet: the outer builder needs a Nix client inside its sandbox (the host's
//! `nix` with its shared libraries, as a store path), which the recursive-Nix work will
//! provide as a bundle. Until then every daemon is reported "not measured" with that
//! reason, never with a number.

use super::{Ctx, Runner};
use crate::daemons::Kind;
use crate::error::{Error, Result};

pub fn start(_ctx: &Ctx, _kind: Kind) -> Result<Box<dyn Runner>> {
    Err(Error::Unsupported(
        "needs a Nix client bundle inside the sandbox (pending the recursive-Nix issue)".into(),
    ))
}
