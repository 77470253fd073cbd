//! `cachectl cluster init|add|remove|replace`: membership changes through a node's
//! admin API. Any node takes them; a follower hands them to the leader.

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

/// Form and change the cluster (needs an admin token).
#[derive(clap::Args)]
pub struct Args {
    /// A node's base URL (its public listener).
    #[arg(
        long,
        alias = "cache",
        env = "CAIRN_URL",
        default_value = "http://127.0.0.1:5000"
    )]
    server: String,
    /// An admin token (prefer the environment variable to the flag: flags show up in `ps`).
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: String,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Make the node at --server the first of a new cluster, with the peers of its
    /// [[cluster.peers]] as voters (each must be up and fresh). Run it once, on one
    /// node; repeating it is harmless.
    Init {
        /// Start with this node alone; add the others later with `cluster add`.
        #[arg(long)]
        alone: bool,
    },
    /// Add a fresh node: it joins as a learner, catches up, then becomes a voter.
    Add {
        /// The new node's id (never one used before).
        node_id: u64,
        /// Its cluster listener, host:port.
        addr: String,
    },
    /// Remove a node from the cluster (its copies are made up for by repair).
    Remove { node_id: u64 },
    /// Replace a dead node: add the new one, then remove the old one.
    Replace {
        /// The node to retire.
        old_id: u64,
        /// The new node's id (never one used before).
        new_id: u64,
        /// The new node's cluster listener, host:port.
        addr: String,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::admin::block_on(run_async(args))?
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    let base = args.server.trim_end_matches('/').to_string();
    let client = reqwest::Client::new();
    let send = |rb: reqwest::RequestBuilder| async {
        let text = crate::admin::admin_send(rb, &base, &args.token).await?;
        serde_json::from_str::<Value>(&text).context("unexpected reply")
    };
    let add = |node_id: u64, addr: String| {
        send(
            client
                .post(format!("{base}/api/v1/cluster/nodes"))
                .json(&json!({ "node_id": node_id, "addr": addr })),
        )
    };
    match args.action {
        Action::Init { alone } => {
            let v = send(
                client
                    .post(format!("{base}/api/v1/cluster/init"))
                    .json(&json!({ "with_peers": !alone })),
            )
            .await?;
            println!(
                "cluster {} initialised; voters {}",
                v["cluster_id"].as_str().unwrap_or("?"),
                v["voters"]
            );
        }
        Action::Add { node_id, addr } => {
            let v = add(node_id, addr).await?;
            println!("node {node_id} added; members {}", v["members"]);
        }
        Action::Remove { node_id } => {
            let v = send(client.delete(format!("{base}/api/v1/cluster/nodes/{node_id}"))).await?;
            println!("node {node_id} removed; members {}", v["members"]);
        }
        Action::Replace {
            old_id,
            new_id,
            addr,
        } => {
            add(new_id, addr).await?;
            println!("node {new_id} added");
            let v = send(client.delete(format!("{base}/api/v1/cluster/nodes/{old_id}"))).await?;
            println!("node {old_id} removed; members {}", v["members"]);
        }
    }
    Ok(())
}
