//! Every decision a session makes from how far its client is trusted, in one place.
//!
//! [`crate::auth::authorize`] decides *whether* and *how* a peer is admitted (an
//! [`Access`]); this module turns that standing into the per-operation rules of CppNix's
//! daemon (worker protocol spec §4.9). Nothing else in the session looks at the access
//! level, so the table in the tests below is the whole story:
//!
//! | rule | trusted | allowed (untrusted) | build user |
//! |---|---|---|---|
//! | handshake trust flag (≥ 1.35) | 1 trusted | 2 not trusted | 2 not trusted |
//! | `SetOptions` | everything | whitelist | nothing |
//! | `dontCheckSigs` honoured | yes | no | no |
//! | `ultimate` kept on uploads | yes | forced false | forced false |
//! | repair (BuildPaths, BuildPathsWithResults) | yes | refused before work, close | refused |
//! | repair (VerifyStore) | yes | "you are not privileged to repair paths" | same |
//! | input-addressed BuildDerivation | yes | refused | refused |
//! | AddBuildLog | yes | refused | refused |
//! | AddPermRoot | yes | refused before work, close | refused |
//! | FindRoots link names | shown | `{censored}` | `{censored}` |
//! | ImportPaths signatures | not checked | checked | checked |
//! | ignoreLiveness | refused for everyone | | |
//! | AddSignatures | allowed for everyone (CppNix ≥ 2.17; 2.8–2.16 refused untrusted clients) | | |
//! | per-user profile/gcroots dirs created | yes | yes | no |
//! | store view | full | full | the build's view ([`StoreView::Build`](crate::view::StoreView::Build)) |

use nixnest_protocol::handshake::TrustLevel;

use crate::auth::Access;
use crate::config::ClientTrust;
use crate::error::{OpError, OpResult};

/// The trust-dependent rules for one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    access: Access,
}

impl Policy {
    pub fn new(access: Access) -> Self {
        Policy { access }
    }

    pub fn access(&self) -> Access {
        self.access
    }

    fn trusted(&self) -> bool {
        self.access.is_trusted()
    }

    /// The handshake's trust flag (protocol ≥ 1.35).
    pub fn trust_level(&self) -> TrustLevel {
        if self.trusted() {
            TrustLevel::Trusted
        } else {
            TrustLevel::NotTrusted
        }
    }

    /// Whether the session sees only a build's view of the store ([`StoreView::Build`](crate::view::StoreView::Build),
    /// which the session finds for the build; everyone else gets [`StoreView::Full`](crate::view::StoreView::Full)).
    pub fn restricted_view(&self) -> bool {
        matches!(self.access, Access::BuildUser { .. })
    }

    /// Whether the peer gets `profiles/per-user/<user>` and `gcroots/per-user/<user>`
    /// (every user that connects, as in CppNix; builds have no use for them).
    pub fn creates_user_dirs(&self) -> bool {
        !matches!(self.access, Access::BuildUser { .. })
    }

    /// How much of `SetOptions` applies.
    pub fn client_trust(&self) -> ClientTrust {
        self.access.client_trust()
    }

    /// Whether signatures are checked on an upload whose client asked for
    /// `dontCheckSigs = requested` (only trusted clients may waive the check).
    pub fn check_sigs(&self, dont_check_sigs_requested: bool) -> bool {
        !(self.trusted() && dont_check_sigs_requested)
    }

    /// The `ultimate` flag to register for an upload claiming `requested`.
    pub fn ultimate(&self, requested: bool) -> bool {
        self.trusted() && requested
    }

    /// Whether `FindRoots` hides where runtime and temporary roots come from.
    pub fn censor_roots(&self) -> bool {
        !self.trusted()
    }

    /// BuildPaths / BuildPathsWithResults in repair mode: CppNix refuses before
    /// `startWork`, so the connection is closed.
    pub fn check_build_repair(&self, repair: bool) -> OpResult<()> {
        if repair && !self.trusted() {
            return Err(OpError::refused(
                "repairing is not allowed because you are not in 'trusted-users'",
            ));
        }
        Ok(())
    }

    /// VerifyStore with `repair`.
    pub fn check_verify_repair(&self, repair: bool) -> OpResult<()> {
        if repair && !self.trusted() {
            return Err(OpError::failed("you are not privileged to repair paths"));
        }
        Ok(())
    }

