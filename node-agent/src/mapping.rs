//! A member's mapping file (`huren-mapping/1`, TOML): from the hospital's local item codes to
//! the alliance catalogue, which local codes to leave out on purpose, and which patient
//! identifiers to use. Documented in node-agent/INBOX.md; examples for the two demo members are
//! in node-agent/examples/mapping-*.toml.
//!
//! A local code that is neither mapped nor ignored makes its message rejected (with the code
//! named in the reason file), so a new LIS item never disappears silently.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use huren_core::summary::{Category, Item};

/// The value of the `format` field this code reads.
pub const MAPPING_FORMAT: &str = "huren-mapping/1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    format: String,
    /// Code system of catalogue codes whose item entry names none.
    #[serde(default = "loinc")]
    default_system: String,
    /// Local codes that are known and deliberately not published (not in the catalogue).
    #[serde(default)]
    ignore: Vec<String>,
    /// OBX-3 codes whose values form the impression of an exam (HL7 v2).
    #[serde(default = "default_impression_codes")]
    impression_codes: Vec<String>,
    /// OBX-3 codes whose value is the DICOM Study Instance UID (HL7 v2).
    #[serde(default = "default_study_uid_codes")]
    study_uid_codes: Vec<String>,
    /// Which patient identifiers to use, in order of preference. They are tried before the
    /// default rules ([`default_patient_id_rules`]), which stay unless
    /// `replace_default_patient_id_rules` is true.
    #[serde(default)]
    patient_id: Vec<PatientIdRule>,
    /// Use only the `[[patient_id]]` rules of this file, not the defaults after them.
    #[serde(default)]
    replace_default_patient_id_rules: bool,
    #[serde(default)]
    item: Vec<ItemEntry>,
}

fn loinc() -> String {
    "http://loinc.org".into()
}

fn default_impression_codes() -> Vec<String> {
    // LOINC 19005-8 "Radiology Imaging study [Impression]", 18782-3 "Radiology Study
    // observation (narrative)" is findings, not impression, so not listed.
    vec!["IMP".into(), "IMPRESSION".into(), "19005-8".into()]
}

fn default_study_uid_codes() -> Vec<String> {
    // DICOM code 113014 "Study Instance UID" (DCM).
    vec!["113014".into(), "STUDYUID".into()]
}

/// Which identifier of the patient to pseudonymise. A rule matches an identifier whose type
/// code (HL7 table 0203: PID-3.5, FHIR `identifier.type.coding.code`) and/or assigning
/// authority (PID-3.4 namespace or universal id, FHIR `identifier.system`) equal the rule's.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PatientIdRule {
    #[serde(default)]
    pub type_code: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    /// The Huren id type, e.g. `cn-ric`, `passport`.
    pub id_type: String,
}

/// The rules used when a mapping file has none.
pub fn default_patient_id_rules() -> Vec<PatientIdRule> {
    let rule = |t: &str, id_type: &str| PatientIdRule {
        type_code: Some(t.into()),
        authority: None,
        id_type: id_type.into(),
    };
    vec![
        // National person identifier of China (HL7 0203 "NNxxx" with the ISO country code).
        rule("NNCHN", "cn-ric"),
        // "ID" is what many Chinese interface engines put for the resident identity card.
        rule("ID", "cn-ric"),
        rule("NI", "cn-ric"),
        rule("PPN", "passport"),
        rule("HC", "cn-health-card"),
    ]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemEntry {
    /// The hospital's local code (LIS/PACS/RIS item code).
    local: String,
    #[serde(default)]
    system: Option<String>,
    code: String,
    #[serde(default)]
    display: String,
    category: String,
    /// DICOM modality for exam items (CT, MR, US, DX, ECG, …).
    #[serde(default)]
    modality: Option<String>,
    #[serde(default)]
    body_site: String,
}

/// A catalogue item a local code maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedItem {
    pub item: Item,
    pub category: Category,
    /// For exam items: the modality and body site to state when the message gives none.
    pub modality: Option<String>,
    pub body_site: String,
}

