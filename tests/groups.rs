//! tests/groups.txt is the one list of where each integration test runs
//! (host only, or inside every kernel of the matrix too). This test, which
//! needs no root, keeps it whole: every test of tests/*.rs is in exactly one
//! group, and every line names a test that exists, so a new test cannot
//! silently skip the kernels and a renamed one cannot leave a dead line.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

const GROUPS: [&str; 3] = ["kernel", "floor", "host"];

/// BINARY::TEST of every #[test] function in tests/*.rs.
fn tests_in_sources(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    for file in files {
        let binary = file.file_stem().unwrap().to_str().unwrap().to_string();
        let text = fs::read_to_string(&file).unwrap();
        let mut in_test = false;
        for line in text.lines().map(str::trim) {
            if line == "#[test]" {
                in_test = true;
            } else if in_test && let Some(rest) = line.strip_prefix("fn ") {
                let name = rest.split(['(', '<']).next().unwrap().trim();
                found.push(format!("{binary}::{name}"));
                in_test = false;
            }
        }
    }
    found
}

/// (group, pattern, line number) of each line of groups.txt.
fn group_lines(text: &str) -> Vec<(String, String, usize)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let mut words = l.split_whitespace();
            let group = words.next().unwrap().to_string();
            let pattern = words
                .next()
                .unwrap_or_else(|| panic!("groups.txt line {}: GROUP BINARY::TEST", i + 1));
            assert!(
                words.next().is_none(),
                "groups.txt line {}: one test per line",
                i + 1
            );
            Some((group, pattern.to_string(), i + 1))
        })
        .collect()
}

fn matches(pattern: &str, test: &str) -> bool {
    match pattern.strip_suffix("::*") {
        Some(binary) => test.split("::").next() == Some(binary),
        None => pattern == test,
    }
}

#[test]
fn every_integration_test_is_in_exactly_one_group() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tests = tests_in_sources(&root.join("tests"));
    assert!(
        tests.len() > 50,
        "found only {} tests: is the scan broken?",
        tests.len()
    );
    let lines = group_lines(&fs::read_to_string(root.join("tests/groups.txt")).unwrap());
    let mut problems = Vec::new();
    for (group, pattern, n) in &lines {
        if !GROUPS.contains(&group.as_str()) {
            problems.push(format!(
                "line {n}: unknown group {group} (use one of {GROUPS:?})"
            ));
        }
        if !tests.iter().any(|t| matches(pattern, t)) {
            problems.push(format!("line {n}: {pattern} names no test of tests/*.rs"));
        }
    }
    let mut placed: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for t in &tests {
        let at: Vec<usize> = lines
            .iter()
            .filter(|(_, p, _)| matches(p, t))
            .map(|(_, _, n)| *n)
            .collect();
        placed.insert(t, at);
    }
    for (t, at) in &placed {
        match at.len() {
            0 => problems.push(format!(
                "{t} is in no group: add \"kernel {t}\" (or host) to tests/groups.txt"
            )),
            1 => {}
            _ => problems.push(format!("{t} is in more than one group: lines {at:?}")),
        }
    }
    assert!(
        problems.is_empty(),
        "tests/groups.txt:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_scan_and_the_patterns_work_as_the_list_needs() {
    let dir = std::env::temp_dir().join(format!("netnsxl-groups-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("a.rs"),
        "#[test]\n#[ignore = \"needs root\"]\nfn one() {}\n\n#[test]\n    fn two() {}\nfn helper() {}\n",
    )
    .unwrap();
    let found = tests_in_sources(&dir);
    fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found, ["a::one", "a::two"]);
    assert!(matches("a::*", "a::one"));
    assert!(!matches("a::*", "ab::one"));
    assert!(matches("a::one", "a::one"));
    assert!(!matches("a::on", "a::one"));
    let lines = group_lines("# c\n\nkernel  a::one\nhost a::*\n");
    assert_eq!(
        lines,
        [
            ("kernel".into(), "a::one".into(), 3),
            ("host".into(), "a::*".into(), 4)
        ]
    );
}
