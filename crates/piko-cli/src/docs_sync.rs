//! Keeps `docs/config.md` true: every key it documents loads into its command's file format,
//! every command has exactly the flags it documents for it, no more, no fewer, and a default
//! the page gives is the one `--help` gives.
//!
//! The page marks each table with `<!-- sync: commands="..." file="..." ports="..." -->`:
//! `commands` are the command paths its flags belong to, `file` the file format its keys load
//! into (`all`: every command's), and `ports` the values `<port>` stands for in its rows.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory as _;
use serde_json::{Map, Value};

const PAGE: &str = include_str!("../../../docs/config.md");

/// One documented setting.
struct Row {
    key: Option<String>,
    flag: Option<String>,
    default: String,
}

struct Table {
    attributes: BTreeMap<String, String>,
    rows: Vec<Row>,
}

fn attributes(marker: &str) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    let mut rest = marker;
    while let Some((name, after)) = rest.split_once("=\"") {
        let (value, after) = after.split_once('"').expect("closed attribute");
        attributes.insert(name.trim().to_owned(), value.to_owned());
        rest = after;
    }
    attributes
}

fn cell(text: &str) -> Option<String> {
    let text = text.trim().trim_matches('`');
    (text != "—").then(|| text.to_owned())
}

fn tables() -> Vec<Table> {
    let mut tables = Vec::new();
    let mut lines = PAGE.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(marker) = line
            .strip_prefix("<!-- sync:")
            .and_then(|l| l.strip_suffix("-->"))
        else {
            continue;
        };
        let attributes = attributes(marker);
        let ports: Vec<String> = attributes
            .get("ports")
            .map(|p| p.split(',').map(str::to_owned).collect())
            .unwrap_or_else(|| vec![String::new()]);
        let mut rows = Vec::new();
        // Header and separator first.
        for line in lines.by_ref().take(2) {
            assert!(line.starts_with('|'), "a table follows its marker: {line}");
        }
        while let Some(line) = lines.next_if(|l| l.starts_with('|')) {
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").collect();
            assert_eq!(cells.len(), 4, "four columns: {line}");
            for port in &ports {
                let expand = |c: Option<String>| c.map(|c| c.replace("<port>", port));
                rows.push(Row {
                    key: expand(cell(cells[0])),
                    flag: expand(cell(cells[1])),
                    default: cells[2].trim().trim_matches('`').to_owned(),
                });
            }
        }
        tables.push(Table { attributes, rows });
    }
    tables
}

/// Every command of `piko` (the built command tree, globals propagated), with its path such as
/// `server status cluster nodes`; `help` subcommands left out.
fn commands() -> Vec<(String, clap::Command)> {
    fn walk(command: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
        for sub in command.get_subcommands().filter(|c| c.get_name() != "help") {
            let path = if path.is_empty() {
                sub.get_name().to_owned()
            } else {
                format!("{path} {}", sub.get_name())
            };
            out.push((path.clone(), sub.clone()));
            walk(sub, &path, out);
        }
    }
    let mut root = crate::Cli::command();
    root.build();
    let mut out = Vec::new();
    walk(&root, "", &mut out);
    out
}

/// Every flag's default as `--help` states it (clap's own, or `[default: ...]` in its help), by
/// command path.
fn help_defaults() -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for (path, command) in commands() {
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let stated = match arg.get_default_values() {
                [value] => Some(value.to_string_lossy().into_owned()),
                _ => arg.get_help().and_then(|help| {
                    let help = help.to_string();
                    let (_, rest) = help.split_once("[default: ")?;
                    Some(rest.split_once(']')?.0.to_owned())
                }),
            };
            if let Some(default) = stated {
                out.insert((path.clone(), format!("--{long}")), default);
            }
        }
    }
    out
}

#[test]
fn documented_defaults_are_the_help_s() {
    let defaults = help_defaults();
    for table in tables() {
        let Some(commands) = table.attributes.get("commands") else {
            continue;
        };
        for command in commands.split(',') {
            for row in &table.rows {
                let Some(flag) = &row.flag else { continue };
                if let Some(stated) = defaults.get(&(command.to_owned(), flag.clone())) {
                    assert_eq!(
                        &row.default, stated,
                        "piko {command} {flag}: page vs --help"
                    );
                }
            }
        }
    }
}

