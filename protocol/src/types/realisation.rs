//! Realisations of content-addressed derivation outputs.
//!
//! Without the `realisation-with-path-not-hash` feature (all of Nix ≤ 2.34):
//! ```text
//! DrvOutput    string  "sha256:<base16 hashDerivationModulo>!<output name>"
//! Realisation  string  JSON, compact, keys sorted:
//!   {"dependentRealisations":{<id>:<outPath base name>,…},"id":<id>,
//!    "outPath":"<hash>-<name>","signatures":[<sig>,…]}
//! ```
//! With the feature (Nix ≥ 2.35):
//! ```text
//! DrvOutput           path drvPath, string outputName
//! UnkeyedRealisation  path outPath, set<string> signatures
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use tokio::io::AsyncRead;

use nixnest_core::store_path::validate_output_name;
use nixnest_core::{DrvOutput, Hash, HashAlgo, StorePath};

use crate::error::{Error, Result};
use crate::types::{read_path, write_path};
use crate::wire::{WireReader, WireType, WireWriter, limits};

/// The DrvOutput id HEAD uses when it has no hash to give an old client (and what the
/// feature forms, which carry no hash, decode to): an all-zero sha256.
pub fn placeholder_drv_output(output: &str) -> DrvOutput {
    // A 32-byte digest always fits sha256; the fallback only satisfies the type.
    let drv_hash = Hash::new(HashAlgo::Sha256, &[0u8; 32]).unwrap_or_else(|_| Hash::sha256(b""));
    DrvOutput {
        drv_hash,
        output: output.to_owned(),
    }
}

/// `string "sha256:<hex>!<output>"`.
impl WireType for DrvOutput {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let s = r.read_string(limits::SHORT, "DrvOutput").await?;
        DrvOutput::parse(&s).map_err(Error::value("DrvOutput"))
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_str(&self.to_string());
    }
}

/// A realised output: where it is, who signed it, and (for the JSON form) the
/// realisations it depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Realisation {
    pub id: DrvOutput,
    pub out_path: StorePath,
    pub signatures: BTreeSet<String>,
    pub dependent_realisations: BTreeMap<DrvOutput, StorePath>,
}

fn json_str(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

impl Realisation {
    /// The JSON text Nix ≤ 2.34 sends (nlohmann's compact dump, keys sorted, signatures
    /// as strings — what every client we serve can read).
    pub fn to_json(&self) -> String {
        let deps: Vec<String> = self
            .dependent_realisations
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(&k.to_string()), json_str(&v.to_string())))
            .collect();
        let sigs: Vec<String> = self.signatures.iter().map(|s| json_str(s)).collect();
        format!(
            "{{\"dependentRealisations\":{{{}}},\"id\":{},\"outPath\":{},\"signatures\":[{}]}}",
            deps.join(","),
            json_str(&self.id.to_string()),
            json_str(&self.out_path.to_string()),
            sigs.join(",")
        )
    }

    /// Parses the JSON form; `signatures` and `dependentRealisations` are optional and
    /// signatures may be strings or `{keyName, sig}` objects.
    pub fn from_json(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::invalid("Realisation JSON", reason);
        let v: Value = serde_json::from_str(s).map_err(|e| bad(e.to_string()))?;
        let obj = v.as_object().ok_or_else(|| bad("not an object".into()))?;
        let id = obj
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing string \"id\"".into()))?;
        let id = DrvOutput::parse(id).map_err(Error::value("Realisation id"))?;
        let out = obj
            .get("outPath")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("missing string \"outPath\"".into()))?;
        let out_path = StorePath::from_base_name(out).map_err(Error::value("outPath"))?;
        let mut signatures = BTreeSet::new();
        if let Some(sigs) = obj.get("signatures") {
            for sig in sigs
                .as_array()
                .ok_or_else(|| bad("\"signatures\" is not a list".into()))?
            {
                signatures.insert(json_signature(sig).ok_or_else(|| {
                    bad("a signature is neither \"key:sig\" nor {keyName, sig}".into())
                })?);
            }
        }
        let mut dependent_realisations = BTreeMap::new();
        if let Some(deps) = obj.get("dependentRealisations") {
            for (k, v) in deps
                .as_object()
                .ok_or_else(|| bad("\"dependentRealisations\" is not an object".into()))?
            {
                let path = v
                    .as_str()
                    .ok_or_else(|| bad("a dependent realisation is not a string".into()))?;
                dependent_realisations.insert(
                    DrvOutput::parse(k).map_err(Error::value("dependent realisation id"))?,
                    StorePath::from_base_name(path).map_err(Error::value("dependent outPath"))?,
                );
            }
        }
        Ok(Realisation {
            id,
            out_path,
            signatures,
            dependent_realisations,
        })
    }

    pub fn unkeyed(&self) -> UnkeyedRealisation {
        UnkeyedRealisation {
            out_path: self.out_path.clone(),
            signatures: self.signatures.clone(),
        }
    }
}

/// Nix ≤ 2.34 writes signatures as `"<key>:<base64>"`; newer Nix as
/// `{"keyName":…,"sig":…}`. Both mean the same signature.
fn json_signature(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => Some(format!(
            "{}:{}",
            o.get("keyName")?.as_str()?,
            o.get("sig")?.as_str()?
        )),
        _ => None,
    }
}

/// The JSON-string form.
impl WireType for Realisation {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let s = r.read_string(limits::STRING, "Realisation").await?;
        Realisation::from_json(&s)
    }
    fn encode(&self, w: &mut WireWriter) {
        w.write_str(&self.to_json());
    }
}

/// DrvOutput with the feature: the derivation's path and an output name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DrvOutputWithPath {
    pub drv_path: StorePath,
    pub output: String,
}

impl WireType for DrvOutputWithPath {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let drv_path = read_path(r, "drvPath").await?;
        let output = r.read_string(limits::SHORT, "outputName").await?;
        validate_output_name(&output).map_err(Error::value("outputName"))?;
        Ok(DrvOutputWithPath { drv_path, output })
    }
    fn encode(&self, w: &mut WireWriter) {
        write_path(w, &self.drv_path);
        w.write_str(&self.output);
    }
}

/// A realisation without its key (feature form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnkeyedRealisation {
    pub out_path: StorePath,
    pub signatures: BTreeSet<String>,
}

impl WireType for UnkeyedRealisation {
    async fn decode<R: AsyncRead + Unpin + Send>(r: &mut WireReader<R>) -> Result<Self> {
        let out_path = read_path(r, "outPath").await?;
        let n = r.read_count(limits::ITEMS, "signatures").await?;
        let mut signatures = BTreeSet::new();
        for _ in 0..n {
            signatures.insert(r.read_string(limits::SHORT, "signature").await?);
        }
        Ok(UnkeyedRealisation {
            out_path,
            signatures,
        })
    }
    fn encode(&self, w: &mut WireWriter) {
        write_path(w, &self.out_path);
        self.signatures.encode(w);
    }
}
