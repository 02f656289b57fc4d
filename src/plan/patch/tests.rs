//! The patch equals the full plan: bytes, counts and skips, whatever changed.

use super::*;
use crate::config::entraid::Env;
use crate::files::trust::Trust;
use crate::model::page::ObjectKind;
use crate::plan::tests::instance;
use crate::plan::CurrentFiles;
use proptest::prelude::*;
use std::path::{Path, PathBuf};

/// Members in memory, as a state would answer.
struct Mem(Vec<Record>);

impl Members for Mem {
    fn lookup(&self, id: &str) -> Result<Option<Record>, Unusable> {
        Ok(self.0.iter().find(|r| r.id == id).cloned())
    }

    fn with_mail(&self, mail: &[u8], except: &Overlay) -> Result<Vec<Record>, Unusable> {
        let mut norm = Vec::new();
        Ok(self
            .0
            .iter()
            .filter(|r| except.get(&r.id).is_none() && r.normalised_mail(&mut norm) && norm == mail)
            .cloned()
            .collect())
    }
}

fn conf(name: &str, feeds: &[Output], include_disabled: bool, sms: bool, phones: bool) -> EntraConf {
    let feeds: Vec<String> = feeds.iter().map(|o| format!("\"{}\"", o.name())).collect();
    let text = format!(
        "tenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"66666666-7777-8888-9999-000000000000\"\nclient_secret = \"x\"\ngroup_id = \"02bd9fd6-8f93-4758-87c3-1fb73740a315\"\nquery_filter = \"{}\"\nfeeds = [{}]\ninclude_disabled = {include_disabled}\naccess_rule = \"{}\"\n",
        if phones { "mail,mobilePhone" } else { "mail" },
        feeds.join(", "),
        if sms { "sms" } else { "registration" },
    );
    EntraConf::parse(&text, Path::new(name), &Env::default(), Trust::Trusted).unwrap()
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// A member from small pools, so that mails and lines collide often.
fn member() -> impl Strategy<Value = Record> {
    let mail = prop_oneof![
        Just(None),
        Just(Some(json("a@x.com"))),
        Just(Some(json(" A@X.com"))),
        Just(Some(json("b@x.com"))),
        Just(Some(json("c@x.com"))),
        Just(Some(json("not a mail"))),
        Just(Some(json("jörg@x.com"))),
        Just(Some("{\"odd\":1}".to_owned())),
    ];
    let phone = prop_oneof![
        Just(None),
        Just(Some(json("+358 40 1234567"))),
        Just(Some(json("+358401234567"))),
        Just(Some(json("+44 (0)20 7946 0000"))),
        Just(Some(json("call me"))),
    ];
    let enabled = prop_oneof![Just(Some(true)), Just(Some(true)), Just(Some(false)), Just(None)];
    let kind = prop_oneof![8 => Just(ObjectKind::User), 1 => Just(ObjectKind::Group), 1 => Just(ObjectKind::Device)];
    (0..12u8, kind, enabled, mail, phone).prop_map(|(id, kind, enabled, mail, phone)| Record {
        id: format!("id{id}"),
        kind,
        enabled,
        mail,
        phone,
    })
}

/// One record per id (the last wins), phones dropped where the state keeps none.
fn members(v: Vec<Record>, phones: bool) -> Vec<Record> {
    let mut by_id = BTreeMap::new();
    for mut r in v {
        if !phones {
            r.phone = None;
        }
        by_id.insert(r.id.clone(), r);
    }
    by_id.into_values().collect()
}

fn roster(v: &[Record], phones: bool) -> Roster {
    Roster::of(phones, v.iter().map(Record::view))
}

/// The full plan of `rosters`, written: per output its bytes.
fn files(p: &plan::Plan<'_>) -> CurrentFiles {
    let mut out = CurrentFiles::new();
    for (i, o) in p.outputs.iter().enumerate() {
        let mut v = Vec::new();
        p.write_to(i, &mut v).unwrap();
        out.insert(o.output, Some(v));
    }
    out
}

fn output_set() -> impl Strategy<Value = Vec<Output>> {
    prop::sample::subsequence(Output::ALL.to_vec(), 1..=3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]
    #[test]
    fn a_patch_writes_what_a_full_plan_would(
        old in prop::collection::vec(prop::collection::vec(member(), 0..10), 2),
        new in prop::collection::vec(prop::collection::vec(member(), 0..10), 2),
        keep in prop::collection::vec(prop::collection::vec(any::<bool>(), 10), 2),
        phones in prop::collection::vec(any::<bool>(), 2),
        configs in prop::collection::vec((0..2usize, output_set(), any::<bool>(), any::<bool>()), 1..4),
    ) {
        // A group keeps phones when one of its configs selects them (gsm_list needs them).
        let phones: Vec<bool> = (0..2)
            .map(|g| phones[g] || configs.iter().any(|(cg, feeds, ..)| *cg == g && feeds.contains(&Output::GsmList)))
            .collect();
        // Each group: its old members; its new ones are some of them kept, plus others.
        let groups_old: Vec<Vec<Record>> = (0..2).map(|g| members(old[g].clone(), phones[g])).collect();
        let groups_new: Vec<Vec<Record>> = (0..2)
            .map(|g| {
                let kept = groups_old[g].iter().zip(&keep[g]).filter(|(_, k)| **k).map(|(r, _)| r.clone());
                members(kept.chain(new[g].iter().cloned()).collect(), phones[g])
            })
            .collect();
        let overlays: Vec<Overlay> = (0..2)
            .map(|g| {
                let mut o = Overlay::default();
                for r in &groups_old[g] {
                    if !groups_new[g].contains(r) {
                        o.set(r.id.clone(), groups_new[g].iter().find(|n| n.id == r.id).cloned());
                    }
                }
                for r in &groups_new[g] {
                    if !groups_old[g].iter().any(|o| o.id == r.id) {
                        o.set(r.id.clone(), Some(r.clone()));
                    }
                }
                o
            })
            .collect();
        let confs: Vec<EntraConf> = configs
            .iter()
            .enumerate()
            .map(|(i, (g, feeds, disabled, sms))| conf(&format!("c{i}"), feeds, *disabled, *sms, phones[*g]))
            .collect();
        let inst = instance(confs);
        let rosters_old: Vec<Roster> = configs.iter().map(|(g, ..)| roster(&groups_old[*g], phones[*g])).collect();
        let rosters_new: Vec<Roster> = configs.iter().map(|(g, ..)| roster(&groups_new[*g], phones[*g])).collect();
        let old_refs: Vec<&Roster> = rosters_old.iter().collect();
        let new_refs: Vec<&Roster> = rosters_new.iter().collect();
        let before = plan::plan(&mut CurrentFiles::new(), &old_refs, &inst, false).unwrap();
        let mut current = files(&before);
        let base = Base {
            outputs: before.outputs.iter().map(|o| (o.output, (o.after, o.skipped.clone()))).collect(),
            skipped: before.skip_counts(),
        };
        let want = plan::plan(&mut current, &new_refs, &inst, true).unwrap();
        let mems: Vec<Mem> = groups_old.iter().map(|g| Mem(g.clone())).collect();
        let groups: Vec<Group<'_>> = configs
            .iter()
            .map(|(g, ..)| Group { old: &mems[*g], changes: &overlays[*g], phones: phones[*g] })
            .collect();
        let got = patch(&inst, &groups, &base, true).unwrap().expect("the counts add up");
        // A patch keeps no order of entries: it writes lines in file order.
        let mut want_outputs = want.outputs.clone();
        for o in &mut want_outputs {
            o.own_order = None;
        }
        prop_assert_eq!(&got.outputs, &want_outputs);
        prop_assert_eq!(&got.skipped, &want.skip_counts());
        for (i, o) in got.outputs.iter().enumerate() {
            let old_bytes = current[&o.output].clone().unwrap_or_default();
            let mut patched = Vec::new();
            got.write_to(i, &old_bytes[..], &mut patched).unwrap();
            let mut full = Vec::new();
            want.write_to(i, &mut full).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&patched), String::from_utf8_lossy(&full), "{}", o.output);
        }
    }
}

