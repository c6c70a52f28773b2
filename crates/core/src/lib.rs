//! `nixnest-core`: Nix's data model, free of async runtimes, sockets and databases.
//!
//! Everything here is a value type or a pure function over bytes (plus the NAR
//! dumper/restorer, which touch the file system through explicit directory handles).
//! Higher layers (`nixnest-protocol`, `nixnest-store`) build on these types; nothing here
//! depends on them.
//!
//! | module | Nix concept |
//! |---|---|
//! | [`nixbase32`] | Nix's base-32 |
//! | [`nar`] | NAR: writer, streaming reader, dumper, restorer |
//! | [`hash`] | `Hash`, `HashAlgo`, streaming hashers, `compressHash` |
//! | [`store_path`] | `StoreDir`, `StorePath`, `makeStorePath` and friends |
//! | [`content_address`] | `ContentAddress`, `ContentAddressMethod` |
//! | [`path_info`] | `ValidPathInfo`, fingerprints |
//! | [`signature`] | Ed25519 keys and detached signatures |
//! | [`derivation`] | `Derivation`, ATerm `.drv`, `hashDerivationModulo`, output paths |
//! | [`derived_path`] | `DerivedPath`, `OutputsSpec` |
//! | [`references`] | the reference scanner used after builds |
//! | [`error`] | the crate's one error type |

// Tests may unwrap (COMMON.md); library code may not, which the workspace lints enforce.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod content_address;
pub mod derivation;
pub mod derived_path;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod nar;
pub mod nixbase32;
pub mod path_info;
pub mod references;
pub mod signature;
pub mod store_path;

pub use content_address::{ContentAddress, ContentAddressMethod};
pub use derivation::{
    BasicDerivation, Derivation, DerivationOutput, DerivationType, DrvHashModulo, DrvHashes,
    DrvOutput,
};
pub use derived_path::{DerivedPath, OutputsSpec};
pub use error::{Error, Result};
pub use hash::{Hash, HashAlgo, Hasher, HashingReader, HashingWriter};
pub use path_info::ValidPathInfo;
pub use references::RefScanner;
pub use signature::{PublicKey, PublicKeys, SecretKey};
pub use store_path::{StoreDir, StorePath};
