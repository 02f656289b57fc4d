//! The pure core: from the current files and the fetched members, what each output should become.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::entraidconf::EntraConf;
use crate::graph::{Member, ObjectKind, Text};
use crate::instance::Instance;
use crate::normalize::{escape_for_log, Email, Phone, SkipReason};
use crate::output::Output;
use crate::render;

/// The bytes of each output file as it is now; `None` where the file does not exist.
pub type CurrentFiles = BTreeMap<Output, Option<Vec<u8>>>;

/// What should happen to one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPlan {
    /// Which output.
    pub output: Output,
    /// Its path.
    pub path: PathBuf,
    /// Entries now.
    pub before: usize,
    /// Entries after the write.
    pub after: usize,
    /// New entries, sorted.
    pub added: Vec<String>,
    /// Entries that go, sorted.
    pub removed: Vec<String>,
    /// Members that gave no entry here, by reason.
    pub skipped: BTreeMap<SkipReason, u64>,
    /// The new file's bytes.
    pub content: Vec<u8>,
    /// The new bytes differ from the current ones (or there is no file yet).
    pub changed: bool,
}

/// A member that gave no entry to some output, for the log (values already escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// The config that fetched it.
    pub config: PathBuf,
    /// The member's object id.
    pub id: String,
    /// Why.
    pub reason: SkipReason,
    /// The offending value (mail or phone), escaped for a log line; empty if none.
    pub value: String,
}

/// Everything one instance's write would do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// One entry per output some config feeds, in `Output` order.
    pub outputs: Vec<OutputPlan>,
    /// Every skip, in directory order.
    pub skips: Vec<Skip>,
}

impl Plan {
    /// Skips by reason; a member skipped for `gsm_list` only (no phone) counts too.
    #[must_use]
    pub fn skip_counts(&self) -> BTreeMap<SkipReason, u64> {
        let mut counts = BTreeMap::new();
        for s in &self.skips {
            *counts.entry(s.reason).or_default() += 1;
        }
        counts
    }
}

/// Builds the plan. `fetched[i]` holds the members fetched for `instance.configs[i]`.
#[must_use]
pub fn plan(current: &CurrentFiles, fetched: &[&[Member]], instance: &Instance) -> Plan {
    let mut lines: BTreeMap<Output, Vec<String>> = instance.outputs.keys().map(|o| (*o, Vec::new())).collect();
    let mut skipped: BTreeMap<Output, BTreeMap<SkipReason, u64>> = BTreeMap::new();
    let mut skips = Vec::new();

    for (config, members) in instance.configs.iter().zip(fetched) {
        for m in *members {
            let entry = match classify(m, config) {
                Ok(e) => e,
                Err(reason) => {
                    skips.push(skip(config, m, reason, m.mail.as_ref().map(Text::as_str)));
                    for o in &config.feeds {
                        *skipped.entry(*o).or_default().entry(reason).or_default() += 1;
                    }
                    continue;
                }
            };
            for o in &config.feeds {
                let line = match o {
                    Output::AllowedSenders => render::allowed_sender(&entry.mail),
                    Output::AccessRules => render::access_rule(&entry.mail, config.access_rule),
                    Output::GsmList => match &entry.phone {
                        Some(Ok(p)) => render::gsm_entry(&entry.mail, p),
                        other => {
                            let reason = match other {
                                Some(Err(r)) => *r,
                                _ => SkipReason::NoPhone,
                            };
                            skips.push(skip(config, m, reason, m.mobile_phone.as_ref().map(Text::as_str)));
                            *skipped.entry(*o).or_default().entry(reason).or_default() += 1;
                            continue;
                        }
                    },
                };
                lines.entry(*o).or_default().push(line);
            }
        }
    }

    let outputs = lines
        .into_iter()
        .filter_map(|(output, mut new)| {
            let path = instance.outputs.get(&output)?.clone();
            // Sort and deduplicate once per output (byte order is `str` order).
            new.sort_unstable();
            new.dedup();
            let cur = current.get(&output).and_then(Option::as_deref);
            let content = render::file_content(&new);
            let changed = cur != Some(content.as_slice());
            // The hourly common case: the file is already exactly right, so there is no diff to make.
            let (before, added, removed) = if changed {
                let old = cur.map(render::current_entries).unwrap_or_default();
                let (added, removed) = difference(&new, &old);
                (old.len(), added, removed)
            } else {
                (new.len(), Vec::new(), Vec::new())
            };
            Some(OutputPlan {
                output,
                path,
                before,
                after: new.len(),
                added,
                removed,
                skipped: skipped.remove(&output).unwrap_or_default(),
                changed,
                content,
            })
        })
        .collect();
    Plan { outputs, skips }
}