    /// BuildDerivation: untrusted clients may only send content-addressed derivations,
    /// whose outputs are checked by their contents alone.
    pub fn check_build_derivation(&self, content_addressed: bool) -> OpResult<()> {
        if !content_addressed && !self.trusted() {
            return Err(OpError::failed(
                "you are not privileged to build input-addressed derivations",
            ));
        }
        Ok(())
    }

    pub fn check_add_build_log(&self) -> OpResult<()> {
        if !self.trusted() {
            return Err(OpError::failed("you are not privileged to add logs"));
        }
        Ok(())
    }

    /// AddPermRoot (CppNix ≥ 2.20 refuses untrusted clients before `startWork`).
    pub fn check_add_perm_root(&self) -> OpResult<()> {
        if !self.trusted() {
            return Err(OpError::refused(
                "you are not privileged to create perm roots\n\n\
                 hint: you can just do this client-side without special privileges, and probably want to do that instead.",
            ));
        }
        Ok(())
    }

    /// CollectGarbage with `ignoreLiveness`: never over the socket.
    pub fn check_ignore_liveness(&self, ignore_liveness: bool) -> OpResult<()> {
        if ignore_liveness {
            return Err(OpError::failed("you are not allowed to ignore liveness"));
        }
        Ok(())
    }

    /// ImportPaths: signatures are checked unless the client is trusted.
    pub fn import_checks_sigs(&self) -> bool {
        !self.trusted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Access; 3] = [
        Access::Trusted,
        Access::Allowed,
        Access::BuildUser { uid: 30001 },
    ];

    fn row(access: Access) -> Vec<String> {
        let p = Policy::new(access);
        let ok = |r: OpResult<()>| match r {
            Ok(()) => "ok".to_owned(),
            Err(OpError::Failed(e)) => format!("fail: {}", e.msg),
            Err(OpError::Refused(e)) => format!("close: {}", e.msg.lines().next().unwrap_or("")),
            Err(e) => format!("other: {e}"),
        };
        vec![
            format!("{:?}", p.trust_level()),
            format!("{:?}", p.client_trust()),
            format!("check_sigs(dont=1) {}", p.check_sigs(true)),
            format!("check_sigs(dont=0) {}", p.check_sigs(false)),
            format!("ultimate {}", p.ultimate(true)),
            format!("censor {}", p.censor_roots()),
            format!("import checks {}", p.import_checks_sigs()),
            format!("user dirs {}", p.creates_user_dirs()),
            format!("restricted {}", p.restricted_view()),
            ok(p.check_build_repair(true)),
            ok(p.check_build_repair(false)),
            ok(p.check_verify_repair(true)),
            ok(p.check_build_derivation(false)),
            ok(p.check_build_derivation(true)),
            ok(p.check_add_build_log()),
            ok(p.check_add_perm_root()),
            ok(p.check_ignore_liveness(true)),
            ok(p.check_ignore_liveness(false)),
        ]
    }

    #[test]
    fn the_table() {
        let trusted = [
            "Trusted",
            "Trusted",
            "check_sigs(dont=1) false",
            "check_sigs(dont=0) true",
            "ultimate true",
            "censor false",
            "import checks false",
            "user dirs true",
            "restricted false",
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "ok",
            "fail: you are not allowed to ignore liveness",
            "ok",
        ];
        let untrusted = |trust: &str, dirs: bool, view: &str| {
            vec![
                "NotTrusted".to_owned(),
                trust.to_owned(),
                "check_sigs(dont=1) true".to_owned(),
                "check_sigs(dont=0) true".to_owned(),
                "ultimate false".to_owned(),
                "censor true".to_owned(),
                "import checks true".to_owned(),
                format!("user dirs {dirs}"),
                view.to_owned(),
                "close: repairing is not allowed because you are not in 'trusted-users'".to_owned(),
                "ok".to_owned(),
                "fail: you are not privileged to repair paths".to_owned(),
                "fail: you are not privileged to build input-addressed derivations".to_owned(),
                "ok".to_owned(),
                "fail: you are not privileged to add logs".to_owned(),
                "close: you are not privileged to create perm roots".to_owned(),
                "fail: you are not allowed to ignore liveness".to_owned(),
                "ok".to_owned(),
            ]
        };
        assert_eq!(row(ALL[0]), trusted);
        assert_eq!(
            row(ALL[1]),
            untrusted("Untrusted", true, "restricted false")
        );
        assert_eq!(
            row(ALL[2]),
            untrusted("Recursive", false, "restricted true")
        );
    }
}