#[test]
fn a_file_that_is_not_the_last_runs_list_is_refused_and_nothing_is_written_from_it() {
    let output = OutputPlan {
        output: Output::AllowedSenders,
        path: PathBuf::new(),
        before: 3,
        after: 3,
        added: 1,
        removed: 1,
        changes: Changes::default(),
        skipped: BTreeMap::new(),
        changed: true,
        own_order: None,
    };
    let p = Patch {
        outputs: vec![output],
        skipped: BTreeMap::new(),
        skips: vec![],
        edits: vec![Edit { added: vec![b"b@x".to_vec()], removed: vec![b"c@x".to_vec()] }],
    };
    let run = |old: &[u8]| {
        let mut out = Vec::new();
        p.write_to(0, old, &mut out).map(|()| String::from_utf8(out).unwrap()).map_err(|e| e.to_string())
    };
    assert_eq!(run(b"a@x\nc@x\nd@x\n").unwrap(), "a@x\nb@x\nd@x\n");
    let long = [b"a@x\nc@x\n".to_vec(), vec![b'z'; 5000], b"\n".to_vec()].concat();
    assert!(run(&long).unwrap_err().contains("too long"));
    for (old, why) in [
        (&b"a@x\nd@x\n"[..], "a line to remove is missing"),
        (b"a@x\nb@x\nc@x\n", "a line to add is there already"),
        (b"c@x\na@x\n", "out of order"),
        (b"a@x\nc@x", "cut short"),
        (b"a@x\n", "a line to remove is missing"),
        (b"a@x\nc@x\nd@x\ne@x\n", "another number of lines"),
    ] {
        let e = run(old).unwrap_err();
        assert!(e.contains(why), "{old:?}: {e}");
    }
}