/// The addresses of `members` that `config` keeps (for `usersync test`).
#[must_use]
pub fn kept(config: &EntraConf, members: &[Member]) -> Vec<Email> {
    members.iter().filter_map(|m| classify(m, config).ok()).map(|e| e.mail).collect()
}

/// Entries only in `new` and entries only in `old`; both sorted and deduplicated.
fn difference(new: &[String], old: &[std::borrow::Cow<'_, str>]) -> (Vec<String>, Vec<String>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < new.len() || j < old.len() {
        match (new.get(i), old.get(j)) {
            (Some(n), Some(o)) if n.as_str() == o.as_ref() => {
                i += 1;
                j += 1;
            }
            (Some(n), Some(o)) if n.as_str() < o.as_ref() => {
                added.push(n.clone());
                i += 1;
            }
            (Some(n), None) => {
                added.push(n.clone());
                i += 1;
            }
            (_, Some(o)) => {
                removed.push(o.clone().into_owned());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (added, removed)
}

struct Entry {
    mail: Email,
    phone: Option<Result<Phone, SkipReason>>,
}

/// A member's mail (and phone), or why it gives no entry at all.
fn classify(m: &Member, config: &EntraConf) -> Result<Entry, SkipReason> {
    match m.kind {
        ObjectKind::User => {}
        ObjectKind::Group => return Err(SkipReason::Group),
        ObjectKind::Device => return Err(SkipReason::Device),
        ObjectKind::Contact => return Err(SkipReason::Contact),
        ObjectKind::ServicePrincipal => return Err(SkipReason::ServicePrincipal),
        ObjectKind::Other => return Err(SkipReason::OtherObject),
        ObjectKind::Untyped => return Err(SkipReason::UntypedObject),
    }
    if m.account_enabled == Some(false) && !config.include_disabled {
        return Err(SkipReason::Disabled);
    }
    let mail = match &m.mail {
        None => return Err(SkipReason::NoMail),
        Some(Text::Undecodable(_)) => return Err(SkipReason::InvalidMail),
        Some(Text::Str(s)) => Email::parse(s)?,
    };
    let phone = config.mobile_phone.then(|| match &m.mobile_phone {
        None => Err(SkipReason::NoPhone),
        Some(Text::Undecodable(_)) => Err(SkipReason::InvalidPhone),
        Some(Text::Str(s)) => Phone::parse(s),
    });
    Ok(Entry { mail, phone })
}

fn skip(config: &EntraConf, m: &Member, reason: SkipReason, value: Option<&str>) -> Skip {
    Skip {
        config: config.path.clone(),
        id: escape_for_log(&m.id),
        reason,
        value: escape_for_log(value.unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entraidconf::Env;
    use crate::graph::parse_page;
    use std::path::Path;

    fn sample(name: &str) -> Vec<Member> {
        let body = std::fs::read(format!("{}/../shared/graph-samples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        parse_page(&body).unwrap().members
    }

    fn conf(name: &str, extra: &str) -> EntraConf {
        let text = format!(
            "tenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"66666666-7777-8888-9999-000000000000\"\nclient_secret = \"x\"\ngroup_id = \"02bd9fd6-8f93-4758-87c3-1fb73740a315\"\n{extra}"
        );
        EntraConf::parse(&text, Path::new(name), &Env::default()).unwrap()
    }

    fn instance(configs: Vec<EntraConf>) -> Instance {
        let mut outputs = BTreeMap::new();
        for o in Output::ALL {
            if configs.iter().any(|c| c.feeds.contains(&o)) {
                outputs.insert(o, PathBuf::from(o.default_path()));
            }
        }
        Instance { name: "gw".into(), dir: PathBuf::from("/server/gw"), configs, outputs }
    }

    fn text(p: &OutputPlan) -> &str {
        std::str::from_utf8(&p.content).unwrap()
    }

    #[test]
    fn users_list_sample_gives_lower_cased_sorted_lines() {
        let i = instance(vec![conf("a", "feeds = [\"allowed_senders\", \"access_rules\"]\n")]);
        let members = sample("users_list_app_only.json");
        let p = plan(&CurrentFiles::new(), &[&members], &i);
        assert_eq!(p.outputs.len(), 2);
        assert_eq!(text(&p.outputs[0]), "adams@contoso.com\nadelev@contoso.com\n");
        assert_eq!(text(&p.outputs[1]), "* adams@contoso.com <reg> - 0\n* adelev@contoso.com <reg> - 0\n");
        assert!(p.outputs.iter().all(|o| o.changed && o.before == 0 && o.after == 2));
    }

    #[test]
    fn limited_info_sample_skips_by_reason() {
        let i = instance(vec![conf("a", "")]);
        let members = sample("group_members_limited_info_permissions_overview.json");
        let p = plan(&CurrentFiles::new(), &[&members], &i);
        let o = &p.outputs[0];
        assert_eq!(o.after, 0);
        assert_eq!(
            o.skipped,
            BTreeMap::from([(SkipReason::Group, 1), (SkipReason::Device, 1), (SkipReason::NoMail, 1)])
        );
    }

    #[test]
    fn union_of_configs_with_both_rule_styles_and_phones() {
        let a = conf("a", "feeds = [\"access_rules\", \"gsm_list\"]\nquery_filter = \"mail,mobilePhone\"\n");
        let b = conf("b", "feeds = [\"access_rules\"]\naccess_rule = \"sms\"\ninclude_disabled = true\n");
        let ma = vec![
            user("1", Some("Zed@X.com"), Some("+44 (0)20 7946 0958"), Some(true)),
            user("2", Some("amy@x.com"), None, None),
            user("3", Some("off@x.com"), Some("040-123 1234"), Some(false)),
            user("4", Some("bad\n* evil@x <reg> - 0"), Some("12345"), Some(true)),
            user("5", Some("ph@x.com"), Some("call me"), Some(true)),
        ];
        let mb = vec![user("3", Some("off@x.com"), None, Some(false)), user("1", Some("zed@x.com"), None, Some(true))];
        let i = instance(vec![a, b]);
        let p = plan(&CurrentFiles::new(), &[&ma, &mb], &i);
        let gsm = &p.outputs[0];
        assert_eq!(gsm.output, Output::GsmList);
        assert_eq!(text(gsm), "zed@x.com +442079460958\n");
        assert_eq!(
            gsm.skipped,
            BTreeMap::from([
                (SkipReason::Disabled, 1),
                (SkipReason::InvalidMail, 1),
                (SkipReason::NoPhone, 1),
                (SkipReason::InvalidPhone, 1)
            ])
        );
        let rules = &p.outputs[1];
        assert_eq!(
            text(rules),
            "* amy@x.com <reg> - 0\n* ph@x.com <reg> - 0\n* zed@x.com <reg> - 0\noff@x.com * <sms> - 0\nzed@x.com * <sms> - 0\n"
        );
        let invalid: Vec<&Skip> =
            p.skips.iter().filter(|s| matches!(s.reason, SkipReason::InvalidMail | SkipReason::InvalidPhone)).collect();
        assert_eq!(invalid.len(), 2);
        assert_eq!(invalid[0].value, "bad\\n* evil@x <reg> - 0");
        assert_eq!(invalid[1].value, "call me");
        assert_eq!(p.skips.len(), 4, "plus one disabled, one without a phone");
    }

    #[test]
    fn diff_against_current_and_unchanged() {
        let i = instance(vec![conf("a", "")]);
        let members = sample("group_transitivemembers_example1.json");
        let mut cur = CurrentFiles::new();
        cur.insert(Output::AllowedSenders, Some(b"old@contoso.com\n".to_vec()));
        let p = plan(&cur, &[&members], &i);
        let o = &p.outputs[0];
        assert_eq!((o.before, o.after), (1, 1));
        assert_eq!(o.added, ["group1@contoso.com"]);
        assert_eq!(o.removed, ["old@contoso.com"]);
        cur.insert(Output::AllowedSenders, Some(b"group1@contoso.com\n".to_vec()));
        assert!(!plan(&cur, &[&members], &i).outputs[0].changed);
    }

    fn user(id: &str, mail: Option<&str>, phone: Option<&str>, enabled: Option<bool>) -> Member {
        Member {
            id: id.into(),
            kind: ObjectKind::User,
            mail: mail.map(Into::into),
            mobile_phone: phone.map(Into::into),
            account_enabled: enabled,
        }
    }
}

#[cfg(test)]
mod proptests {
    //! Hostile directory values: whatever `mail` and `mobilePhone` hold, every
    //! output line matches its strict format, and no other line changes.
    use super::*;
    use crate::entraidconf::Env;
    use proptest::prelude::*;
    use std::path::Path;
    use std::sync::LazyLock;

    const C: &str = r"[!#$%&'+\-./0-9=?^_`a-z{|}~]+";
    static EMAIL: LazyLock<String> = LazyLock::new(|| format!("{C}@{C}"));
    static SENDER: LazyLock<regex::Regex> = LazyLock::new(|| regex::Regex::new(&format!("^{}$", *EMAIL)).unwrap());
    static GSM: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(&format!(r"^{} \+?[0-9]{{5,20}}$", *EMAIL)).unwrap());
    static RULE: LazyLock<regex::Regex> =
        LazyLock::new(|| regex::Regex::new(&format!(r"^(\* {0} <reg> - 0|{0} \* <sms> - 0)$", *EMAIL)).unwrap());

    fn hostile() -> impl Strategy<Value = String> {
        let pieces = prop_oneof![
            Just("\n".to_owned()),
            Just("\r".to_owned()),
            Just("\0".to_owned()),
            Just(" ".to_owned()),
            Just("*".to_owned()),
            Just("<".to_owned()),
            Just(">".to_owned()),
            Just("@".to_owned()),
            Just("* evil@example.com <reg> - 0".to_owned()),
            Just("evil@example.com * <sms> - 0\n".to_owned()),
            Just("x".repeat(10_000)),
            Just("Jörg".to_owned()),
            Just("bücher.example".to_owned()),
            Just("\u{2028}".to_owned()),
            Just("+358 40".to_owned()),
            "[a-z]{1,6}".prop_map(|s| s),
            any::<String>(),
        ];
        prop::collection::vec(pieces, 0..6).prop_map(|v| v.concat())
    }

    fn member(id: &str, mail: Option<Text>, phone: Option<Text>) -> Member {
        Member { id: id.into(), kind: ObjectKind::User, mail, mobile_phone: phone, account_enabled: Some(true) }
    }

    fn text() -> impl Strategy<Value = Option<Text>> {
        prop_oneof![
            Just(None),
            hostile().prop_map(|s| Some(Text::Str(s))),
            hostile().prop_map(|s| Some(Text::Undecodable(s))),
        ]
    }

    fn instance(sms: bool) -> Instance {
        let rule = if sms { "sms" } else { "registration" };
        let text = format!(
            "tenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"66666666-7777-8888-9999-000000000000\"\nclient_secret = \"x\"\ngroup_id = \"02bd9fd6-8f93-4758-87c3-1fb73740a315\"\nquery_filter = \"mail,mobilePhone\"\nfeeds = [\"allowed_senders\", \"gsm_list\", \"access_rules\"]\naccess_rule = \"{rule}\"\n"
        );
        let c = EntraConf::parse(&text, Path::new("p.entraidconf"), &Env::default()).unwrap();
        let outputs = Output::ALL.iter().map(|o| (*o, PathBuf::from(o.default_path()))).collect();
        Instance { name: "gw".into(), dir: PathBuf::from("/server/gw"), configs: vec![c], outputs }
    }

    fn lines(p: &Plan) -> Vec<(Output, Vec<String>)> {
        p.outputs
            .iter()
            .map(|o| (o.output, String::from_utf8(o.content.clone()).unwrap().lines().map(str::to_owned).collect()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn hostile_values_never_add_a_malformed_line_or_change_another(
            mail in text(),
            phone in text(),
            sms in any::<bool>(),
            normal in prop::collection::vec(("[a-z]{1,8}@[a-z]{1,8}\\.com", "\\+?[0-9]{5,12}"), 0..4),
        ) {
            let inst = instance(sms);
            let good: Vec<Member> = normal
                .iter()
                .enumerate()
                .map(|(i, (m, p))| member(&i.to_string(), Some(Text::Str(m.clone())), Some(Text::Str(p.clone()))))
                .collect();
            let mut all = good.clone();
            all.push(member("hostile", mail, phone));
            let before = lines(&plan(&CurrentFiles::new(), &[&good], &inst));
            let after = lines(&plan(&CurrentFiles::new(), &[&all], &inst));
            for ((output, old), (_, new)) in before.iter().zip(&after) {
                for l in new {
                    let re = match output {
                        Output::AllowedSenders => &*SENDER,
                        Output::GsmList => &*GSM,
                        Output::AccessRules => &*RULE,
                    };
                    prop_assert!(re.is_match(l) && l.len() <= 300, "{output}: {l:?}");
                }
                for l in old {
                    prop_assert!(new.contains(l), "{output}: lost {l:?}");
                }
                prop_assert!(new.len() <= old.len() + 1, "{output}: more than one new line: {new:?}");
            }
        }
    }
}
