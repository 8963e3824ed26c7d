//! The interface language and the message catalogues: one fluent file per language
//! (`locales/zh-CN.ftl`, the default, and `locales/en.ftl`), compiled into the binary. Every
//! string a person reads on a page comes from them; a test checks that both hold the same
//! messages and that every message the pages ask for exists.

use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource, FluentValue};

/// An interface language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    ZhCn,
    En,
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::ZhCn, Lang::En];

    /// "zh-CN" / "en" (also "zh", "zh-cn", "en-US", …).
    pub fn parse(s: &str) -> Option<Lang> {
        let s = s.trim().to_ascii_lowercase();
        if s == "zh" || s.starts_with("zh-") {
            Some(Lang::ZhCn)
        } else if s == "en" || s.starts_with("en-") {
            Some(Lang::En)
        } else {
            None
        }
    }

    /// The BCP 47 tag (the page's `lang` attribute and the cookie value).
    pub fn tag(self) -> &'static str {
        match self {
            Lang::ZhCn => "zh-CN",
            Lang::En => "en",
        }
    }

    /// The language's own name, for the switch.
    pub fn own_name(self) -> &'static str {
        match self {
            Lang::ZhCn => "中文",
            Lang::En => "English",
        }
    }
}

const ZH_CN: &str = include_str!("locales/zh-CN.ftl");
const EN: &str = include_str!("locales/en.ftl");

/// Both catalogues.
pub struct Catalogues {
    zh: FluentBundle<FluentResource>,
    en: FluentBundle<FluentResource>,
}

fn bundle(tag: &str, text: &str) -> Result<FluentBundle<FluentResource>, String> {
    let resource = FluentResource::try_new(text.to_owned())
        .map_err(|(_, errors)| format!("message catalogue {tag}: {errors:?}"))?;
    let id: unic_langid::LanguageIdentifier = tag
        .parse()
        .map_err(|e| format!("language tag {tag}: {e}"))?;
    let mut bundle = FluentBundle::new_concurrent(vec![id]);
    // No Unicode isolation marks around arguments: pages are plain left-to-right text.
    bundle.set_use_isolating(false);
    bundle
        .add_resource(resource)
        .map_err(|errors| format!("message catalogue {tag}: {errors:?}"))?;
    Ok(bundle)
}

impl Catalogues {
    pub fn load() -> Result<Self, String> {
        Ok(Self {
            zh: bundle("zh-CN", ZH_CN)?,
            en: bundle("en", EN)?,
        })
    }

    fn bundle(&self, lang: Lang) -> &FluentBundle<FluentResource> {
        match lang {
            Lang::ZhCn => &self.zh,
            Lang::En => &self.en,
        }
    }

    /// The message `id` in `lang`; the id itself if it is missing (a test keeps that from
    /// happening).
    pub fn get(&self, lang: Lang, id: &str) -> String {
        self.format(lang, id, None)
    }

    /// The message `id` with arguments.
    pub fn with(&self, lang: Lang, id: &str, args: &[(&str, FluentValue<'_>)]) -> String {
        let mut a = FluentArgs::new();
        for (k, v) in args {
            a.set(*k, v.clone());
        }
        self.format(lang, id, Some(&a))
    }

    fn format(&self, lang: Lang, id: &str, args: Option<&FluentArgs<'_>>) -> String {
        let bundle = self.bundle(lang);
        let Some(pattern) = bundle.get_message(id).and_then(|m| m.value()) else {
            tracing::warn!(id, lang = lang.tag(), "missing message");
            return id.to_owned();
        };
        let mut errors = Vec::new();
        bundle
            .format_pattern(pattern, args, &mut errors)
            .into_owned()
    }
}

/// Message ids defined in a catalogue's text.
#[cfg(test)]
fn ids(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
        .filter_map(|l| l.split_once(" =").map(|(id, _)| id.trim().to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_catalogues_load_and_hold_the_same_messages() {
        let c = Catalogues::load().unwrap();
        let (zh, en) = (ids(ZH_CN), ids(EN));
        assert!(zh.len() > 20);
        let only_zh: Vec<_> = zh.difference(&en).collect();
        let only_en: Vec<_> = en.difference(&zh).collect();
        assert!(
            only_zh.is_empty() && only_en.is_empty(),
            "{only_zh:?} {only_en:?}"
        );
        for id in &zh {
            assert_ne!(&c.get(Lang::ZhCn, id), id);
            assert_ne!(&c.get(Lang::En, id), id);
        }
        assert_eq!(c.get(Lang::En, "no-such-message"), "no-such-message");
    }

    /// Every `t(…, "id")` / `tw(…, "id", …)` in the web module's source names a message.
    #[test]
    fn every_message_the_pages_use_exists() {
        let zh = ids(ZH_CN);
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web");
        let mut used = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for marker in [".t(\"", ".tw(\""] {
                for (i, _) in text.match_indices(marker) {
                    let rest = &text[i + marker.len()..];
                    let id = &rest[..rest.find('"').unwrap()];
                    assert!(
                        zh.contains(id),
                        "{}: message {id:?} is not in the catalogues",
                        path.display()
                    );
                    used += 1;
                }
            }
        }
        assert!(used > 20, "only {used} messages found in use");
    }

    #[test]
    fn languages_parse() {
        assert_eq!(Lang::parse("zh-CN"), Some(Lang::ZhCn));
        assert_eq!(Lang::parse("EN-us"), Some(Lang::En));
        assert_eq!(Lang::parse("fr"), None);
    }
}
