//! Fuzz target: `nix.conf` text → parse → apply to default settings.
//!
//! Properties: nothing panics; parsed line numbers stay within the input; every value the
//! settings accept renders to text that parses back to the same rendering (so `get` and
//! `set` agree for every setting and alias).
//!
//! `daemon/tests/fuzz_targets.rs` compiles this file into a normal test (with a stand-in
//! for `fuzz_target!`) and runs it over the corpus, so it cannot rot between fuzz runs.

#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use nixnest_daemon::config::{self, ConfigEnv, Directive, Settings};

    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(lines) = config::parse(text, "<fuzz>") else {
        return;
    };
    let line_count = text.split('\n').count();
    let Ok(env) = ConfigEnv::from_vars(|_| None, None) else {
        return;
    };
    let mut settings = Settings::defaults(&env);
    for parsed in lines {
        assert!(parsed.line >= 1 && parsed.line <= line_count);
        let Directive::Set { name, value } = parsed.directive else {
            continue;
        };
        if settings.set(name, &value).is_err() {
            continue;
        }
        if let Some(shown) = settings.get(name) {
            let mut again = settings.clone();
            assert!(
                again.set(name, &shown).is_ok(),
                "{name} = {shown:?} does not parse back"
            );
            assert_eq!(again.get(name), Some(shown));
        }
    }
});