/// What the mapping says about a code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Mapped(&'a MappedItem),
    Ignored,
    Unknown,
}

/// A loaded, checked mapping.
#[derive(Clone, Debug)]
pub struct Mapping {
    by_local: BTreeMap<String, MappedItem>,
    by_catalogue: BTreeMap<(String, String), String>,
    ignore: BTreeSet<String>,
    pub impression_codes: BTreeSet<String>,
    pub study_uid_codes: BTreeSet<String>,
    pub patient_id_rules: Vec<PatientIdRule>,
    /// Where it was loaded from, for messages.
    pub source: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("cannot read the mapping file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid mapping file: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Mapping {
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.to_owned(),
            source,
        })?;
        Mapping::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Mapping, MappingError> {
        let invalid = |message: String| MappingError::Invalid {
            path: path.to_owned(),
            message,
        };
        let file: MappingFile =
            toml::from_str(text).map_err(|e: toml::de::Error| invalid(e.to_string()))?;
        if file.format != MAPPING_FORMAT {
            return Err(invalid(format!(
                "format is {:?}; this agent reads {MAPPING_FORMAT:?}",
                file.format
            )));
        }
        let mut by_local = BTreeMap::new();
        let mut by_catalogue = BTreeMap::new();
        for (i, e) in file.item.into_iter().enumerate() {
            let at = |m: String| invalid(format!("item[{i}] (local {:?}): {m}", e.local));
            let local = e.local.trim().to_owned();
            if local.is_empty() {
                return Err(at("local must not be empty".into()));
            }
            let category = Category::from_name(&e.category).ok_or_else(|| {
                at(format!(
                    "category {:?} is not one of lab, imaging, electrophysiology, nuclear-medicine",
                    e.category
                ))
            })?;
            if category != Category::Lab && e.modality.as_deref().unwrap_or("").is_empty() {
                return Err(at(
                    "an exam item needs a modality (DICOM code such as CT, MR, US, ECG)".into(),
                ));
            }
            let system = e.system.unwrap_or_else(|| file.default_system.clone());
            let mapped = MappedItem {
                item: Item {
                    system: system.clone(),
                    code: e.code.clone(),
                    display: e.display,
                    local_code: local.clone(),
                },
                category,
                modality: e.modality,
                body_site: e.body_site,
            };
            if by_local.insert(local.clone(), mapped).is_some() {
                return Err(at("this local code is mapped twice".into()));
            }
            by_catalogue.entry((system, e.code)).or_insert(local);
        }
        let ignore: BTreeSet<String> = file.ignore.iter().map(|s| s.trim().to_owned()).collect();
        if let Some(both) = ignore.iter().find(|c| by_local.contains_key(*c)) {
            return Err(invalid(format!(
                "local code {both:?} is both mapped and ignored"
            )));
        }
        // The file's rules first; the defaults after them unless the file replaces them (adding
        // one rule used to drop every default silently).
        let mut patient_id_rules = file.patient_id;
        if !file.replace_default_patient_id_rules {
            for d in default_patient_id_rules() {
                if !patient_id_rules.contains(&d) {
                    patient_id_rules.push(d);
                }
            }
        }
        for r in &patient_id_rules {
            if r.type_code.is_none() && r.authority.is_none() {
                return Err(invalid(format!(
                    "patient_id rule for {:?} needs type_code or authority",
                    r.id_type
                )));
            }
        }
        Ok(Mapping {
            by_local,
            by_catalogue,
            ignore,
            impression_codes: file.impression_codes.into_iter().collect(),
            study_uid_codes: file.study_uid_codes.into_iter().collect(),
            patient_id_rules,
            source: path.to_owned(),
        })
    }

    /// Looks up a local code.
    pub fn local(&self, code: &str) -> Lookup<'_> {
        let code = code.trim();
        match self.by_local.get(code) {
            Some(m) => Lookup::Mapped(m),
            None if self.ignore.contains(code) => Lookup::Ignored,
            None => Lookup::Unknown,
        }
    }

    /// Looks up a code that may be local or already a catalogue code (FHIR codings often carry
    /// both): the local code first, then `(system, code)` as a catalogue code.
    pub fn coding(&self, system: &str, code: &str) -> Lookup<'_> {
        match self.local(code) {
            Lookup::Unknown => {}
            found => return found,
        }
        match self
            .by_catalogue
            .get(&(system.to_owned(), code.to_owned()))
            .and_then(|local| self.by_local.get(local))
        {
            Some(m) => Lookup::Mapped(m),
            None => Lookup::Unknown,
        }
    }

    /// Number of mapped local codes.
    pub fn len(&self) -> usize {
        self.by_local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_local.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name)
    }

    #[test]
    fn example_mappings_load() {
        let shx = Mapping::load(&example("mapping-shx-prov-people.toml")).unwrap();
        assert!(shx.len() >= 5);
        let Lookup::Mapped(hgb) = shx.local("HGB") else {
            panic!("HGB is mapped in the example")
        };
        assert_eq!(hgb.item.code, "718-7");
        assert_eq!(hgb.item.local_code, "HGB");
        assert_eq!(shx.local("MCHC"), Lookup::Ignored);
        assert_eq!(shx.local("NOPE"), Lookup::Unknown);
        assert!(matches!(
            shx.coding("http://loinc.org", "718-7"),
            Lookup::Mapped(_)
        ));
        assert_eq!(shx.patient_id_rules[0].id_type, "cn-ric");
        let county = Mapping::load(&example("mapping-lantian-county.toml")).unwrap();
        assert!(!county.is_empty());
    }

    /// Adding a `[[patient_id]]` rule keeps the default rules after it, unless the file says
    /// `replace_default_patient_id_rules = true`; an empty `type_code` matches a bare PID-3.
    #[test]
    fn configured_patient_id_rules_keep_the_defaults() {
        let p = Path::new("m.toml");
        let head = "format = \"huren-mapping/1\"\n";
        let rule = "[[patient_id]]\ntype_code = \"\"\nid_type = \"cn-ric\"\n";
        let m = Mapping::parse(&format!("{head}{rule}"), p).unwrap();
        assert_eq!(m.patient_id_rules[0].type_code.as_deref(), Some(""));
        assert_eq!(m.patient_id_rules[1..], default_patient_id_rules()[..]);
        let m = Mapping::parse(
            &format!("{head}replace_default_patient_id_rules = true\n{rule}"),
            p,
        )
        .unwrap();
        assert_eq!(m.patient_id_rules.len(), 1);
        let m = Mapping::parse(head, p).unwrap();
        assert_eq!(m.patient_id_rules, default_patient_id_rules());
    }

    #[test]
    fn mistakes_are_refused_with_their_place() {
        let p = Path::new("m.toml");
        let err = |t: &str| Mapping::parse(t, p).unwrap_err().to_string();
        let head = "format = \"huren-mapping/1\"\n";
        assert!(err("format = \"x\"\n").contains("huren-mapping/1"));
        let e = err(&format!(
            "{head}[[item]]\nlocal = \"CT1\"\ncode = \"CT-CHEST\"\ncategory = \"imaging\"\n"
        ));
        assert!(e.contains("item[0]") && e.contains("modality"), "{e}");
        let e = err(&format!(
            "{head}[[item]]\nlocal = \"A\"\ncode = \"1\"\ncategory = \"lab\"\n[[item]]\nlocal = \"A\"\ncode = \"2\"\ncategory = \"lab\"\n"
        ));
        assert!(e.contains("mapped twice"), "{e}");
        let e = err(&format!(
            "{head}ignore = [\"A\"]\n[[item]]\nlocal = \"A\"\ncode = \"1\"\ncategory = \"lab\"\n"
        ));
        assert!(e.contains("both mapped and ignored"), "{e}");
        let e = err(&format!(
            "{head}[[item]]\nlocal = \"A\"\ncode = \"1\"\ncategory = \"lab\"\ncolour = 1\n"
        ));
        assert!(e.contains("colour"), "{e}");
    }
}