/// Long flags of every command that runs (leaves, and `server`, which also has subcommands),
/// by command path; globals included.
fn flags_by_command() -> BTreeMap<String, BTreeSet<String>> {
    commands()
        .into_iter()
        .filter(|(path, command)| {
            path == "server" || !command.get_subcommands().any(|c| c.get_name() != "help")
        })
        .map(|(path, command)| {
            let flags = command
                .get_arguments()
                .filter_map(|a| a.get_long())
                .filter(|l| *l != "help")
                .map(|l| format!("--{l}"))
                .collect();
            (path, flags)
        })
        .collect()
}

#[test]
fn every_command_has_exactly_its_documented_flags() {
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for table in tables() {
        let Some(commands) = table.attributes.get("commands") else {
            continue;
        };
        for command in commands.split(',') {
            let flags = documented.entry(command.to_owned()).or_default();
            flags.extend(table.rows.iter().filter_map(|r| r.flag.clone()));
        }
    }
    let actual = flags_by_command();
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>(),
        "documented commands"
    );
    for (command, flags) in &actual {
        let documented = &documented[command];
        let missing: Vec<_> = flags.difference(documented).collect();
        let extra: Vec<_> = documented.difference(flags).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "piko {command}: undocumented {missing:?}, documented but absent {extra:?}"
        );
    }
}

/// The value a row's default stands for, as YAML would give it.
fn sample(key: &str, default: &str) -> Value {
    match default {
        "\"\"" => Value::String(String::new()),
        "[]" => Value::Array(Vec::new()),
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "required" if key.ends_with("timeout") => Value::String("10s".into()),
        "required" => Value::String("x".into()),
        number if number.parse::<f64>().is_ok() => serde_json::from_str(number).unwrap(),
        text => Value::String(text.to_owned()),
    }
}

/// Sets `key` (dotted; `name[]` is a list whose one element holds every key under it).
fn insert(tree: &mut Map<String, Value>, key: &str, value: Value) {
    let (head, rest) = match key.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (key, None),
    };
    match (head.strip_suffix("[]"), rest) {
        (Some(list), Some(rest)) => {
            let list = tree
                .entry(list)
                .or_insert_with(|| Value::Array(vec![Value::Object(Map::new())]));
            let element = list.as_array_mut().unwrap()[0].as_object_mut().unwrap();
            insert(element, rest, value);
        }
        (None, Some(rest)) => {
            let section = tree
                .entry(head)
                .or_insert_with(|| Value::Object(Map::new()));
            insert(section.as_object_mut().unwrap(), rest, value);
        }
        _ => {
            tree.insert(head.to_owned(), value);
        }
    }
}

#[test]
fn every_documented_key_loads_with_its_default() {
    let mut files: BTreeMap<String, Map<String, Value>> =
        ["agent", "bench", "forward", "server", "test"]
            .into_iter()
            .map(|file| (file.to_owned(), Map::new()))
            .collect();
    for table in tables() {
        let Some(file) = table.attributes.get("file") else {
            assert!(
                table.rows.iter().all(|r| r.key.is_none()),
                "a table with keys names its file"
            );
            continue;
        };
        for (name, tree) in &mut files {
            if file != "all" && file != name {
                continue;
            }
            for row in &table.rows {
                if let Some(key) = &row.key {
                    insert(tree, key, sample(key, &row.default));
                }
            }
        }
        assert!(
            file == "all" || files.contains_key(file),
            "unknown file {file}"
        );
    }
    for (file, tree) in files {
        let yaml = serde_saphyr::to_string(&Value::Object(tree)).unwrap();
        let loaded = match file.as_str() {
            "server" => serde_saphyr::from_str::<crate::config_file::ServerFile>(&yaml).map(drop),
            "agent" => serde_saphyr::from_str::<crate::config_file::AgentFile>(&yaml).map(drop),
            "forward" => serde_saphyr::from_str::<crate::config_file::ForwardFile>(&yaml).map(drop),
            "bench" => serde_saphyr::from_str::<crate::bench::BenchFile>(&yaml).map(drop),
            "test" => {
                serde_saphyr::from_str::<crate::test_cluster::TestClusterFile>(&yaml).map(drop)
            }
            other => panic!("unknown file {other}"),
        };
        if let Err(err) = loaded {
            panic!("{file}: documented keys do not load: {err}\n{yaml}");
        }
    }
}
