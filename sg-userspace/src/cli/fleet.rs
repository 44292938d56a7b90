//! `sgctl fleet push|show|members|compose`: a fleet's rules in etcd (docs/fleet.md).

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use serde::Serialize;
use sgctl::{
    policy::fleet::{self, Key},
    store::{Store, StoreUrl},
};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Validate a rule file and write its groups, prefix lists and sessions (replacing the
    /// fleet's) and, with --host, its interfaces as that host's bindings, in one
    /// transaction; an invalid file, or one that breaks any host's rules, changes nothing.
    Push {
        file: PathBuf,
        #[command(flatten)]
        store: StoreArg,
        /// The host whose bindings the file's interfaces become.
        #[arg(long)]
        host: Option<String>,
    },
    /// What the store holds: groups, prefix lists, hosts' bindings and members.
    Show {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
    /// The members of a group: the addresses hosts registered, and the group's own.
    Members {
        group: String,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        json: bool,
    },
    /// Print the rule file a host's agent builds from the store.
    Compose {
        #[command(flatten)]
        store: StoreArg,
        #[arg(long)]
        host: String,
    },
}

#[derive(clap::Args)]
struct StoreArg {
    /// The store: etcd://HOST:PORT[,HOST:PORT...]
    #[arg(long, value_name = "URL")]
    store: StoreUrl,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        match args.command {
            Command::Push { file, store, host } => push(&file, &store.store, host.as_deref()).await,
            Command::Show { store, json } => show(&store.store, json).await,
            Command::Members { group, store, json } => members(&group, &store.store, json).await,
            Command::Compose { store, host } => {
                let read = Store::connect(&store.store).await?.read().await?;
                print!("{}", fleet::compose(&read.snapshot, &host)?);
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

async fn push(file: &std::path::Path, url: &StoreUrl, host: Option<&str>) -> Result<ExitCode> {
    let path = file.display().to_string();
    let text = std::fs::read_to_string(file).with_context(|| format!("{path}: cannot read file"))?;
    let items = match fleet::split(&text, &path, host) {
        Ok(items) => items,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    if host.is_none() && text.contains("[[interface]]") {
        eprintln!("note: without --host the file's [[interface]] tables are not written (they are a host's bindings)");
    }
    let mut store = Store::connect(url).await?;
    let pushed = match store.push(&items, host, &path).await {
        Ok(pushed) => pushed,
        Err(e) => {
            eprintln!("{e}\nnothing pushed");
            return Ok(ExitCode::from(1));
        }
    };
    let bindings = match host {
        Some(host) => format!(", {} bindings of {host}", items.bindings.len()),
        None => String::new(),
    };
    println!(
        "pushed {path} to {url} at revision {}: {} groups, {} prefix lists{bindings} ({} keys written, {} deleted, {} \
         unchanged)",
        pushed.revision,
        items.shared.keys().filter(|k| matches!(k, Key::Group(_))).count(),
        items.shared.keys().filter(|k| matches!(k, Key::PrefixList(_))).count(),
        pushed.written,
        pushed.deleted,
        pushed.unchanged
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize, Default)]
struct ShowView {
    store: String,
    revision: i64,
    groups: BTreeMap<String, GroupView>,
    prefix_lists: Vec<String>,
    /// Host to its bound interfaces.
    hosts: BTreeMap<String, Vec<String>>,
}

#[derive(Serialize, Default)]
struct GroupView {
    rules: usize,
    /// Registered members: address to host.
    members: BTreeMap<String, String>,
}

async fn show(url: &StoreUrl, json: bool) -> Result<ExitCode> {
    let read = Store::connect(url).await?.read().await?;
    let mut view = ShowView { store: url.to_string(), revision: read.revision, ..ShowView::default() };
    for (key, value) in &read.snapshot {
        match Key::parse(key) {
            Some(Key::Group(id)) => {
                let rules = toml::from_str::<toml::Table>(value)
                    .ok()
                    .and_then(|t| t.get("rule").and_then(toml::Value::as_array).map(Vec::len))
                    .unwrap_or(0);
                view.groups.entry(id).or_default().rules = rules;
            }
            Some(Key::PrefixList(id)) => view.prefix_lists.push(id),
            Some(Key::Binding { host, iface }) => view.hosts.entry(host).or_default().push(iface),
            Some(Key::Member { group, host, address }) => {
                view.groups.entry(group).or_default().members.insert(address.to_string(), host);
            }
            _ => {}
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} at revision {}", view.store, view.revision);
    println!("groups:");
    for (id, group) in &view.groups {
        println!("  {id}: {} rules, {} registered members", group.rules, group.members.len());
    }
    if !view.prefix_lists.is_empty() {
        println!("prefix lists: {}", view.prefix_lists.join(", "));
    }
    println!("hosts:");
    for (host, interfaces) in &view.hosts {
        println!("  {host}: {}", interfaces.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct MemberView {
    address: String,
    /// The host that registered it, or "" for an address written in the group itself.
    host: String,
}

async fn members(group: &str, url: &StoreUrl, json: bool) -> Result<ExitCode> {
    let read = Store::connect(url).await?.read().await?;
    let Some(definition) = read.snapshot.get(&Key::Group(group.to_string()).path()) else {
        eprintln!("{url}: no group {group:?}");
        return Ok(ExitCode::from(1));
    };
    let mut members: Vec<MemberView> = toml::from_str::<toml::Table>(definition)
        .ok()
        .and_then(|t| t.get("members").and_then(toml::Value::as_array).cloned())
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(|a| MemberView { address: a.to_string(), host: String::new() }))
        .collect();
    for key in read.snapshot.keys() {
        if let Some(Key::Member { group: of, host, address }) = Key::parse(key)
            && of == group
        {
            members.push(MemberView { address: address.to_string(), host });
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&members)?);
    } else {
        for m in &members {
            let by = if m.host.is_empty() { "(in the group)".to_string() } else { format!("host {}", m.host) };
            println!("{}\t{by}", m.address);
        }
    }
    Ok(ExitCode::SUCCESS)
}
