//! Starting this cache's Raft node. Every cache is a cluster: with a `[cluster]` section
//! it is that cluster's member; without one it is a cluster of one (node 1, no cluster
//! listener, a secret made up at each start) that makes itself the only voter on first
//! start and takes the lead at once on every start. Records go through the same Raft
//! write path either way, so GC, pins, retention and the status report work the same
//! on one machine as on three.
//!
//! A cluster of one also takes in the records of a standalone cache kept by an earlier
//! Cairn (`cache.redb` in the data dir): each blob, path and token is written through
//! Raft, then the file is renamed `cache.redb.imported`. The blob files stay where they
//! are (`cache/blobs/`, the same layout).

use std::sync::Arc;
use std::time::Duration;

use cluster::command::Command;
use cluster::{ClusterSecret, Node, NodeConfig};
use futures_util::StreamExt;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::StartError;

/// How long a cluster of one may take to lead itself at start.
const LEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes in flight while importing a standalone cache (Raft appends them in batches).
const IMPORT_CONCURRENCY: usize = 64;

/// This node, and its cluster listener when it has one.
pub struct Started {
    pub node: Arc<Node>,
    pub listener: Option<TcpListener>,
}

fn node_error(e: impl std::fmt::Display) -> StartError {
    StartError::Node(e.to_string())
}

/// Opens this node's Raft storage under `data_dir/raft`, starts Raft and binds the
/// cluster listener if there is one. A cluster of one is leading when this returns.
pub async fn start(config: &Config) -> Result<Started, StartError> {
    let c = &config.cluster;
    let secret = match &c.secret_file {
        Some(file) => ClusterSecret::from_file(file).map_err(node_error)?,
        None => ClusterSecret::random(),
    };
    let mut nc = NodeConfig::new(
        c.node_id,
        &config.data_dir.join("raft"),
        c.advertise.clone(),
        secret,
    );
    nc.heartbeat_ms = c.heartbeat_ms;
    nc.election_timeout_ms = c.election_timeout_ms;
    nc.snapshot_logs = c.snapshot_logs;
    let node = Node::start(nc).await.map_err(node_error)?;
    let Some(listen) = &c.listen else {
        node.lead_alone(LEAD_TIMEOUT).await.map_err(node_error)?;
        import_standalone(config, &node).await?;
        return Ok(Started {
            node,
            listener: None,
        });
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| node_error(format!("binding the cluster listener {listen}: {e}")))?;
    match node.identity() {
        Some(id) => {
            tracing::info!(cluster = %id.cluster_id, node = c.node_id, listen = %listen, "cluster node started")
        }
        None => {
            tracing::warn!(node = c.node_id, listen = %listen, "this node belongs to no cluster yet: run cachectl cluster init on one node, or add this one from the leader")
        }
    }
    // A cluster of one given a listener, or a node moved: once it leads, the membership
    // learns its address.
    let n = node.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(2));
        loop {
            every.tick().await;
            if let Err(e) = n.refresh_own_addr().await {
                tracing::warn!(error = %e, "recording this node's cluster address failed; will retry");
            }
        }
    });
    Ok(Started {
        node,
        listener: Some(listener),
    })
}

/// Brings a standalone cache's records (`data_dir/cache.redb`) into the cluster of one.
async fn import_standalone(config: &Config, node: &Arc<Node>) -> Result<(), StartError> {
    let path = config.data_dir.join("cache.redb");
    if !path.exists() {
        return Ok(());
    }
    let meta_error = |source| StartError::Meta {
        path: path.display().to_string(),
        source,
    };
    let db = store::meta::CacheDb::open(&path).map_err(meta_error)?;
    let (blobs, paths, tokens) = (
        db.blobs().map_err(meta_error)?,
        db.paths().map_err(meta_error)?,
        db.tokens().map_err(meta_error)?,
    );
    drop(db);
    tracing::info!(
        blobs = blobs.len(),
        paths = paths.len(),
        tokens = tokens.len(),
        "importing the records of a standalone cache into this cluster of one"
    );
    let me = node.id();
    // Blobs before the paths naming them; every command is idempotent, so an import
    // cut short runs again from the start.
    let blob_cmds = blobs.into_iter().map(|blob| Command::CommitUpload {
        at: blob.created,
        blob,
        holders: vec![me],
        path: None,
        requires: Vec::new(),
    });
    let path_cmds = paths.into_iter().map(|path| Command::PutPath {
        path,
        requires: Vec::new(),
    });
    let token_cmds = tokens.into_iter().map(|token| Command::PutToken { token });
    for batch in [
        blob_cmds.collect::<Vec<_>>(),
        path_cmds.collect(),
        token_cmds.collect(),
    ] {
        let mut writes = futures_util::stream::iter(batch)
            .map(|cmd| {
                let node = node.clone();
                async move {
                    let what = cmd.to_string();
                    match node.write(cmd).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(refused)) => Err(format!("{what}: {refused}")),
                        Err(e) => Err(format!("{what}: {e}")),
                    }
                }
            })
            .buffer_unordered(IMPORT_CONCURRENCY);
        while let Some(r) = writes.next().await {
            r.map_err(|e| node_error(format!("importing {}: {e}", path.display())))?;
        }
    }
    let done = config.data_dir.join("cache.redb.imported");
    std::fs::rename(&path, &done).map_err(|e| {
        node_error(format!(
            "renaming {} after importing it: {e}",
            path.display()
        ))
    })?;
    tracing::info!(file = %done.display(), "standalone cache imported");
    Ok(())
}
