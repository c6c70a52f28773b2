//! Reading a derivation's build-time attributes (CppNix's `ParsedDerivation`).
//!
//! Two encodings:
//!
//! * plain: every attribute is an environment variable; a Boolean is true iff its value is
//!   `"1"`, a list is the value split on whitespace (space, tab, newline, CR);
//! * structured (`__structuredAttrs = true`): the environment holds only `__json`, a JSON
//!   object with every attribute typed. Booleans must be JSON Booleans and lists must be
//!   lists of strings, or the build is refused with CppNix's message.

use std::collections::BTreeSet;

use nixnest_core::Derivation;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::settings::BuildSettings;

/// A derivation and its parsed `__json`, if any.
#[derive(Debug)]
pub struct DrvAttrs<'a> {
    drv: &'a Derivation,
    /// Printed `.drv` path, for messages.
    drv_path: String,
    structured: Option<Map<String, Value>>,
}

impl<'a> DrvAttrs<'a> {
    /// Parses `__json` when present.
    pub fn new(drv: &'a Derivation, drv_path: &str) -> Result<Self> {
        let structured = match drv.env.get("__json") {
            None => None,
            Some(text) => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(m)) => Some(m),
                Ok(_) => {
                    return Err(Error::BadDerivation(format!(
                        "cannot process __json attribute of '{drv_path}': not a JSON object"
                    )));
                }
                Err(e) => {
                    return Err(Error::BadDerivation(format!(
                        "cannot process __json attribute of '{drv_path}': {e}"
                    )));
                }
            },
        };
        Ok(DrvAttrs {
            drv,
            drv_path: drv_path.to_owned(),
            structured,
        })
    }

    pub fn drv(&self) -> &Derivation {
        self.drv
    }

    /// The structured attributes, if the derivation uses them.
    pub fn structured(&self) -> Option<&Map<String, Value>> {
        self.structured.as_ref()
    }

    /// A string attribute.
    pub fn get_string(&self, name: &str) -> Result<Option<String>> {
        match &self.structured {
            Some(m) => match m.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(Error::BadDerivation(format!(
                    "attribute '{name}' of derivation '{}' must be a string",
                    self.drv_path
                ))),
            },
            None => Ok(self.drv.env.get(name).cloned()),
        }
    }

    /// A Boolean attribute (`default` when absent).
    pub fn get_bool(&self, name: &str, default: bool) -> Result<bool> {
        match &self.structured {
            Some(m) => match m.get(name) {
                None => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(Error::BadDerivation(format!(
                    "attribute '{name}' of derivation '{}' must be a Boolean",
                    self.drv_path
                ))),
            },
            None => Ok(self.drv.env.get(name).map_or(default, |v| v == "1")),
        }
    }

    /// A list-of-strings attribute.
    pub fn get_strings(&self, name: &str) -> Result<Option<Vec<String>>> {
        match &self.structured {
            Some(m) => match m.get(name) {
                None => Ok(None),
                Some(v) => strings_of(v).map(Some).ok_or_else(|| {
                    Error::BadDerivation(format!(
                        "attribute '{name}' of derivation '{}' must be a list of strings",
                        self.drv_path
                    ))
                }),
            },
            None => Ok(self.drv.env.get(name).map(|v| tokenize(v))),
        }
    }

    /// `requiredSystemFeatures`.
    pub fn required_system_features(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .get_strings("requiredSystemFeatures")?
            .unwrap_or_default()
            .into_iter()
            .collect())
    }

    /// Whether `__noChroot` is set.
    pub fn no_chroot(&self) -> Result<bool> {
        self.get_bool("__noChroot", false)
    }

    /// CppNix's `canBuildLocally` check, with its refusal message.
    pub fn check_can_build_locally(&self, settings: &BuildSettings) -> Result<()> {
        let features = self.required_system_features()?;
        let builtin = self.drv.builder.starts_with("builtin:");
        let platform_ok = self.drv.platform == settings.system
            || settings.extra_platforms.contains(&self.drv.platform)
            || builtin;
        if platform_ok && features.is_subset(&settings.system_features) {
            return Ok(());
        }
        Err(Error::BadDerivation(format!(
            "a '{}' with features {{{}}} is required to build '{}', but I am a '{}' with features {{{}}}",
            self.drv.platform,
            features.iter().cloned().collect::<Vec<_>>().join(", "),
            self.drv_path,
            settings.system,
            settings
                .system_features
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

/// A JSON list of strings.
fn strings_of(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|e| e.as_str().map(str::to_owned))
        .collect()
}

/// CppNix's `tokenizeString` with its default separators " \t\n\r".
pub fn tokenize(s: &str) -> Vec<String> {
    s.split([' ', '\t', '\n', '\r'])
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn drv(env: &[(&str, &str)]) -> Derivation {
        Derivation {
            name: "t".into(),
            outputs: BTreeMap::new(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
            platform: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: vec![],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn plain_attributes() {
        let d = drv(&[("flag", "1"), ("off", "true"), ("list", " a\tb\n c  ")]);
        let a = DrvAttrs::new(&d, "/s/x.drv").unwrap();
        assert!(a.get_bool("flag", false).unwrap());
        assert!(!a.get_bool("off", false).unwrap());
        assert!(a.get_bool("absent", true).unwrap());
        assert_eq!(a.get_strings("list").unwrap().unwrap(), vec!["a", "b", "c"]);
        assert_eq!(a.get_strings("absent").unwrap(), None);
    }

    #[test]
    fn structured_attributes_are_typed() {
        let d = drv(&[(
            "__json",
            r#"{"flag":true,"list":["a","b"],"bad":[1],"s":"x","n":3}"#,
        )]);
        let a = DrvAttrs::new(&d, "/s/x.drv").unwrap();
        assert!(a.get_bool("flag", false).unwrap());
        assert_eq!(a.get_strings("list").unwrap().unwrap(), vec!["a", "b"]);
        assert_eq!(
            a.get_strings("bad").unwrap_err().to_string(),
            "attribute 'bad' of derivation '/s/x.drv' must be a list of strings"
        );
        assert_eq!(
            a.get_bool("s", false).unwrap_err().to_string(),
            "attribute 's' of derivation '/s/x.drv' must be a Boolean"
        );
        let bad = drv(&[("__json", "[1")]);
        assert!(DrvAttrs::new(&bad, "/s/x.drv").is_err());
    }

    #[test]
    fn platform_and_features() {
        let mut settings = BuildSettings::new(crate::HelperCommand::new("/bin/false"));
        settings.system = "x86_64-linux".into();
        settings.system_features = ["big-parallel".to_string()].into();
        let d = drv(&[("requiredSystemFeatures", "kvm")]);
        let a = DrvAttrs::new(&d, "/s/x.drv").unwrap();
        assert_eq!(
            a.check_can_build_locally(&settings)
                .unwrap_err()
                .to_string(),
            "a 'x86_64-linux' with features {kvm} is required to build '/s/x.drv', but I am a 'x86_64-linux' with features {big-parallel}"
        );
        let d = drv(&[]);
        let a = DrvAttrs::new(&d, "/s/x.drv").unwrap();
        a.check_can_build_locally(&settings).unwrap();
    }
}
