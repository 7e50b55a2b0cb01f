//! `imageserver nodes`: the cluster's nodes as the index knows them (state,
//! dead by heartbeat age, the work items each holds), and draining one.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use imageserver_core::db::nodes::{NodeRecord, NodeState};
use imageserver_core::open_index;
use imageserver_core::workqueue::{WorkFilter, WorkItem, WorkStatus};

use crate::{load_config, ArchiveArgs};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodesArgs {
    #[command(subcommand)]
    command: Option<NodesCommand>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Subcommand, Debug)]
enum NodesCommand {
    /// List the nodes (the default).
    List(ListArgs),
    /// Ask a node to drain: it leaves the balancer's pool, finishes its
    /// associations and work items, and exits 0.
    Drain(NodeArgs),
    /// Remove a stopped or dead node's row (it registers again if it runs).
    Forget(NodeArgs),
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct NodeArgs {
    #[command(flatten)]
    archive: ArchiveArgs,
    /// The node id (as `nodes` lists it).
    node: String,
}

pub fn nodes(args: NodesArgs) -> Result<ExitCode> {
    match args.command {
        None => list(args.list),
        Some(NodesCommand::List(list_args)) => list(list_args),
        Some(NodesCommand::Drain(node)) => set_draining(node),
        Some(NodesCommand::Forget(node)) => forget(node),
    }
}

fn list(args: ListArgs) -> Result<ExitCode> {
    let config = load_config(&args.archive)?;
    let dead_after = config.validate()?.node.dead_after;
    let index = open_index(&config.db_url()).context("cannot open the index")?;
    let nodes = index.nodes().context("cannot list the nodes")?;
    let running = index
        .list(&WorkFilter {
            statuses: vec![WorkStatus::InProgress],
            ..WorkFilter::default()
        })
        .context("cannot list the work items in progress")?;
    let mut held: BTreeMap<&str, Vec<&WorkItem>> = BTreeMap::new();
    for item in &running {
        if let Some(processor) = item.processor_id.as_deref() {
            held.entry(processor).or_default().push(item);
        }
    }
    let holding = |node: &NodeRecord| -> Vec<&WorkItem> {
        node.registration
            .processor_id
            .as_deref()
            .and_then(|p| held.get(p))
            .cloned()
            .unwrap_or_default()
    };
    if args.json {
        for node in &nodes {
            let items: Vec<serde_json::Value> = holding(node)
                .iter()
                .map(|item| {
                    serde_json::json!({
                        "id": item.id.0,
                        "type": item.kind.as_str(),
                        "study_uid": item.study_uid().map(|u| u.as_str()),
                        "attempt": item.attempt,
                    })
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "id": node.registration.id,
                    "state": node.liveness(dead_after).as_str(),
                    "requested_state": node.state.as_str(),
                    "host": node.registration.host,
                    "addresses": node.registration.addresses,
                    "version": node.registration.version,
                    "pid": node.registration.pid,
                    "processor_id": node.registration.processor_id,
                    "started_at_ms": node.started_at_ms,
                    "heartbeat_at_ms": node.heartbeat_at_ms,
                    "heartbeat_age_ms": u64::try_from(node.heartbeat_age.as_millis()).unwrap_or(u64::MAX),
                    "work_items": items,
                })
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<9} {:<24} {:>8} {:>10}  work items",
        "node", "state", "addresses", "pid", "heartbeat"
    );
    for node in &nodes {
        let items = holding(node);
        let listed: Vec<String> = items
            .iter()
            .map(|i| format!("{}({})", i.id.0, i.kind.as_str()))
            .collect();
        println!(
            "{:<32} {:<9} {:<24} {:>8} {:>9}s  {}",
            node.registration.id,
            node.liveness(dead_after).as_str(),
            node.registration.addresses.join(","),
            node.registration.pid,
            node.heartbeat_age.as_secs(),
            if listed.is_empty() {
                "-".to_string()
            } else {
                listed.join(" ")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn set_draining(args: NodeArgs) -> Result<ExitCode> {
    let config = load_config(&args.archive)?;
    let index = open_index(&config.db_url()).context("cannot open the index")?;
    let node = index
        .nodes()?
        .into_iter()
        .find(|n| n.registration.id == args.node);
    match node.map(|n| n.state) {
        None => bail!(
            "no node {:?} in the index (see `imageserver nodes`)",
            args.node
        ),
        Some(NodeState::Stopped) => bail!("node {:?} is stopped", args.node),
        Some(_) => {}
    }
    index.set_node_state(&args.node, NodeState::Draining)?;
    println!(
        "node {} asked to drain: it sees it at its next heartbeat",
        args.node
    );
    Ok(ExitCode::SUCCESS)
}

fn forget(args: NodeArgs) -> Result<ExitCode> {
    let config = load_config(&args.archive)?;
    let dead_after = config.validate()?.node.dead_after;
    let index = open_index(&config.db_url()).context("cannot open the index")?;
    let Some(node) = index
        .nodes()?
        .into_iter()
        .find(|n| n.registration.id == args.node)
    else {
        bail!("no node {:?} in the index", args.node);
    };
    use imageserver_core::db::nodes::Liveness;
    if matches!(
        node.liveness(dead_after),
        Liveness::Active | Liveness::Draining
    ) {
        bail!(
            "node {:?} is alive (heartbeat {} s ago): drain it first",
            args.node,
            node.heartbeat_age.as_secs()
        );
    }
    index.forget_node(&args.node)?;
    println!("node {} forgotten", args.node);
    Ok(ExitCode::SUCCESS)
}
