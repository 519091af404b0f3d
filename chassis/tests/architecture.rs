//! The dependency rule of docs/src/architecture.md: every module of `chassis/src` is ranked in
//! the guide's table, and a module uses only modules of a lower rank. Fails naming the file,
//! the line and the import.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const GUIDE: &str = include_str!("../../docs/src/architecture.md");

/// The rank of each module, read from the guide's table under "The dependency rule".
fn ranks() -> BTreeMap<String, u32> {
    let section = GUIDE
        .split("## The dependency rule")
        .nth(1)
        .expect("the guide has a section \"The dependency rule\"");
    let mut ranks = BTreeMap::new();
    for line in section.lines().take_while(|line| !line.starts_with("## ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (Some(rank), Some(modules)) = (cells.get(1), cells.get(2)) else {
            continue;
        };
        let Ok(rank) = rank.parse::<u32>() else {
            continue;
        };
        for module in modules.split(',') {
            let module = module.trim().trim_matches('`');
            assert!(
                ranks.insert(module.to_owned(), rank).is_none(),
                "{module} is ranked twice"
            );
        }
    }
    assert!(!ranks.is_empty(), "no rank table found in docs/src/architecture.md");
    ranks
}

fn source_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The top-level module a file of `src` belongs to (`resilience` for
/// `src/resilience/retry.rs`, `error` for `src/error.rs`); `None` for `lib.rs`.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" => None,
        name => Some(name.trim_end_matches(".rs").to_owned()),
    }
}

/// The modules a line of code names with `crate::`, comments left out.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        // `crate::` inside an identifier (`my_crate::`) is not this crate.
        let preceded = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if preceded.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            found.extend(group.split(',').filter_map(|item| {
                let name = item.trim().split("::").next()?.trim();
                (!name.is_empty()).then(|| name.to_owned())
            }));
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn modules_depend_only_on_lower_ranks() {
    let ranks = ranks();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(&rank) = ranks.get(&module) else {
            violations.push(format!(
                "{}: module `{module}` is not in the rank table of docs/src/architecture.md",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            for used in crate_paths(line) {
                if used == module || used == "Error" || used == "Result" || used == "BoxError" {
                    // Its own module, or the crate root's re-exports of `error`.
                    continue;
                }
                let Some(&used_rank) = ranks.get(&used) else {
                    continue;
                };
                if used_rank >= rank {
                    violations.push(format!(
                        "{}:{}: `crate::{used}` — `{module}` (rank {rank}) may only use modules of a lower rank, `{used}` is rank {used_rank}",
                        file.strip_prefix(src.parent().unwrap()).unwrap().display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the dependency rule of docs/src/architecture.md:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_rule_sees_grouped_and_inline_paths() {
    assert_eq!(crate_paths("use crate::config::{ConfigError, Problems};"), ["config"]);
    assert_eq!(
        crate_paths("use crate::{http, resilience::Timeout};"),
        ["http", "resilience"]
    );
    assert_eq!(
        crate_paths("    let x = crate::telemetry::init(); // crate::runtime"),
        ["telemetry"]
    );
    assert!(crate_paths("//! see [`Config`](crate::runtime::Config)").is_empty());
    assert!(crate_paths("use my_crate::thing;").is_empty());
}

#[test]
fn every_ranked_module_exists() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for module in ranks().keys() {
        assert!(
            src.join(format!("{module}.rs")).is_file() || src.join(module).join("mod.rs").is_file(),
            "docs/src/architecture.md ranks `{module}`, which is not a module of chassis/src"
        );
    }
}
